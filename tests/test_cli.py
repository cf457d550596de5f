"""The commands as a user meets them: each kind of bad input ends in one ``error: ...`` line naming what is
wrong and what to do, no traceback, and the documented exit code (2 usage/config, 1 failure)."""

from __future__ import annotations

import pathlib

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
        (["train", "--config", "demo", "--config.data.name=kaggle"], 2, "must be one of folder, ham10000"),
        (["evaluate", "--workdir", "/no/run"], 1, "is /no/run the --workdir of a training run"),
        (["predict", "--workdir", "/no/run", "x.jpg"], 1, "is /no/run the --workdir of a training run"),
        (["predict", "--workdir", "/no/run", "x.jpg", "--top_k", "0"], 2, "--top_k must be at least 1"),
        (["export", "--weights", "/no/weights"], 2, "nothing to do: give --pytorch FILE and/or --onnx FILE"),
        (["export", "--weights", "/no/weights", "--onnx", "x.onnx"], 1, "no caco-jax weights at"),
        (["convert", "--out", "x"], 2, "--pth FILE is required"),
        (["prepare-data", "--manual_dir", "/no/ham", "--data_dir", "/tmp/caco_cli_tfds"], 1, "/no/ham"),
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
