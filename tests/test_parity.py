"""Numerical parity with torchvision's mobilenet_v3_small (PyTorch, fp32, CPU).

A seeded random torchvision model (BatchNorm running statistics and affine parameters
randomised so they matter, classifier layers at torch's default Linear init so the
logits are not ~0) is converted with caco_jax.interop.convert.load_torchvision into a model
whose every array starts as NaN: anything the conversion missed would poison the
outputs. Then, on the same input (NCHW for torch, NHWC for us):

* evaluation-mode logits and pooled features agree (7 and 1000 classes);
* one training-mode forward gives the same outputs and the same updated BatchNorm
  running statistics (mean and unbiased variance) for every BN layer;
* cross-entropy gradients agree for every parameter;
* the real ImageNet backbone on real HAM10000 images gives the same 576-d features.

Measured (fp32, 2-core CPU, batch 4 at 64x64 unless said otherwise):
eval logits 6e-8 (7 classes) and 1.3e-7 (1000 classes) max abs, with logits ~0.1-0.2;
train-mode logits 2.7e-7; running statistics 1.2e-7; gradients 3.9e-6 of the largest
gradient entry; real backbone features (4 images, 150x200) 6.8e-6 with features up to 2.2.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jitted
from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD
from caco_jax.interop.convert import load_torchvision
from caco_jax.interop.key_maps import key_map
from caco_jax.models import MobileNetV3, count_params

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.torch

# The bound for logits and features.
TOL = 1e-4
# Running statistics: measured 1.2e-7 (values O(1)); 1e-6 bound. The 1e-4 would
# not notice a biased variance stored in place of the unbiased one in every layer
# (that moves a statistic by momentum * var / (n - 1), which can be ~1e-5).
STATS_TOL = 1e-6
# Gradients: max |ours - torch| over every parameter, relative to the largest gradient
# entry of the whole model, measured at 3.9e-6 (fp32; eleven blocks of training-mode
# BatchNorm backward, where both sides sum in different orders; several BN-bias
# gradients are exactly zero in theory and ~1e-9 noise in practice, so a per-tensor
# relative bound would be meaningless there). Bound 2e-5: 5x headroom.
GRAD_TOL = 2e-5


def random_torchvision(num_classes: int, seed: int):
    """A seeded torchvision mobilenet_v3_small with every BN statistic and affine random."""
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v3_small(num_classes=num_classes, dropout=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
            elif isinstance(m, torch.nn.Linear):
                m.reset_parameters()  # U(+-1/sqrt(fan_in)), not torchvision's N(0, 0.01)
    return model


# Every way of computing the convolutions (caco_jax.models.depthwise) must give torch's numbers.
IMPLS = ("conv", "shifts", "shifts_vjp")


def nan_model(num_classes: int, attention: str = "se", depthwise: str = "auto") -> MobileNetV3:
    """A full-size model whose every parameter and statistic is NaN (no compile needed)."""
    abstract = nnx.eval_shape(
        lambda: MobileNetV3(
            arch="small",
            attention=attention,
            num_classes=num_classes,
            dropout=0.0,
            depthwise=depthwise,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), state))


def convert(tm, depthwise: str = "auto") -> MobileNetV3:
    model = nan_model(tm.classifier[-1].out_features, depthwise=depthwise)
    report = load_torchvision(model, tm.state_dict())
    assert report.initialised == {}, report.initialised  # an `se` model takes everything
    assert report.loaded_params == report.total_params == sum(p.numel() for p in tm.parameters())
    return model


_PAIRS: dict[tuple[int, str], tuple] = {}


def converted_pair(num_classes: int, depthwise: str = "auto"):
    """(torchvision model, (graphdef, state) of the converted NNX model), built once."""
    key = (num_classes, depthwise)
    if key not in _PAIRS:
        tm = random_torchvision(num_classes, seed=num_classes)
        _PAIRS[key] = (tm, nnx.split(convert(tm, depthwise)))
    return _PAIRS[key]


@pytest.fixture(
    scope="module",
    params=[(7, impl) for impl in IMPLS] + [(1000, "auto")],
    ids=[f"7cls-{impl}" for impl in IMPLS] + ["1000cls"],
)
def pair(request):
    return converted_pair(*request.param)


@pytest.fixture(scope="module", params=IMPLS)
def pair7(request):
    return converted_pair(7, request.param)


def fresh(pair):
    """Independent copies (tests that run training mode mutate the statistics)."""
    tm, (graphdef, state) = pair
    return copy.deepcopy(tm), nnx.merge(graphdef, state, copy=True)  # merge alone shares Variables


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype(np.float32)


def nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return np.asarray(tree)


@nnx.jit
def _features(model, x):
    return model.features(x)


@nnx.jit
def _ce_and_grads(model, x, labels):
    def loss_fn(model):
        logp = jax.nn.log_softmax(model(x))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    return nnx.value_and_grad(loss_fn)(model)


# --------------------------------------------------------------------------- architecture


def _abstract_count(arch: str, num_classes: int) -> int:
    return count_params(
        nnx.eval_shape(lambda: MobileNetV3(arch=arch, attention="se", num_classes=num_classes, rngs=nnx.Rngs(0)))
    )


@pytest.mark.parametrize(("arch", "num_classes"), [("small", 7), ("small", 1000), ("large", 1000), ("large", 7)])
def test_parameter_count_equals_torchvision(arch, num_classes):
    tv = getattr(torchvision.models, f"mobilenet_v3_{arch}")(num_classes=num_classes)
    expected = sum(p.numel() for p in tv.parameters())
    assert _abstract_count(arch, num_classes) == expected
    if (arch, num_classes) == ("small", 7):
        assert expected == 1_525_031


def test_state_dict_shapes_match_torchvision_exactly():
    # Every torchvision tensor has a home of the right shape (after the layout transform),
    # and every NNX array is some torchvision tensor: the same network, not just the same count.
    tm = torchvision.models.mobilenet_v3_small(num_classes=7)
    model = nnx.eval_shape(lambda: MobileNetV3(arch="small", attention="se", num_classes=7, rngs=nnx.Rngs(0)))
    mapping, skipped = key_map(model)
    assert skipped == {}
    pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    sd = tm.state_dict()
    assert set(mapping) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for key, (path, fn) in mapping.items():
        assert tuple(fn(sd[key].numpy()).shape) == tuple(_leaf_shape(pure, path)), key
    assert len({p for p, _ in mapping.values()}) == len(mapping) == len(jax.tree.leaves(pure))


def _leaf_shape(tree, path):
    for k in path:
        tree = tree[k]
    return tree.shape


# --------------------------------------------------------------------------- evaluation mode


def test_eval_logits_and_features_match(pair, images):
    tm, model = fresh(pair)
    tm.eval()
    model.eval()
    with torch.no_grad():
        logits_t = tm(nchw(images)).numpy()
        feats_t = torch.nn.functional.adaptive_avg_pool2d(tm.features(nchw(images)), 1).flatten(1).numpy()
    logits, feats = map(np.asarray, jitted.logits_and_features(model, images))
    assert logits.shape == logits_t.shape and np.all(np.isfinite(logits))
    assert np.abs(logits_t).max() > 1e-2  # not vacuous
    np.testing.assert_allclose(logits, logits_t, rtol=0, atol=TOL)
    np.testing.assert_allclose(feats, feats_t, rtol=0, atol=TOL)


# --------------------------------------------------------------------------- training mode


def test_train_mode_outputs_and_running_stats_match(pair7, images):
    tm, model = fresh(pair7)
    tm.train()
    model.train()
    logits = np.asarray(jitted.logits(model, images))
    logits_t = tm(nchw(images)).detach().numpy()
    np.testing.assert_allclose(logits, logits_t, rtol=0, atol=TOL)

    mapping, _ = key_map(model)
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    before = nnx.to_pure_dict(pair7[1][1])
    sd = tm.state_dict()
    keys = [k for k in mapping if k.endswith((".running_mean", ".running_var"))]
    assert len(keys) == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in tm.modules()) == 68
    for key in keys:
        path, fn = mapping[key]
        ours = _get(stats, path)
        assert not np.allclose(ours, _get(before, path)), f"{key} did not move"
        np.testing.assert_allclose(ours, fn(sd[key].numpy()), rtol=0, atol=STATS_TOL, err_msg=key)


def test_cross_entropy_gradients_match(pair7, images):
    tm, model = fresh(pair7)
    tm.train()
    model.train()
    labels = np.array([0, 3, 6, 2], np.int32)
    loss, grads = _ce_and_grads(model, images, labels)
    loss_t = torch.nn.functional.cross_entropy(tm(nchw(images)), torch.from_numpy(labels).long())
    loss_t.backward()
    np.testing.assert_allclose(float(loss), loss_t.item(), rtol=1e-6)

    grads = nnx.to_pure_dict(grads)
    mapping, _ = key_map(model)
    named = dict(tm.named_parameters())
    assert len(named) == len(jax.tree.leaves(grads))  # every parameter is compared below
    scale = max(p.grad.abs().max().item() for p in named.values())
    for name, p in named.items():
        path, fn = mapping[name]
        np.testing.assert_allclose(_get(grads, path), fn(p.grad.numpy()), rtol=0, atol=GRAD_TOL * scale, err_msg=name)


# --------------------------------------------------------------------------- real weights and images


@pytest.mark.real_data
def test_real_backbone_features_on_real_images(imagenet_backbone_pth, real_data_dir):
    from PIL import Image

    files = sorted((real_data_dir / "images_200x150").glob("*.jpg"))[:4]
    assert len(files) == 4
    rgb = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0 for f in files])
    assert rgb.shape == (4, 150, 200, 3)  # native size, non-square
    x = ((rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)

    tm = torchvision.models.mobilenet_v3_small()
    result = tm.load_state_dict(torch.load(imagenet_backbone_pth), strict=False)
    assert sorted(result.missing_keys) == [
        "classifier.0.bias",
        "classifier.0.weight",
        "classifier.3.bias",
        "classifier.3.weight",
    ]
    assert result.unexpected_keys == []
    tm.eval()
    with torch.no_grad():
        feats_t = torch.nn.functional.adaptive_avg_pool2d(tm.features(nchw(x)), 1).flatten(1).numpy()

    model = nan_model(1000)
    report = load_torchvision(model, imagenet_backbone_pth)
    assert report.loaded_params == 927_008
    model.eval()
    feats = np.asarray(_features(model, x))
    assert feats.shape == (4, 576)
    assert np.abs(feats_t).max() > 0.5
    np.testing.assert_allclose(feats, feats_t, rtol=0, atol=TOL)
