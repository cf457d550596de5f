"""Measure how the LDAM logit scale ``s`` behaves with a plain (unnormalised) linear head.

The official LDAM code multiplies logits by s = 30 because its last layer is
cosine-normalised (logits in [-1, 1]). Our MobileNetV3 head is an ordinary linear
layer, so ``caco_jax.training.losses.DEFAULT_LDAM_S`` is chosen from this measurement on a
proxy task:

* 7 classes of Gaussian features (d = 32, class means ~ N(0, 0.35^2 I), a random
  tanh warp so the classes are not linearly separable), training class counts
  proportional to HAM10000's (imbalance 58:1), a balanced test set (1000 per class);
  every seed draws its own data set *and* its own initialisation;
* an MLP (32 -> H -> ReLU -> 7; the last layer a plain linear layer) trained with
  AdamW (lr 1e-3, weight decay 5e-2 as in the paper), batch 128;
* LDAM (max_m = 0.5) for s in {1, 2, 5, 10, 30} and cross-entropy, each without and
  with DRW (beta 0.9999, switched on for the last third of training);
* two regimes: ``full``  (80% of HAM10000's counts, H = 64, 30 epochs: the training
  set is not memorised) and ``memorise`` (25% of the counts, H = 256, 60 epochs:
  training BACC reaches 100%, as a fine-tuned CNN does on HAM10000).

The table gives balanced accuracy on the balanced test set, mean ± std over seeds,
and the paired difference to cross-entropy (same data, same initialisation).
Everything is vmapped into one jitted function per regime; about 30 s on a 2-core
CPU. Run:  python tools/measure_ldam_scale.py [--seeds 5] [--regime both]

Measured (5 seeds, 2-core CPU)::

                 test BACC % (paired difference to CE, percentage points)
    loss   s   | full, no DRW   full, DRW      memorise, no DRW  memorise, DRW
    CE     -   | 51.51          63.79          48.69             55.04
    LDAM   1   | 52.01 (+0.49)  64.07 (+0.28)  49.13 (+0.44)     55.29 (+0.25)
    LDAM   2   | 52.12 (+0.61)  63.13 (-0.67)  48.38 (-0.31)     53.22 (-1.82)
    LDAM   5   | 52.37 (+0.86)  61.76 (-2.03)  47.90 (-0.79)     50.92 (-4.12)
    LDAM  10   | 52.34 (+0.83)  61.04 (-2.75)  47.54 (-1.15)     49.35 (-5.69)
    LDAM  30   | 52.02 (+0.51)  60.34 (-3.45)  47.16 (-1.53)     48.33 (-6.71)
    (std over seeds of the paired differences: 0.07-1.09; of the BACCs: 3.4-4.6)

With an unnormalised head, ``s`` mostly multiplies the logits' effective learning rate
(Adam steps are scale-free, so ``s * z`` moves ``s`` times faster): larger ``s``
memorises the training set sooner (train BACC 93% at s = 1, 99.8% at s = 30) and
generalises worse, most of all with DRW. Only ``s = 1`` beat cross-entropy in all four
settings (+0.25 to +0.49 points, seed std <= 0.17), hence the default ``loss.ldam_s = 1``.
This is a proxy; the real-data check is the ``caco_joint_s30`` cell of
``caco-jax reproduce --preset cpu`` (docs/results_cpu.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from caco_jax.data.classes import HAM10000_COUNTS, NUM_CLASSES
from caco_jax.training.losses import drw_weights, ldam_loss, ldam_margins

SCALES = (1.0, 2.0, 5.0, 10.0, 30.0)
DIM, BATCH, SEPARATION, TEST_PER_CLASS = 32, 128, 0.35, 1000
REGIMES = {  # name: (fraction of HAM10000 counts, hidden width, epochs)
    "full": (0.8, 64, 30),
    "memorise": (0.25, 256, 60),
}


def make_data(seed: int, train_counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Imbalanced train / balanced test features from a random generative model."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(NUM_CLASSES, DIM)) * SEPARATION
    warp = rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)

    def sample(counts):
        y = np.repeat(np.arange(NUM_CLASSES), counts)
        z = means[y] + rng.normal(size=(len(y), DIM))
        x = z + 0.5 * np.tanh(z @ warp)
        return x.astype(np.float32), y.astype(np.int32)

    x_tr, y_tr = sample(train_counts)
    x_te, y_te = sample(np.full(NUM_CLASSES, TEST_PER_CLASS))
    return x_tr, y_tr, x_te, y_te


def init_mlp(key: jax.Array, hidden: int) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (DIM, hidden)) * np.sqrt(2.0 / DIM),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, NUM_CLASSES)) * np.sqrt(1.0 / hidden),
        "b2": jnp.zeros((NUM_CLASSES,)),
    }


def apply_mlp(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def balanced_accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    onehot = jax.nn.one_hot(y, NUM_CLASSES)
    return jnp.mean(onehot.T @ correct / onehot.sum(0))


def run_regime(name: str, seeds: int, max_m: float) -> None:
    frac, hidden, epochs = REGIMES[name]
    t0 = time.time()
    counts = np.maximum(1, np.round(frac * np.asarray(HAM10000_COUNTS))).astype(np.int64)
    data = [make_data(1000 + k, counts) for k in range(seeds)]
    x_tr, y_tr, x_te, y_te = (jnp.asarray(np.stack(a)) for a in zip(*data, strict=True))
    steps_per_epoch = int(np.ceil(counts.sum() / BATCH))
    total_steps, drw_step = epochs * steps_per_epoch, (2 * epochs // 3) * steps_per_epoch

    margins = ldam_margins(counts, max_m)
    w_drw = jnp.asarray(drw_weights(counts))
    opt = optax.adamw(1e-3, weight_decay=5e-2)

    # One row per run: (label, s, margin multiplier (0 = cross-entropy), DRW on?).
    runs = [
        (lbl, s, mult, drw)
        for drw in (False, True)
        for lbl, s, mult in [("CE", 1.0, 0.0)] + [("LDAM", s, 1.0) for s in SCALES]
    ]

    def train_eval(key, x_tr, y_tr, x_te, y_te, s, margin_mult, drw_on):
        params = init_mlp(key, hidden)

        def step(carry, i):
            params, state, key = carry
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (BATCH,), 0, y_tr.shape[0])
            cw = jnp.where(drw_on & (i >= drw_step), w_drw, jnp.ones_like(w_drw))

            def loss_fn(p):
                logits = apply_mlp(p, x_tr[idx])
                return ldam_loss(logits, y_tr[idx], margins * margin_mult, s=s, class_weights=cw)

            updates, state = opt.update(jax.grad(loss_fn)(params), state, params)
            return (optax.apply_updates(params, updates), state, key), None

        carry = (params, opt.init(params), key)
        (params, _, _), _ = jax.lax.scan(step, carry, jnp.arange(total_steps))
        return (balanced_accuracy(apply_mlp(params, x_te), y_te), balanced_accuracy(apply_mlp(params, x_tr), y_tr))

    cfg = [jnp.asarray([r[i] for r in runs]) for i in (1, 2, 3)]
    per_run = jax.vmap(train_eval, in_axes=(None,) * 5 + (0, 0, 0))
    per_seed = jax.jit(jax.vmap(per_run, in_axes=(0,) * 5 + (None,) * 3))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    test_bacc, train_bacc = (np.asarray(a) * 100 for a in per_seed(keys, x_tr, y_tr, x_te, y_te, *cfg))

    print(
        f"\nregime '{name}': train counts {counts.tolist()}, MLP hidden {hidden}, {epochs} epochs "
        f"x {steps_per_epoch} steps, {seeds} seeds, max_m={max_m}, DRW from epoch {2 * epochs // 3}"
    )
    print(f"{'loss':<5} {'s':>3} {'DRW':>4} | {'test BACC %':>14} | {'vs CE (paired)':>15} | train BACC %")
    for j, (label, s, _, drw) in enumerate(runs):
        ce = runs.index(("CE", 1.0, 0.0, drw))
        diff = test_bacc[:, j] - test_bacc[:, ce]
        print(
            f"{label:<5} {'-' if label == 'CE' else f'{s:g}':>3} {'yes' if drw else 'no':>4} | "
            f"{test_bacc[:, j].mean():6.2f} ± {test_bacc[:, j].std():4.2f} | "
            f"{diff.mean():+6.2f} ± {diff.std():4.2f} | {train_bacc[:, j].mean():6.1f}"
        )
    print(f"({time.time() - t0:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-m", type=float, default=0.5)
    parser.add_argument("--regime", choices=("both", *REGIMES), default="both")
    args = parser.parse_args()
    for name in REGIMES if args.regime == "both" else (args.regime,):
        run_regime(name, args.seeds, args.max_m)


if __name__ == "__main__":
    main()
