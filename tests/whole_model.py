"""Whole-model cases shared by test_reference.py and test_export_onnx.py (each computed once).

A case is a random PyTorch reference model (caco_jax.interop.torch_reference) of one attention
variant and init, every BatchNorm statistic and affine, every bias and every gain random
(so each part matters), converted into a caco-jax model whose arrays all start as NaN;
then one compiled call gives everything the tests compare: evaluation logits, train-mode
logits, the updated BatchNorm statistics and the cross-entropy gradient of every
parameter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import variants
from caco_jax.interop.convert import load_torchvision
from caco_jax.interop.torch_reference import reference_model
from caco_jax.models import MobileNetV3
from caco_jax.training.steps import ModelDef

# id -> (attention, attention_init, depthwise): every registered variant at the default init, and
# caco-plain, the paper's block with the paper's formulas (no gains). XLA's convolutions ('conv',
# about half the compile time) unless the block has a dense k x k convolution of its own (CBAM's
# spatial attention), and for caco-plain: the default CPU convolutions ('auto': tap sums,
# patch-matmul kernel gradients) there; test_parity.py checks every implementation against
# torchvision. Not 'conv' for caco-plain: at XLA's CPU optimisation level 0 (conftest.py) that
# program's convolution kernel gradients came out wrong by up to 5 % of the largest gradient
# (deterministically; right at level 2 and with 'auto'), an XLA CPU miscompilation.
CASES: dict[str, tuple[str, str, str]] = {
    name: (name, "preserve", "auto" if variants.has_dense_conv(name) else "conv") for name in variants.blocks()
} | {"caco-plain": ("caco", "plain", "auto")}
NUM_CLASSES = 7
BATCH, HEIGHT, WIDTH = 4, 64, 96  # non-square all the way down (2 x 3 after the last stride)
LABELS = np.array([0, 3, 6, 2], np.int32)


def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(BATCH, HEIGHT, WIDTH, 3)).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def random_reference(attention: str, init: str, seed: int = 0) -> torch.nn.Module:
    """A seeded reference model with every parameter and BatchNorm statistic random.

    Running statistics are those of a calibration batch, then perturbed: random ones
    unrelated to the activations shrink or blow up the signal over eleven blocks, and
    evaluation-mode logits then hardly depend on the input (only on biases)."""
    torch.manual_seed(seed)
    model = reference_model("small", attention, num_classes=NUM_CLASSES, attention_init=init, dropout=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.2, generator=gen)
            elif isinstance(m, torch.nn.Linear):
                m.reset_parameters()  # U(+-1/sqrt(fan_in)), not torchvision's N(0, 0.01)
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.uniform_(0.5, 1.5, generator=gen)
        momentum = bns[0].momentum
        for m in bns:
            m.momentum = 1.0
        model.train()(torch.randn(8, 3, HEIGHT, WIDTH, generator=gen))  # running stats := batch stats
        for m in bns:
            m.momentum = momentum
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.8, 1.25, generator=gen))
    return model.eval()


def nan_model(attention: str, init: str, depthwise: str) -> MobileNetV3:
    """A full-size model whose every parameter and statistic is NaN (no compile needed)."""
    abstract = nnx.eval_shape(
        lambda: MobileNetV3(
            arch="small",
            attention=attention,
            attention_init=init,
            num_classes=NUM_CLASSES,
            dropout=0.0,
            depthwise=depthwise,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), state))


def _run(model_def: ModelDef):
    @jax.jit
    def run(params, stats, x, labels):
        eval_logits, _ = model_def.apply(params, stats, x, train=False)

        def loss_fn(p):
            logits, new_stats = model_def.apply(p, stats, x, train=True, rng=jax.random.key(0))
            ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
            return ce, (logits, new_stats)

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return eval_logits, logits, new_stats, loss, grads

    return run


@functools.cache
def case(name: str) -> dict:
    """The reference (torch), the converted caco-jax model, its conversion report, and caco-jax's results."""
    attention, init, depthwise = CASES[name]
    ref = random_reference(attention, init)
    model = nan_model(attention, init, depthwise)
    report = load_torchvision(model, ref.state_dict())
    model_def = ModelDef(model)
    eval_logits, logits, stats, loss, grads = jax.device_get(
        _run(model_def)(model_def.init_params, model_def.init_batch_stats, images(), LABELS)
    )
    model.eval()
    return {
        "ref": ref,
        "model": model,
        "report": report,
        "init_stats": model_def.init_batch_stats,
        "eval_logits": np.asarray(eval_logits),
        "train_logits": np.asarray(logits),
        "stats": stats,
        "loss": float(loss),
        "grads": grads,
    }
