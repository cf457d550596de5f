"""A run's workdir (caco_jax.runs.workspace): its saved config reads back as saved, and a config saved
before a field existed reads back with the field's current default (the one place an old config is
upgraded)."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from caco_jax.errors import CacoError, RunDirError
from caco_jax.runs.workspace import load_config, save_config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import demo


def test_a_saved_config_reads_back_as_it_was_saved(tmp_path):
    config = demo.get_config()
    config.model.arch, config.data.augment.scale = "tiny", (0.5, 1.0)
    save_config(config, tmp_path)
    assert json.loads(load_config(tmp_path).to_json_best_effort()) == json.loads(config.to_json_best_effort())


def test_an_older_saved_config_takes_the_defaults_of_the_fields_it_lacks(tmp_path):
    config = demo.get_config()
    config.model.arch = "tiny"
    saved = json.loads(config.to_json_best_effort())
    del saved["evaluation"]["decision"], saved["data"]["holdout_source"], saved["data"]["offline"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = load_config(tmp_path)
    assert (loaded.evaluation.decision, loaded.data.holdout_source, loaded.data.offline.mode) == ("argmax", "", "none")
    assert loaded.model.arch == "tiny" and loaded.num_epochs == config.num_epochs  # what it saved stays


def test_a_workdir_without_a_readable_config_is_one_error(tmp_path):
    with pytest.raises(RunDirError, match="config.json not found: is .* the --workdir of a training run"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CacoError, match="is not valid JSON .*: the run's config is damaged"):
        load_config(tmp_path)
