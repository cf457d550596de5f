"""The commands as a user meets them: each kind of bad input ends in one ``error: ...`` line naming what is
wrong and what to do, no traceback, and the documented exit code (2 usage/config, 1 failure)."""

from __future__ import annotations

import pathlib
import sys

import pytest

from caco_jax.cli.main import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _user_error(err: str) -> None:
    assert err.startswith("error: ") and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv, code, says",
    [
        (["train", "--config", "demo", "--nope"], 2, "unrecognized arguments: --nope"),
        (["train"], 2, "the following arguments are required: --config"),
        (["train", "--config", "demoo"], 2, "did you mean 'demo'"),
        (["train", "--config", "missing_file.py"], 2, "config file missing_file.py not found"),
        (["train", "--config", "demo", "--config.batch_size=-3"], 2, "--config.batch_size=-3: must be >= 1"),
        (["train", "--config", "demo", "--config.model.attentoin=se"], 2, "did you mean 'model.attention'"),
        (["train", "--config", "demo", "--config.optimizer.learning_rate=fast"], 2, "learning_rate"),
        (["train", "--config", "caco", "--config.model.pretrained=/no/such.pth"], 2, "'imagenet' (fetched once"),
        (
            ["train", "--config", "caco", "--config.model.pretrained=", "--config.data.data_dir=/no/tfds", "--check"],
            2,
            "--config.data.data_dir=/no/tfds: no such folder",
        ),
        (["train", "--config", "demo", "--config.data.name=kaggle"], 2, "must be one of folder, ham10000"),
        (["evaluate", "--workdir", "/no/run"], 2, "is /no/run the --workdir of a training run"),
        (["predict", "--workdir", "/no/run", "x.jpg"], 2, "is /no/run the --workdir of a training run"),
        (["serve", "--workdir", "/no/run"], 2, "is /no/run the --workdir of a training run"),
        (["export", "--workdir", "/no/run", "--pytorch", "x.pth"], 2, "is /no/run the --workdir of a training run"),
        (["predict", "--workdir", "/no/run", "x.jpg", "--top_k", "0"], 2, "--top_k must be at least 1"),
        (["export", "--weights", "/no/weights"], 2, "nothing to do: give --pytorch FILE, --onnx FILE and/or --tflite"),
        (["export", "--weights", "/no/weights", "--onnx", "x.tflite"], 2, "--onnx x.tflite: the file name must end"),
        (["export", "--weights", "/no/w", "--onnx", "x.onnx", "--int8"], 2, "--int8 calibrates on the run's images"),
        (["predict", "--model", "/no/m.onnx", "x.jpg"], 2, "/no/m.onnx: no such file"),
        (["predict", "--model", "/no/m.pth", "x.jpg"], 2, "not an exported model (.onnx or .tflite"),
        (["export", "--weights", "/no/weights", "--onnx", "x.onnx"], 2, "no caco-jax weights at"),
        (["convert", "--out", "x"], 2, "--pth FILE is required"),
        (["prepare-data", "--manual_dir", "/no/ham", "--data_dir", "/tmp/caco_cli_tfds"], 2, "/no/ham: no such folder"),
        (["reproduce", "--seeds", "zero", "--dry_run"], 2, "expected comma-separated integers"),
        (["reproduce", "--preset", "cpu", "--dry_run"], 2, "--pretrained is required"),
        (["benchmark", "--steps", "0"], 2, "--steps must be >= 1"),
        (["benchmark", "--depthwise", "fast"], 2, "unknown 'fast'"),
    ],
)
def test_bad_input_is_one_error_line_with_its_exit_code(capsys, argv, code, says):
    got, _, err = _run(capsys, *argv)
    assert got == code, err
    _user_error(err)
    assert says in err


def test_debug_shows_the_traceback(capsys, monkeypatch):
    from caco_jax.errors import RunDirError

    with pytest.raises(RunDirError):
        main(["evaluate", "--workdir", "/no/run", "--debug"])
    monkeypatch.setenv("CACO_JAX_DEBUG", "1")
    with pytest.raises(RunDirError):
        main(["evaluate", "--workdir", "/no/run"])


def test_check_prints_the_config_and_changes_nothing(capsys, tmp_path):
    code, out, err = _run(
        capsys,
        "train",
        "--config",
        str(ROOT / "configs" / "demo.py"),
        "--check",
        "--workdir",
        str(tmp_path / "run"),
        "--config.num_epochs",
        "3",
    )
    assert code == 0, err
    assert "num_epochs: 3" in out and "config OK" in out
    assert not (tmp_path / "run").exists()


def test_every_flag_has_help(capsys):
    """Every option of every command says what it is for."""
    import importlib

    from caco_jax.cli import main as main_module
    from caco_jax.flags import parser

    for name, (module_name, _) in main_module.COMMANDS.items():
        module = importlib.import_module(f"caco_jax.cli.{module_name}")
        p = parser(f"caco-jax {name}", module.__doc__)
        module.add_arguments(p)
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"caco-jax {name} {action.option_strings} has no help"


