"""Smoke tests of the benchmarks in bench/: each runs end to end on a tiny model with tiny counts and writes its
CSV and JSON. No timing assertions (timings belong in the benchmarks' own output, not in tests)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(out_dir: Path, stem: str) -> list[dict]:
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    assert csv_path.exists() and json_path.exists(), sorted(p.name for p in out_dir.iterdir())
    rows = read_csv(csv_path)
    assert rows
    meta = json.loads(json_path.read_text())
    assert meta["rows"] and meta["meta"]["torch"]
    return rows


def test_overhead(tmp_path):
    import bench_overhead

    bench_overhead.main(["--model", "tiny", "--images", "12", "--batch-size", "6", "--repeats", "1",
                         "--isi-dims", "2", "--out-dir", str(tmp_path)])
    rows = check_outputs(tmp_path, "overhead-cpu-fp32-tiny")
    configs = [r["config"] for r in rows]
    for want in ("bare", "capture", "capture+attn", "+similarity", "+isi", "+attention", "+probes", "+pe",
                 "full", "full isi_dim=2", "report() of full"):
        assert want in configs, configs
    full = next(r for r in rows if r["config"] == "full")
    assert float(full["ratio_vs_bare"]) > 0 and float(full["state_mb"]) > 0


def test_memory(tmp_path):
    import bench_memory

    bench_memory.main(["--model", "tiny", "--counts", "12,24", "--batch-size", "6", "--out-dir", str(tmp_path)])
    rows = check_outputs(tmp_path, "memory-cpu-fp32-tiny")
    assert [int(r["images"]) for r in rows] == [12, 24]
    assert all(float(r["peak_rss_mb"]) > 0 for r in rows)


def test_naive(tmp_path):
    import bench_naive

    # sdpa, transformers' default: hf_isi-full must switch the model to eager for its attention metrics
    bench_naive.main(["--model", "tiny", "--images", "40", "--batch-size", "20", "--num-classes", "3",
                      "--attn", "sdpa", "--out-dir", str(tmp_path)])
    rows = check_outputs(tmp_path, "naive-cpu-fp32-tiny")
    assert [r["approach"] for r in rows] == ["naive", "naive-pooled", "hf_isi-probes", "hf_isi-full"]
    assert all(float(r["peak_rss_mb"]) > 0 and float(r["speedup_vs_naive"]) > 0 for r in rows)


def test_naive_preallocated_equals_concatenated(tmp_path):
    """The frugal collection (one preallocated array) gathers the same hidden states as the list + concatenate."""
    import bench_naive

    common = ["--model", "tiny", "--images", "50", "--batch-size", "20", "--num-classes", "3",
              "--approaches", "naive"]
    concat = bench_naive.main(common + ["--repeats", "2", "--out-dir", str(tmp_path / "c")])[0]
    assert concat["repeats"] == 2 and len(concat["times_s"]) == 2
    prealloc = bench_naive.main(common + ["--collect", "preallocated", "--out-dir", str(tmp_path / "p")])[0]
    assert prealloc["collected_mb"] == concat["collected_mb"] > 0
    assert prealloc["probe_cls_acc"] == concat["probe_cls_acc"]
    assert prealloc["probe_mean_acc"] == concat["probe_mean_acc"]


def test_naive_median_run():
    import bench_naive

    runs = [{"seconds": s, "forward_s": f, "analysis_s": s - f, "peak_rss_mb": m, "extra_rss_mb": m - 100,
             "base_rss_mb": 100.0, "probe_cls_acc": [i], "loadavg": "x"}
            for i, (s, f, m) in enumerate([(30.0, 20.0, 900.0), (10.0, 9.0, 700.0), (20.0, 12.0, 800.0)])]
    row = bench_naive.median_run(runs)
    assert (row["seconds"], row["forward_s"], row["analysis_s"], row["peak_rss_mb"]) == (20.0, 12.0, 8.0, 800.0)
    assert row["times_s"] == [30.0, 10.0, 20.0] and row["peaks_mb"] == [900.0, 700.0, 800.0] and row["repeats"] == 3 and row["probe_cls_acc"] == [0]


def test_precision(tmp_path):
    import bench_precision

    rows = bench_precision.main(["--models", "isi-vit-d4", "--images", "40", "--out-dir", str(tmp_path)])
    check_outputs(tmp_path, "precision-cpu-fp32-reference")
    time_row = rows[-1]
    assert time_row["column"] == "time" and time_row["float64_s"] > 0 and time_row["mixed_s"] > 0
    assert {r["column"] for r in rows[:-1]} >= {"isi", "aci", "attn_entropy", "probe_mean_acc"}


@pytest.mark.slow
def test_scaling(tmp_path):
    """Two real ``accelerate launch`` runs (1 and 2 CPU processes)."""
    import bench_scaling

    bench_scaling.main(["--model", "tiny", "--images", "12", "--batch-size", "6", "--modes", "full",
                        "--out-dir", str(tmp_path)])
    rows = check_outputs(tmp_path, "scaling-cpu-fp32-tiny")
    assert [int(r["processes"]) for r in rows] == [1, 2]
    assert "MULTI_CPU" in rows[1]["distributed_type"]


def test_gpu_flag_refused_without_gpu(tmp_path):
    import bench_overhead
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="not measured"):
        bench_overhead.main(["--model", "tiny", "--device", "cuda", "--out-dir", str(tmp_path)])


def test_run_all_lists_every_benchmark():
    import subprocess

    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--threads", "1", "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    scripts = sorted(p.name for p in BENCH.glob("bench_*.py") if p.name != "bench_evaluate.py")
    for script in scripts:
        assert f"bench/{script}" in out, (script, out)
