"""The package as users install it: every subpackage listed, configs installed, the caco-jax command."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "caco_jax").rglob("__init__.py")}
    found.add("caco_jax.configs")  # installed from configs/ (package-dir)
    assert listed == found


def test_the_command_lists_its_commands_and_refuses_unknown_ones(capsys):
    from caco_jax.cli.main import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_non_editable_install_finds_its_configs_from_any_directory(tmp_path):
    """A wheel installed into a fresh folder: `caco-jax train --config caco --check` works from elsewhere."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("caco_jax-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import caco_jax, sys; from caco_jax.cli.main import main; "
            "print(caco_jax.__file__); sys.exit(main(['train', '--config', 'caco', '--check', "
            "'--config.model.pretrained=', '--config.data.data_dir=.']))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the checkout
    assert "config OK" in run.stdout


def test_library_modules_and_functions_stay_small():
    """No library file over 400 lines and no function over 80 (the architecture's rule of thumb)."""
    import ast

    for path in sorted((ROOT / "caco_jax").rglob("*.py")):
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {length} lines"