def test_a_pretrained_file_that_is_not_a_pth_is_refused_before_any_data_is_read(capsys, tmp_path):
    notes = tmp_path / "weights.pth"
    notes.write_text("not a checkpoint")
    code, _, err = _run(
        capsys, "train", "--config", "caco", f"--config.model.pretrained={notes}", "--config.data.data_dir=/no/tfds"
    )
    assert code == 2, err
    _user_error(err)
    assert f"--config.model.pretrained={notes}: not a zip-format PyTorch checkpoint" in err
    assert not (tmp_path / "runs").exists()


def test_convert_of_a_file_that_is_not_a_pth_is_one_error_line(capsys, tmp_path):
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    code, _, err = _run(capsys, "convert", "--pth", str(notes), "--out", str(tmp_path / "out"))
    assert code == 2, err  # bad input, as a bad flag (issue 39)
    _user_error(err)
    assert f"{notes} is not a PyTorch checkpoint: give the .pth file torch.save wrote" in err
    assert "re-save" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_convert_of_a_legacy_pth_says_how_to_save_it_again(capsys, tmp_path):
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(b"\x80\x02}q\x00.")  # a pickle, as torch.save wrote before torch 1.6
    code, _, err = _run(capsys, "convert", "--pth", str(legacy), "--out", str(tmp_path / "out"))
    assert code == 1 and "legacy (torch<1.6) format; re-save it with torch>=1.6" in err, err


@pytest.mark.parametrize(
    ("flag", "missing", "extra"),
    [
        ("--onnx", "torch", "onnx"),
        ("--onnx", "onnxscript", "onnx"),
        ("--pytorch", "torch", "torch"),
        ("--tflite", "litert_torch", "litert"),
    ],
)
def test_export_without_its_extra_says_which_to_install(capsys, monkeypatch, tmp_path, flag, missing, extra):
    monkeypatch.setitem(sys.modules, missing, None)  # what an environment without the package gives import
    code, _, err = _run(capsys, "export", "--weights", "/no/weights", flag, str(tmp_path / "model"))
    assert code == 2, err
    _user_error(err)
    assert f"{flag} needs {missing}, which is not installed: pip install 'caco-jax[{extra}]'" in err
    assert not (tmp_path / "model").exists()


def test_a_failed_start_leaves_no_config_that_blocks_the_corrected_rerun(tmp_path):
    """The data was not found: nothing was started, so a rerun with other settings is a fresh start."""
    from caco_jax.configs import demo
    from caco_jax.data.errors import DataNotBuiltError
    from caco_jax.errors import EXIT_USAGE
    from caco_jax.training.loop import train_and_evaluate
    from caco_jax.training.resume import check_resume_config

    config = demo.get_config()
    config.data.synthetic_images, config.data.data_dir = 0, str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotBuiltError) as err:
        train_and_evaluate(config, tmp_path / "run")
    assert err.value.exit_code == EXIT_USAGE
    assert not (tmp_path / "run" / "config.json").exists()
    # a config.json without any checkpoint (as runs before this change left) does not block either
    (tmp_path / "run" / "config.json").write_text(config.to_json())
    config.data.image_size = 48
    check_resume_config(tmp_path / "run", config)
    (tmp_path / "run" / "checkpoints" / "12").mkdir(parents=True)
    with pytest.raises(ValueError, match="data.image_size"):
        check_resume_config(tmp_path / "run", config)


def test_the_command_list_names_every_export_format(capsys):
    """Issue 39: `caco-jax --help` left --tflite out of export's line."""
    from caco_jax.cli.main import main

    assert main(["--help"]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("export")]
    assert all(word in line for word in ("PyTorch", "ONNX", "LiteRT (--tflite)")), line


def test_export_names_every_file_it_writes_beside_the_model(tmp_path, monkeypatch):
    """Issue 39: the message named the model and its metadata but not the guard's arrays (.ood.npz)."""
    import numpy as np

    from caco_jax.evaluation import ood_score
    from caco_jax.interop import artifact, deploy, export_onnx

    ood_score.save(tmp_path, ood_score.Guard("mahalanobis", "pooled", 4.5, {"m": np.ones(3)}, {}))
    run = artifact.describe_run(tmp_path, class_names=["a", "b"], image_size=(32, 32))
    monkeypatch.setattr(export_onnx, "export_onnx", lambda _model, path, **_kw: pathlib.Path(path).write_bytes(b"x"))
    lines: list[str] = []
    (path,) = deploy.export_models(None, run, onnx=tmp_path / "m.onnx", log=lines.append)
    assert lines == [f"wrote {path} (0.0 MB) and m.onnx.json and m.onnx.ood.npz"]
    assert artifact.guard_arrays_path(path).is_file() and artifact.metadata_path(path).is_file()
