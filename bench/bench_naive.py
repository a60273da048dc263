"""Benchmark 3: hf_isi against the way a user would do it without hf_isi, on the same model and images.

Each approach runs in a fresh subprocess (so each peak RSS is its own) over the same synthetic images,
generated batch by batch:

* ``naive``: ``model(..., output_hidden_states=True)`` for every batch, every layer's hidden states of every
  image collected into one numpy array ``[images, layers, tokens, dim]`` (what people do), then one
  scikit-learn ``LogisticRegression(max_iter=1000)`` per layer for the CLS token and one for the mean-pooled
  patch tokens, trained on the fit+validation images and scored on the test images (the same hash split as
  hf_isi);
  ``--collect preallocated`` fills one ``np.empty`` of that shape instead of concatenating a list of batches,
  which halves the naive peak (no second copy): the frugal version, for shapes whose concatenation does not
  fit in memory (ViT-S/16 @ 224 at 4k images: 15.7 GB of hidden states, 31 GB with the copy);
* ``naive-pooled``: the careful variant that keeps only the CLS and mean-pooled vectors per layer (not asked
  for by the issue; shown so the memory comparison is not only against the careless version);
* ``hf_isi-probes``: :class:`hf_isi.Analyzer` with ``metrics=["probes"]`` (closed-form ridge probes with
  control tasks, streamed), including ``report()``;
* ``hf_isi-full``: every metric family (default configuration), including ``report()``.

``seconds`` is end to end (forward included); ``analysis_s`` is what comes on top of the forward pass
(collection + fitting for the naive ways, accumulate + report for hf_isi), measured by timing the forward
calls separately inside each run. ``peak_rss_mb`` is the process's peak; ``extra_rss_mb`` is that peak minus
the resident size once the libraries and the model are loaded (the part that depends on the approach).
With ``--repeats R`` the approaches run R times, interleaved, and every timing and memory field is the median
of its repeats (``times_s`` keeps each run's ``seconds``): on a shared machine the same forward pass has been
measured anywhere from 247 s to 323 s (ViT-S/16 @ 224, 4k images, 2 threads; single batches from 3.6 s to
6.5 s), so single runs do not rank approaches.

    python bench/bench_naive.py                                         # CPU: ViT-Ti/16 @112, 4k images
    python bench/bench_naive.py --model vit_s16_224 --collect preallocated \
        --approaches naive,hf_isi-probes --repeats 3                    # the issue's CPU shape (16 GB)
    ... --attn sdpa --suffix sdpa                                       # transformers' default attention
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

APPROACHES = ("naive", "naive-pooled", "hf_isi-probes", "hf_isi-full")


def _forward_timer():
    """A context to time forward calls: returns (wrap(fn) -> fn, seconds list)."""
    spent = [0.0]

    def timed(fn):
        def inner(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            spent[0] += time.perf_counter() - start
            return out
        return inner

    return timed, spent


def run_naive(args, pooled_only: bool) -> dict:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from hf_isi.states import TEST, example_keys, split_of

    model = common.build_model(args.model, args.device, args.dtype, attn=args.attn)
    LogisticRegression(max_iter=10).fit(np.eye(4), np.arange(4) % 2)  # load sklearn's lazy parts untimed
    base_mb = common.current_rss_mb()
    size = common.image_size(args.model)
    timed, forward_s = _forward_timer()
    forward = timed(model.__call__)
    start = time.perf_counter()
    chunks, labels, keys = [], [], []
    hidden, filled = None, 0  # --collect preallocated: one array, filled in place
    with torch.inference_mode():
        for px, y, ids in common.synthetic_stream(args.count, args.batch_size, size, args.num_classes,
                                                  device=args.device):
            out = forward(pixel_values=px.to(common.DTYPES[args.dtype]), output_hidden_states=True)
            hs = torch.stack(out.hidden_states, dim=1).float()  # [B, L+1, T, D]
            if pooled_only:
                hs = torch.stack([hs[:, :, 0], hs[:, :, 1:].mean(dim=2)], dim=2)  # [B, L+1, 2, D]
            if args.collect == "preallocated":
                if hidden is None:
                    hidden = np.empty((args.count, *hs.shape[1:]), dtype=np.float32)
                hidden[filled:filled + len(hs)] = hs.cpu().numpy()
                filled += len(hs)
            else:
                chunks.append(hs.cpu().numpy())
            labels.append(y.numpy())
            keys.append(example_keys(ids))
    if hidden is None:
        hidden = np.concatenate(chunks)
    del chunks
    collected_mb = hidden.nbytes / 2**20
    y = np.concatenate(labels)
    split = split_of(torch.cat(keys)).numpy()
    train, test = split != TEST, split == TEST
    acc = {"cls": [], "mean": []}
    for layer in range(hidden.shape[1]):
        for pooling in ("cls", "mean"):
            if pooled_only:
                x = hidden[:, layer, 0 if pooling == "cls" else 1]
            else:
                x = hidden[:, layer, 0] if pooling == "cls" else hidden[:, layer, 1:].mean(axis=1)
            clf = LogisticRegression(max_iter=1000).fit(x[train], y[train])
            acc[pooling].append(float(clf.score(x[test], y[test])))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "forward_s": forward_s[0], "analysis_s": seconds - forward_s[0],
            "base_rss_mb": base_mb, "collected_mb": collected_mb, "probe_cls_acc": acc["cls"],
            "probe_mean_acc": acc["mean"]}


def run_hf_isi(args, metrics: list[str] | None) -> dict:
    from hf_isi import AnalysisConfig, Analyzer, ModelAdapter

    model = common.build_model(args.model, args.device, args.dtype, attn=args.attn)
    base_mb = common.current_rss_mb()
    size = common.image_size(args.model)
    config = AnalysisConfig() if metrics is None else AnalysisConfig(metrics=metrics)
    adapter = ModelAdapter(model, attentions=config.needs_attentions, name=args.model)
    timed, forward_s = _forward_timer()
    adapter.tower.forward = timed(adapter.tower.forward)  # time the forward inside capture()
    analyzer = Analyzer(adapter, config, num_classes=args.num_classes)
    dtype = common.DTYPES[args.dtype]
    start = time.perf_counter()
    calib, calib_labels, _ = common.synthetic_batch(0, min(args.count, config.calibration_images), size,
                                                    args.num_classes, device=args.device)
    analyzer.setup(calib.to(dtype), calib_labels)
    for px, y, ids in common.synthetic_stream(args.count, args.batch_size, size, args.num_classes, device=args.device):
        analyzer.update(px.to(dtype), y, ids)
    report = analyzer.report()
    seconds = time.perf_counter() - start
    table = report.table
    out = {"seconds": seconds, "forward_s": forward_s[0], "analysis_s": seconds - forward_s[0], "base_rss_mb": base_mb}
    for pooling in ("cls", "mean"):
        col = f"probe_{pooling}_acc"
        if col in table:
            out[col] = [None if math.isnan(v) else float(v) for v in table[col].tolist()]
    return out


MEDIAN_FIELDS = ("seconds", "forward_s", "analysis_s", "peak_rss_mb", "extra_rss_mb", "base_rss_mb")


def median_run(runs: list[dict]) -> dict:
    """One row for an approach's repeats: the median of each timing and memory field (each field on its own),
    every repeat's ``seconds`` kept in ``times_s``; the rest (accuracies, sizes) from the first repeat."""
    row = dict(runs[0])
    for key in MEDIAN_FIELDS:
        if runs[0].get(key) is not None:
            row[key] = float(statistics.median(r[key] for r in runs))
    row["times_s"] = [round(r["seconds"], 2) for r in runs]
    row["peaks_mb"] = [round(r["peak_rss_mb"], 1) for r in runs]
    row["repeats"] = len(runs)
    row["loadavg"] = "; ".join(r["loadavg"] for r in runs)
    return row


