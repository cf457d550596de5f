"""Print the parameter count of every attention variant beside the paper's Table 5.

    python tools/params.py [--num_classes 7] [--arch small]

Counts are trainable parameters (BatchNorm running statistics excluded), computed from
abstract shapes (no weights are materialised, so this runs in seconds).
"""

from __future__ import annotations

import argparse

from flax import nnx

from caco_jax.models import ARCHS, ATTENTION_BLOCKS, MobileNetV3, count_params

# The paper's Table 2/4/5 figures (millions); it does not say how it counted.
PAPER_PARAMS_M = {"se": 2.18, "caco": 2.29, "cbam": 2.20, "seco": 2.64, "eca": 2.08, "none": None}


def param_table(arch: str = "small", num_classes: int = 7) -> list[tuple[str, int, float | None]]:
    """(attention, our parameter count, the paper's figure in M) for every variant."""
    rows = []
    for att in ATTENTION_BLOCKS:
        model = nnx.eval_shape(
            lambda att=att: MobileNetV3(arch=arch, attention=att, num_classes=num_classes, rngs=nnx.Rngs(0))
        )
        rows.append((att, count_params(model), PAPER_PARAMS_M.get(att) if arch == "small" else None))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="small", choices=sorted(ARCHS))
    p.add_argument("--num_classes", type=int, default=7)
    args = p.parse_args()
    rows = param_table(args.arch, args.num_classes)
    se = dict((a, n) for a, n, _ in rows)["se"]
    print("| attention | params (ours) | vs se | paper (M) |\n|---|---:|---:|---:|")
    for att, n, paper in rows:
        print(f"| {att} | {n:,} | {n - se:+,} | {paper if paper is not None else '-'} |")


if __name__ == "__main__":
    main()
