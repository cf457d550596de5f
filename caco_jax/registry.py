"""The one registry helper: things selected by name from a config (attention blocks, their PyTorch
twins, losses, datasets).

A :class:`Registry` is filled with ``@REGISTRY.register("name")`` (or ``register("name", entry)``)
where each entry is defined, checks each entry's contract when it is registered, and answers
``REGISTRY["name"]`` with the entry or one :class:`~caco_jax.errors.ConfigError` naming the kind,
the name and the choices. Iterating gives the names in registration order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from caco_jax.errors import ConfigError

T = TypeVar("T")
_UNSET: Any = object()


class Registry(Generic[T]):
    """Name -> entry, filled where the entries are defined.

    ``kind`` names what is registered in messages ("attention", "loss", "data.name", ...);
    ``check(name, entry)`` raises ``TypeError`` when an entry lacks what the registry promises.
    """

    def __init__(self, kind: str, check: Callable[[str, T], None] | None = None):
        self.kind = kind
        self._check = check
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T = _UNSET) -> Any:
        """``register(name, entry)`` adds ``entry``; ``@register(name)`` adds the decorated object
        (and returns it unchanged). A name registered twice is a programming error."""
        if entry is _UNSET:

            def deco(obj: Any) -> Any:
                self.register(name, obj)
                return obj

            return deco
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Removes ``name`` (tests that register a toy for a while); returns its entry."""
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choices: {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple(self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def require(kind: str, *attrs: str) -> Callable[[str, Any], None]:
    """A ``check`` for :class:`Registry`: the entry must have every attribute in ``attrs``."""

    def check(name: str, entry: Any) -> None:
        if entry is None:
            return
        missing = [a for a in attrs if not hasattr(entry, a)]
        if missing:
            what = getattr(entry, "__name__", type(entry).__name__)
            raise TypeError(f"{kind} {name!r} ({what}) must declare {', '.join(missing)}")

    return check
