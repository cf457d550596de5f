"""caco_jax.interop.torch_reference: the PyTorch twin of every variant, conversion both ways, whole-model parity.

* The reference of every variant and init has caco-jax's parameters, one for one (names
  by caco_jax.interop.key_maps.reference_key_map, shapes, count), and ``se``'s is torchvision's
  ``mobilenet_v3_small`` / ``_large`` itself.
* Conversion both ways is exact for every variant and init: a random reference
  state_dict -> caco-jax (a model of NaNs: anything missed would poison it) -> exported
  state_dict equal to the original, which loads with ``strict=True``.
* Whole-model parity, fp32, for every variant (tests/whole_model.py; batch 4 at 32x48):
  evaluation logits, one training-mode forward (logits and every BatchNorm's running
  statistics), and cross-entropy gradients of every parameter.

The random models' BatchNorm statistics are those of a calibration batch, perturbed (see
whole_model.random_reference), so evaluation-mode logits depend on the input; such a
network amplifies rounding (PyTorch's own ONNX export differs from PyTorch by up to 4e-5
on caco-plain).

Measured (fp32, 2-core CPU), worst over the seven cases: eval logits 2.3e-5 max abs
(caco-plain, logits up to 2.65; 1.4e-5 or less elsewhere), train-mode logits 1.7e-6,
running statistics 2.4e-7, gradients 2.5e-5 of the largest gradient entry (cbam).
"""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
from flax import nnx

import variants
from caco_jax.interop.convert import ConversionError, export_state_dict, load_torchvision
from caco_jax.interop.key_maps import reference_key_map
from caco_jax.models import MobileNetV3, count_params
from caco_jax.models.attention import layout

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
reference = pytest.importorskip("caco_jax.interop.torch_reference")
import whole_model as wm  # noqa: E402  (needs torch)

pytestmark = pytest.mark.torch

TOL = 1e-4  # the bound for logits
STATS_TOL = 1e-6  # as test_parity.py: 1e-4 would miss a biased variance stored for the unbiased one
# Gradients, relative to the model's largest gradient entry: measured up to 2.5e-5 (cbam, the
# first depthwise kernel; against a float64 PyTorch run caco-jax's tap-sum kernel gradient is
# 2.6e-5 off where PyTorch float32's is 7.5e-6). A real mistake (a wrong transform, a missing
# gain) is 1e-2 or more.
GRAD_TOL = 5e-5

# Every registered variant; every init for those with gains (each init lays their gains out differently).
VARIANT_INITS = [(a, i) for a in variants.blocks() for i in variants.inits(a)]


def _abstract(arch: str, attention: str, init: str = "preserve", num_classes: int = 7) -> MobileNetV3:
    return nnx.eval_shape(
        lambda: MobileNetV3(
            arch=arch, attention=attention, attention_init=init, num_classes=num_classes, rngs=nnx.Rngs(0)
        )
    )


def _node(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _get(tree, path):
    return np.asarray(_node(tree, path))


# --------------------------------------------------------------------------- structure (no compile)


ARCH_VARIANT_INITS = [("small", a, i) for a, i in VARIANT_INITS] + [("large", a, "preserve") for a in variants.blocks()]


@pytest.mark.parametrize(
    ("arch", "attention", "init"), ARCH_VARIANT_INITS, ids=[f"{arch}-{a}-{i}" for arch, a, i in ARCH_VARIANT_INITS]
)
def test_reference_has_caco_jax_parameters_one_for_one(arch, attention, init):
    model = _abstract(arch, attention, init)
    ref = reference.reference_model(arch, attention, attention_init=init)
    sd = ref.state_dict()
    mapping = reference_key_map(model)
    assert set(mapping) == {k for k in sd if not k.endswith("num_batches_tracked")}
    pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    for key, (path, fn) in mapping.items():
        assert fn(sd[key].numpy()).shape == _node(pure, path).shape, key
    assert len({p for p, _ in mapping.values()}) == len(mapping) == len(jax.tree.leaves(pure))
    assert count_params(model) == sum(p.numel() for p in ref.parameters())
    gains = {"/".join(map(str, mapping[k][0][3:])) for k in mapping if k.endswith("gain")}  # inside the block
    assert gains == {p for p in layout(attention, init) if p.endswith("gain")}
    assert all(".block." in k for k in mapping if k.endswith("gain"))


@pytest.mark.parametrize("arch", ["small", "large"])
def test_se_reference_is_torchvision_itself(arch):
    ref = reference.reference_model(arch, "se", num_classes=7)
    tv = getattr(torchvision.models, f"mobilenet_v3_{arch}")(num_classes=7)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {
        k: tuple(v.shape) for k, v in tv.state_dict().items()
    }
    assert [type(m) for m in ref.modules()] == [type(m) for m in tv.modules()]
    assert set(reference_key_map(_abstract(arch, "se"))) == {
        k for k in tv.state_dict() if not k.endswith("num_batches_tracked")
    }


def test_reference_names_follow_caco_jax():
    keys = set(reference.reference_model("small", "caco").state_dict())
    for suffix in (
        "channel.mlp.fc1.weight",
        "channel.max_gain",
        "coord.conv1.bias",
        "coord.bn1.running_var",
        "coord.conv_h.weight",
        "coord.conv_w.bias",
        "coord.gain",
    ):
        assert f"features.1.block.1.{suffix}" in keys, suffix
    keys = set(reference.reference_model("small", "cbam", attention_init="plain").state_dict())
    assert "features.4.block.2.spatial.conv.weight" in keys and "features.4.block.2.spatial.bn.weight" in keys
    assert not any("gain" in k for k in keys)
    assert "features.1.block.1.se.fc1.weight" in reference.reference_model("small", "seco").state_dict()
    assert "features.1.block.1.kernel" in reference.reference_model("small", "eca").state_dict()


def test_reference_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="tiny"):
        reference.reference_model("tiny", "caco")
    with pytest.raises(ValueError, match="squeezy"):
        reference.reference_model("small", "squeezy")
    with pytest.raises(ValueError, match="sideways"):
        reference.reference_model("small", "caco", attention_init="sideways")


