"""The files beside a run's best weights (temperature, decision rule, reliability threshold, guard,
clinic prior) are checked against the checksums the weights' metadata records (issue 39).

Each case writes the files as training does (their own ``save`` functions, then ``record``), damages
one, and reads them as every command does (``caco_jax.evaluation.side_files``): no traceback, the
feature off with one warning line naming the file. No model is built, so each case takes milliseconds.
"""

from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import pytest

from caco_jax import files
from caco_jax.evaluation import calibration, decision, ood_score, selective, side_files

TEMPERATURE = 0.5996
RULE = decision.DecisionRule("logit_adjustment", (0.1, -0.2), tau=1.0, info={"temperature": TEMPERATURE})
READERS = {
    "calibration.json": side_files.temperature,
    "decision.json": side_files.rule,
    "selective.json": side_files.threshold,
    "ood.json": side_files.guard,
    "ood.npz": side_files.guard,
}


def best_dir(root: pathlib.Path, *, record: bool = True) -> pathlib.Path:
    """A weights folder's metadata and every side file training writes beside it."""
    d = root / "best"
    d.mkdir(parents=True)
    (d / files.WEIGHTS_META).write_text(json.dumps({"checksums": {}, "step": 3}))
    calibration.save(d, TEMPERATURE, fitted_on="validation")
    decision.save(d, RULE)
    selective.save(d, {"threshold": 0.7, "target_accuracy": 0.9})
    arrays = {"mean": np.arange(6, dtype=np.float32).reshape(2, 3), "precision": np.eye(3, dtype=np.float32)}
    ood_score.save(d, ood_score.Guard("mahalanobis", "pooled", 4.5, arrays, {"keep": 0.95}))
    if record:
        side_files.record(d)
    side_files._warned.clear()
    return d


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_undamaged_files_are_read_silently(tmp_path, caplog):
    d = best_dir(tmp_path)
    assert sorted(side_files.recorded(d) or {}) == sorted(READERS)
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        assert side_files.temperature(d) == pytest.approx(TEMPERATURE)
        assert side_files.rule(d) is not None and side_files.rule(d).offsets == RULE.offsets
        assert (side_files.threshold(d) or {})["threshold"] == 0.7
        guard = side_files.guard(d)
        assert guard is not None and guard.threshold == 4.5
        np.testing.assert_array_equal(guard.arrays["precision"], np.eye(3))
    assert warnings(caplog) == []


def _change_temperature(path: pathlib.Path) -> None:
    path.write_text(path.read_text().replace(f'"temperature": {TEMPERATURE}', '"temperature": 0.2996'))


def _garbage(path: pathlib.Path) -> None:
    path.write_bytes(b"garbage\n" if path.suffix == ".json" else np.random.default_rng(0).bytes(1000))


@pytest.mark.parametrize("name", sorted(READERS))
@pytest.mark.parametrize("damage", ["garbage", "deleted", "changed"])
def test_a_damaged_side_file_switches_its_feature_off_with_one_warning_line(tmp_path, caplog, name, damage):
    """Issue 39: a changed temperature was used silently, a damaged ood.npz was a BadZipFile traceback,
    garbage JSON a JSONDecodeError one."""
    d = best_dir(tmp_path)
    path = d / name
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        _garbage(path)
    elif name == "calibration.json":
        _change_temperature(path)
    elif name == "ood.npz":  # a valid archive with other numbers
        np.savez_compressed(path, mean=np.zeros((2, 3), np.float32), precision=2 * np.eye(3, dtype=np.float32))
    else:  # a changed number that still parses
        path.write_bytes(path.read_bytes().replace(b"0.7", b"0.2").replace(b"4.5", b"9.5").replace(b"0.1", b"0.4"))
    if damage != "deleted":
        assert files.crc(path) != (side_files.recorded(d) or {})[name]
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        assert READERS[name](d) is None
        assert READERS[name](d) is None  # read again (export reads the guard twice): still one line
    [line] = warnings(caplog)
    assert line.startswith(f"{path} is {'missing' if damage == 'deleted' else 'damaged'} (") and "; " in line
    others = [reader(d) for other, reader in READERS.items() if reader is not READERS[name]]
    assert all(value is not None for value in others)  # the other features stay on


def test_without_a_record_garbage_is_still_one_line_and_a_plain_absence_is_silent(tmp_path, caplog):
    """A run whose metadata records no side files (older, or restored after losing its metadata)."""
    d = best_dir(tmp_path, record=False)
    _garbage(d / "ood.npz")
    (d / "calibration.json").unlink()
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        assert side_files.guard(d) is None and side_files.temperature(d) is None
        assert side_files.threshold(d) is not None
    [line] = warnings(caplog)
    assert line.startswith(f"{d / 'ood.json'} cannot be read (") and "guard is off" in line
