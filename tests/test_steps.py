"""Test-time augmentation in the jitted steps (caco_jax.training.steps): the 8 dihedral views and their average."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from caco_jax.models import create_model
from caco_jax.training import parallel
from caco_jax.training.steps import TTA_VIEWS, ModelDef, build_steps, dihedral_views


def _numpy_views(image: np.ndarray) -> list[np.ndarray]:
    return [v for k in range(4) for r in [np.rot90(image, k)] for v in (r, r[:, ::-1])]


def test_dihedral_views_are_the_8_symmetries_of_the_square():
    images = np.random.default_rng(0).integers(0, 255, (2, 5, 5, 3)).astype(np.uint8)
    views = np.asarray(dihedral_views(images))
    assert views.shape == (TTA_VIEWS, 2, 5, 5, 3)
    np.testing.assert_array_equal(views[0], images)  # view 0: the image itself
    for b in range(2):
        for got, want in zip(views[:, b], _numpy_views(images[b]), strict=True):
            np.testing.assert_array_equal(got, want)
    assert len({v.tobytes() for v in views[:, 0]}) == TTA_VIEWS  # all different for a generic image
    with pytest.raises(ValueError, match="square"):
        dihedral_views(np.zeros((1, 4, 6, 3), np.uint8))


def test_tta_prediction_is_the_mean_over_the_views_and_composes_with_the_temperature():
    model = create_model(arch="tiny", num_classes=4, seed=3)
    model_def = ModelDef(model)
    mesh = parallel.make_mesh(1)
    steps = build_steps(model_def, mesh)
    # An initialised head is nearly uniform (weights ~ N(0, 0.01)): larger linear weights make the views differ.
    sharper = jax.tree.map(lambda p: p * 30 if p.ndim == 2 else p, model_def.init_params)
    params, stats = jax.device_put((sharper, model_def.init_batch_stats), parallel.replicated(mesh))
    images = np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3)).astype(np.uint8)
    t = np.float32(0.5)
    tta = np.asarray(steps.predict_tta(params, stats, images, t))
    per_view = np.stack(
        [
            np.asarray(steps.predict(params, stats, np.stack(v), t))
            for v in zip(*[_numpy_views(im) for im in images], strict=True)
        ]
    )
    np.testing.assert_allclose(tta, per_view.mean(axis=0), atol=1e-6)
    assert np.abs(per_view[0] - per_view[3]).max() > 2e-3  # the views do differ (measured: 8e-3)
    # A picture with every symmetry of the square: TTA changes nothing.
    symmetric = np.minimum(images, images[:, ::-1])
    symmetric = np.minimum(symmetric, symmetric[:, :, ::-1])
    symmetric = np.minimum(symmetric, np.swapaxes(symmetric, 1, 2))
    np.testing.assert_allclose(
        np.asarray(steps.predict_tta(params, stats, symmetric, t)),
        np.asarray(steps.predict(params, stats, symmetric, t)),
        atol=1e-6,
    )


# --------------------------------------------------------------------------- mixing and the moving average
def test_mixup_and_cutmix_mix_each_example_with_its_mirror_partner():
    import jax.numpy as jnp

    from caco_jax.data.augment import AugmentConfig, mix_batch

    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    same, lam = mix_batch(jax.random.key(0), x, AugmentConfig())
    assert float(lam) == 1.0 and same is x
    mixed, lam = mix_batch(jax.random.key(1), x, AugmentConfig(mixup_alpha=0.4))
    assert 0.0 <= float(lam) <= 1.0
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    for seed in range(4):
        cut, lam = mix_batch(jax.random.key(seed), x, AugmentConfig(cutmix_alpha=1.0))
        from_partner = np.all(np.isclose(cut, x[::-1]), axis=-1) & ~np.all(np.isclose(cut, x), axis=-1)
        assert np.all(np.isclose(cut, x).all(-1) | np.isclose(cut, x[::-1]).all(-1))  # every pixel from one of the two
        assert float(lam) == pytest.approx(1 - from_partner[0].mean(), abs=1e-6)
    with pytest.raises(ValueError, match="mixup_alpha must be >= 0"):
        AugmentConfig(mixup_alpha=-1)


def test_train_step_keeps_a_moving_average_of_the_weights():
    import optax

    from caco_jax.configs import default
    from caco_jax.data.augment import AugmentConfig
    from caco_jax.training.losses import make_loss
    from caco_jax.training.steps import init_state

    model_def = ModelDef(create_model(arch="tiny", num_classes=3, seed=0))
    mesh = parallel.make_mesh(1)
    tx = optax.adamw(1e-2)
    cfg = default.get_config().loss
    cfg.name = "ce"
    loss = make_loss(cfg, None, num_classes=3)
    steps = build_steps(
        model_def, mesh, tx=tx, loss=loss, aug=AugmentConfig(mixup_alpha=0.4), image_size=16, ema_decay=0.5
    )
    state = jax.device_put(init_state(model_def, tx, 0, ema=True), parallel.replicated(mesh))
    batch = {
        "image": np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3)).astype(np.uint8),
        "label": np.asarray([0, 1, 2, 1], np.int32),
    }
    weights = np.ones(3, np.float32)
    ema = jax.device_get(state.ema["params"])
    for t in range(2):
        state, _ = steps.train(state, batch, weights)
        d = min(0.5, (1 + t) / (10 + t))
        ema = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, ema, jax.device_get(state.params))
        for got, want in zip(jax.tree.leaves(jax.device_get(state.ema["params"])), jax.tree.leaves(ema), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    params, stats = state.eval_weights()
    assert params is state.ema["params"] and stats is state.ema["batch_stats"]
    assert jax.tree.leaves(state.params)[0] is not jax.tree.leaves(params)[0]
