"""scripts/benchmark.py end to end at toy size: every row measured, JSON and table written."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from caco_jax import benchmarking
from caco_jax.data import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(stats: dict) -> bool:
    return stats["median"] > 0 and stats["min"] > 0 and stats["max"] >= stats["min"]


@pytest.mark.slow
def test_benchmark_main_end_to_end(tmp_path, capsys):
    manual = synthetic.write_manual_dir(tmp_path / "raw", num_images=60, image_size=(40, 30), seed=0)
    out = tmp_path / "bench.json"
    argv = ["--arch", "tiny", "--batch_size", "4", "--image_size", "32", "--load_size", "36",
            "--variants", "se,caco", "--dtypes", "float32", "--windows", "1", "--steps", "2", "--warmup", "1",
            "--latency_calls", "2", "--no-torch", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "tfds"),
            "--build_size", "32", "--num_workers", "0", "--overhead_batch", "2", "--overhead_image_size", "16",
            "--out", str(out)]
    returned = _script().main(argv)
    result = json.loads(out.read_text())
    assert result["rows"] == returned["rows"]

    rows = {(r["framework"], r["variant"], r["dtype"]): r for r in result["rows"]}
    assert set(rows) == {("caco-jax", "se", "float32"), ("caco-jax", "caco", "float32")}
    for row in rows.values():
        assert "skipped" not in row
        assert _positive(row["images_per_s"]) and _positive(row["eval_images_per_s"])
        assert row["compile_s"] > 0 and row["latency_ms"]["median"] > 0
        assert len(row["images_per_s"]["windows"]) == 1
    assert result["config"]["batch_size"] == 4 and result["config"]["load_size"] == 36
    assert result["device"]["device_kind"] and result["versions"]["jax"]

    (pipe,) = result["pipeline"]
    assert pipe["variant"] == "caco" and "skipped" not in pipe
    assert _positive(pipe["e2e_images_per_s"]) and _positive(pipe["pipeline_only_images_per_s"])
    assert pipe["e2e_over_synthetic"] > 0

    wrappers = result["dispatch_overhead"]["wrappers"]
    assert set(wrappers) == {"jax.jit, split once (ours)", "nnx.jit", "nnx.cached_partial(nnx.jit)"}
    assert all(w["step"]["ms"] > 0 and w["noop"]["ms"] > 0 for w in wrappers.values())
    assert "caco_over_se_float32" in result["targets"]

    # onnxruntime rows: torchvision has no mobilenet_v3_tiny, so each says so (tests/test_export_onnx.py times one)
    assert [r["variant"] for r in result["onnx"]] == ["se", "caco"]
    assert all("torchvision has no mobilenet_v3_tiny" in r["skipped"] for r in result["onnx"])

    table = capsys.readouterr().out
    assert "| caco-jax | mobilenetv3_tiny-caco | float32, depthwise " in table and "nnx.jit" in table
    assert "onnxruntime (CPU), batch 1" in table


def test_skips_are_reported():
    """No dataset -> a pipeline row with a reason; CUDA graphs on a CPU -> a skipped torch row."""
    opts = benchmarking.Options()
    _, _, reason = benchmarking.resolve_dataset(opts, log=lambda _: None)
    assert reason and "--data_dir" in reason
    assert benchmarking.torch_configs(benchmarking.Options(dtypes=("float32",))) == [
        ("eager", "float32"), ("channels_last_bf16", "bfloat16"), ("compile", "float32"),
        ("compile_reduce_overhead", "float32")]
    with pytest.raises(ValueError, match="unknown torch mode"):
        benchmarking.torch_configs(benchmarking.Options(torch_modes=("fast",)))


def test_rate_stats_median_of_windows():
    stats = benchmarking.rate_stats([1.0, 2.0, 4.0], 8)
    assert stats == {"median": 4.0, "min": 2.0, "max": 8.0, "windows": [8.0, 4.0, 2.0]}
