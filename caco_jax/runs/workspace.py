"""A run's workdir: the config it was trained with (``config.json``)."""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections

from caco_jax.errors import CacoError, RunDirError


def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """Writes ``workdir/config.json`` (what evaluate / predict / serve rebuild the model from)."""
    path = workdir / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)
    return path


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{path} not found: is {workdir} the --workdir of a training run (caco-jax train)?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise CacoError(f"{path} is not valid JSON ({err}): the run's config is damaged") from err
