"""The one command-line flag style: ``--lower_case`` words, a switch ``--name`` with its ``--no_name``,
and usage errors raised as :class:`caco_jax.errors.UsageError` (printed as ``error: ...``, exit 2)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from caco_jax.errors import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UsageError (so it prints and exits like every other error)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is the command's docstring."""
    return _Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_switch(p: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:  # noqa: A002
    """``--name`` / ``--no_name``."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        f"--{name}", dest=name, action="store_true", default=default, help=help + (" (default)" if default else "")
    )
    group.add_argument(
        f"--no_{name}",
        dest=name,
        action="store_false",
        help=f"the opposite of --{name}" + ("" if default else " (default)"),
    )


__all__ = ["add_switch", "parser"]
