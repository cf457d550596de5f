"""K AdamW steps of a whole model in caco-jax and in PyTorch (float32 and float64), from the same weights.

Used by test_train_parity.py (and runnable on its own to print the figures:
``python tests/trajectory.py``). The caco-jax side is built from the trainer's own
pieces: ``steps.ModelDef.apply``, the ``Loss`` of ``losses.make_loss`` and the optax
AdamW of ``steps.make_optimizer``, with augmentation and dropout off; the PyTorch side
is ``caco_jax.interop.torch_reference`` with ``torch.optim.AdamW`` and the losses written from
the official formulas (``torch_loss.make_torch_loss``).
"""

from __future__ import annotations

import copy
import csv
import pathlib
import sys

import jax
import numpy as np
import optax
import torch

from caco_jax.data.classes import CLASS_NAMES, HAM10000_COUNTS, IMAGENET_MEAN, IMAGENET_STD
from caco_jax.interop.convert import export_state_dict, load_torchvision
from caco_jax.interop.torch_reference import reference_model
from caco_jax.training.losses import make_loss
from caco_jax.training.steps import ModelDef, make_optimizer
from torch_loss import make_torch_loss

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import default

K = 5
LR, WEIGHT_DECAY = 5e-4, 5e-2


def real_batches(data_dir: pathlib.Path, per_class: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, labels, eval images, labels): the first ``per_class`` images of every class
    (metadata order) for training, the next ones for evaluation; NHWC float32, ImageNet-normalised,
    at the stored 150x200."""
    from PIL import Image

    by_class: dict[int, list[str]] = {i: [] for i in range(len(CLASS_NAMES))}
    with open(data_dir / "HAM10000_metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            label = CLASS_NAMES.index(row["dx"])
            if len(by_class[label]) < 2 * per_class:
                by_class[label].append(row["image_id"])

    def load(ids: list[str]) -> np.ndarray:
        rgb = (
            np.stack(
                [
                    np.asarray(Image.open(data_dir / "images_200x150" / f"{i}.jpg").convert("RGB"), np.float32)
                    for i in ids
                ]
            )
            / 255.0
        )
        return ((rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)

    train = [(i, c) for c, ids in by_class.items() for i in ids[:per_class]]
    held = [(i, c) for c, ids in by_class.items() for i in ids[per_class:]]
    return (
        load([i for i, _ in train]),
        np.array([c for _, c in train], np.int32),
        load([i for i, _ in held]),
        np.array([c for _, c in held], np.int32),
    )


def loss_config(name: str = "joint"):
    cfg = default.get_config().loss
    cfg.name = name
    cfg.drw_epoch = 0  # DRW class weights from the first step
    return cfg


def starting_point(attention: str, backbone_pth: pathlib.Path, depthwise: str = "auto"):
    """(caco-jax model, PyTorch reference) with the same weights: the ImageNet backbone (SE weights in
    the channel half), everything else at the reference's torchvision initialisation (gains 0)."""
    from flax import nnx

    from caco_jax.models import MobileNetV3

    torch.manual_seed(0)
    ref = reference_model("small", attention, num_classes=len(CLASS_NAMES), dropout=0.0)
    abstract = nnx.eval_shape(
        lambda: MobileNetV3(
            arch="small",
            attention=attention,
            num_classes=len(CLASS_NAMES),
            dropout=0.0,
            depthwise=depthwise,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, state = nnx.split(abstract)
    model = nnx.merge(graphdef, jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), state))
    load_torchvision(model, ref.state_dict())  # every array, from the reference's initialisation
    load_torchvision(model, backbone_pth)  # then the ImageNet backbone (torchvision layout)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in export_state_dict(model).items()}, strict=True)
    return model, ref


