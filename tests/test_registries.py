"""Each extension point is one registry: a toy attention block (with its PyTorch twin), a toy loss (with its
PyTorch formula) and a toy dataset, each registered in its own place and nothing else, are then accepted by
the config check, built, converted, recognised in saved weights and trained end to end."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from caco_jax.configs import demo
from caco_jax.data import registry
from caco_jax.models import attention as attention_lib, create_model
from caco_jax.training import checks, losses


class ToyGain(nnx.Module):
    """A per-channel scale, x * (1 + g): the smallest block with its own parameter."""

    se_mlp_path: ClassVar[tuple[str, ...] | None] = None
    new_parts: ClassVar[dict[str, str]] = {"gain": "the toy block's gain has no ImageNet counterpart"}
    starts_as_se: ClassVar[bool] = False

    def __init__(self, channels: int, squeeze: int, options: Any, *, rngs: nnx.Rngs):
        self.gain = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x):
        return x * (1.0 + self.gain[...])


@dataclasses.dataclass(frozen=True)
class ToySquared:
    """Mean squared error between softmax and one-hot: a loss no one registered before."""

    @classmethod
    def from_config(cls, cfg: Any, class_counts: Any, num_classes: int) -> ToySquared:
        return cls()

    def __call__(self, logits, labels, class_weights=None, mask=None):
        p = jnp.exp(logits - jnp.max(logits, -1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        err = ((p - jnp.eye(logits.shape[-1])[labels]) ** 2).sum(-1)
        m = jnp.ones_like(err) if mask is None else jnp.asarray(mask, jnp.float32)
        return (err * m).sum() / jnp.maximum(m.sum(), 1.0)

    def torch_formula(self):
        import torch

        def f(logits, target, w=None):
            p = torch.softmax(logits, -1)
            return ((p - torch.nn.functional.one_hot(target, logits.shape[-1])) ** 2).sum(-1).mean()

        return f


@pytest.fixture()
def toys(tmp_path):
    """Registers the toy block, its twin, the toy loss and a toy dataset; unregisters them afterwards."""
    attention_lib.register("toy")(ToyGain)
    losses.register("toy_squared")(ToySquared)

    @registry.register("toy_folders", "three classes of coloured shapes, for this test")
    def open_toy(config, workdir: pathlib.Path):
        from caco_jax.data import folder, records
        from tests.test_data_folder import write_folders

        root = write_folders(tmp_path / "toy_images", per_class=40)
        built = folder.prepare(root, tmp_path / "tfds", image_size=config.data.build_size, progress=False)
        return records.split_source(records.open_source(built), **registry.split_options(config))

    yield
    attention_lib.ATTENTION_BLOCKS.unregister("toy")
    attention_lib.layout.cache_clear()
    losses.LOSSES.unregister("toy_squared")
    registry.DATASETS.unregister("toy_folders")


def _config(**changes: Any):
    c = demo.get_config()
    c.model.arch, c.data.synthetic_images, c.data.build_size, c.data.image_size = "tiny", 0, 32, 32
    c.batch_size, c.eval_batch_size, c.num_epochs, c.progress_bar = 16, 32, 1, False
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_registered_toys_are_accepted_built_and_recognised(toys, tmp_path):
    from caco_jax.runs.loading import infer_model_config
    from caco_jax.runs.weights import model_weights

    checks.check_config(_config(**{"model.attention": "toy", "loss.name": "toy_squared", "data.name": "toy_folders"}))
    with pytest.raises(Exception, match="must be one of"):
        checks.check_config(_config(**{"model.attention": "toy2"}))
    model = create_model(arch="tiny", attention="toy", num_classes=3)
    flat = model_weights(model)
    assert any(k.endswith("attention/gain") for k in flat)
    assert infer_model_config(flat)["attention"] == "toy"  # identified from its layout, no code to add
    loss = losses.make_loss(_config(**{"loss.name": "toy_squared"}).loss, np.asarray([5, 5, 5]))
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 1])
    torch = pytest.importorskip("torch")
    want = loss.fn.torch_formula()(torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(labels), dtype=torch.long))
    assert float(loss(logits, labels)) == pytest.approx(float(want), rel=1e-5)


def test_a_toy_block_needs_only_its_twin_to_export(toys):
    torch = pytest.importorskip("torch")
    from caco_jax.interop import torch_reference
    from caco_jax.interop.convert import export_state_dict

    @torch_reference.twin("toy")
    class ToyTwin(torch.nn.Module):
        def __init__(self, channels: int, squeeze: int, options: Any = None):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.zeros(channels))

        def forward(self, x):
            return x * (1 + self.gain[None, :, None, None])

    try:
        model = create_model(arch="small", attention="toy", num_classes=3)
        ref = torch_reference.reference_model("small", "toy", num_classes=3)
        state = {k: torch.from_numpy(np.array(v)) for k, v in export_state_dict(model).items()}
        ref.load_state_dict(state, strict=True)  # every key of the toy block maps, named from its module tree
    finally:
        torch_reference.TORCH_BLOCKS.unregister("toy")


@pytest.mark.slow
def test_toy_block_loss_and_dataset_train_end_to_end(toys, tmp_path):
    from caco_jax.training.loop import train_and_evaluate

    config = _config(
        **{
            "model.attention": "toy",
            "loss.name": "toy_squared",
            "data.name": "toy_folders",
            "data.data_dir": str(tmp_path / "tfds"),
        }
    )
    result = train_and_evaluate(config, tmp_path / "run")
    assert result["status"] == "finished"
    report = result["report"]
    assert report["class_names"] == ["bar", "disc", "plain"] and report["num_examples"] > 0


def test_the_registry_helper_checks_entries_and_names_unknown_ones():
    from caco_jax.errors import ConfigError
    from caco_jax.registry import Registry, require

    things = Registry("thing.name", require("thing", "size"))

    @things.register("a")
    class A:
        size = 1

    with pytest.raises(TypeError, match=r"thing 'b' \(object\) must declare size"):
        things.register("b", object())
    with pytest.raises(ValueError, match="thing.name 'a' is registered twice"):
        things.register("a", A)
    with pytest.raises(ConfigError, match=r"^unknown thing.name 'c'; choices: a$"):
        things["c"]
    assert list(things) == ["a"] and "a" in things and things["a"] is A
    assert things.unregister("a") is A and len(things) == 0
    # each registry states its contract: a block without starts_as_se is refused when it is registered
    with pytest.raises(TypeError, match="must declare starts_as_se"):
        attention_lib.register("half_declared")(type("HalfDeclared", (), {"se_mlp_path": None, "new_parts": {}}))
    assert "half_declared" not in attention_lib.ATTENTION_BLOCKS
