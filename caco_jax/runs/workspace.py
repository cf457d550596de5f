"""A run's workdir: the config it was trained with (``config.json``), read back over the current
default config, so that a field added since the run was trained has its default value."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections

from caco_jax.configs import default
from caco_jax.errors import CacoError, RunDirError


def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """Writes ``workdir/config.json`` (what evaluate / predict / serve rebuild the model from)."""
    path = workdir / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)
    return path


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir, merged over the current default config (the one
    place an older saved config is upgraded: a field it lacks takes its default)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{path} not found: is {workdir} the --workdir of a training run (caco-jax train)?")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacoError(f"{path} is not valid JSON ({err}): the run's config is damaged") from err
    return ml_collections.ConfigDict(_merged(default.get_config().to_dict(), saved))


def _merged(base: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` over ``base``, section by section."""
    out = dict(base)
    for key, value in saved.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both else value
    return out
