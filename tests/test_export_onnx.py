"""ONNX export (caco_jax.interop.export_onnx) of every variant, run by onnxruntime against caco-jax.

The models are tests/whole_model.py's (random, every part mattering, converted into
caco-jax); the ONNX file comes from caco-jax's model (through its PyTorch reference)
and must give caco-jax's evaluation logits, at the batch size it was exported with and
at others (the batch dimension is dynamic).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e '.[torch,onnx]'")
pytest.importorskip(
    "onnxscript", reason="onnxscript (torch.onnx's exporter) is not installed: pip install -e '.[torch,onnx]'"
)

import whole_model as wm  # noqa: E402
from caco_jax.data.constancy import OFF  # noqa: E402
from caco_jax.interop.export_onnx import (  # noqa: E402
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    onnx_session,
    run_onnx,
)

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-4  # the bound for evaluation logits


# Every variant (caco-plain is the caco graph without its gains: tests/test_reference.py covers it).
VARIANTS = [name for name in wm.CASES if name != "caco-plain"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """name -> ONNX file, each exported once (about 5-10 s of CPU each)."""
    folder, paths = tmp_path_factory.mktemp("onnx"), {}

    def get(name: str) -> pathlib.Path:
        if name not in paths:
            paths[name] = export_onnx(wm.case(name)["model"], folder / f"{name}.onnx", image_size=(wm.HEIGHT, wm.WIDTH))
        return paths[name]

    return get


# The export route is the same for every variant (each variant's PyTorch twin is checked in
# test_reference.py): se, caco and cbam cover SE, coordinate attention and the spatial conv, so
# these three built-ins, which add no operation of their own, run only with -m heavy. Every other
# registered block runs by default.
_COVERED = ("seco", "eca", "none")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.heavy) if n in _COVERED else n for n in VARIANTS])
def test_onnx_runtime_matches_caco_jax(name, exported):
    c = wm.case(name)
    session = onnx_session(exported(name))
    (inp,), outs = session.get_inputs(), session.get_outputs()
    assert (inp.name, [o.name for o in outs]) == (INPUT_NAME, [OUTPUT_NAME, "pooled", "hidden"])
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, wm.HEIGHT, wm.WIDTH]  # dynamic batch, NCHW
    expected = c["eval_logits"]
    assert np.abs(expected).max() > 0.1 and expected.std(axis=0).mean() > 0.01  # input-dependent, not vacuous
    x = wm.images()
    for batch in (wm.BATCH, 1, 3):
        got = run_onnx(session, x[:batch])
        assert got.shape == (batch, wm.NUM_CLASSES)
        np.testing.assert_allclose(got, expected[:batch], rtol=0, atol=TOL, err_msg=f"batch {batch}")
    # the guard's feature layers: the reference's pooled backbone output and the head's hidden activation
    pooled, hidden = session.run(["pooled", "hidden"], {INPUT_NAME: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
    ref = c["ref"]
    with torch.no_grad():
        ref_pooled = torch.flatten(ref.avgpool(ref.features(wm.nchw(x))), 1)
        ref_hidden = ref.classifier[:-1](ref_pooled)
    np.testing.assert_allclose(pooled, ref_pooled.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(hidden, ref_hidden.numpy(), rtol=0, atol=TOL)
    assert pooled.shape == (wm.BATCH, 576) and hidden.shape == (wm.BATCH, 1024)


def test_export_script_writes_pytorch_and_onnx(tmp_path, monkeypatch):
    """scripts/export.py from a caco-jax weights directory: the .pth loads strictly into the reference
    and gives caco-jax's logits; the ONNX export gets the model and the size (export_onnx itself is
    tested above)."""
    import torch

    import caco_jax.interop.export_onnx
    from caco_jax.interop.torch_reference import reference_model
    from caco_jax.runs.weights import save_weights

    c = wm.case("caco")
    save_weights(c["model"], tmp_path / "w", metadata={"source": "test"})
    spec = importlib.util.spec_from_file_location("export_script", ROOT / "scripts" / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []

    def fake_export(model, path, **kw):
        calls.append((model, path, kw))
        pathlib.Path(path).write_bytes(b"onnx")

    monkeypatch.setattr(caco_jax.interop.export_onnx, "export_onnx", fake_export)
    script.main(
        [
            "--weights",
            str(tmp_path / "w"),
            "--pytorch",
            str(tmp_path / "m.pth"),
            "--onnx",
            str(tmp_path / "m.onnx"),
            "--image_size",
            str(wm.HEIGHT),
            str(wm.WIDTH),
        ]
    )
    ref = reference_model("small", "caco", num_classes=7, attention_init="preserve")
    ref.load_state_dict(torch.load(tmp_path / "m.pth"), strict=True)
    with torch.no_grad():
        theirs = ref.eval()(wm.nchw(wm.images())).numpy()
    np.testing.assert_allclose(theirs, c["eval_logits"], rtol=0, atol=TOL)
    ((model, path, kw),) = calls
    assert (model.attention_name, model.attention_init, path) == ("caco", "preserve", tmp_path / "m.onnx")
    assert kw == {"image_size": (wm.HEIGHT, wm.WIDTH), "color": OFF}  # no run: no colour constancy
    meta = json.loads((tmp_path / "m.onnx.json").read_text())  # the metadata beside it (test_deploy.py: its content)
    assert (meta["image_size"], meta["input"], meta["precision"]) == (
        [wm.HEIGHT, wm.WIDTH],
        {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32"},
        "float32",
    )
