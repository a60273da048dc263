"""Benchmark 2: peak memory of a streaming hf_isi analysis against the number of images (should stay flat).

One fresh subprocess per image count, so each peak is its own: ``ru_maxrss`` (peak resident set size of the
process, Linux) and, on GPU, ``torch.cuda.max_memory_allocated``. Pixels are generated batch by batch (nothing
holds the dataset), the full default metric suite runs, and ``report()`` is included in the peak.

Besides the peak, each row gives the accumulators' state size (``state_mb``): the float64 sums are allocated
at setup and do not grow; what grows until it is full is the probes' test-feature reservoir (capped at
``probe_max_test_images``, 5000 by default, i.e. ~25k images with a 20 % test split).

    python bench/bench_memory.py                                    # CPU: ViT-Ti/16 @112, 1k / 4k / 16k images
    python bench/bench_memory.py --device cuda --dtype bf16 --model vit_b16_224 --counts 1000,4000,16000
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def worker(args) -> dict:
    import torch

    from hf_isi import AnalysisConfig, Analyzer, ModelAdapter

    common.apply_threads(args.threads)
    rss_start = common.current_rss_mb()
    model = common.build_model(args.model, args.device, args.dtype, attn="eager")
    size = common.image_size(args.model)
    dtype = common.DTYPES[args.dtype]
    metrics = None if args.metrics == "all" else args.metrics.split(",")
    config = AnalysisConfig() if metrics is None else AnalysisConfig(metrics=metrics)
    if args.isi_dim is not None:
        config.isi_dim = args.isi_dim
    analyzer = Analyzer(ModelAdapter(model, attentions=config.needs_attentions, name=args.model), config,
                        num_classes=args.num_classes)
    common.reset_gpu_peak(args.device)
    calib, calib_labels, _ = common.synthetic_batch(0, min(args.count, config.calibration_images), size,
                                                    args.num_classes, device=args.device)
    analyzer.setup(calib.to(dtype), calib_labels)
    rss_setup = common.current_rss_mb()
    start = time.perf_counter()
    for px, y, ids in common.synthetic_stream(args.count, args.batch_size, size, args.num_classes, device=args.device):
        analyzer.update(px.to(dtype), y, ids)
    common.sync(args.device)
    seconds = time.perf_counter() - start
    rss_loop = common.current_rss_mb()
    start = time.perf_counter()
    analyzer.report()
    report_s = time.perf_counter() - start
    from bench_overhead import reservoir_images, state_megabytes

    out = {
        "images": args.count, "seconds": seconds, "img_per_s": args.count / seconds, "report_s": report_s,
        "peak_rss_mb": common.peak_rss_mb(), "rss_start_mb": rss_start, "rss_after_setup_mb": rss_setup,
        "rss_after_loop_mb": rss_loop, "state_mb": state_megabytes(analyzer),
        "test_reservoir_images": reservoir_images(analyzer),
        "gpu_peak_mb": common.gpu_peak_mb(args.device), "torch_threads": torch.get_num_threads(),
    }
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "vit_ti16_112", 0, 64)
    p.add_argument("--counts", default="1000,4000,16000")
    p.add_argument("--metrics", default="all", help="'all' or a comma-separated list of families")
    p.add_argument("--isi-dim", type=int, default=None)
    p.add_argument("--worker", action="store_true", help=argparse_hidden())
    p.add_argument("--count", type=int, default=0, help=argparse_hidden())
    args = p.parse_args(argv)
    common.check_device(args.device)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return []

    meta = {"bench": "memory", "model": args.model, "device": args.device, "dtype": args.dtype,
            "batch_size": args.batch_size, "metrics": args.metrics, "isi_dim": args.isi_dim,
            "measure": "peak RSS of a fresh process per count (ru_maxrss); GPU: max_memory_allocated",
            **common.environment(args.device)}
    print(f"# memory: {args.model} {args.dtype} batch {args.batch_size}, metrics={args.metrics}, counts {args.counts} "
          f"on {meta['host_cpu']}; load {common.loadavg()}")
    rows: list[dict] = []
    for count in [int(c) for c in args.counts.split(",") if c]:
        cmd = [sys.executable, __file__, "--worker", "--count", str(count), "--model", args.model,
               "--device", args.device, "--dtype", args.dtype, "--batch-size", str(args.batch_size),
               "--num-classes", str(args.num_classes), "--metrics", args.metrics]
        if args.isi_dim is not None:
            cmd += ["--isi-dim", str(args.isi_dim)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        load_before = common.loadavg()
        row = common.run_worker(cmd, f"worker for {count} images")
        row["loadavg"] = f"{load_before} -> {common.loadavg()}"
        rows.append(row)
        common.Line("memory", f"{count} images")(
            peak_rss_mb=row["peak_rss_mb"], state_mb=row["state_mb"], img_per_s=row["img_per_s"],
            seconds=row["seconds"], **({"gpu_peak_mb": row["gpu_peak_mb"]} if row["gpu_peak_mb"] else {}),
            loadavg=row["loadavg"])
    if rows:
        base = rows[0]["peak_rss_mb"]
        for row in rows:
            row["peak_rss_vs_first"] = row["peak_rss_mb"] / base
            if rows[0].get("gpu_peak_mb"):
                row["gpu_peak_vs_first"] = row["gpu_peak_mb"] / rows[0]["gpu_peak_mb"]
        growth = rows[-1]["peak_rss_mb"] / base - 1
        print(f"# peak RSS {rows[-1]['images']} vs {rows[0]['images']} images: {growth:+.1%} (target: within 10%)")
    common.save_results("memory", args, rows, meta)
    return rows


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
