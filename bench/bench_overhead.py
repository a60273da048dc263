"""Benchmark 1: the cost of hf_isi's metrics on top of one bare forward pass.

Same model, same pre-made pixel tensors (image decoding excluded), eager attention throughout:

* ``bare``: ``model(pixel_values, output_hidden_states=False)`` under ``inference_mode``, no hooks (``bare-sdpa``,
  with ``--sdpa``: the same with fused SDPA attention, for reference);
* ``capture`` / ``capture+attn``: :meth:`hf_isi.ModelAdapter.capture` (hidden states, hooks, finiteness checks;
  with attention probabilities) and no metric, i.e. the price of looking at all layers;
* one row per metric family (similarity, isi, attention, probes = probes + collapse, pe) computed alone;
* ``full``: every family (the default ``AnalysisConfig``), and ``full isi_dim=k`` rows for ``--isi-dims``;
* ``report``: the one-off finalisation (``Analyzer.report()``) of the full suite, not per image.

Each family's *added* seconds are its row minus ``bare``; ``ratio`` is the row's time over ``bare``.
``state_mb`` is the size of the accumulators' states (float64 sums, reservoirs), which is what stays in memory.

    python bench/bench_overhead.py                                    # CPU: ViT-S/16 @224, 64 images, batch 16
    python bench/bench_overhead.py --device cuda --dtype bf16 --model vit_b16_224 --images 2048 --batch-size 256
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

FAMILIES = {"similarity": ["similarity"], "isi": ["isi"], "attention": ["attention"],
            "probes": ["probes", "collapse"], "pe": ["pe"]}


def state_megabytes(analyzer) -> float:
    total = 0

    def visit(v):
        nonlocal total
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    visit(analyzer.state_dict())
    return total / 2**20


def reservoir_images(analyzer) -> int:
    """Test-split images kept in the probes' bounded reservoir (0 without probes)."""
    saved = analyzer.state_dict()["accumulators"].get("probes")
    return 0 if saved is None else len(saved["reservoirs"]["test"]["keys"])


