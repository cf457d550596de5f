"""Tests for caco_jax.training.losses: PyTorch reference formulas, hand-computed cases,
identities between losses, masking, gradients and the config factory."""

from __future__ import annotations

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caco_jax.data.classes import HAM10000_COUNTS, NUM_CLASSES
from caco_jax.training import losses

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import default

torch = pytest.importorskip("torch")
F = torch.nn.functional
reference = pytest.importorskip("caco_jax.interop.torch_reference")
from torch_loss import make_torch_loss  # noqa: E402  (needs torch)

B, C = 16, NUM_CLASSES
COUNTS = np.asarray(HAM10000_COUNTS)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(B, C)) * 3).astype(np.float32)
    labels = rng.integers(0, C, size=B).astype(np.int32)
    weights = rng.uniform(0.2, 3.0, size=C).astype(np.float32)
    mask = (rng.uniform(size=B) > 0.3).astype(np.float32)
    mask[0] = 1.0
    return logits, labels, weights, mask


# ----------------------------------------------------------------- torch references
def _t(x, grad=False):
    t = torch.tensor(np.asarray(x), dtype=torch.float64)
    return t.requires_grad_(grad)


# The PyTorch formulas (focal loss; LDAM-DRW's LDAMLoss and DRW weights) live in
# caco_jax.interop.torch_reference, which the training-step parity test uses too.
torch_focal = reference.focal_loss
TorchLDAMLoss = reference.LDAMLoss
official_drw = reference.drw_weights


