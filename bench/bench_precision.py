"""Benchmark 5: mixed precision (the default) against float64 on the trained reference models.

The same images through the same model twice, ``AnalysisConfig(precision="float64")`` and ``"mixed"`` (float32
ISI Gram products and attention ``x ln x`` sweeps, float64 running sums). One row per model and metric column
with the largest absolute difference over layers, plus one ``time`` row per model with both wall times
(``analyze`` end to end, the forward pass included).

    python bench/bench_precision.py                       # every trained reference model on all 1,797 digits
    python bench/bench_precision.py --models isi-vit-d4 --images 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated reference models (default: every trained one)")
    p.add_argument("--images", type=int, default=0, help="first N digits (default: all 1,797)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--suffix", default="")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    args.device, args.dtype, args.model = "cpu", "fp32", "reference"

    from hf_isi import AnalysisConfig, analyze
    from hf_isi.report import METRIC_COLUMNS
    from hf_isi.zoo import digits_dataset, trained_reference_models

    models = [m for m in args.models.split(",") if m] or trained_reference_models()
    data = digits_dataset("all")
    if args.images:
        data = data.select(range(min(args.images, len(data))))
    images, labels, ids = list(data["image"]), list(data["label"]), list(data["id"])
    meta = {"bench": "precision", "images": len(images), "batch_size": args.batch_size, **common.environment("cpu")}
    print(f"# precision: {', '.join(models)} on {len(images)} digits; load {common.loadavg()}")
    rows: list[dict] = []
    for name in models:
        tables, seconds = {}, {}
        for precision in ("float64", "mixed"):
            start = time.perf_counter()
            report = analyze(name, images, labels, ids=ids, batch_size=args.batch_size,
                             config=AnalysisConfig(precision=precision))
            seconds[precision] = time.perf_counter() - start
            tables[precision] = report.table
        worst = ("", 0.0)
        for column in METRIC_COLUMNS:
            a = tables["float64"][column].to_numpy(float)
            b = tables["mixed"][column].to_numpy(float)
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                raise SystemExit(f"{name}: {column} is missing at different layers under the two precisions")
            diff = float(np.nanmax(np.abs(a - b))) if np.isfinite(a).any() else 0.0
            rows.append({"model_name": name, "column": column, "max_abs_diff": diff,
                         "max_abs_value": float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else None})
            if diff > worst[1]:
                worst = (column, diff)
        rows.append({"model_name": name, "column": "time", "float64_s": seconds["float64"],
                     "mixed_s": seconds["mixed"], "speedup": seconds["float64"] / seconds["mixed"],
                     "worst_column": worst[0], "max_abs_diff": worst[1]})
        common.Line("precision", name)(float64_s=seconds["float64"], mixed_s=seconds["mixed"],
                                       worst_column=worst[0] or "-", max_abs_diff=worst[1])
    common.save_results("precision", args, rows, meta)
    return rows


if __name__ == "__main__":
    main()
