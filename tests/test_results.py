"""The results folder (hf_isi/results.py) and its figures (hf_isi/plotting.py): no local path is published, the
card is one builder for folders and Hub datasets, and plotting leaves matplotlib's global state alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_isi
from hf_isi.cards import relative_paths
from hf_isi.results import load_results, write_results


def _reports(specs=(("tiny-a", 2), ("org/tiny-b", 3))):
    import transformers as tf

    reports = []
    for i, (name, layers) in enumerate(specs):
        torch.manual_seed(i)
        model = tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32, image_size=16,
            patch_size=4, num_labels=3))
        model.config.name_or_path = name
        g = torch.Generator().manual_seed(i)
        reports.append(hf_isi.analyze(model, torch.randn(30, 3, 16, 16, generator=g), torch.arange(30) % 3,
                                      config=hf_isi.AnalysisConfig(isi_dim=2, calibration_images=8)))
    return reports


@pytest.fixture(scope="module")
def reports():
    return _reports()


def local_run(root: Path, home: Path, out: Path) -> dict:
    """A run block as scripts/probe.py writes it, full of absolute local paths (tmp dir and home)."""
    return {
        "command_line": f"python scripts/probe.py --output_dir {out} --dataset={root}/images --cache_dir {home}/.cache",
        "dataset": {"dataset": str(root / "images"), "split": "train"},
        "skipped_files": [str(root / "images" / "bad.png")],
        "arguments": {"run": {"output_dir": str(out)}, "data": {"dataset": str(root / "images")}},
        "num_images": 30, "num_processes": 1,
    }


def assert_no_local_path(folder: Path, *roots: Path) -> None:
    for name in ("summary.json", "README.md"):
        text = (folder / name).read_text()
        for root in roots:
            assert str(root) not in text, f"{folder / name} holds {root}"


def test_relative_paths_rewrites_absolute_paths_only(tmp_path, monkeypatch):
    home, out = tmp_path / "home" / "me", tmp_path / "runs" / "out"
    monkeypatch.setenv("HOME", str(home))
    value = {"cmd": f"probe.py --output_dir {out} --dataset={tmp_path}/data, --ckpt {home}/ckpt (see {out}/x.png).",
             "list": [str(out), str(home), "relative/path", "google/vit-base", "https://hf.co/a/b"],
             "model": str(tmp_path / "model"), 3: 1.5}
    got = relative_paths(value, out, keep=[str(tmp_path / "model")])
    assert got == {"cmd": "probe.py --output_dir . --dataset=../../data, --ckpt ~/ckpt (see x.png).",
                   "list": [".", "~", "relative/path", "google/vit-base", "https://hf.co/a/b"],
                   "model": str(tmp_path / "model"), 3: 1.5}
    assert relative_paths(got, out, keep=[str(tmp_path / "model")]) == got  # idempotent


def test_written_results_hold_no_local_path(reports, tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    monkeypatch.setenv("HOME", str(home))
    out = tmp_path / "results"
    write_results(reports, out, run=local_run(tmp_path, home, out), plots=False)
    assert_no_local_path(out, tmp_path, home, Path(os.path.realpath(tmp_path)))
    run = json.loads((out / "summary.json").read_text())["run"]
    assert run["command_line"] == "python scripts/probe.py --output_dir . --dataset=../images --cache_dir ~/.cache"
    assert run["dataset"]["dataset"] == "../images" and run["skipped_files"] == ["../images/bad.png"]
    assert run["arguments"]["run"]["output_dir"] == "."
    assert "command: `python scripts/probe.py --output_dir . --dataset=../images" in (out / "README.md").read_text()
    assert sorted(load_results(out)) == ["org/tiny-b", "tiny-a"]  # the model names key the rows: kept


def test_staging_folder_writes_paths_relative_to_the_final_folder(reports, tmp_path):
    final = tmp_path / "out"
    staging = tmp_path / "out.partial"
    write_results(reports, staging, run={"command_line": f"probe.py --output_dir {final}"}, plots=False,
                  verify=False, relative_to=final)
    assert json.loads((staging / "summary.json").read_text())["run"]["command_line"] == "probe.py --output_dir ."


def test_results_card_and_plots(reports, tmp_path):
    from huggingface_hub import DatasetCard

    out = write_results(reports, tmp_path / "results", run={"num_images": 30}, plots=True, verify=False)
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["default"]
    assert "| tiny-a | 2 | 30 |" in card.text and "## Provenance" in card.text
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["comparison_centered_similarity.png", "comparison_isi.png", "comparison_isi_attention.png",
                     "comparison_probe_cls_acc.png", "comparison_probe_mean_acc.png", "org_tiny-b.png", "tiny-a.png"]


def test_plots_use_no_pyplot_state(reports):
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from hf_isi.plotting import plot_comparison, plot_report

    before = plt.get_fignums()
    figures = [plot_report(reports[0]), plot_comparison(reports, "isi")]
    assert plt.get_fignums() == before  # nothing registered in pyplot: nothing to close, no leak
    for fig in figures:
        assert isinstance(fig.canvas, FigureCanvasAgg) and fig.axes


def test_importing_hf_isi_keeps_the_matplotlib_backend():
    """A notebook's backend survives ``import hf_isi.plotting`` (it was forced to Agg at import)."""
    code = ("import matplotlib; matplotlib.use('pdf'); import hf_isi.plotting, hf_isi.results, hf_isi.hub; "
            "print(matplotlib.get_backend())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "pdf"
