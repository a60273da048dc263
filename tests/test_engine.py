"""The streaming engine: batch-size invariance, merging, resume state, the Report, and a real 2-process sync."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from _compare import assert_columns_close

from hf_isi import AnalysisConfig, Analyzer, ModelAdapter, Report, analyze
from hf_isi.report import TABLE_COLUMNS

CONFIG = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=16,
              patch_size=4)


def tiny_vit() -> tf.ViTModel:
    torch.manual_seed(0)
    return tf.ViTModel(tf.ViTConfig(**CONFIG))


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    pixels = torch.randn(n, 3, 16, 16, generator=g) + labels[:, None, None, None] * 0.5
    return pixels, labels


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_batch_size_does_not_change_results(precision):
    pixels, labels = data()
    model = tiny_vit()
    config = AnalysisConfig(precision=precision)
    one = analyze(model, pixels, labels, batch_size=120, config=config)
    many = analyze(model, pixels, labels, batch_size=7, config=config)
    assert_columns_close(one.table, many.table, precision)
    assert (one.table["phase"] == many.table["phase"]).all()


def test_merged_halves_equal_one_pass_and_state_round_trips():
    pixels, labels = data()
    adapter = ModelAdapter(tiny_vit())
    config = AnalysisConfig()

    def analyzer(lo, hi):
        a = Analyzer(adapter, config, num_classes=3)
        a.setup(pixels)  # the same calibration batch everywhere
        if hi > lo:
            a.update(pixels[lo:hi], labels[lo:hi], ids=range(lo, hi))
        return a

    whole = analyzer(0, 120).report()
    merged = analyzer(0, 50).merge(analyzer(50, 120)).report()
    assert_columns_close(whole.table, merged.table)
    # an empty shard (more processes than images) merges as a no-op
    assert_columns_close(whole.table, analyzer(0, 120).merge(analyzer(0, 0)).report().table)

    saved = analyzer(0, 50).state_dict()
    resumed = Analyzer(adapter, config, num_classes=3)
    resumed.load_state_dict(saved)
    resumed.update(pixels[50:], labels[50:], ids=range(50, 120))
    assert_columns_close(whole.table, resumed.report().table)
    with pytest.raises(ValueError, match="another configuration"):
        Analyzer(adapter, AnalysisConfig(isi_dim=4), num_classes=3).load_state_dict(saved)


def test_report_table_dataset_and_files(tmp_path):
    pixels, labels = data(60)
    report = analyze(tiny_vit(), pixels, labels)
    assert tuple(report.table.columns) == TABLE_COLUMNS
    ds = report.to_dataset()
    assert ds.num_rows == report.num_layers + 2
    assert ds.features["isi"].dtype == "float64"
    # missing values are null, never 0
    assert ds[0]["ccc"] is None and ds[0]["attn_entropy_per_head"] is None
    report.save(tmp_path)
    again = Report.load(tmp_path)
    assert_columns_close(report.table, again.table, "exact")
    assert again.phases.keys() == report.phases.keys()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["provenance"]["torch_version"] == torch.__version__.split("+")[0] or summary["provenance"][
        "torch_version"].startswith(torch.__version__.split("+")[0])
    assert summary["provenance"]["num_classes"] == 3
    # the finalising time of every accumulator (probes and collapse share one), adding up to at most the whole
    by_metric = summary["provenance"]["seconds_finalise_by_metric"]
    assert set(by_metric) == {"similarity", "isi", "attention", "probes", "pe"} and min(by_metric.values()) >= 0
    assert sum(by_metric.values()) <= summary["provenance"]["seconds_finalise"] + 1e-2


def test_bad_inputs_are_clear_errors():
    pixels, labels = data(20)
    model = tiny_vit()
    with pytest.raises(ValueError, match="at least 2 classes"):
        analyze(model, pixels, torch.zeros(20, dtype=torch.int64))
    with pytest.raises(ValueError, match="20 images but 3 labels"):
        analyze(model, pixels, labels[:3])
    with pytest.raises(ValueError, match="unknown metrics"):
        AnalysisConfig(metrics=["isi", "vibes"])
    with pytest.raises(ValueError, match="no images"):
        analyze(model, [], None)
    # labels are optional: probes and collapse are then skipped, not faked
    report = analyze(model, pixels)
    assert report.table["probe_mean_acc"].isna().all() and report.table["isi"].notna().any()


def test_images_are_preprocessed_with_the_processor():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)) for i in range(12)]
    images[3] = images[3].convert("L")
    images[4] = images[4].convert("RGBA")
    images[5] = images[5].convert("CMYK")
    report = analyze(tiny_vit(), images, [i % 2 for i in range(12)],
                     config=AnalysisConfig(metrics=["similarity", "attention"]))
    assert report.table["centered_similarity"].notna().all()


def _sync_worker():
    """Runs in each of 2 processes: half the data each, all-reduced, must equal one process on all of it."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    pixels, labels = data(90)
    adapter = ModelAdapter(tiny_vit())
    a = Analyzer(adapter, AnalysisConfig(), num_classes=3)
    a.setup(pixels)
    lo, hi = (0, 40) if acc.process_index == 0 else (40, 90)
    a.update(pixels[lo:hi], labels[lo:hi], ids=range(lo, hi))
    a.sync(acc)
    single = Analyzer(adapter, AnalysisConfig(), num_classes=3)
    single.setup(pixels)
    single.update(pixels, labels, ids=range(90))
    assert_columns_close(a.report().table, single.report().table)
    print(f"SYNC_OK rank={acc.process_index} world={acc.num_processes}")


