"""Test-time augmentation in the jitted steps (caco_jax.steps): the 8 dihedral views and their average."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from caco_jax import parallel
from caco_jax.models import create_model
from caco_jax.steps import TTA_VIEWS, ModelDef, build_steps, dihedral_views


def _numpy_views(image: np.ndarray) -> list[np.ndarray]:
    return [v for k in range(4) for r in [np.rot90(image, k)] for v in (r, r[:, ::-1])]


def test_dihedral_views_are_the_8_symmetries_of_the_square():
    images = np.random.default_rng(0).integers(0, 255, (2, 5, 5, 3)).astype(np.uint8)
    views = np.asarray(dihedral_views(images))
    assert views.shape == (TTA_VIEWS, 2, 5, 5, 3)
    np.testing.assert_array_equal(views[0], images)  # view 0: the image itself
    for b in range(2):
        for got, want in zip(views[:, b], _numpy_views(images[b])):
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
    per_view = np.stack([np.asarray(steps.predict(params, stats, np.stack(v), t))
                         for v in zip(*[_numpy_views(im) for im in images])])
    np.testing.assert_allclose(tta, per_view.mean(axis=0), atol=1e-6)
    assert np.abs(per_view[0] - per_view[3]).max() > 2e-3  # the views do differ (measured: 8e-3)
    # A picture with every symmetry of the square: TTA changes nothing.
    symmetric = np.minimum(images, images[:, ::-1])
    symmetric = np.minimum(symmetric, symmetric[:, :, ::-1])
    symmetric = np.minimum(symmetric, np.swapaxes(symmetric, 1, 2))
    np.testing.assert_allclose(np.asarray(steps.predict_tta(params, stats, symmetric, t)),
                               np.asarray(steps.predict(params, stats, symmetric, t)), atol=1e-6)
