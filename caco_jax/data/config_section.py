"""A config section (``data.augment``, ``data.offline``) as the frozen dataclass it describes: every key
one of its fields, an unknown key named."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

T = TypeVar("T")


def from_section(cls: type[T], section: Any, what: str) -> T:
    """``cls(**section)`` for a ConfigDict or a mapping; a ValueError names the keys ``cls`` has no field
    for (``what``: the section, in the message)."""
    values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    known = {f.name for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)
