"""Run the whole benchmark suite and write every CSV/JSON under bench/results/.

    python bench/run_all.py                      # CPU suite (the README's Performance table)
    python bench/run_all.py --threads 1          # same, one thread per process (stable on a shared machine)
    python bench/run_all.py --device cuda        # GPU suite: ViT-B/16 and ViT-L/16, bf16 and fp32
    python bench/run_all.py --dry-run            # print the commands only

Each benchmark prints one line per configuration as it goes; see each script's docstring for what it measures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_commands(threads: list[str], suffix: list[str]) -> list[list[str]]:
    # the naive comparison at the issue's CPU shape, with eager attention and with transformers' default (sdpa)
    naive_s16 = ["bench_naive.py", "--model", "vit_s16_224", "--images", "4000", "--batch-size", "64", "--collect",
                 "preallocated", "--approaches", "naive,hf_isi-probes", "--repeats", "3", *threads]
    return [
        ["bench_overhead.py", "--model", "vit_s16_224", "--images", "256", "--batch-size", "16", "--repeats", "3",
         "--isi-dims", "8,4", *threads, *suffix],
        ["bench_memory.py", "--model", "vit_ti16_112", "--counts", "1000,4000,16000", "--batch-size", "64",
         *threads, *suffix],
        ["bench_naive.py", "--model", "vit_ti16_112", "--images", "4000", "--batch-size", "64", *threads, *suffix],
        [*naive_s16, "--attn", "eager", *suffix],
        [*naive_s16, "--attn", "sdpa", "--suffix", "-".join([*suffix[1:], "sdpa"])],
        ["bench_scaling.py", "--model", "vit_ti16_112", "--images", "512", "--batch-size", "32",
         "--procs", "1x1,1x2,2x1"],
        ["bench_precision.py", *threads],
        ["bench_big_images.py", *suffix],  # probe.py on 13000 x 13000 images: peak RSS stays per image
    ]


def gpu_commands() -> list[list[str]]:
    out = []
    for model, batch in (("vit_b16_224", "256"), ("vit_l16_224", "128")):
        for dtype in ("bf16", "fp32"):
            out.append(["bench_overhead.py", "--device", "cuda", "--dtype", dtype, "--model", model,
                        "--images", "4096", "--batch-size", batch, "--repeats", "3", "--isi-dims", "8,4", "--sdpa"])
    out.append(["bench_memory.py", "--device", "cuda", "--dtype", "bf16", "--model", "vit_b16_224",
                "--counts", "1000,4000,16000", "--batch-size", "256"])
    out.append(["bench_naive.py", "--device", "cuda", "--dtype", "bf16", "--model", "vit_b16_224",
                "--images", "4000", "--batch-size", "256"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    threads = ["--threads", str(args.threads)] if args.threads else []
    suffix = ["--suffix", f"t{args.threads}"] if args.threads else []
    commands = gpu_commands() if args.device.startswith("cuda") else cpu_commands(threads, suffix)
    for cmd in commands:
        full = [sys.executable, str(HERE / cmd[0]), *cmd[1:]]
        print("$ " + " ".join(["python", f"bench/{cmd[0]}", *cmd[1:]]), flush=True)
        if not args.dry_run:
            subprocess.run(full, check=True)


if __name__ == "__main__":
    main()
