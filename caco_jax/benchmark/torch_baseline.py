"""torchvision ``mobilenet_v3_small`` (7 classes) baseline: eager, channels_last + bf16 autocast,
``torch.compile`` default and "reduce-overhead" (CUDA graphs).

Like :mod:`caco_jax.benchmark.jax_steps`, this module builds, compiles and warms up; the
timed windows run in the same rounds as caco-jax's (:func:`timing.time_rows`), so
their ratios are measured side by side.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from caco_jax.benchmark.options import TORCH_MODES, Options
from caco_jax.benchmark.timing import Timed, timed
from caco_jax.data.classes import NUM_CLASSES

MODEL = "mobilenet_v3_small"


def torch_configs(opts: Options) -> list[tuple[str, str]]:
    """(mode, dtype) pairs: eager is float32, channels_last_bf16 bfloat16; compile modes follow --dtypes."""
    out = []
    for mode in opts.torch_modes:
        if mode == "eager":
            out.append((mode, "float32"))
        elif mode == "channels_last_bf16":
            out.append((mode, "bfloat16"))
        elif mode in ("compile", "compile_reduce_overhead"):
            out.extend((mode, d) for d in opts.dtypes)
        else:
            raise ValueError(f"unknown torch mode {mode!r}; expected one of {TORCH_MODES}")
    return out


def skip_reason(mode: str, device: Any) -> str | None:
    import torch

    if mode == "compile_reduce_overhead" and device.type != "cuda":
        return "reduce-overhead uses CUDA graphs; needs a CUDA device"
    if mode.startswith("compile") and not hasattr(torch, "compile"):
        return "torch.compile unavailable"
    return None


def prepare_config(mode: str, dtype: str, opts: Options, device: Any) -> Timed:
    """Train (AdamW, cross-entropy, BatchNorm updates), eval and batch-1 forward of one configuration,
    compiled (first calls timed into the row) and warmed up.

    The input is float, normalised and already on the device (no augmentation):
    less work than caco-jax's step, which augments uint8 batches on the device.
    bfloat16 means channels_last memory format + bf16 autocast (parameters stay float32).
    """
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(opts.seed)
    cuda = device.type == "cuda"
    bf16 = dtype == "bfloat16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = torchvision.models.mobilenet_v3_small(num_classes=NUM_CLASSES).to(device).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=5e-2, fused=True if cuda else None)
    compile_mode = {"compile": "default", "compile_reduce_overhead": "reduce-overhead"}.get(mode)
    graphs = compile_mode == "reduce-overhead"

    def compiled(m: Any) -> Any:
        return torch.compile(m, mode=compile_mode, dynamic=False) if compile_mode else m

    train_fwd = compiled(model)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    b, s = opts.batch_size, opts.image_size
    x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (b,), device=device)

    def train(n: int) -> None:
        model.train()
        for _ in range(n):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                loss = F.cross_entropy(train_fwd(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    row: dict[str, Any] = {"framework": "torchvision", "model": MODEL, "variant": "se", "mode": mode, "dtype": dtype}
    _, row["compile_s"] = timed(lambda: train(1))
    train(opts.warmup)
    entry = Timed(row, train=(lambda: train(opts.steps), opts.steps * b), batch_size=b)
    if not opts.eval:
        return entry

    eval_fwd, one_fwd = compiled(model), compiled(model)  # separate compiled graphs: no dynamic-shape recompiles
    one = torch.randn(1, 3, s, s, device=device).contiguous(memory_format=fmt)

    def infer(fwd: Any, inp: Any, n: int) -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            for _ in range(n):
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = fwd(inp)
                if graphs:
                    out = out.clone()
        sync()

    _, row["eval_compile_s"] = timed(lambda: infer(eval_fwd, x, 1))
    infer(eval_fwd, x, opts.warmup)
    _, row["latency_compile_s"] = timed(lambda: infer(one_fwd, one, 1))
    infer(one_fwd, one, opts.warmup)
    entry.eval = (lambda: infer(eval_fwd, x, opts.steps), opts.steps * b)
    entry.latency = lambda: infer(one_fwd, one, 1)
    return entry


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process (to catch recompiles while timing)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def prepare_torch(
    opts: Options, log: Callable[[str], None] = print
) -> tuple[dict[tuple, Timed], list[dict[str, Any]], dict[str, Any]]:
    """Entries for the timed rounds (keyed ("torchvision", mode, dtype)), every configuration's row
    in order (a measured one is its entry's row, filled in by the rounds; a skipped one carries the
    reason), and the torch versions / device / threads."""
    try:
        import torch
        import torchvision
    except ImportError as e:  # the torch extra is optional
        return (
            {},
            [
                {
                    "framework": "torchvision",
                    "model": MODEL,
                    "mode": m,
                    "dtype": d,
                    "skipped": f"torch not installed ({e})",
                }
                for m, d in torch_configs(opts)
            ],
            {},
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if opts.torch_threads > 0:
        # On a CPU shared with other jobs, OpenMP with one thread per core collapses
        # (threads spin at barriers while one of them is descheduled): pin fewer.
        torch.set_num_threads(opts.torch_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # as JAX's default precision on GPU
        torch.backends.cudnn.allow_tf32 = True
    # Every configuration stays alive for the shared rounds, so torch.compile's caches
    # cannot be reset between them: allow their graphs (3 per configuration), and fail
    # rather than fall back to eager silently.
    torch._dynamo.reset()
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 256)
    dynamo.fail_on_recompile_limit_hit = True
    info = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_device": str(device),
        "torch_device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    entries: dict[tuple, Timed] = {}
    rows = []
    for mode, dtype in torch_configs(opts):
        reason = skip_reason(mode, device)
        if not reason:
            log(f"torchvision {mode} {dtype} on {device}: building and warming up ...")
            try:
                entry = prepare_config(mode, dtype, opts, device)
                entries[("torchvision", mode, dtype)] = entry
                rows.append(entry.row)
                log(f"  first train call {entry.row['compile_s']:.1f} s")
                continue
            except Exception as e:  # noqa: BLE001 -- a failing baseline mode must not lose the other rows
                reason = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log(f"torchvision {mode} {dtype}: skipped ({reason})")
        rows.append(
            {
                "framework": "torchvision",
                "model": MODEL,
                "variant": "se",
                "mode": mode,
                "dtype": dtype,
                "skipped": reason,
            }
        )
    return entries, rows, info
