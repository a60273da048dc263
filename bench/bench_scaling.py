"""Benchmark 4: 1 vs N processes (CPU: 1 vs 2) with a real ``accelerate launch``, images per second.

Each configuration is a fresh ``accelerate launch`` (on CPU: ``ACCELERATE_USE_CPU=1 ... --multi_gpu
--num_processes N``, the launch that gives a real gloo process group here; ``OMP_NUM_THREADS`` = cores / N).
Every process takes a contiguous shard of the synthetic images, runs the streaming analysis (``--mode full``,
the default metric suite) or the bare forward (``--mode bare``), then the processes all-reduce their states
(``Analyzer.sync``) and rank 0 finalises (``report()``). ``seconds`` is the slowest process's time from after
setup (a barrier) to the end of sync + report; ``launch_s`` is the whole launch as the parent sees it
(interpreter start, imports, model build included).

    python bench/bench_scaling.py                                   # CPU: ViT-Ti/16 @112, 512 images, 1 vs 2
    python bench/bench_scaling.py --device cuda --dtype bf16 --model vit_b16_224 --images 8192 --procs 1,2,4,8
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def worker(args) -> None:
    import torch
    from accelerate import Accelerator

    from hf_isi import AnalysisConfig, Analyzer, ModelAdapter

    acc = Accelerator(cpu=args.device == "cpu")
    rank, world = acc.process_index, acc.num_processes
    device = str(acc.device)
    model = common.build_model(args.model, device, args.dtype, attn="eager")
    size = common.image_size(args.model)
    dtype = common.DTYPES[args.dtype]
    lo, hi = args.images * rank // world, args.images * (rank + 1) // world
    analyzer = None
    if args.mode == "full":
        config = AnalysisConfig()
        analyzer = Analyzer(ModelAdapter(model, attentions=True, name=args.model), config,
                            num_classes=args.num_classes)
        calib, calib_labels, _ = common.synthetic_batch(0, min(args.images, config.calibration_images), size,
                                                        args.num_classes, device=device)
        analyzer.setup(calib.to(dtype), calib_labels)  # the same calibration batch on every process
    acc.wait_for_everyone()
    start = time.perf_counter()
    for blo in range(lo, hi, args.batch_size):
        px, y, ids = common.synthetic_batch(blo, min(hi, blo + args.batch_size), size, args.num_classes,
                                            device=device)
        if analyzer is None:
            with torch.inference_mode():
                model(pixel_values=px.to(dtype), output_hidden_states=False)
        else:
            analyzer.update(px.to(dtype), y, ids)
    common.sync(device)
    loop_s = time.perf_counter() - start
    if analyzer is not None:
        analyzer.sync(acc)
        if rank == 0:
            report = analyzer.report()
            assert int(report.table["num_images"].iloc[0]) == args.images, "sync lost images"
    common.sync(device)
    seconds = time.perf_counter() - start
    from accelerate.utils import gather_object

    times = gather_object([{"rank": rank, "seconds": seconds, "loop_s": loop_s, "images": hi - lo,
                            "peak_rss_mb": common.peak_rss_mb(), "threads": torch.get_num_threads(),
                            "distributed_type": str(acc.distributed_type)}])
    if rank == 0:
        print("RESULT " + json.dumps(times), flush=True)
    acc.wait_for_everyone()
    acc.end_training()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(n: int, device: str, threads: int | None = None) -> tuple[list[str], dict[str, str]]:
    env = os.environ.copy()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(n)]
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // n))
        if n > 1:
            cmd += ["--multi_gpu", "--main_process_port", str(_free_port())]
    elif n > 1:
        cmd += ["--multi_gpu", "--main_process_port", str(_free_port())]
    return cmd, env


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "vit_ti16_112", 512, 32)
    p.add_argument("--procs", default="1,2",
                   help="process counts to compare, each optionally with its threads per process: e.g. 1x2,1x1,2x1 "
                        "(default threads: cores / processes)")
    p.add_argument("--modes", default="bare,full", help="bare and/or full")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--mode", default="full")
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return []
    common.check_device(args.device)

    meta = {"bench": "scaling", "model": args.model, "device": args.device, "dtype": args.dtype,
            "images": args.images, "batch_size": args.batch_size, "launcher": "accelerate launch",
            **common.environment(args.device)}
    print(f"# scaling: {args.model} {args.dtype}, {args.images} images, batch {args.batch_size}, processes "
          f"{args.procs} on {meta['host_cpu']} ({os.cpu_count()} cores); load {common.loadavg()}")
    rows: list[dict] = []
    for mode in [m for m in args.modes.split(",") if m]:
        single = None
        for spec in [k for k in args.procs.split(",") if k]:
            n, _, threads = spec.partition("x")
            n = int(n)
            cmd, env = launch_command(n, args.device, int(threads) if threads else None)
            cmd += [__file__, "--worker", "--mode", mode, "--model", args.model, "--device", args.device,
                    "--dtype", args.dtype, "--images", str(args.images), "--batch-size", str(args.batch_size),
                    "--num-classes", str(args.num_classes)]
            load_before = common.loadavg()
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
            launch_s = time.perf_counter() - start
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{mode} with {n} processes failed:\n{proc.stderr[-3000:]}")
            ranks = json.loads(lines[-1][len("RESULT "):])
            seconds = max(r["seconds"] for r in ranks)
            row = {"mode": mode, "processes": n, "threads_per_process": ranks[0]["threads"],
                   "distributed_type": ranks[0]["distributed_type"], "seconds": seconds,
                   "img_per_s": args.images / seconds, "loop_s": max(r["loop_s"] for r in ranks),
                   "launch_s": launch_s, "peak_rss_mb_per_process": max(r["peak_rss_mb"] for r in ranks),
                   "loadavg": f"{load_before} -> {common.loadavg()}"}
            single = single or row
            row["speedup_vs_first"] = single["seconds"] / seconds
            rows.append(row)
            common.Line("scaling", f"{mode} {n} proc x {row['threads_per_process']} thr")(
                img_per_s=row["img_per_s"], seconds=seconds, speedup_vs_first=row["speedup_vs_first"],
                threads=row["threads_per_process"], loadavg=row["loadavg"])
    common.save_results("scaling", args, rows, meta)
    return rows


if __name__ == "__main__":
    main()