def _timed(fn, device: str, cpu: list[float] | None = None, r: int = 0) -> float:
    """Wall seconds of ``fn()``; its process CPU seconds (all threads) are added to ``cpu[r]``."""
    common.sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    common.sync(device)
    if cpu is not None:
        cpu[r] += time.process_time() - start_cpu
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0], "vit_s16_224", 64, 16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--families", default=",".join(FAMILIES), help="families for the per-family breakdown")
    p.add_argument("--isi-dims", default="", help="extra end-to-end full-suite rows with these isi_dim values")
    p.add_argument("--no-full", action="store_true", help="skip the end-to-end full-suite row(s)")
    p.add_argument("--no-report", action="store_true", help="skip timing report()")
    p.add_argument("--report-repeats", type=int, default=None, help="timed report() calls (default: min(repeats, 3))")
    p.add_argument("--sdpa", action="store_true", help="also time the bare forward with SDPA attention (reference)")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    common.check_device(args.device)

    from hf_isi import AnalysisConfig, Analyzer, ModelAdapter

    dev = args.device
    size = common.image_size(args.model)
    dtype = common.DTYPES[args.dtype]
    batches = [(px.to(dtype), y, ids) for px, y, ids in
               common.synthetic_stream(args.images, args.batch_size, size, args.num_classes, device=dev)]
    model = common.build_model(args.model, dev, args.dtype, attn="eager")
    calib, calib_labels = batches[0][0], batches[0][1]
    meta = {"bench": "overhead", "model": args.model, "device": dev, "dtype": args.dtype, "images": args.images,
            "batch_size": args.batch_size, "repeats": args.repeats, "timing": "per-batch interleaved, median of repeats",
            **common.environment(dev)}
    print(f"# overhead: {args.model} {args.dtype} batch {args.batch_size}, {args.images} images, {args.repeats} "
          f"repeats on {meta['host_cpu']} ({meta['torch_threads']} threads); load {common.loadavg()}")

    def bare(px):
        with torch.inference_mode():
            model(pixel_values=px, output_hidden_states=False)

    sdpa_model = None
    if args.sdpa:
        sdpa_model = common.build_model(args.model, dev, args.dtype, attn="sdpa")
        sdpa_model.load_state_dict(model.state_dict())

    def bare_sdpa(px):
        with torch.inference_mode():
            sdpa_model(pixel_values=px, output_hidden_states=False)

    def analyzer_for(metrics: list[str] | None, attentions: bool, isi_dim: int | None = None) -> Analyzer:
        cfg = AnalysisConfig() if metrics is None else AnalysisConfig(metrics=metrics)
        if isi_dim is not None:
            cfg.isi_dim = isi_dim
        cfg.calibration_images = min(cfg.calibration_images, len(calib))
        a = Analyzer(ModelAdapter(model, attentions=attentions, name=args.model), cfg, num_classes=args.num_classes)
        a.setup(calib, calib_labels)
        return a

    rows: list[dict] = []

    def add_row(config: str, per_repeat: list[float], bare_per_repeat: list[float] | None,
                cpu: list[float] | None = None, bare_cpu: list[float] | None = None, **extra) -> dict:
        med = statistics.median(per_repeat)
        row = {"config": config, "seconds": med, "min_s": min(per_repeat), "max_s": max(per_repeat),
               "img_per_s": args.images / med if med > 0 and not extra.get("one_off") else None,
               "times_s": [round(t, 4) for t in per_repeat]}
        if bare_per_repeat:
            ratios = [t / b for t, b in zip(per_repeat, bare_per_repeat)]
            row["ratio_vs_bare"] = statistics.median(ratios)
            row["bare_s_paired"] = statistics.median(bare_per_repeat)
        if cpu:
            row["cpu_s"] = statistics.median(cpu)
            if bare_cpu:
                row["cpu_ratio_vs_bare"] = statistics.median([t / b for t, b in zip(cpu, bare_cpu)])
        row.update(extra)
        row.update({"loadavg": common.loadavg(), "peak_rss_mb": round(common.peak_rss_mb(), 1),
                    "gpu_peak_mb": common.gpu_peak_mb(dev)})
        rows.append(row)
        shown = {k: row[k] for k in ("seconds", "img_per_s", "ratio_vs_bare", "added_s", "cpu_s", "cpu_ratio_vs_bare",
                                     "state_mb", "loadavg")
                 if row.get(k) is not None}
        common.Line("overhead", config)(**shown)
        return row

    # -- phase 1: bare / capture / per family, interleaved batch by batch ---------------------------------
    families = [f for f in args.families.split(",") if f]
    plain = analyzer_for([], attentions=False)
    with_attn = analyzer_for([], attentions=True)
    fam = {f: analyzer_for(FAMILIES[f], attentions=(f == "attention")) for f in families}
    names = ["bare"] + (["bare-sdpa"] if args.sdpa else []) + ["capture", "capture+attn"] + families
    t = {n: [0.0] * args.repeats for n in names}
    c = {n: [0.0] * args.repeats for n in names}  # process CPU seconds, robust to a loaded machine
    for px, y, ids in batches[:1]:  # warm-up: allocations, first touch of the sums
        bare(px)
        if args.sdpa:
            bare_sdpa(px)
        states = with_attn.capture(px, y, ids)
        for a in fam.values():
            a.update_states(states)
    for r in range(args.repeats):
        for px, y, ids in batches:
            t["bare"][r] += _timed(lambda: bare(px), dev, c["bare"], r)
            if args.sdpa:
                t["bare-sdpa"][r] += _timed(lambda: bare_sdpa(px), dev, c["bare-sdpa"], r)
            t["capture"][r] += _timed(lambda: plain.capture(px, y, ids), dev, c["capture"], r)
            box: dict[str, Any] = {}
            t["capture+attn"][r] += _timed(lambda: box.__setitem__("s", with_attn.capture(px, y, ids)), dev,
                                           c["capture+attn"], r)
            states = box.pop("s")
            for f, a in fam.items():
                t[f][r] += _timed(lambda: a.update_states(states), dev, c[f], r)
            if "isi" in fam and px is batches[-1][0]:  # buffered work (the ISI Gram update) belongs to its batches
                t["isi"][r] += _timed(fam["isi"].flush, dev, c["isi"], r)
            states = None  # free the batch's states before the next forward
    bare_s, bare_c = statistics.median(t["bare"]), statistics.median(c["bare"])
    add_row("bare", t["bare"], None, c["bare"])
    if args.sdpa:
        add_row("bare-sdpa", t["bare-sdpa"], t["bare"], c["bare-sdpa"], c["bare"], note="reference, not the baseline")
    add_row("capture", t["capture"], t["bare"], c["capture"], c["bare"],
            added_s=statistics.median(t["capture"]) - bare_s)
    add_row("capture+attn", t["capture+attn"], t["bare"], c["capture+attn"], c["bare"],
            added_s=statistics.median(t["capture+attn"]) - bare_s)
    added_total = added_cpu = 0.0

    def with_attention_capture(f: str, d: dict) -> list[float]:
        # a family's added cost: its accumulator update, plus (attention only) the price of the attention capture
        return d[f] if f != "attention" else [a + x - b for a, x, b in zip(d[f], d["capture+attn"], d["capture"])]

    for f in families:
        extra, extra_cpu = with_attention_capture(f, t), with_attention_capture(f, c)
        added = statistics.median(extra)
        added_total += added
        added_cpu += statistics.median(extra_cpu)
        add_row(f"+{f}", extra, t["bare"], extra_cpu, c["bare"], added_s=added, added_s_per_image=added / args.images,
                state_mb=round(state_megabytes(fam[f]), 1), note="update seconds on captured states")
    if set(families) == set(FAMILIES):
        predicted = statistics.median(t["capture"]) + added_total
        predicted_cpu = statistics.median(c["capture"]) + added_cpu
        rows.append({"config": "predicted full (capture + sum of families)", "seconds": predicted,
                     "ratio_vs_bare": predicted / bare_s, "cpu_s": predicted_cpu,
                     "cpu_ratio_vs_bare": predicted_cpu / bare_c, "loadavg": common.loadavg()})
        common.Line("overhead", "predicted full")(seconds=predicted, ratio_vs_bare=predicted / bare_s,
                                                  cpu_ratio_vs_bare=predicted_cpu / bare_c)
    plain = with_attn = fam = None  # free phase 1's states (the ISI sums are GBs)

    # -- phase 2: the full suite end to end (Analyzer.update), paired with bare batch by batch -----------
    dims: list[int | None] = [] if args.no_full else [None] + [int(k) for k in args.isi_dims.split(",") if k]
    for k in dims:
        a = analyzer_for(None, attentions=True, isi_dim=k)
        label = "full" if k is None else f"full isi_dim={k}"
        a.update(*batches[0])  # warm-up
        tb, tf_ = [0.0] * args.repeats, [0.0] * args.repeats
        cb, cf = [0.0] * args.repeats, [0.0] * args.repeats
        for r in range(args.repeats):
            for px, y, ids in batches:
                tb[r] += _timed(lambda: bare(px), dev, cb, r)
                tf_[r] += _timed(lambda: a.update(px, y, ids), dev, cf, r)
            tf_[r] += _timed(a.flush, dev, cf, r)  # the buffered ISI Gram update of this repeat's images
        add_row(label, tf_, tb, cf, cb, added_s=statistics.median(tf_) - statistics.median(tb),
                state_mb=round(state_megabytes(a), 1), isi_dim=a.config.isi_dim)
        if not args.no_report:
            n_report = args.report_repeats or max(1, min(args.repeats, 3))
            tr = [_timed(lambda: a.report(), dev) for _ in range(n_report)]
            add_row(f"report() of {label}", tr, None, one_off=True)
        a = None

    common.save_results("overhead", args, rows, meta)
    return rows


if __name__ == "__main__":
    main()
