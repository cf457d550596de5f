"""The benchmark's options: one dataclass, each field with its help text; the command line is generated from it.

A field's type decides its flag: ``int``/``float``/``str`` -> ``--name VALUE``; ``bool`` ->
``--name`` / ``--no_name``; ``tuple[str, ...]`` -> a comma-separated list. Metadata keys
(set with :func:`opt`): ``help`` (required), ``choices`` (allowed values, of each item
for a tuple), ``min`` (lowest allowed number). Checks run in ``__post_init__``, so an
``Options`` built in Python is checked exactly like one parsed from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Sequence
from typing import Any

from caco_jax.errors import UsageError
from caco_jax.flags import add_switch, parser
from caco_jax.models.attention import ATTENTION_BLOCKS
from caco_jax.models.depthwise import DEPTHWISE_IMPLS

TORCH_MODES: tuple[str, ...] = ("eager", "channels_last_bf16", "compile", "compile_reduce_overhead")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")


def opt(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 -- argparse's word
    """A dataclass field with its default, help text and checks (``choices``, ``min``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class Options:
    """What caco-jax benchmark measures."""

    batch_size: int = opt(128, "global batch size of the train and eval steps", min=1)
    image_size: int = opt(224, "network input size (px)", min=1)
    load_size: int = opt(
        0,
        "uint8 size the train step crops from on synthetic input (0: image_size*256/224, about "
        "the pixels of HAM10000 as stored); the grain rows load at the stored size when 0, as the "
        "trainer, else resized to it",
        min=0,
    )
    augment: bool = opt(
        True,
        "on-device augmentation in the caco-jax train step; off: input already at "
        "--image_size, only normalised (the work torch's rows time)",
    )
    arch: str = opt("small", "MobileNetV3 size", choices=("small", "large", "tiny"))
    variants: tuple[str, ...] = opt(("se", "caco"), "attention variants", choices=tuple(ATTENTION_BLOCKS))
    dtypes: tuple[str, ...] = opt(DTYPES, "compute dtypes", choices=DTYPES)
    depthwise: tuple[str, ...] = opt(
        ("auto",),
        "depthwise-conv implementations (model.depthwise; auto: shifts_vjp "
        "on CPU, conv elsewhere); one caco-jax row each",
        choices=DEPTHWISE_IMPLS,
    )
    windows: int = opt(5, "timed windows (rounds); the median window is reported", min=1)
    steps: int = opt(20, "steps (calls) per window", min=1)
    warmup: int = opt(3, "untimed steps after the first (compiling) call", min=0)
    latency_calls: int = opt(50, "batch-1 calls for the latency median (spread over the rounds)", min=1)
    eval: bool = opt(True, "measure evaluation throughput and batch-1 latency")
    torch: bool = opt(
        True, "torchvision mobilenet_v3_small baseline (when torch is installed), timed in the same rounds as caco-jax"
    )
    torch_modes: tuple[str, ...] = opt(
        TORCH_MODES, "torchvision configurations (compile modes run per --dtypes)", choices=TORCH_MODES
    )
    torch_threads: int = opt(
        0, "torch and onnxruntime CPU threads (0: their default); on CPU, compare at JAX's thread count", min=0
    )
    onnx: bool = opt(
        True,
        "onnxruntime batch-1 CPU latency of each variant's ONNX export (torch + onnx extras), timed in the same rounds",
    )
    data_dir: str = opt("", "TFDS data_dir with a HAM10000 build (for the grain rows)")
    manual_dir: str = opt("", "raw HAM10000 to build from (into --data_dir, or a temporary dir deleted afterwards)")
    build_size: int = opt(225, "stored shorter side of the HAM10000 build", min=1)
    num_workers: int = opt(-1, "grain worker processes (-1: CPUs - 2, at most 16)", min=-1)
    pipeline_variant: str = opt(
        "caco", "variant whose train step the grain pipeline feeds", choices=tuple(ATTENTION_BLOCKS)
    )
    overhead: bool = opt(True, "measure the per-call cost of nnx.jit against the split-once jax.jit step")
    overhead_batch: int = opt(2, "batch size of the per-call overhead measurement", min=1)
    overhead_image_size: int = opt(32, "image size of the per-call overhead measurement", min=1)
    steps_per_dispatch: int = opt(1, ">1: also measure K train steps per dispatch (lax.scan over K batches)", min=1)
    compile_cache: str = opt(
        "off",
        "persistent XLA compilation cache directory, 'default' (the scripts' shared "
        "one), or 'off' (the default: compile times are then cold ones)",
    )
    seed: int = opt(0, "random seed (models, synthetic batches, pipeline)")
    out: str = opt("benchmark.json", "JSON output path")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            items = value if isinstance(value, tuple) else (value,)
            if isinstance(value, tuple) and not value:
                raise ValueError(f"--{f.name} needs at least one value")
            choices = f.metadata.get("choices")
            bad = [v for v in items if choices is not None and v not in choices]
            if bad and choices is not None:
                raise ValueError(
                    f"--{f.name}: unknown {', '.join(map(repr, bad))}; expected some of {', '.join(choices)}"
                )
            low = f.metadata.get("min")
            if low is not None and value < low:
                raise ValueError(f"--{f.name} must be >= {low}, got {value}")

    def resolved_load_size(self) -> int:
        if not self.augment:
            return self.image_size
        return self.load_size or round(self.image_size * 256 / 224)

    def resolved_workers(self) -> int:
        if self.num_workers >= 0:
            return self.num_workers
        return max(0, min(16, (os.cpu_count() or 1) - 2))


def _csv(item_type: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(item_type(x.strip()) for x in text.split(",") if x.strip())

    parse.__name__ = f"comma-separated {item_type.__name__}"  # argparse's error message names it
    return parse


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if value == "" else str(value)


def add_arguments(p: argparse.ArgumentParser, cls: type = Options) -> argparse.ArgumentParser:
    """One flag per field of the dataclass ``cls`` on ``p``, help text and default from the field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text: declare it with opt(default, help)")
        kind, choices = hints[f.name], f.metadata.get("choices")
        help_text = f.metadata["help"]
        if choices is not None:
            help_text += f"; from {{{','.join(choices)}}}"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        flag = f"--{f.name}"
        if kind is bool:
            if not isinstance(f.default, bool):
                raise TypeError(f"{cls.__name__}.{f.name}: a switch needs a default of True or False")
            add_switch(p, f.name, f.default, help_text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            p.add_argument(
                flag,
                type=_csv(item),
                default=f.default,
                metavar="A,B,...",
                help=f"{help_text} (default: {_show(f.default)})",
            )
        elif kind in (int, float, str):
            p.add_argument(
                flag,
                type=kind,
                default=f.default,
                metavar=kind.__name__.upper(),
                help=f"{help_text} (default: {_show(f.default)})",
            )
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {kind!r}")
    return p


def from_args(args: argparse.Namespace, cls: type = Options) -> Any:
    """``cls`` from parsed arguments (other attributes of ``args`` are ignored); a bad value is a UsageError."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in vars(args).items() if k in names})
    except ValueError as e:
        raise UsageError(str(e)) from e


def parse(argv: Sequence[str] | None = None, cls: type = Options, description: str | None = None) -> Any:
    """``cls`` from a command line (tests, and code that drives the benchmark)."""
    return from_args(add_arguments(parser("benchmark", description), cls).parse_args(argv), cls)
