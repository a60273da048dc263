"""Benchmark: peak memory and time of ``scripts/probe.py`` on folders of very large images (issue 13).

The issue's input: 24 PNGs of 13000 x 13000 pixels (169 MP each, a few MB on disk), which took the run to a
5.5 GB peak and 4 minutes. Each case is a folder of 24 copies of one generated image (a smooth gradient: small
on disk, large decoded) and one fresh process per run, in which ``scripts/probe.py`` of the code under test
runs in full (calibration, a tiny random ViT, every metric family, the results folder); the figure is that
process's peak RSS (``VmHWM``) and wall time, median of ``--repeats`` runs.

Cases (``--cases``):

* ``png13000``: 24 PNGs of 13000 x 13000 (169 MP), above ``hf_isi.data.MAX_DECODE_PIXELS`` (134 MP);
* ``png11000``: 24 PNGs of 11000 x 11000 (121 MP), below it: each decoded whole, one at a time, then downscaled;
* ``jpg13000``: 24 JPEGs of 13000 x 13000: decoded at 1/4 scale (DCT scaling), never whole.

    python bench/bench_big_images.py                                  # this checkout
    python bench/bench_big_images.py --code /path/to/older/checkout --suffix before --cases png13000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = {"png13000": ("png", 13000), "png11000": ("png", 11000), "jpg13000": ("jpg", 13000)}
COPIES = 24


def make_folder(root: Path, fmt: str, side: int) -> Path:
    """``root/<case>/images/`` with 24 copies of one ``side`` x ``side`` gradient image (made once, cached)."""
    import numpy as np
    import PIL.Image

    folder = root / f"{fmt}{side}" / "images"
    if folder.is_dir() and len(list(folder.iterdir())) == COPIES:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.empty((side, side, 3), dtype=np.uint8)
    rgb[..., 0] = ramp[None, :]
    rgb[..., 1] = ramp[:, None]
    rgb[..., 2] = 128
    first = folder / f"image_00.{fmt}"
    PIL.Image.fromarray(rgb).save(first, **({"quality": 90} if fmt == "jpg" else {"compress_level": 6}))
    del rgb
    for i in range(1, COPIES):
        shutil.copyfile(first, folder / f"image_{i:02d}.{fmt}")
    return folder


def make_model(root: Path) -> Path:
    import torch
    import transformers as tf

    path = root / "tiny-vit"
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        tf.ViTForImageClassification(tf.ViTConfig(**common.PRESETS["tiny"], num_labels=2)).save_pretrained(path)
        tf.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def worker(args: argparse.Namespace) -> dict:
    """One probe.py run of the code under test in this (fresh) process."""
    import importlib.util

    sys.path.insert(0, str(args.code))
    spec = importlib.util.spec_from_file_location("probe_under_test", args.code / "scripts" / "probe.py")
    probe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = probe
    spec.loader.exec_module(probe)
    out = Path(tempfile.mkdtemp(prefix="bench_big_images_")) / "out"
    start = time.perf_counter()
    code = probe.main(["--model_name_or_path", str(args.model_path), "--dataset", str(args.folder),
                       "--output_dir", str(out), "--batch_size", "32", "--isi_dim", "4", "--no_plots",
                       "--log_level", "warning"])
    seconds = time.perf_counter() - start
    run = json.loads((out / "summary.json").read_text())["run"] if code == 0 else {}
    shutil.rmtree(out.parent, ignore_errors=True)
    import hf_isi

    return {"exit_status": code, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "images_used": run.get("num_images"), "images_skipped": run.get("num_images_skipped"),
            "hf_isi_file": hf_isi.__file__}


def peak_rss_mb() -> float:
    """This process's peak resident set size since its ``exec``: ``VmHWM``. (``ru_maxrss`` would also count the
    memory of the parent it was forked from, before the ``exec``: here the image generator's.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return common.peak_rss_mb()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--code", type=Path, default=REPO, help="the checkout whose hf_isi and scripts/probe.py run")
    p.add_argument("--code-label", default=None, help="what --code is (default: its git commit)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "hf_isi_bench_big_images",
                   help="where the images and the model are generated (kept between runs)")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--suffix", default="")
    p.add_argument("--side", type=int, default=None, help="override every case's side in pixels (smoke tests)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.code = args.code.resolve()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return []

    label = args.code_label or _commit(args.code)
    meta = {"bench": "big_images", "code": label, "copies": COPIES, "repeats": args.repeats,
            "measure": "peak RSS (VmHWM) and wall time of one fresh process running probe.py; median of repeats",
            **common.environment("cpu")}
    print(f"# big images: {COPIES} copies per case, code {label}, median of {args.repeats}; "
          f"load {common.loadavg()}")
    model = make_model(args.work_dir)
    rows = []
    for case in [c for c in args.cases.split(",") if c]:
        fmt, side = CASES[case]
        side = args.side or side
        folder = make_folder(args.work_dir, fmt, side)
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--worker", "--code", str(args.code), "--folder", str(folder),
                   "--model-path", str(model)]
            load_before = common.loadavg()
            result = common.run_worker(cmd, f"{case} with {args.code}")
            result["loadavg"] = f"{load_before} -> {common.loadavg()}"
            runs.append(result)
        row = {"case": case, "megapixels": side * side / 1e6,
               "disk_mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20,
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
               "seconds": statistics.median(r["seconds"] for r in runs),
               "peak_rss_mb_runs": [round(r["peak_rss_mb"]) for r in runs],
               "seconds_runs": [round(r["seconds"], 1) for r in runs],
               "exit_status": runs[0]["exit_status"], "images_used": runs[0]["images_used"],
               "images_skipped": runs[0]["images_skipped"], "loadavg": runs[-1]["loadavg"]}
        rows.append(row)
        common.Line("big_images", case)(peak_rss_mb=row["peak_rss_mb"], seconds=row["seconds"],
                                        used=row["images_used"], skipped=row["images_skipped"],
                                        runs_mb=row["peak_rss_mb_runs"], runs_s=row["seconds_runs"])
    args.device, args.dtype, args.model = "cpu", "fp32", "tiny"
    common.save_results("big_images", args, rows, meta)
    return rows


def _commit(path: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() or str(path)


if __name__ == "__main__":
    main()
