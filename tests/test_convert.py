"""torchvision state_dict <-> NNX conversion (caco_jax.interop.convert): accounting, errors, export.

Most tests convert into full-size models built from ``nnx.eval_shape`` and filled with a
sentinel value (no XLA compile): after a conversion, an array still holding the
sentinel was left at initialisation, anything else was loaded.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest
from flax import nnx

import jitted
import variants
from caco_jax.interop.convert import ConversionError, export_state_dict, load_torchvision
from caco_jax.interop.key_maps import key_map
from caco_jax.interop.torch_io import load_state_dict
from caco_jax.models import ATTENTION_BLOCKS, MobileNetV3, create_model
from caco_jax.runs.weights import model_weights

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.torch

SENTINEL = 7.0
HEAD_PATHS = {"head/kernel", "head/bias", "classifier/kernel", "classifier/bias"}


def sentinel_model(attention: str = "se", num_classes: int = 7, arch: str = "small") -> MobileNetV3:
    abstract = nnx.eval_shape(
        lambda: MobileNetV3(arch=arch, attention=attention, num_classes=num_classes, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.full(s.shape, SENTINEL, s.dtype), state))


@functools.cache
def random_state_dict(num_classes: int = 7, seed: int = 0, arch: str = "small") -> dict[str, np.ndarray]:
    """torchvision's keys and shapes with random values (positive variances), as numpy.

    Cached: callers must not modify it (they build new dicts from it)."""
    tv = getattr(torchvision.models, f"mobilenet_v3_{arch}")(num_classes=num_classes)
    rng = np.random.default_rng(seed)
    out = {}
    for key, value in tv.state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = value.numpy()
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, tuple(value.shape)).astype(np.float32)
        else:
            out[key] = rng.normal(size=tuple(value.shape)).astype(np.float32)
    return out


def flat(model) -> dict[str, np.ndarray]:
    return model_weights(model)


def _path(path) -> str:
    return "/".join(map(str, path))


@pytest.fixture(scope="module")
def full_sd() -> dict[str, np.ndarray]:
    return random_state_dict(7, seed=0)


@pytest.fixture(scope="module")
def backbone_sd(imagenet_backbone_pth) -> dict[str, np.ndarray]:
    return load_state_dict(imagenet_backbone_pth)


# --------------------------------------------------------------------------- key accounting


def _has_se_mlp(attention: str) -> bool:
    block = ATTENTION_BLOCKS[attention]
    return block is not None and block.se_mlp_path is not None


def _new_parts(attention: str) -> dict[str, str]:
    block = ATTENTION_BLOCKS[attention]
    return {} if block is None else block.new_parts


@pytest.mark.parametrize("attention", variants.blocks())
@pytest.mark.parametrize("arch", ["small", "large"])
def test_every_torch_key_is_mapped_or_skipped(arch, attention):
    sd = random_state_dict(7, seed=1, arch=arch)
    model = sentinel_model(attention, 7, arch)
    mapping, skipped = key_map(model)
    counters = {k for k in sd if k.endswith("num_batches_tracked")}
    assert set(mapping) | set(skipped) | counters == set(sd)
    assert not set(mapping) & set(skipped)
    se_keys = {k for k in sd if re.search(r"\.fc[12]\.(weight|bias)$", k)}
    assert se_keys  # both archs have SE blocks
    assert set(skipped) == (set() if _has_se_mlp(attention) else se_keys)
    # Targets are distinct arrays of the right shape.
    weights = flat(model)
    targets = [_path(p) for p, _ in mapping.values()]
    assert len(set(targets)) == len(targets)
    for key, (path, fn) in mapping.items():
        assert fn(sd[key]).shape == weights[_path(path)].shape, key

    report = load_torchvision(model, sd)
    assert set(report.loaded) | set(report.skipped) == set(sd)
    assert not set(report.loaded) & set(report.skipped)
    assert all(report.skipped.values())  # every skip has a reason
    after = flat(model)
    for key in report.loaded:
        path, fn = mapping[key]
        np.testing.assert_array_equal(after[_path(path)], fn(sd[key]), err_msg=key)
    # What stayed at initialisation is exactly the block's declared new parts (with the default
    # preserving init the gains are among them), each in every attention slot.
    left = {k for k, v in after.items() if np.all(v == SENTINEL)}
    assert left == set(report.initialised)
    declared = {
        k for k in after for part in _new_parts(attention) if re.search(rf"/attention/{re.escape(part)}(/|$)", k)
    }
    assert left == declared, sorted(left ^ declared)[:5]
    assert (
        report.loaded_params + sum(after[k].size for k in left if not k.endswith(("mean", "var")))
        == report.total_params
    )


def test_loaded_values_land_where_torchvision_puts_them(full_sd):
    # Spot checks written from torchvision's layout, independent of key_map.
    model = sentinel_model("se")
    load_torchvision(model, full_sd)
    w = flat(model)
    np.testing.assert_array_equal(w["stem/conv/kernel"], full_sd["features.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(w["stem/bn/var"], full_sd["features.0.1.running_var"])
    # block 1 (16 -> 16, stride 2): no expand conv, so block.0 is the depthwise conv
    np.testing.assert_array_equal(
        w["blocks/0/depthwise/conv/kernel"], full_sd["features.1.block.0.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        w["blocks/0/attention/mlp/fc2/kernel"], full_sd["features.1.block.1.fc2.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(w["blocks/0/project/bn/scale"], full_sd["features.1.block.2.1.weight"])
    np.testing.assert_array_equal(
        w["blocks/3/expand/conv/kernel"], full_sd["features.4.block.0.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(w["last_conv/bn/mean"], full_sd["features.12.1.running_mean"])
    np.testing.assert_array_equal(w["head/kernel"], full_sd["classifier.0.weight"].T)
    np.testing.assert_array_equal(w["classifier/bias"], full_sd["classifier.3.bias"])
    assert w["blocks/0/depthwise/conv/kernel"].shape == (3, 3, 1, 16)  # depthwise HWIO


# --------------------------------------------------------------------------- errors


def test_unknown_key_raises_naming_it(full_sd):
    sd = dict(full_sd, **{"features.99.block.0.weird": np.zeros(3, np.float32)})
    model = sentinel_model("se")
    with pytest.raises(ConversionError, match=re.escape("features.99.block.0.weird")):
        load_torchvision(model, sd)
    assert all(np.all(v == SENTINEL) for v in flat(model).values())  # nothing half-loaded
    # A DataParallel prefix makes every key unknown; the message says what to do.
    with pytest.raises(ConversionError, match="module."):
        load_torchvision(sentinel_model("se"), {f"module.{k}": v for k, v in full_sd.items()})


def test_shape_mismatch_raises_naming_key_and_shapes(full_sd):
    key = "features.4.block.1.0.weight"
    sd = dict(full_sd, **{key: np.zeros((96, 1, 3, 3), np.float32)})  # 5x5 depthwise in torchvision
    model = sentinel_model("caco")
    with pytest.raises(ConversionError, match=re.escape(key)) as err:
        load_torchvision(model, sd)
    assert "(96, 1, 3, 3)" in str(err.value) and "(5, 5, 1, 96)" in str(err.value)
    assert all(np.all(v == SENTINEL) for v in flat(model).values())
    # A wrong head width (not the class count) is a mismatch too.
    sd = dict(full_sd, **{"classifier.0.weight": np.zeros((1024, 960), np.float32)})
    with pytest.raises(ConversionError, match=re.escape("classifier.0.weight")):
        load_torchvision(sentinel_model("se"), sd)


@pytest.mark.parametrize(
    "key", ["features.4.block.1.1.running_var", "features.0.0.weight", "features.9.block.2.fc1.bias"]
)
def test_missing_backbone_tensor_raises_naming_it(full_sd, key):
    sd = {k: v for k, v in full_sd.items() if k != key}
    with pytest.raises(ConversionError, match=re.escape(key)):
        load_torchvision(sentinel_model("seco"), sd)
    assert issubclass(ConversionError, ValueError)


# --------------------------------------------------------------------------- the real backbone


@pytest.mark.real_data
@pytest.mark.parametrize("attention", variants.blocks())
def test_real_backbone_converts_for_every_variant(imagenet_backbone_pth, backbone_sd, attention):
    model = sentinel_model(attention)
    report = load_torchvision(model, imagenet_backbone_pth)  # from the path: no torch involved
    w = flat(model)
    se_keys = [k for k in backbone_sd if ".fc1." in k or ".fc2." in k]
    se_params = sum(backbone_sd[k].size for k in se_keys)
    expected = 927_008 - (0 if _has_se_mlp(attention) else se_params)  # README: 927,008
    assert report.loaded_params == expected
    # head and classifier left at initialisation, and the report says why
    for p in HEAD_PATHS:
        assert np.all(w[p] == SENTINEL), p
        assert "backbone-only" in report.initialised[p]
    summary = report.summary()
    assert "left at initialisation: backbone-only checkpoint" in summary
    assert f"{expected:,}" in summary
    # every tensor in the file is accounted for
    assert set(report.loaded) | set(report.skipped) == set(backbone_sd)
    if not _has_se_mlp(attention):
        assert set(se_keys) <= set(report.skipped)
        assert "no SE-shaped MLP" in summary
    # the new parts are left at initialisation with the reasons the block declares
    assert set(_new_parts(attention).values()) == set(report.initialised.values()) - {
        report.initialised[p] for p in HEAD_PATHS
    }
    # everything else carries the file's values
    mapping, _ = key_map(model)
    for key in report.loaded:
        path, fn = mapping[key]
        np.testing.assert_array_equal(w[_path(path)], fn(backbone_sd[key]), err_msg=key)
    untouched = {k for k, v in w.items() if np.all(v == SENTINEL)}
    assert untouched == set(report.initialised)


@pytest.mark.real_data
@pytest.mark.parametrize("attention", variants.with_se_mlp())
def test_se_weights_land_where_the_block_says(backbone_sd, attention):
    where = "/".join(ATTENTION_BLOCKS[attention].se_mlp_path)
    model = sentinel_model(attention)
    load_torchvision(model, backbone_sd)
    w = flat(model)
    n = 0
    for key, value in backbone_sd.items():
        m = re.fullmatch(r"features\.(\d+)\.block\.\d+\.(fc[12])\.(weight|bias)", key)
        if not m:
            continue
        block, fc, kind = int(m.group(1)) - 1, m.group(2), m.group(3)
        target = w[f"blocks/{block}/attention/{where}/{fc}/{'kernel' if kind == 'weight' else 'bias'}"]
        np.testing.assert_array_equal(target, value[:, :, 0, 0].T if kind == "weight" else value, err_msg=key)
        n += 1
    assert n == 9 * 4  # nine SE blocks in mobilenet_v3_small, fc1/fc2 weight/bias each


def test_1000_class_checkpoint_into_7_class_model():
    sd = random_state_dict(1000, seed=2)
    model = sentinel_model("caco", num_classes=7)
    report = load_torchvision(model, sd)
    w = flat(model)
    for key in ("classifier.3.weight", "classifier.3.bias"):
        assert key not in report.loaded
        assert "7 classes" in report.skipped[key] and "1000" in report.skipped[key]
    assert {"classifier.0.weight", "classifier.0.bias"} <= set(report.loaded)
    np.testing.assert_array_equal(w["head/kernel"], sd["classifier.0.weight"].T)  # the 576 -> 1024 layer
    np.testing.assert_array_equal(w["head/bias"], sd["classifier.0.bias"])
    assert np.all(w["classifier/kernel"] == SENTINEL) and w["classifier/kernel"].shape == (1024, 7)
    assert "head/kernel" not in report.initialised
    assert "new layer for the new label set" in report.initialised["classifier/kernel"]
    assert "last layer has 7 classes, checkpoint 1000" in report.summary()


# --------------------------------------------------------------------------- export


def test_export_round_trip_through_torchvision():
    # bn_momentum 0.5: two training-mode forwards take the running statistics most of the
    # way to the batch statistics, so evaluation mode is normalised and values are O(1).
    model = create_model(arch="small", attention="se", num_classes=7, dropout=0.0, seed=3, bn_momentum=0.5)
    x = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype(np.float32)
    model.train()
    for shift in (0.0, 0.2):  # BN statistics away from (0, 1)
        jitted.logits(model, x + shift)
    model.eval()
    ours, feats = map(np.asarray, jitted.logits_and_features(model, x))

    sd = export_state_dict(model)
    tm = torchvision.models.mobilenet_v3_small(num_classes=7)
    result = tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert {k for k in sd if k.endswith("num_batches_tracked")}  # torchvision's buffers are all there
    tm.eval()
    stem_var = tm.features[0][1].running_var.numpy()
    assert not np.allclose(stem_var, 1.0, atol=1e-3)  # the statistics that went across are non-trivial
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        theirs = tm(xt).numpy()
        theirs_feats = torch.nn.functional.adaptive_avg_pool2d(tm.features(xt), 1).flatten(1).numpy()
    # The pooled features are O(1); the logits are ~3e-3 (two dense layers at their
    # 0.01-std init), so they are compared relative to their size. Measured: features
    # 4.5e-8 max abs, logits 1.4e-9 (5e-7 of the largest logit).
    np.testing.assert_allclose(feats, theirs_feats, rtol=0, atol=1e-5)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    assert np.abs(theirs_feats).max() > 0.1

    # ...and back: the exported dict converts into an identical model.
    back = sentinel_model("se")
    report = load_torchvision(back, sd)
    assert report.initialised == {}
    a, b = flat(model), flat(back)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_export_refuses_the_tiny_arch():
    with pytest.raises(ValueError, match="tiny"):
        export_state_dict(sentinel_model("se", arch="tiny"))
