"""Shared pieces of the hf_isi benchmarks: model presets, synthetic data, timing, environment, result files.

Every benchmark prints one line per configuration and writes ``bench/results/<bench>-<device>-<dtype>-<model>.csv``
and a ``.json`` twin (timm's benchmark CSVs are the model: one row per configuration, the environment in columns).

Timing rules: a warm-up batch first, then ``--repeats`` timed repeats of the whole measured loop; the reported
figure is the median, with min/max alongside, and ``os.getloadavg()`` recorded before and after (the machines we
develop on are shared, so a loaded machine is visible in the result rather than hidden in it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

RESULTS = Path(__file__).resolve().parent / "results"

#: ViT shapes (hidden, layers, heads, mlp, image, patch). Random init: speed does not depend on the weights.
PRESETS: dict[str, dict[str, int]] = {
    "vit_l16_224": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        image_size=224, patch_size=16),
    "vit_b16_224": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        image_size=224, patch_size=16),
    "vit_s16_224": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        image_size=224, patch_size=16),
    "vit_ti16_112": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                         image_size=112, patch_size=16),
    "vit_ti16_64": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                        image_size=64, patch_size=16),
    # for the smoke tests only
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 image_size=32, patch_size=8),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(preset: str, device: str = "cpu", dtype: str = "fp32", attn: str = "eager", seed: int = 0):
    """A random-init ``ViTModel`` of a preset shape (no pooler), in eval mode on ``device``/``dtype``."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.ViTConfig(**PRESETS[preset], attn_implementation=attn)
    model = tf.ViTModel(config, add_pooling_layer=False).eval()
    return model.to(device=device, dtype=DTYPES[dtype])


def image_size(preset: str) -> int:
    return PRESETS[preset]["image_size"]


def synthetic_batch(lo: int, hi: int, size: int, num_classes: int, seed: int = 0,
                    device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, range]:
    """Pixels, labels and ids of images ``lo..hi-1``, generated on the fly (nothing is held across batches).

    Each image is Gaussian noise plus a class-dependent colour shift, so the probes have something to find.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + lo)
    labels = torch.arange(lo, hi) % num_classes
    pixels = torch.randn(hi - lo, 3, size, size, generator=g)
    shift = torch.stack([torch.cos(labels * 2.1), torch.sin(labels * 1.3), torch.cos(labels * 0.7)], 1)
    pixels += 0.5 * shift[:, :, None, None]
    return pixels.to(device), labels, range(lo, hi)


def synthetic_stream(n: int, batch: int, size: int, num_classes: int, seed: int = 0,
                     device: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor, range]]:
    for lo in range(0, n, batch):
        yield synthetic_batch(lo, min(n, lo + batch), size, num_classes, seed, device)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], repeats: int, device: str = "cpu", warmup: int = 1) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed: median / min / max seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats, "times_s": [round(t, 4) for t in times]}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def loadavg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def environment(device: str) -> dict[str, Any]:
    env = {
        "host_cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    env["git_commit"] = _git_commit()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _git_commit() -> str | None:
    """The short HEAD commit, with ``+dirty`` when tracked hf_isi/ or bench/ files differ from it (the figures
    then come from uncommitted code)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)

    try:
        commit = git("rev-parse", "--short", "HEAD").stdout.strip()
        if not commit:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--", "../hf_isi", "../bench/*.py").returncode == 1
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_worker(cmd: list[str], what: str) -> dict[str, Any]:
    """Run a benchmark worker in a fresh process (its own peak RSS) and return its ``RESULT {json}`` line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def save_results(bench: str, args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write ``<out_dir>/<bench>-<device>-<dtype>-<model>[-<suffix>].csv`` (one row per configuration, environment
    in columns) and the same name ``.json`` (rows + meta); print and return the CSV's path."""
    dev = "cuda" if str(args.device).startswith("cuda") else str(args.device)
    name = f"{bench}-{dev}-{args.dtype}-{args.model}{('-' + args.suffix) if args.suffix else ''}"
    path = (args.out_dir or RESULTS) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = [{**{k: v for k, v in meta.items() if not isinstance(v, (dict, list))}, **r} for r in rows]
    keys: list[str] = []
    for r in flat:
        keys += [k for k in r if k not in keys]
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in flat:
            w.writerow({k: _cell(r.get(k)) for k in keys})
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    print(f"# wrote {csv_path}")
    return csv_path


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def base_parser(description: str, model: str, images: int, batch: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=model, choices=sorted(PRESETS), help="ViT shape preset (random init)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--images", type=int, default=images)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out-dir", type=Path, default=None, help=f"where CSV/JSON go (default {RESULTS})")
    p.add_argument("--suffix", default="", help="extra tag in the result file name")
    return p


def apply_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {device}: no CUDA device here; the GPU rows are 'not measured' on this machine")


def reset_gpu_peak(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb(device: str) -> float | None:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


@dataclass
class Line:
    """One printed result line: ``bench | config | key=value ...``."""

    bench: str
    config: str

    def __call__(self, **values: Any) -> None:
        parts = []
        for k, v in values.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        print(f"[{self.bench}] {self.config:<28s} " + "  ".join(parts), flush=True)