# --------------------------------------------------------------------------- conversion both ways


@pytest.mark.parametrize(("attention", "init"), VARIANT_INITS, ids=[f"{a}-{i}" for a, i in VARIANT_INITS])
def test_conversion_both_ways_is_exact(attention, init):
    ref = wm.random_reference(attention, init, seed=5)
    sd = ref.state_dict()
    model = wm.nan_model(attention, init, "auto")
    report = load_torchvision(model, sd)
    assert report.initialised == {}
    assert report.loaded_params == report.total_params == sum(p.numel() for p in ref.parameters())
    # torchvision's layout exactly when every key is one of torchvision's own model
    tv_keys = set(torchvision.models.mobilenet_v3_small(num_classes=wm.NUM_CLASSES).state_dict())
    assert report.layout == ("torchvision" if set(sd) <= tv_keys else "reference")
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(nnx.state(model)))
    back = export_state_dict(model)
    assert set(back) == set(sd)
    for key, value in sd.items():
        if not key.endswith("num_batches_tracked"):  # BatchNorm step counters: not carried (momentum is fixed)
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    fresh = reference.reference_model("small", attention, attention_init=init)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_to_torch_builds_the_reference_of_a_model():
    model = wm.nan_model("seco", "preserve_coord", "auto")
    load_torchvision(model, wm.random_reference("seco", "preserve_coord", seed=2).state_dict())
    ref = reference.to_torch(model)
    assert not ref.training
    exported = export_state_dict(model)
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), exported[key], err_msg=key)
    assert reference.to_torch(model, dtype=torch.float64).features[0][0].weight.dtype == torch.float64


def test_reference_checkpoint_errors_name_keys_and_say_what_to_do():
    sd = wm.random_reference("caco", "preserve", seed=1).state_dict()
    # Into another variant: the keys are named and the variant guessed.
    with pytest.raises(ConversionError, match=r"features\.1\.block\.1\.coord.*look like .*attention 'caco'"):
        load_torchvision(wm.nan_model("cbam", "preserve", "auto"), sd)
    # Into the same variant without gains: the gains are named, and attention_init is the fix.
    with pytest.raises(ConversionError, match=r"max_gain.*attention_init"):
        load_torchvision(wm.nan_model("caco", "plain", "auto"), sd)
    # A plain checkpoint into a model with gains: they are missing, and attention_init is the fix.
    plain = wm.random_reference("caco", "plain", seed=1).state_dict()
    with pytest.raises(ConversionError, match=r"lacks .*gain.*attention_init"):
        load_torchvision(wm.nan_model("caco", "preserve", "auto"), plain)
    # An incomplete reference checkpoint is an error, not a silent partial load.
    key = "features.4.block.2.coord.bn1.running_mean"
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        load_torchvision(wm.nan_model("caco", "preserve", "auto"), {k: v for k, v in sd.items() if k != key})


# --------------------------------------------------------------------------- whole-model parity


@pytest.mark.parametrize("name", list(wm.CASES))
def test_eval_logits_match(name):
    c = wm.case(name)
    assert c["report"].initialised == {}
    ref = c["ref"].eval()
    with torch.no_grad():
        theirs = ref(wm.nchw(wm.images())).numpy()
    ours = c["eval_logits"]
    assert ours.shape == (wm.BATCH, wm.NUM_CLASSES) and np.all(np.isfinite(ours))
    assert np.abs(theirs).max() > 0.1  # not vacuous
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", list(wm.CASES))
def test_train_mode_outputs_stats_and_gradients_match(name):
    c = wm.case(name)
    ref = copy.deepcopy(c["ref"]).train()
    logits_t = ref(wm.nchw(wm.images()))
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(wm.LABELS).long())
    loss_t.backward()
    np.testing.assert_allclose(c["train_logits"], logits_t.detach().numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(c["loss"], loss_t.item(), rtol=1e-5)

    mapping = reference_key_map(c["model"])
    sd = ref.state_dict()
    stat_keys = [k for k in mapping if k.endswith(("running_mean", "running_var"))]
    assert len(stat_keys) == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in ref.modules())
    for key in stat_keys:
        path, fn = mapping[key]
        ours = _get(c["stats"], path)
        assert not np.allclose(ours, _get(c["init_stats"], path)), f"{key} did not move"
        np.testing.assert_allclose(ours, fn(sd[key].numpy()), rtol=0, atol=STATS_TOL, err_msg=key)

    named = dict(ref.named_parameters())
    assert len(named) == len(jax.tree.leaves(c["grads"]))  # every parameter is compared
    # One bound for the model: several gradients (biases before a training-mode BatchNorm)
    # are exactly zero in theory and rounding noise in practice on both sides.
    scale = max(p.grad.abs().max().item() for p in named.values())
    for key, p in named.items():
        path, fn = mapping[key]
        np.testing.assert_allclose(
            _get(c["grads"], path), fn(p.grad.numpy()), rtol=0, atol=GRAD_TOL * scale, err_msg=key
        )
