"""The benchmark harness (caco_jax/benchmark/, command caco-jax benchmark): end to end at toy size, and
its parts -- option parsing, rate statistics, shared rounds and ratios, targets -- without compiling."""

from __future__ import annotations

import dataclasses
import json

import pytest

from caco_jax.benchmark import options, report, timing
from caco_jax.benchmark.options import Options, opt
from caco_jax.errors import UsageError
from caco_jax.flags import parser


def _help(cls=Options) -> str:
    return options.add_arguments(parser("benchmark", None), cls).format_help()


def _positive(stats: dict) -> bool:
    return stats["median"] > 0 and stats["min"] > 0 and stats["max"] >= stats["min"]


@pytest.mark.slow
def test_benchmark_main_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    from caco_jax.data import synthetic
    from caco_jax.models.depthwise import resolve

    manual = synthetic.write_manual_dir(tmp_path / "raw", num_images=60, image_size=(40, 30), seed=0)
    out = tmp_path / "bench.json"
    # One variant (caco_over_se is covered by test_cpu_targets_and_table); the overhead's train step has the
    # main one's shapes, so the persistent compilation cache compiles it once.
    argv = [
        "--arch",
        "tiny",
        "--batch_size",
        "4",
        "--image_size",
        "32",
        "--load_size",
        "32",
        "--variants",
        "caco",
        "--dtypes",
        "float32",
        "--windows",
        "2",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--latency_calls",
        "2",
        "--torch_modes",
        "eager",
        "--torch_threads",
        "1",
        "--manual_dir",
        str(manual),
        "--data_dir",
        str(tmp_path / "tfds"),
        "--build_size",
        "32",
        "--num_workers",
        "0",
        "--overhead_batch",
        "4",
        "--overhead_image_size",
        "32",
        "--out",
        str(out),
    ]
    from caco_jax.cli.benchmark import main

    assert main(argv) == 0
    result = json.loads(out.read_text())

    dw = resolve("auto")
    rows = {(r["framework"], r["variant"], r["dtype"], r.get("depthwise")): r for r in result["rows"]}
    assert set(rows) == {("caco-jax", "caco", "float32", dw), ("torchvision", "se", "float32", None)}
    for row in rows.values():
        assert "skipped" not in row
        assert _positive(row["images_per_s"]) and _positive(row["eval_images_per_s"])
        assert row["compile_s"] > 0 and row["latency_ms"]["median"] > 0
        assert len(row["images_per_s"]["windows"]) == 2 and len(row["latency_ms"]["rounds"]) == 2
    vs = rows[("caco-jax", "caco", "float32", dw)]["vs_torch_eager"]  # ratios to torch eager, round by round
    assert set(vs) == {"train", "eval", "latency"} and all(len(v["rounds"]) == 2 for v in vs.values())
    assert result["config"]["batch_size"] == 4 and result["config"]["load_size"] == 32
    assert result["device"]["device_kind"] and result["versions"]["jax"] and result["torch"]["torch_threads"] == 1
    assert result["onnx"]["skipped"]

    (pipe,) = result["pipeline"]
    assert pipe["variant"] == "caco" and "skipped" not in pipe
    assert _positive(pipe["e2e_images_per_s"]) and _positive(pipe["pipeline_only_images_per_s"])
    assert pipe["e2e_over_synthetic"] > 0

    wrappers = result["dispatch_overhead"]["wrappers"]
    assert set(wrappers) == {"jax.jit, split once (ours)", "nnx.jit", "nnx.cached_partial(nnx.jit)"}
    assert all(w["step"]["ms"] > 0 and w["noop"]["ms"] > 0 for w in wrappers.values())
    assert {
        "caco_train_over_torch_eager",
        "caco_eval_over_torch_eager",
        "caco_latency_over_torch_eager",
        "e2e_over_synthetic_caco_float32",
    } <= set(result["targets"])

    table = capsys.readouterr().out
    assert f"| caco-jax | mobilenetv3_tiny-caco | float32, depthwise {dw} |" in table and "nnx.jit" in table
    assert "| torchvision | mobilenet_v3_small | eager, float32 |" in table and "1 (ref)" in table


# --------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class _WithExtra(Options):
    extra_knob: int = opt(3, "a knob added later", min=0)
    extra_list: tuple[str, ...] = opt(("a",), "a list added later", choices=("a", "b"))
    extra_switch: bool = opt(False, "a switch added later")