def torch_ldam_drw_focal(x, y, gamma, weight):
    """The LDAM-DRW repository's FocalLoss: p = exp(-weighted CE) (NOT what we do)."""
    ce = F.cross_entropy(x, y, reduction="none", weight=weight)
    return ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def _check(jax_fn, torch_fn, logits, labels, rtol=2e-5, atol=1e-6):
    """Value and gradient of jax_fn(logits) against torch_fn(x)."""
    value, grad = jax.value_and_grad(jax_fn)(jnp.asarray(logits))
    x = _t(logits, grad=True)
    ref = torch_fn(x, torch.tensor(labels, dtype=torch.long))
    ref.backward()
    np.testing.assert_allclose(float(value), ref.item(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(batch, smoothing, weighted):
    logits, labels, weights, _ = batch
    w = weights if weighted else None
    _check(
        lambda z: losses.cross_entropy(z, labels, label_smoothing=smoothing, class_weights=w),
        lambda x, y: F.cross_entropy(x, y, weight=None if w is None else _t(w), label_smoothing=smoothing),
        logits,
        labels,
    )


@pytest.mark.torch
@pytest.mark.parametrize(
    "gamma,alpha,weighted",
    [(2.0, None, False), (2.0, None, True), (0.5, 0.25, False), (3.0, "vector", True)],
)
def test_focal_matches_torch_formula(batch, gamma, alpha, weighted):
    logits, labels, weights, _ = batch
    if alpha == "vector":
        alpha = np.linspace(0.1, 1.0, C).astype(np.float32)
    w = weights if weighted else None
    _check(
        lambda z: losses.focal_loss(z, labels, gamma=gamma, alpha=alpha, class_weights=w),
        lambda x, y: torch_focal(x, y, gamma, alpha, None if w is None else _t(w)),
        logits,
        labels,
    )


@pytest.mark.torch
def test_focal_pt_is_plain_softmax_not_weighted_ce(batch):
    logits, labels, weights, _ = batch
    ours = float(losses.focal_loss(logits, labels, gamma=2.0, class_weights=weights))
    x, y = _t(logits), torch.tensor(labels, dtype=torch.long)
    assert ours == pytest.approx(torch_focal(x, y, 2.0, weight=_t(weights)).item(), rel=2e-5)
    assert abs(ours - torch_ldam_drw_focal(x, y, 2.0, _t(weights)).item()) > 1e-3


@pytest.mark.torch
@pytest.mark.parametrize("s,max_m,weighted", [(30.0, 0.5, False), (1.0, 0.5, True), (5.0, 0.3, True)])
def test_ldam_matches_official_torch(batch, s, max_m, weighted):
    logits, labels, weights, _ = batch
    margins = losses.ldam_margins(COUNTS, max_m)
    w = weights if weighted else None
    ref = TorchLDAMLoss(COUNTS, max_m=max_m, s=s, weight=None if w is None else _t(w))
    np.testing.assert_allclose(np.asarray(margins), ref.m_list.numpy(), rtol=1e-6)
    _check(lambda z: losses.ldam_loss(z, labels, margins, s=s, class_weights=w), ref, logits, labels, rtol=5e-5)


@pytest.mark.torch
def test_joint_matches_torch(batch):
    logits, labels, weights, _ = batch
    margins = losses.ldam_margins(COUNTS)
    ldam = TorchLDAMLoss(COUNTS, s=2.0, weight=_t(weights))
    _check(
        lambda z: losses.joint_loss(z, labels, margins, a=0.3, s=2.0, class_weights=weights),
        lambda x, y: 0.3 * torch_focal(x, y, 2.0, weight=_t(weights)) + 0.7 * ldam(x, y),
        logits,
        labels,
    )


@pytest.mark.torch
@pytest.mark.parametrize("name", tuple(losses.LOSSES))
def test_configured_loss_with_drw_matches_torch(batch, name):
    """Each loss.name as the trainer builds it (make_loss, DRW on: the class weights of an epoch
    past drw_epoch) against the PyTorch formula it declares (torch_loss.make_torch_loss) with the official
    DRW weights."""
    logits, labels, _, _ = batch
    cfg = _cfg(name=name, drw_epoch=1, ldam_s=2.0, focal_gamma=2.0, label_smoothing=0.0)
    loss = losses.make_loss(cfg, COUNTS)
    weights = loss.class_weights(1)
    assert not np.allclose(weights, 1.0)  # DRW is on
    torch_loss = make_torch_loss(cfg, COUNTS)
    w64 = _t(official_drw(COUNTS, cfg.drw_beta))
    _check(lambda z: loss(z, labels, weights), lambda x, y: torch_loss(x, y, w64), logits, labels)


@pytest.mark.parametrize("beta", [0.9999, 0.999, 0.5])
def test_drw_weights_match_official(beta):
    w = losses.drw_weights(COUNTS, beta)
    assert w.dtype == np.float32 and w.shape == (C,)
    np.testing.assert_allclose(w, official_drw(COUNTS, beta), rtol=1e-5)
    assert w.sum() == pytest.approx(C, rel=1e-5)
    assert np.all(np.diff(w[np.argsort(COUNTS)]) <= 0)  # rarer class, larger weight


# ----------------------------------------------------------------- hand-computed cases
def test_hand_computed_tiny_cases():
    z, y = jnp.zeros((1, 2)), jnp.array([0])
    assert float(losses.cross_entropy(z, y)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(losses.focal_loss(z, y, gamma=2.0)) == pytest.approx(0.25 * math.log(2), rel=1e-6)
    assert float(losses.focal_loss(z, y, gamma=2.0, alpha=0.25)) == pytest.approx(0.0625 * math.log(2), rel=1e-6)
    # Smoothing 0.2 on 2 equal logits: -(0.9 log .5 + 0.1 log .5) = log 2 still.
    assert float(losses.cross_entropy(z, y, label_smoothing=0.2)) == pytest.approx(math.log(2), rel=1e-6)
    # Logits (2, 0), label 0, smoothing 0.2: 0.9 * CE_0 + 0.1 * CE_1.
    z2 = jnp.array([[2.0, 0.0]])
    lse = math.log(math.exp(2) + 1)
    want = 0.9 * (lse - 2) + 0.1 * lse
    assert float(losses.cross_entropy(z2, y, label_smoothing=0.2)) == pytest.approx(want, rel=1e-6)
    # Margins: n = (1, 16) -> n^-1/4 = (1, 0.5) -> scaled to max 0.5: (0.5, 0.25).
    m = losses.ldam_margins([1, 16], max_m=0.5)
    np.testing.assert_allclose(np.asarray(m), [0.5, 0.25], rtol=1e-6)
    # LDAM, logits (0, 0), label 0, margin 0.5, s = 2: CE of (-1, 0) at class 0.
    assert float(losses.ldam_loss(z, y, m, s=2.0)) == pytest.approx(1 + math.log(1 + math.exp(-1)), rel=1e-6)
    # DRW, counts (1, 2), beta 0.5: (1-b)/(1-b^n) = (1, 2/3) -> sum to 2: (1.2, 0.8).
    np.testing.assert_allclose(losses.drw_weights([1, 2], beta=0.5), [1.2, 0.8], rtol=1e-6)
    # Weighted mean sum(w_y l) / sum(w_y): two uniform rows (log 2 each), one confident row.
    z3 = jnp.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    y3 = jnp.array([0, 1, 0])
    w = jnp.array([1.0, 3.0])
    per = [math.log(2), math.log(2), math.log(1 + math.exp(-10))]
    want = (1 * per[0] + 3 * per[1] + 1 * per[2]) / 5
    assert float(losses.cross_entropy(z3, y3, class_weights=w)) == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------- identities
def test_ldam_zero_margin_unit_scale_is_cross_entropy(batch):
    logits, labels, weights, mask = batch
    kw = dict(class_weights=weights, mask=mask)
    got = losses.ldam_loss(logits, labels, jnp.zeros(C), s=1.0, **kw)
    assert float(got) == pytest.approx(float(losses.cross_entropy(logits, labels, **kw)), rel=1e-6)
    # ...and a non-zero margin changes it (upwards: the true logit is lowered).
    bigger = losses.ldam_loss(logits, labels, losses.ldam_margins(COUNTS), s=1.0, **kw)
    assert float(bigger) > float(got) + 1e-3


def test_focal_gamma_zero_is_weighted_cross_entropy(batch):
    logits, labels, weights, mask = batch
    for w in (None, weights):
        got = losses.focal_loss(logits, labels, gamma=0.0, class_weights=w, mask=mask)
        want = losses.cross_entropy(logits, labels, class_weights=w, mask=mask)
        assert float(got) == pytest.approx(float(want), rel=1e-6)
    # gamma > 0 down-weights: focal < CE.
    assert float(losses.focal_loss(logits, labels, gamma=2.0)) < float(losses.cross_entropy(logits, labels))


def test_joint_endpoints(batch):
    logits, labels, weights, _ = batch
    m = losses.ldam_margins(COUNTS)
    j1 = losses.joint_loss(logits, labels, m, a=1.0, class_weights=weights)
    j0 = losses.joint_loss(logits, labels, m, a=0.0, class_weights=weights)
    assert float(j1) == pytest.approx(float(losses.focal_loss(logits, labels, class_weights=weights)), rel=1e-6)
    assert float(j0) == pytest.approx(float(losses.ldam_loss(logits, labels, m, class_weights=weights)), rel=1e-6)


# ----------------------------------------------------------------- masks and gradients
# Every registered loss as make_loss configures it (label smoothing, a focal alpha and the official
# LDAM scale on, so each option is exercised), and one more focal gamma.
ALL_LOSSES = (*losses.LOSSES, "focal_gamma_half")


def _loss_fn(name: str):
    if name == "focal_gamma_half":
        return lambda z, y, **kw: losses.focal_loss(z, y, gamma=0.5, **kw)
    return losses.make_loss(_cfg(name=name, label_smoothing=0.1, focal_alpha=0.5, ldam_s=30.0), COUNTS).fn


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_mask_equals_dropping_rows_even_with_garbage(batch, name):
    fn = _loss_fn(name)
    logits, labels, weights, mask = batch
    keep = mask > 0
    garbage = logits.copy()
    garbage[~keep] = np.nan
    bad_labels = labels.copy()
    bad_labels[~keep] = -1

    def masked_fn(z):
        return fn(z, bad_labels, class_weights=weights, mask=mask)

    value, grad = jax.value_and_grad(masked_fn)(jnp.asarray(garbage))
    ref_value, ref_grad = jax.value_and_grad(lambda z: fn(z, labels[keep], class_weights=weights))(
        jnp.asarray(logits[keep])
    )
    assert float(value) == pytest.approx(float(ref_value), rel=1e-5)
    bool_mask = fn(jnp.asarray(garbage), bad_labels, class_weights=weights, mask=keep)
    assert float(bool_mask) == pytest.approx(float(value), rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[keep], np.asarray(ref_grad), rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(grad)[~keep] == 0.0)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_all_masked_batch_is_zero_not_nan(batch, name):
    logits, labels, _, _ = batch
    fn = _loss_fn(name)
    value, grad = jax.value_and_grad(lambda z: fn(z, labels, mask=jnp.zeros(B)))(jnp.asarray(logits))
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradients_finite_for_extreme_logits(name):
    z = jnp.array(
        [[1e4, -1e4, 0, 0, 0, 0, 0], [-1e4, 1e4, 0, 0, 0, 0, 0], [3e4, 3e4, -3e4, 0, 0, 0, 0], [0.0] * 7],
        jnp.float32,
    )
    y = jnp.array([0, 0, 2, 6])  # confidently right, confidently wrong, impossible, uniform
    fn = _loss_fn(name)
    value, grad = jax.value_and_grad(lambda z: fn(z, y, class_weights=jnp.arange(1.0, 8.0)))(z)
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.abs(np.asarray(grad)).max() > 0


# ----------------------------------------------------------------- factory
def _cfg(**overrides):
    cfg = default.get_config().loss
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("name", tuple(losses.LOSSES))
def test_every_loss_builds_from_the_default_config(name):
    loss = losses.make_loss(_cfg(name=name), COUNTS)
    assert loss.name == name and isinstance(loss.fn, losses.LOSSES[name])
    hash(loss)  # usable as a static jit argument


def test_config_fields_reach_the_builtin_formulas(batch):
    """The paper's four losses are registered, and each passes its config fields to its formula."""
    logits, labels, weights, mask = batch
    alpha = [0.5] * C
    m = losses.ldam_margins(COUNTS)
    kw = dict(class_weights=weights, mask=mask)
    want = {
        "ce": lambda: losses.cross_entropy(logits, labels, label_smoothing=0.1, **kw),
        "focal": lambda: losses.focal_loss(logits, labels, alpha=jnp.asarray(alpha), **kw),
        "ldam": lambda: losses.ldam_loss(logits, labels, m, s=3.0, **kw),
        "joint": lambda: losses.joint_loss(logits, labels, m, alpha=jnp.asarray(alpha), s=3.0, **kw),
    }
    assert set(want) <= set(losses.LOSSES)
    for name, formula in want.items():
        loss = losses.make_loss(_cfg(name=name, label_smoothing=0.1, focal_alpha=alpha, ldam_s=3.0), COUNTS)
        assert float(loss(logits, labels, weights, mask)) == pytest.approx(float(formula()), rel=1e-6), name


def test_make_loss_errors():
    from caco_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown loss.name 'hinge'; choices: ce, focal, ldam, joint"):
        losses.make_loss(_cfg(name="hinge"), COUNTS)
    zero = list(COUNTS)
    zero[3] = 0
    with pytest.raises(ValueError, match="positive count"):
        losses.make_loss(_cfg(name="ldam"), zero)
    with pytest.raises(ValueError, match="positive count"):
        losses.make_loss(_cfg(name="joint"), [5, -1, 3])
    with pytest.raises(ValueError, match="positive count"):
        losses.make_loss(_cfg(name="ce", drw_epoch=3), zero)
    with pytest.raises(ValueError, match="counts"):
        losses.make_loss(_cfg(name="ldam"), None)
    with pytest.raises(ValueError, match="focal_alpha"):
        losses.make_loss(_cfg(name="focal", focal_alpha=[1.0, 2.0]), COUNTS)
    # CE / focal without DRW do not need counts (absent classes allowed).
    assert losses.make_loss(_cfg(name="ce"), zero).num_classes == C
    assert losses.make_loss(_cfg(name="focal"), None, num_classes=5).num_classes == 5
    with pytest.raises(ValueError, match="num_classes"):
        losses.make_loss(_cfg(name="focal"), None)
    for field, bad in (
        ("label_smoothing", 1.0),
        ("focal_gamma", -1.0),
        ("ldam_s", 0.0),
        ("joint_a", 1.5),
        ("ldam_max_m", -0.1),
    ):
        with pytest.raises(ValueError, match=field):
            losses.make_loss(_cfg(name="joint" if field != "label_smoothing" else "ce", **{field: bad}), COUNTS)


def test_drw_schedule_and_no_recompile(batch):
    logits, labels, _, mask = batch
    loss = losses.make_loss(_cfg(name="ldam", drw_epoch=2), COUNTS)
    ones = np.ones(C, np.float32)
    for epoch in (0, 1):
        w = loss.class_weights(epoch)
        assert w.dtype == np.float32 and w.shape == (C,)
        np.testing.assert_array_equal(w, ones)
    drw = losses.drw_weights(COUNTS)
    for epoch in (2, 50):
        np.testing.assert_allclose(loss.class_weights(epoch), drw, rtol=1e-6)
        assert loss.class_weights(epoch).dtype == np.float32
    off = losses.make_loss(_cfg(name="ldam"), COUNTS)
    np.testing.assert_array_equal(off.class_weights(100), ones)

    traces = []

    @jax.jit
    def step(z, y, w, m):
        traces.append(1)
        return loss(z, y, w, m)

    before = step(logits, labels, loss.class_weights(0), mask)
    after = step(logits, labels, loss.class_weights(5), mask)
    assert len(traces) == 1
    assert float(before) != pytest.approx(float(after), rel=1e-3)
    assert float(after) == pytest.approx(float(loss(logits, labels, drw, mask)), rel=1e-5)
