"""Benchmark: the evaluate module ``isi`` against hf_isi called directly on the same precomputed model outputs.

For each config (reconstruction, attention, full) and input kind (torch tuples as the model returns them,
stacked numpy arrays), it times

* **direct**: ``hf_isi.Analyzer``: accumulators set up on the calibration batch, ``update_states`` per batch,
  ``report()``;
* **module**: ``Isi(config).add_batch(...)`` per batch on the same outputs, then ``compute()`` (evaluate's
  default on-disk cache, with one int64 key per image going through Arrow).

Each figure is the median of ``--repeats`` runs after one warm-up, and the ratio is module / direct (target:
at most 1.5). It also times once, for reference, what pushing the token-level hidden states through evaluate's
Arrow cache would cost: the design this module avoids. The script prints one line per configuration and writes
``bench/results/evaluate.csv`` and ``.json``.

    python bench/bench_evaluate.py                       # ViT hidden 192, 6 layers, 112/16, B = 32, 4 batches
    python bench/bench_evaluate.py --image-size 224 --batches 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "False")

import numpy as np
import torch
import transformers as tf

from hf_isi import AnalysisConfig, Analyzer, ModelAdapter
from hf_isi.engine import ALL_METRICS
from hf_isi.evaluate_isi import Isi
from hf_isi.states import example_keys

CONFIG_METRICS = {"reconstruction": ["isi"], "attention": ["attention"], "full": list(ALL_METRICS)}
CURVES = {"reconstruction": "isi", "attention": "isi_attention", "full": "isi"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-size", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--isi-dim", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configs", nargs="+", default=list(CONFIG_METRICS), choices=list(CONFIG_METRICS))
    p.add_argument("--inputs", nargs="+", default=["torch", "numpy"], choices=["torch", "numpy"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-arrow", action="store_true", help="skip the Arrow round-trip reference")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluate.csv"))
    return p.parse_args()


def model_outputs(args: argparse.Namespace):
    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                          num_attention_heads=args.heads, intermediate_size=4 * args.hidden_size,
                          image_size=args.image_size, patch_size=args.patch_size, attn_implementation="eager")
    adapter = ModelAdapter(tf.ViTModel(config).eval())
    g = torch.Generator().manual_seed(0)
    batches = []
    for b in range(args.batches):
        labels = torch.arange(b * args.batch_size, (b + 1) * args.batch_size) % 10
        pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
        ids = range(b * args.batch_size, (b + 1) * args.batch_size)  # = the module's default running ids
        batches.append((adapter.capture(pixels, labels=labels, keys=example_keys(ids)), labels))
    return adapter, batches


def module_inputs(states, labels, config: str, kind: str) -> dict:
    """What a user holding the model outputs passes to add_batch (only what the config needs)."""
    out = {}
    if config in ("reconstruction", "full"):
        out["hidden_states"] = states.hidden_states
        out["patch_embeddings"] = states.patch_embeddings
    if config in ("attention", "full"):
        out["attentions"] = states.attentions
        out["attention_residuals"] = states.attention_residuals
    if config == "full":
        out["labels"] = labels
        out["position_embeddings"] = states.position_embeddings
    if kind == "numpy":  # stacked, batch-first, as arrays gathered for metrics usually are
        conv = {}
        for k, v in out.items():
            if k == "attention_residuals":
                conv[k] = np.stack([np.stack([x.numpy(), y.numpy()], 1) for x, y in v], 1)
            elif isinstance(v, tuple):
                conv[k] = torch.stack(v, 1).numpy()
            else:
                conv[k] = v.numpy()
        out = conv
    out["patch_size"] = states.layout.patch_size
    return out


def run_direct(adapter, batches, config: str, args) -> dict:
    analysis = AnalysisConfig(metrics=CONFIG_METRICS[config], isi_dim=args.isi_dim,
                              calibration_images=args.batch_size)
    analyzer = Analyzer(adapter, analysis, num_classes=10 if config == "full" else None)
    analyzer.setup_states(batches[0][0])
    for states, _ in batches:
        analyzer.update_states(states)
    return analyzer.report().table[CURVES[config]].to_numpy()


def run_module(metric: Isi, inputs: list[dict], config: str) -> np.ndarray:
    for batch in inputs:
        metric.add_batch(**batch)
    results = metric.compute()
    return np.array([np.nan if v is None else v for v in results[CURVES[config]]])


def arrow_roundtrip_seconds(batches) -> float:
    """What evaluate's Arrow cache costs for the token-level hidden states alone (written, read back as lists)."""
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    states = batches[0][0]
    shape = (len(states.hidden_states), *states.hidden_states[0].shape[1:])
    features = datasets.Features({"hidden_states": datasets.Array3D(shape=shape, dtype="float32")})
    start = time.perf_counter()
    stream = pa.BufferOutputStream()
    writer = ArrowWriter(features=features, stream=stream)
    for s, _ in batches:
        writer.write_batch(features.encode_batch({"hidden_states": torch.stack(s.hidden_states, 1).numpy()}))
    writer.finalize()
    data = datasets.Dataset.from_buffer(stream.getvalue())
    _ = np.asarray(data["hidden_states"][:], dtype=np.float32)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adapter, batches = model_outputs(args)
    states0 = batches[0][0]
    shape = (f"ViT hidden {args.hidden_size}, {args.layers} layers, {args.image_size}/{args.patch_size} "
             f"(T={states0.hidden_states[0].shape[1]}), B={args.batch_size} x {args.batches} batches, "
             f"isi_dim={args.isi_dim}")
    print(f"# {shape}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for config in args.configs:
        for kind in args.inputs:
            inputs = [module_inputs(s, y, config, kind) for s, y in batches]
            metric = Isi(config, isi_dim=args.isi_dim, calibration_images=args.batch_size,
                         num_classes=10 if config == "full" else None)
            direct_curve = run_direct(adapter, batches, config, args)  # warm-up
            module_curve = run_module(metric, inputs, config)          # warm-up
            diff = float(np.nanmax(np.abs(direct_curve - module_curve)))
            same_missing = bool(np.array_equal(np.isnan(direct_curve), np.isnan(module_curve)))
            times = {"direct": [], "module": [], "direct_cpu": [], "module_cpu": []}
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                for name, fn in (("direct", lambda c=config: run_direct(adapter, batches, c, args)),
                                 ("module", lambda m=metric, i=inputs, c=config: run_module(m, i, c))):
                    wall, cpu = time.perf_counter(), time.process_time()
                    fn()
                    times[name].append(time.perf_counter() - wall)
                    times[f"{name}_cpu"].append(time.process_time() - cpu)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio, cpu_ratio = med["module"] / med["direct"], med["module_cpu"] / med["direct_cpu"]
            row = {"config": config, "inputs": kind, "direct_median_s": round(med["direct"], 4),
                   "module_median_s": round(med["module"], 4), "ratio": round(ratio, 3),
                   "direct_cpu_median_s": round(med["direct_cpu"], 4), "module_cpu_median_s": round(med["module_cpu"], 4),
                   "cpu_ratio": round(cpu_ratio, 3), "target_ratio": 1.5, "ok": ratio <= 1.5,
                   "max_abs_diff": diff, "same_missing": same_missing, "repeats": args.repeats, "setup": shape}
            rows.append(row)
            print(f"config={config:<14} inputs={kind:<5} direct={med['direct']:.3f}s module={med['module']:.3f}s "
                  f"ratio={ratio:.2f}x (target <= 1.5x)  cpu: direct={med['direct_cpu']:.3f}s "
                  f"module={med['module_cpu']:.3f}s ratio={cpu_ratio:.2f}x  max|diff|={diff:.1e}", flush=True)
    if not args.skip_arrow:
        arrow = arrow_roundtrip_seconds(batches)
        raw = statistics.median([_time(lambda: [torch.stack(s.hidden_states, 1).numpy().copy() for s, _ in batches])
                                 for _ in range(3)])
        rows.append({**{k: None for k in rows[0]}, "config": "reference: hidden_states through Arrow",
                     "inputs": "numpy", "direct_median_s": round(raw, 4), "module_median_s": round(arrow, 4),
                     "ratio": round(arrow / raw, 1), "repeats": 1, "setup": shape})
        print(f"reference: token-level hidden_states through evaluate's Arrow cache {arrow:.3f}s vs raw numpy copy "
              f"{raw:.4f}s ({arrow / raw:.0f}x): the path this module avoids", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "args": vars(args)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"# wrote {out} and {out.with_suffix('.json')}")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
