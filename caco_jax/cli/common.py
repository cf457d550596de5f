"""What every command shares: one flag style, config files and overrides, errors and exit codes.

Flags are ``--lower_case`` words; a switch ``--name`` has its negation ``--no_name``. A user
error (:class:`caco_jax.errors.CacoError`) prints ``error: <message>`` and exits with its code;
``--debug`` (or ``CACO_JAX_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import logging
import os
import pathlib
import shlex
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from caco_jax.errors import EXIT_INTERRUPTED, CacoError, ConfigError, UsageError
from caco_jax.flags import add_switch, parser

if TYPE_CHECKING:  # imported where used: predict --model runs where only numpy, Pillow and a runtime are
    import ml_collections

__all__ = [
    "add_common",
    "add_switch",
    "apply_overrides",
    "execute",
    "load_config",
    "main",
    "parse",
    "parser",
    "require",
]

DEBUG_ENV = "CACO_JAX_DEBUG"
CONFIG_PREFIX = "--config."


def add_common(p: argparse.ArgumentParser, *, compile_cache: bool = True) -> None:
    """--debug, and --compile_cache for commands that compile."""
    p.add_argument("--debug", action="store_true", help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    if compile_cache:
        from caco_jax.training import compile_cache as cc

        p.add_argument(
            "--compile_cache",
            metavar="DIR",
            help=f"persistent XLA compilation cache directory, or 'off' (default: ${cc.ENV} or {cc.default_dir()})",
        )


def require(modules: Sequence[str], needed_for: str, extra: str) -> None:
    """A UsageError naming the first of ``modules`` that is not installed (found without importing any)."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(
                f"{needed_for} needs {name}, which is not installed: pip install 'caco-jax[{extra}]' "
                "(on a machine without an NVIDIA GPU, install the CPU-only torch first: README, Install)"
            )


def execute(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a command: user errors become ``error: ...`` and their exit code; Ctrl-C exits 75
    (the commands that can resume say how)."""
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return run(args)
    except CacoError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(
    module: ModuleType, argv: Sequence[str] | None = None, prog: str | None = None, *, entry: bool | None = None
) -> int:
    """Parses ``argv`` with the command module's ``add_arguments`` and runs its ``run``.

    ``entry`` (default: ``argv`` is None): the process was started as this command, so once the flags
    parse it is started again under the preferred memory allocator where one is installed
    (:func:`caco_jax.allocator.relaunch`) and says which one runs."""
    prog = prog or f"caco-jax {module.NAME}"
    p = parser(prog, module.__doc__)
    module.add_arguments(p)
    try:
        args = parse(p, argv, getattr(module, "CONFIG_OVERRIDES", False))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if argv is None if entry is None else entry:
        from caco_jax import allocator

        allocator.relaunch()
        print(allocator.describe(), file=sys.stderr)
    args.command_line = shlex.join([*prog.split(), *(sys.argv[1:] if argv is None else argv)])
    logging.getLogger("caco_jax").setLevel(logging.INFO)
    return execute(module.run, args)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, overrides: bool) -> argparse.Namespace:
    """``p.parse_args``; with ``overrides``, ``--config.key=value`` (or ``--config.key value``) arguments
    are collected, in order, into ``args.overrides``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not overrides:
        return p.parse_args(argv)
    rest, found = [], []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith(CONFIG_PREFIX):
            key, sep, value = item[len(CONFIG_PREFIX) :].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise UsageError(f"{item} needs a value: {item}=VALUE")
                value, i = argv[i + 1], i + 1
            found.append((key, value))
        else:
            rest.append(item)
        i += 1
    args = p.parse_args(rest)
    args.overrides = found
    return args


# --------------------------------------------------------------------------- configs
def config_names() -> list[str]:
    """The configs shipped in the package (``--config NAME``)."""
    from caco_jax import configs

    folder = pathlib.Path(configs.__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config from ``NAME`` (shipped: caco, recipe, demo, ...) or a ``.py`` path, each optionally
    followed by ``:ARG`` for configs that take one (``ablation:attention=cbam``)."""
    target, _, arg = spec.partition(":")
    path = pathlib.Path(target).expanduser()
    if target.endswith(".py") or path.exists():
        if not path.is_file():
            raise ConfigError(
                f"config file {path} not found; give a path to a .py config or one of the shipped "
                f"names: {', '.join(config_names())}"
            )
        module = _module_from_file(path)
    else:
        if target not in config_names():
            close = difflib.get_close_matches(target, config_names(), n=1)
            raise ConfigError(
                f"unknown config {target!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; shipped configs: {', '.join(config_names())}, or give a path to a .py file"
            )
        module = importlib.import_module(f"caco_jax.configs.{target}")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{spec}: a config module defines get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    return config


def _module_from_file(path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"caco_jax_user_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
    """Sets ``key=value`` pairs (dotted keys) in ``config``; values are Python literals where the field
    is not a string. Unknown keys and wrong types are ConfigErrors naming the key."""
    import ml_collections

    for key, text in overrides:
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in fields:
                where = ".".join(parts[:depth]) or "the config"
                close = difflib.get_close_matches(part, fields, n=1)
                raise ConfigError(
                    f"unknown config key {key!r}: {where} has no field {part!r}"
                    + (f" (did you mean {'.'.join(parts[:depth] + [close[0]])!r}?)" if close else "")
                    + f"; its fields: {', '.join(fields)}"
                )
            if depth < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        value = _parse_value(text, node[leaf])
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(f"--config.{key}={text}: {err}") from err
