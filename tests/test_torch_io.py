"""Reading torch.save files without torch (caco_jax.interop.torch_io), and the conversion script.

torch itself is used here only as the reference: what ``torch.load`` returns is what
``load_state_dict`` must return.
"""

from __future__ import annotations

import importlib.util
import pathlib
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from caco_jax.interop.convert import load_torchvision
from caco_jax.interop.torch_io import load_state_dict, save_state_dict
from caco_jax.models import MobileNetV3, create_model
from caco_jax.runs.loading import load_pretrained, read_weights
from caco_jax.runs.weights import model_weights

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _assert_same(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)  # same keys, same order
    for key, ref in theirs.items():
        ref = ref.numpy()
        got = ours[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == ref.dtype, key
        assert got.shape == ref.shape, key
        np.testing.assert_array_equal(got, ref, err_msg=key)


# --------------------------------------------------------------------------- reading


@pytest.mark.real_data
def test_real_backbone_file_equals_torch_load(imagenet_backbone_pth):
    ours = load_state_dict(imagenet_backbone_pth)
    theirs = torch.load(imagenet_backbone_pth, map_location="cpu", weights_only=True)
    assert len(theirs) > 100
    _assert_same(ours, theirs)
    assert ours["features.0.1.num_batches_tracked"].dtype == np.int64  # not only floats
    assert not any(k.startswith("classifier.") for k in ours)  # backbone-only, as the README says


def test_dtypes_views_and_scalars_round_trip(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {
        "transposed": base.t(),  # non-contiguous strides into a shared storage
        "slice": base[1:3, 2:],  # storage offset
        "base": base,
        "scalar": torch.tensor(3.5),
        "counter": torch.tensor(7),  # int64 scalar, like num_batches_tracked
        "half": torch.randn(3).half(),
        "double": torch.randn(2, 2, dtype=torch.float64),
        "int32": torch.arange(3, dtype=torch.int32),
        "uint8": torch.arange(5, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "mixed.pth"
    torch.save(sd, path)
    _assert_same(load_state_dict(path), torch.load(path, weights_only=True))


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"w": torch.ones(2, 3)}}, path)
    out = load_state_dict(path)
    assert list(out) == ["w"] and out["w"].shape == (2, 3)


def test_missing_file_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict(missing)


def test_non_zip_file_raises_value_error_naming_the_path(tmp_path):
    path = tmp_path / "not_a_checkpoint.pth"
    path.write_text("hello, I am not a zip archive\n")
    with pytest.raises(ValueError, match=str(path)):
        load_state_dict(path)
    legacy = tmp_path / "legacy.pth"  # torch < 1.6 format: a bare pickle stream
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=str(legacy)):
        load_state_dict(legacy)


def test_non_tensor_objects_raise_naming_the_path(tmp_path):
    with_string = tmp_path / "with_string.pth"
    torch.save({"w": torch.ones(2), "note": "trained on Tuesday"}, with_string)
    with pytest.raises(ValueError, match=str(with_string)):
        load_state_dict(with_string)

    with_module = tmp_path / "with_module.pth"
    torch.save({"layer": torch.nn.Linear(2, 2)}, with_module)  # a pickled class: refused, not run
    with pytest.raises(pickle.UnpicklingError, match="torch.nn.modules.linear.Linear") as err:
        load_state_dict(with_module)
    assert str(with_module) in str(err.value)

    bf16 = tmp_path / "bf16.pth"
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, bf16)
    with pytest.raises(pickle.UnpicklingError, match="BFloat16Storage"):
        load_state_dict(bf16)

    bare = tmp_path / "bare_tensor.pth"
    torch.save(torch.ones(3), bare)  # a tensor, not a dict of tensors
    with pytest.raises(ValueError, match="state_dict"):
        load_state_dict(bare)


def test_save_state_dict_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sd = {
        "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "a.bias": rng.normal(size=3).astype(np.float32),
        "bn.num_batches_tracked": np.array(5, np.int64),
        "t": np.asfortranarray(rng.normal(size=(2, 5)).astype(np.float32)),
    }
    path = tmp_path / "out.pth"
    save_state_dict(sd, path)
    theirs = torch.load(path, weights_only=True)
    assert list(theirs) == list(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(theirs[k].numpy(), v)
    _assert_same(load_state_dict(path), theirs)


# --------------------------------------------------------------------------- the conversion script


def _script():
    spec = importlib.util.spec_from_file_location("convert_torchvision", ROOT / "scripts" / "convert_torchvision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blank(attention: str) -> MobileNetV3:
    """A fresh full-size model holding NaN everywhere (so every array must be overwritten)."""
    abstract = nnx.eval_shape(lambda: MobileNetV3(arch="small", attention=attention, num_classes=7, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), state))


@pytest.mark.real_data
@pytest.mark.slow
def test_convert_script_end_to_end(imagenet_backbone_pth, tmp_path, capsys):
    out = tmp_path / "caco_imagenet"
    rc = _script().main(
        ["--pth", str(imagenet_backbone_pth), "--attention", "caco", "--num_classes", "7", "--out", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "left at initialisation" in printed and "wrote caco-jax weights" in printed

    # The reference: the same conversion in process (seed 0, the script's default).
    reference = create_model(attention="caco", num_classes=7, seed=0)
    load_torchvision(reference, imagenet_backbone_pth)
    expected = model_weights(reference)

    fresh = _blank("caco")
    message = load_pretrained(fresh, out)
    assert str(imagenet_backbone_pth) in message
    got = model_weights(fresh)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # The real weights are there (not only the initialisation).
    torch_sd = load_state_dict(imagenet_backbone_pth)
    np.testing.assert_array_equal(got["stem/conv/kernel"], torch_sd["features.0.0.weight"].transpose(2, 3, 1, 0))
    _, meta = read_weights(out)
    assert meta["attention"] == "caco" and meta["num_classes"] == 7
    assert meta["report"]["loaded_params"] == 927_008
    assert (out / "conversion_report.json").is_file()