def test_options_defaults_and_every_field_is_a_flag():
    assert options.parse([]) == Options()
    help_text = _help()
    for f in dataclasses.fields(Options):
        assert f"--{f.name}" in help_text
    assert "--no_torch" in help_text and "--no_overhead" in help_text


def test_a_field_added_to_the_dataclass_is_a_flag_with_its_help():
    help_text = " ".join(_help(_WithExtra).split())
    assert "--extra_knob INT a knob added later (default: 3)" in help_text
    assert "a list added later; from {a,b} (default: a)" in help_text
    assert "--extra_switch a switch added later --no_extra_switch the opposite of --extra_switch (default)" in help_text
    parsed = options.parse(
        [
            "--extra_knob",
            "5",
            "--extra_list",
            "b, a",
            "--extra_switch",
            "--no_eval",
            "--depthwise",
            "conv,shifts_vjp",
            "--batch_size",
            "8",
        ],
        cls=_WithExtra,
    )
    assert (parsed.extra_knob, parsed.extra_list, parsed.extra_switch) == (5, ("b", "a"), True)
    assert parsed.eval is False and parsed.depthwise == ("conv", "shifts_vjp") and parsed.batch_size == 8


def test_options_are_checked_however_built():
    with pytest.raises(UsageError, match="--depthwise: unknown 'fast'"):
        options.parse(["--depthwise", "conv,fast"])
    with pytest.raises(UsageError, match="--steps must be >= 1"):
        options.parse(["--steps", "0"])
    with pytest.raises(UsageError, match="invalid int value"):
        options.parse(["--batch_size", "x"])
    with pytest.raises(ValueError, match="torch_modes"):
        Options(torch_modes=("fast",))
    with pytest.raises(ValueError, match="at least one"):
        Options(variants=())

    @dataclasses.dataclass(frozen=True)
    class NoHelp(Options):
        bare: int = 1

    with pytest.raises(TypeError, match="no help text"):
        _help(NoHelp)


def test_skips_are_reported():
    """No dataset -> a pipeline row with a reason; the torch configurations each mode stands for."""
    from caco_jax.benchmark.pipeline import resolve_dataset
    from caco_jax.benchmark.torch_baseline import torch_configs

    _, _, reason = resolve_dataset(Options(), log=lambda _: None)
    assert reason and "--data_dir" in reason
    assert torch_configs(Options(dtypes=("float32",))) == [
        ("eager", "float32"),
        ("channels_last_bf16", "bfloat16"),
        ("compile", "float32"),
        ("compile_reduce_overhead", "float32"),
    ]