@pytest.mark.slow
def test_two_process_all_reduce_equals_one_process():
    """A real ``accelerate launch`` with 2 CPU processes (gloo). Not debug_launcher: it forks, and forking a
    process whose OpenMP pool is already running (earlier tests) can deadlock."""
    import os
    import subprocess

    from accelerate.test_utils.testing import get_launch_command, get_torch_dist_unique_port

    cmd = get_launch_command(multi_gpu=True, num_processes=2, num_machines=1, mixed_precision="no",
                             dynamo_backend="no", main_process_port=get_torch_dist_unique_port() + 31)
    code = "import sys; sys.path.insert(0, 'tests'); import test_engine; test_engine._sync_worker()"
    script = os.path.join(os.path.dirname(__file__), "_run_snippet.py")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_ISI_SNIPPET": code}
    out = subprocess.run([*cmd, script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SYNC_OK rank=0 world=2" in out.stdout and "SYNC_OK rank=1 world=2" in out.stdout


def test_registry_declares_every_family_and_column_once():
    from hf_isi.engine import build_accumulators
    from hf_isi.metrics.registry import ACCUMULATORS, FAMILIES
    from hf_isi.report import METRIC_COLUMNS, PER_HEAD_COLUMNS

    assert tuple(FAMILIES) == ("similarity", "isi", "attention", "probes", "collapse", "pe")
    assert sorted(METRIC_COLUMNS) == sorted(c for f in FAMILIES.values() for c in f.all_columns)
    assert PER_HEAD_COLUMNS == FAMILIES["attention"].per_head_columns
    assert len(set(TABLE_COLUMNS)) == len(TABLE_COLUMNS)
    assert {cls.name for cls in ACCUMULATORS} == {"similarity", "isi", "attention", "probes", "pe"}
    # probes and collapse share one accumulator, built once for either or both
    for metrics in (["probes"], ["collapse"], ["probes", "collapse"]):
        accs = build_accumulators(AnalysisConfig(metrics=metrics), num_classes=3)
        assert list(accs) == ["probes"]
        assert (accs["probes"].want_probes, accs["probes"].want_collapse) == ("probes" in metrics,
                                                                              "collapse" in metrics)
    # without labels the families that need them are left out; the capture needs follow the families
    assert list(build_accumulators(AnalysisConfig(), None)) == ["similarity", "isi", "attention", "pe"]
    assert AnalysisConfig(metrics=["collapse"]).needs_labels and not AnalysisConfig(metrics=["isi"]).needs_labels
    assert AnalysisConfig(metrics=["attention"]).needs_attentions and not AnalysisConfig(metrics=["pe"]).needs_attentions


def test_one_family_of_a_shared_accumulator_reports_only_its_columns():
    pixels, labels = data(60)
    report = analyze(tiny_vit(), pixels, labels, config=AnalysisConfig(metrics=["collapse"]))
    assert report.table["nc1_mean"].notna().any() and report.table["probe_mean_acc"].isna().all()
    assert report.table["probe_mean_penalty"].isna().all() and report.table["centered_similarity"].isna().all()


def test_states_only_analyzer_and_shared_calibration_equal_the_model_analyzer():
    """The Analyzer without a model source (fed layer states) and one that adopts another's calibration give
    the numbers of the plain model Analyzer."""
    pixels, labels = data(90)
    adapter = ModelAdapter(tiny_vit())
    config = AnalysisConfig(calibration_images=30)
    reference = Analyzer(adapter, config, num_classes=3)
    reference.setup(pixels, labels)
    reference.update(pixels, labels, ids=range(90))

    states_only = Analyzer(None, config, num_classes=3)
    states_only.setup_states(reference.capture(pixels, labels))  # sliced to the 30 calibration images
    states_only.update_states(reference.capture(pixels, labels, ids=range(90)))
    with pytest.raises(ValueError, match="no model"):
        states_only.capture(pixels)

    other = Analyzer(adapter, config, num_classes=3)
    other.setup(pixels[30:], labels[30:])  # another calibration batch...
    other.load_calibration(reference.calibration())  # ...replaced by the reference's
    other.update(pixels, labels, ids=range(90))

    for analyzer in (states_only, other):
        report = analyzer.report()
        assert_columns_close(reference.report().table, report.table, "exact")
    assert states_only.report().model == Analyzer.STATES_ONLY
    with pytest.raises(ValueError, match="another configuration"):
        Analyzer(adapter, AnalysisConfig(isi_dim=4), num_classes=3).load_calibration(reference.calibration())
