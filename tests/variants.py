"""The tests' per-variant cases, derived from the registries and what each entry declares.

Every test that runs once per attention block, loss or dataset takes its cases from here (or
from the registry itself), so a newly registered one is tested without editing a test file
(tests/test_architecture.py checks it with toys, tests/toys/). Only names and the entries'
own declarations are read: expectations come from independent references (the PyTorch twin,
torchvision, the papers' formulas), never from the code under test.
"""

from __future__ import annotations

from flax import nnx

from caco_jax.models.attention import ATTENTION_BLOCKS, ATTENTION_INITS, AttentionOptions, layout
from caco_jax.models.layers import Conv2d


def blocks() -> tuple[str, ...]:
    """Every registered attention name, 'none' included."""
    return tuple(ATTENTION_BLOCKS)


def real_blocks() -> tuple[str, ...]:
    """The registered names that build a block (not 'none')."""
    return tuple(name for name in ATTENTION_BLOCKS if ATTENTION_BLOCKS[name] is not None)


def has_gains(name: str) -> bool:
    """Whether a preserving init adds parameters (gains) to the block: its layout depends on the init."""
    return layout(name, "preserve") != layout(name, "plain")


def inits(name: str) -> tuple[str, ...]:
    """Every attention init for a block with gains (each lays out differently), else the default."""
    return ATTENTION_INITS if has_gains(name) else ("preserve",)


def distinct_inits(name: str) -> tuple[str, ...]:
    """One init per distinct parameter layout (the first in ``ATTENTION_INITS`` order)."""
    seen, out = set(), []
    for init in ATTENTION_INITS:
        if layout(name, init) not in seen:
            seen.add(layout(name, init))
            out.append(init)
    return tuple(out)


def starts_as_se() -> tuple[str, ...]:
    """Blocks that declare a preserving init starts them as the SE block they replace."""
    return tuple(name for name in real_blocks() if ATTENTION_BLOCKS[name].starts_as_se)


def with_se_mlp() -> tuple[str, ...]:
    """Blocks that declare where torchvision's SE MLP goes (``se_mlp_path``)."""
    return tuple(name for name in real_blocks() if ATTENTION_BLOCKS[name].se_mlp_path is not None)


def gained() -> tuple[str, ...]:
    return tuple(name for name in real_blocks() if has_gains(name))


def has_dense_conv(name: str) -> bool:
    """Whether the block holds a k x k convolution of its own (CBAM's spatial attention)."""
    block = ATTENTION_BLOCKS[name]
    if block is None:
        return False
    abstract = nnx.eval_shape(lambda: block(16, 8, AttentionOptions(), rngs=nnx.Rngs(0)))
    return any(isinstance(m, Conv2d) for _, m in nnx.iter_modules(abstract))


def block_cases() -> list[tuple[str, str, str, int, str]]:
    """(id, attention, ca_activation, channels, init) for the block-level parity tests.

    Every distinct layout of every block; both widths (C = 24: coordinate attention's mip at its
    floor of 8, SE squeeze 8, ECA k = 3; C = 288: mip 9, squeeze 72, k = 5) and both coordinate-
    attention activations spread over each block's cases (a block with one layout gets both)."""
    cases = []
    for name in real_blocks():
        chosen = distinct_inits(name)
        if len(chosen) == 1:
            chosen = chosen * 2
        for i, init in enumerate(chosen):
            c, act = (24, 288)[i % 2], ("swish", "hardswish")[(i + i // 2) % 2]
            cases.append((f"{name}-{init}-{c}-{act}", name, act, c, init))
    return cases