# --------------------------------------------------------------------------- timing, ratios, targets
def test_rate_stats_median_of_windows():
    stats = timing.rate_stats([1.0, 2.0, 4.0], 8)
    assert stats == {"median": 4.0, "min": 2.0, "max": 8.0, "windows": [8.0, 4.0, 2.0]}
    assert timing.paired_ratio([4.0, 2.0, 9.0], [2.0, 2.0, 3.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "rounds": [2.0, 1.0, 3.0],
    }
    with pytest.raises(ValueError, match="equal count"):
        timing.paired_ratio([1.0], [1.0, 2.0])


class _Clock:
    """A fake perf_counter that the fake windows advance by known amounts."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _entry(name: str, framework: str, seconds: dict[str, list[float]], calls: list[str], clock: _Clock):
    """A Timed entry whose train/eval windows and latency calls log their order and take ``seconds``."""
    left = {k: list(v) for k, v in seconds.items()}

    def work(kind: str):
        def run() -> None:
            calls.append(f"{kind}:{name}")
            clock.now += left[kind].pop(0)

        return run

    row = {
        "framework": framework,
        "model": name,
        "mode": "eager" if framework == "torchvision" else name,
        "dtype": "float32",
        "variant": "caco" if framework == "caco-jax" else "se",
    }
    return timing.Timed(row, train=(work("train"), 10), eval=(work("eval"), 20), latency=work("latency"), batch_size=5)


def test_rows_of_both_frameworks_are_timed_in_the_same_rounds(monkeypatch):
    clock, calls = _Clock(), []
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    jax_entry = _entry(
        "jax", "caco-jax", {"train": [1.0, 2.0], "eval": [1.0, 1.0], "latency": [0.1, 0.3]}, calls, clock
    )
    torch_entry = _entry(
        "torch", "torchvision", {"train": [2.0, 2.0], "eval": [4.0, 2.0], "latency": [0.2, 0.2]}, calls, clock
    )
    timing.time_rows({"j": jax_entry, "t": torch_entry}, windows=2, latency_calls=2, log=lambda _: None)
    assert calls == [
        "train:jax",
        "train:torch",
        "train:jax",
        "train:torch",
        "eval:jax",
        "eval:torch",
        "eval:jax",
        "eval:torch",
        "latency:jax",
        "latency:torch",
        "latency:jax",
        "latency:torch",
    ]
    j, t = jax_entry.row, torch_entry.row
    assert j["images_per_s"]["windows"] == [10.0, 5.0] and t["images_per_s"]["windows"] == [5.0, 5.0]
    assert j["step_ms"] == pytest.approx(1e3 * 5 / 7.5)
    assert j["latency_ms"]["rounds"] == pytest.approx([100.0, 300.0])

    rows = [j, t]
    report.add_ratios(rows)
    vs = j["vs_torch_eager"]
    assert vs["train"]["rounds"] == [2.0, 1.0] and vs["train"]["median"] == 1.5  # round by round
    assert vs["eval"]["rounds"] == [4.0, 2.0]
    assert vs["latency"]["rounds"] == pytest.approx([0.5, 1.5])
    assert "vs_torch_eager" not in t


def _row(framework, variant, mode, train, eval_, latency, **extra):
    return {
        "framework": framework,
        "model": "m",
        "variant": variant,
        "mode": mode,
        "dtype": "float32",
        "images_per_s": timing.rate_stats([1 / x for x in train], 1),
        "step_ms": 1.0,
        "compile_s": 1.0,
        "eval_images_per_s": timing.rate_stats([1 / x for x in eval_], 1),
        "latency_ms": timing.latency_stats([x / 1e3 for x in latency], [x / 1e3 for x in latency]),
        **extra,
    }


def test_cpu_targets_and_table():
    rows = [
        _row("caco-jax", "caco", "float32, depthwise conv", [10, 12], [30, 40], [2, 2], depthwise="conv"),
        _row("caco-jax", "caco", "float32, depthwise shifts_vjp", [20, 24], [30, 36], [1, 1], depthwise="shifts_vjp"),
        _row("caco-jax", "se", "float32, depthwise shifts_vjp", [25, 24], [50, 60], [1, 1], depthwise="shifts_vjp"),
        _row("torchvision", "se", "eager", [20, 20], [20, 20], [4, 2]),
    ]
    report.add_ratios(rows)
    result = {
        "rows": rows,
        "device": {"platform": "cpu", "device_kind": "cpu", "num_devices": 1, "host_cpus": 2, "jax_cpu_threads": 2},
        "torch": {"torch_threads": 1, "torch_device": "cpu"},
        "config": {
            "batch_size": 4,
            "image_size": 32,
            "load_size": 36,
            "arch": "tiny",
            "windows": 2,
            "steps": 1,
            "warmup": 1,
        },
        "load_average": {"before": 3.5, "after": 1.0},
    }
    result["targets"] = t = report.targets(result)
    train, evals, lat = (
        t["caco_train_over_torch_eager"],
        t["caco_eval_over_torch_eager"],
        t["caco_latency_over_torch_eager"],
    )
    assert train["jax"] == "float32, depthwise shifts_vjp" and train["ratio"] == pytest.approx(1.1)
    assert train["met"] and train["target"] == 1.0 and train["same_threads"] is False
    # each target takes the best implementation for it: conv evaluates faster here (1.5 and 2.0 vs 1.5 and 1.8)
    assert evals["jax"] == "float32, depthwise conv" and evals["ratio"] == pytest.approx(1.75)
    assert not evals["met"] and evals["target"] == 2.0
    assert lat["ratio"] == pytest.approx(0.375) and lat["met"] and lat["lower_is_better"]
    assert t["caco_over_se_float32"]["ratio"] == pytest.approx(0.9)  # 20/25 and 24/24, round by round
    table = report.format_table(result)
    assert "| caco-jax | m | float32, depthwise shifts_vjp |" in table
    assert "| 1.1 (1-1.2) |" in table and "1 (ref)" in table
    assert "threads differ (jax 2, torch 1)" in table
    assert "load average 3.5 -> 1.0" in table and "oversubscribed -- load average 3.5 on 2 CPUs" in table