def worker(args) -> dict:
    common.apply_threads(args.threads)
    if args.approach == "naive":
        out = run_naive(args, pooled_only=False)
    elif args.approach == "naive-pooled":
        out = run_naive(args, pooled_only=True)
    elif args.approach == "hf_isi-probes":
        out = run_hf_isi(args, ["probes"])
    else:
        out = run_hf_isi(args, None)
    out["peak_rss_mb"] = common.peak_rss_mb()
    out["extra_rss_mb"] = out["peak_rss_mb"] - out["base_rss_mb"]  # above the process with its model loaded
    out["gpu_peak_mb"] = common.gpu_peak_mb(args.device)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "vit_ti16_112", 4000, 64)
    p.add_argument("--approaches", default=",".join(APPROACHES))
    p.add_argument("--worker", action="store_true")
    p.add_argument("--approach", default="naive")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                   help="attention implementation for every approach (hf_isi-full switches to eager itself)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats per approach; medians are kept")
    p.add_argument("--collect", choices=("concatenate", "preallocated"), default="concatenate",
                   help="how the naive ways gather hidden states: a list then np.concatenate (what people do), "
                        "or one preallocated array (no second copy)")
    args = p.parse_args(argv)
    common.check_device(args.device)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return []

    meta = {"bench": "naive", "attn": args.attn, "collect": args.collect, "repeats": args.repeats, "model": args.model,
            "device": args.device, "dtype": args.dtype, "images": args.images, "batch_size": args.batch_size,
            "num_classes": args.num_classes, **common.environment(args.device)}
    print(f"# naive vs hf_isi: {args.model} {args.dtype}, {args.images} images, batch {args.batch_size} on "
          f"{meta['host_cpu']}; load {common.loadavg()}")
    commands = {}
    for approach in [a for a in args.approaches.split(",") if a]:
        commands[approach] = [sys.executable, __file__, "--worker", "--approach", approach, "--count", str(args.images),
                              "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                              "--batch-size", str(args.batch_size), "--num-classes", str(args.num_classes),
                              "--collect", args.collect, "--attn", args.attn,
                              *(["--threads", str(args.threads)] if args.threads else [])]
    runs: dict[str, list[dict]] = {a: [] for a in commands}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits every approach alike
        for approach, cmd in commands.items():
            load_before = common.loadavg()
            runs[approach].append({**common.run_worker(cmd, approach),
                                   "loadavg": f"{load_before} -> {common.loadavg()}"})
    rows = [{"approach": approach, **median_run(done)} for approach, done in runs.items()]
    for row in rows:
        accs = [a for a in (row.get("probe_mean_acc") or []) if a is not None]
        row["best_probe_mean_acc"] = max(accs) if accs else None
    naive = next((r for r in rows if r["approach"] == "naive"), None)
    for row in rows:
        if naive is not None:
            row["speedup_vs_naive"] = naive["seconds"] / row["seconds"]
            row["analysis_speedup_vs_naive"] = naive["analysis_s"] / max(row["analysis_s"], 1e-9)
            row["memory_ratio_vs_naive"] = naive["peak_rss_mb"] / row["peak_rss_mb"]
            row["extra_memory_ratio_vs_naive"] = naive["extra_rss_mb"] / max(row["extra_rss_mb"], 1.0)
        shown = {k: row[k] for k in ("seconds", "analysis_s", "peak_rss_mb", "extra_rss_mb", "speedup_vs_naive",
                                     "analysis_speedup_vs_naive", "memory_ratio_vs_naive",
                                     "extra_memory_ratio_vs_naive", "best_probe_mean_acc", "loadavg")
                 if row.get(k) is not None}
        common.Line("naive", row["approach"])(**shown)
    common.save_results("naive", args, rows, meta)
    return rows


if __name__ == "__main__":
    main()
