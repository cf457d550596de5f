"""State of the attention blocks of a training run at one checkpoint: gates, gains, BatchNorm statistics.

    python tools/inspect_attention.py --workdir runs/caco [--step 248] [--images 256] [--json out.json]

For every block with coordinate attention (caco, seco), on validation images in
evaluation mode: the mean and spread of the coordinate gate a^h * a^w, the same
gate computed with batch statistics (what training sees), the ratio of the gate's
BatchNorm running variance to the batch variance (far from 1: evaluation mode sees
a different gate than training did), the gains of a preserving init, and how much
the max-pooled branch moves the channel gate (mean |gate - SE's gate|). This is how
the fine-tuning failure of the plain initialisation was diagnosed (docs/model.md).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caco_jax.data import pipeline  # noqa: E402
from caco_jax.data.augment import normalize  # noqa: E402
from caco_jax.data.registry import open_data  # noqa: E402
from caco_jax.models import model_from_config  # noqa: E402
from caco_jax.models.attention import _avg_pool, _max_pool  # noqa: E402
from caco_jax.models.layers import activation, hard_sigmoid  # noqa: E402
from caco_jax.runs.workspace import load_config  # noqa: E402
from caco_jax.training import parallel  # noqa: E402
from caco_jax.training.checkpoints import Checkpointer  # noqa: E402
from caco_jax.training.steps import ModelDef, init_state, make_optimizer  # noqa: E402


def restore_model(workdir: pathlib.Path, step: int | None):
    """(config, model with the checkpoint's weights, step, validation source)."""
    config = load_config(workdir)
    splits = open_data(config, workdir)
    model = model_from_config(config.model, num_classes=len(splits["train"].class_names), seed=config.seed)
    model_def = ModelDef(model)
    tx = make_optimizer(config.optimizer, model_def.init_params, 1, 1)
    like = jax.device_put(init_state(model_def, tx, config.seed), parallel.replicated(parallel.make_mesh(1)))
    ckpt = Checkpointer(workdir / "checkpoints", keep=100)
    steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {workdir / 'checkpoints'}")
    chosen = step if step in steps else min(steps, key=lambda s: abs(s - (step or max(steps))))
    state, _, _ = ckpt.restore(chosen, like)
    ckpt.close()
    merged = nnx.merge(model_def.eval_graph, jax.device_get(state.params), jax.device_get(state.batch_stats))
    return config, merged, chosen, splits["validation"]


def _coord_detail(coord, x: jax.Array) -> dict[str, float]:
    """Gate statistics of one coordinate attention on input x, eval-mode BN and batch BN."""
    h = x.shape[1]
    z = jnp.concatenate([jnp.mean(x, axis=2), jnp.mean(x, axis=1)], axis=1)
    pre = coord.conv1(z)
    batch_var = jnp.var(pre.reshape(-1, pre.shape[-1]), axis=0)
    out = {}
    for mode, (mean, var) in {
        "eval": (coord.bn1.mean[...], coord.bn1.var[...]),
        "batch": (jnp.mean(pre.reshape(-1, pre.shape[-1]), axis=0), batch_var),
    }.items():
        f = (pre - mean) * jax.lax.rsqrt(var + coord.bn1.eps) * coord.bn1.scale[...] + coord.bn1.bias[...]
        f = activation(coord.act)(f)
        gate = jax.nn.sigmoid(coord.conv_h(f[:, :h]))[:, :, None, :] * jax.nn.sigmoid(coord.conv_w(f[:, h:]))[:, None]
        if coord.gain is not None:
            gate = 1.0 + coord.gain[...] * (gate - 1.0)
        out[f"gate_{mode}_mean"] = float(jnp.mean(gate))
        out[f"gate_{mode}_std"] = float(jnp.std(gate))
    out["bn_running_over_batch_var"] = float(jnp.median(coord.bn1.var[...] / (batch_var + 1e-12)))
    out["gain_mean_abs"] = None if coord.gain is None else float(jnp.mean(jnp.abs(coord.gain[...])))
    return out


def inspect(model, images: np.ndarray) -> list[dict[str, object]]:
    """One row per block with an attention slot."""
    x = normalize(jnp.asarray(images))
    x = model.stem(x)
    rows = []
    for i, block in enumerate(model.blocks):
        y = x if block.expand is None else block.expand(x)
        y = block.depthwise(y)
        att = block.attention
        if att is not None and hasattr(att, "coord"):
            row: dict[str, object] = {"block": i, "channels": int(y.shape[-1])}
            if hasattr(att, "channel"):
                ch = att.channel
                avg = ch.mlp(_avg_pool(y))
                mx = ch.mlp(_max_pool(y))
                g = ch.max_gain[...] if ch.max_gain is not None else 1.0
                row["max_gain_mean_abs"] = None if ch.max_gain is None else float(jnp.mean(jnp.abs(ch.max_gain[...])))
                row["channel_gate_shift_vs_se"] = float(
                    jnp.mean(jnp.abs(hard_sigmoid(avg + g * mx) - hard_sigmoid(avg)))
                )
                coord_in = att.channel(y)
            else:
                coord_in = att.se(y)
            row |= _coord_detail(att.coord, coord_in)
            rows.append(row)
        x = block(x)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest; else the nearest kept)")
    p.add_argument("--images", type=int, default=256, help="validation images to average over")
    p.add_argument("--json", type=pathlib.Path, help="write the rows here")
    args = p.parse_args(argv)
    config, model, step, source = restore_model(args.workdir, args.step)
    batch = next(
        pipeline.eval_iterator(source, batch_size=min(args.images, len(source)), image_size=config.data.image_size)
    )
    rows = inspect(model, batch["image"][batch["mask"]])
    print(
        f"{args.workdir} at step {step} ({config.model.attention}, init {config.model.attention_init}); "
        f"{int(batch['mask'].sum())} validation images"
    )
    keys = list(rows[0]) if rows else []
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print(
            "| "
            + " | ".join(
                "-" if r[k] is None else (f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])) for k in keys
            )
            + " |"
        )
    if args.json:
        args.json.write_text(json.dumps({"workdir": str(args.workdir), "step": step, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