def jax_trajectory(
    model, x, y, x_eval, loss_name: str = "joint", orders: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(loss at each of the K steps, eval logits of ``x_eval`` after K steps)] for the batch in
    ``orders`` rotations of its order (the same computation, summed in other orders; one compile)."""
    loss = make_loss(loss_config(loss_name), HAM10000_COUNTS)
    weights = loss.class_weights(0)
    model_def = ModelDef(model)
    tx = make_optimizer(default.get_config().optimizer, model_def.init_params, 1, 1)

    @jax.jit
    def step(params, stats, opt_state, x, y, x_eval):
        eval_logits, _ = model_def.apply(params, stats, x_eval, train=False)

        def loss_fn(p):
            logits, new_stats = model_def.apply(p, stats, x, train=True, rng=jax.random.key(0))
            return loss(logits, y, weights), new_stats

        (value, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, value, eval_logits

    runs = []
    for r in range(orders):
        order = np.roll(np.arange(len(x)), r)
        params, stats = model_def.init_params, model_def.init_batch_stats
        opt_state = tx.init(params)
        losses = []
        for _ in range(K):
            params, stats, opt_state, value, _ = step(params, stats, opt_state, x[order], y[order], x_eval[order])
            losses.append(float(value))
        *_, eval_logits = step(params, stats, opt_state, x[order], y[order], x_eval[order])
        runs.append((np.array(losses), np.asarray(eval_logits)[np.argsort(order)]))
    return runs


def torch_trajectory(
    ref, x, y, x_eval, dtype: torch.dtype, loss_name: str = "joint", *, channels_last: bool = False, roll: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`jax_trajectory`, in PyTorch. ``channels_last`` (memory layout) and ``roll`` (the
    batch order rotated) change nothing but the order of float operations: each is an equally
    valid float32 PyTorch run. One thread: OpenMP threads spinning on a busy 2-core machine made
    a run 10-40x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    order = np.roll(np.arange(len(x)), roll)
    try:
        losses, logits = _torch_trajectory(ref, x[order], y[order], x_eval[order], dtype, loss_name, channels_last)
        return losses, logits[np.argsort(order)]
    finally:
        torch.set_num_threads(previous)


def _torch_trajectory(ref, x, y, x_eval, dtype, loss_name, channels_last):
    model = copy.deepcopy(ref).to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss = make_torch_loss(loss_config(loss_name), HAM10000_COUNTS)
    from caco_jax.interop.torch_reference import drw_weights

    weights = torch.tensor(drw_weights(HAM10000_COUNTS, 0.9999), dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dtype)
    xe = torch.from_numpy(np.ascontiguousarray(x_eval.transpose(0, 3, 1, 2))).to(dtype)
    if channels_last:
        xt, xe = xt.to(memory_format=torch.channels_last), xe.to(memory_format=torch.channels_last)
    yt = torch.from_numpy(y).long()
    losses = []
    for _ in range(K):
        model.train()
        value = loss(model(xt), yt, weights)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    model.eval()
    with torch.no_grad():
        eval_logits = model(xe).double().numpy()
    return np.array(losses), eval_logits


# Equally valid float32 PyTorch runs (memory layout x batch order). One run's distance from float64
# is one draw of rounding noise that Adam amplifies: over 14 such runs the loss distance of `se`
# spread from 3.8e-6 to 3.6e-4, in two modes (caco-jax's runs spread the same way).
TORCH32_RUNS = {
    f"{layout}_roll{r}": {"channels_last": layout == "channels_last", "roll": r}
    for layout in ("nchw", "channels_last")
    for r in range(4)
}


def distances(attention: str, data_dir: pathlib.Path, backbone_pth: pathlib.Path, loss_name: str = "joint") -> dict:
    """Distances from the float64 PyTorch trajectory, of caco-jax and of every float32 PyTorch run
    (TORCH32_RUNS): ``loss`` (max over the K steps of |loss - loss64|) and ``eval_logits`` (max
    |logits - logits64| on the held-out images after K steps). ``torch32`` holds the largest and
    the median over the PyTorch float32 runs."""
    x, y, x_eval, _ = real_batches(data_dir, per_class=1)
    model, ref = starting_point(attention, backbone_pth)
    l64, e64 = torch_trajectory(ref, x, y, x_eval, torch.float64, loss_name)
    runs = {"caco-jax": jax_trajectory(model, x, y, x_eval, loss_name)[0]}
    runs |= {
        f"torch32_{k}": torch_trajectory(ref, x, y, x_eval, torch.float32, loss_name, **kw)
        for k, kw in TORCH32_RUNS.items()
    }
    out: dict = {"loss64": l64.tolist(), "eval_logits64_max": float(np.abs(e64).max())}
    for name, (losses, logits) in runs.items():
        out[name] = {
            "loss": float(np.abs(losses - l64).max()),
            "eval_logits": float(np.abs(logits - e64).max()),
            "loss_per_step": np.abs(losses - l64).tolist(),
        }
    torch_runs = [v for k, v in out.items() if k.startswith("torch32_")]
    out["torch32"] = {m: float(max(r[m] for r in torch_runs)) for m in ("loss", "eval_logits")}
    out["torch32_median"] = {m: float(np.median([r[m] for r in torch_runs])) for m in ("loss", "eval_logits")}
    return out


if __name__ == "__main__":
    import json
    import os
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root), str(root / "tests")]
    import conftest  # noqa: F401  (same XLA settings as the tests)

    data = pathlib.Path(os.environ.get("CACO_HAM10000_DIR", root.parent / "shared" / "data" / "ham10000_real"))
    for attention in sys.argv[1:] or ["se", "caco"]:
        print(
            attention,
            json.dumps(
                distances(attention, data, data / "pretrained" / "mobilenet_v3_small-047dcff4-features.pth"), indent=1
            ),
            flush=True,
        )
