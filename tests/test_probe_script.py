"""scripts/probe.py end to end: real ``accelerate launch`` runs on 1 and 2 CPU processes give the same numbers,
the results folder loads with ``datasets.load_dataset`` and ``load_results``, a SIGKILLed run resumes to the
same numbers, and bad input gives one-line errors. Small in-process tests cover the argument and folder logic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _compare import assert_columns_close
from _modules import load_module

from hf_isi.report import results_features
from hf_isi.results import load_results, plot_filename

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "probe.py"
NUM_IMAGES = 40  # readable ones; the imagefolder also holds one corrupt file
REQUIRED_COLUMNS = (
    "model", "layer", "num_images", "centered_similarity", "isi", "isi_r2_self", "isi_r2_all", "isi_attention",
    "attn_entropy", "aci", "ccc", "attn_distance", "probe_cls_acc", "probe_mean_acc", "probe_cls_control_acc",
    "probe_mean_control_acc", "nc1_cls", "nc1_mean", "phase",
)


probe = load_module("hf_isi_probe_script", SCRIPT)


# -- helpers ---------------------------------------------------------------------------------------------
def save_tiny_vit(path: Path, layers: int, seed: int = 0) -> Path:
    """A random ViT classifier (width 32, 16x16 images, 4x4 patches) with its processor, saved like a checkpoint."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                          image_size=16, patch_size=4, num_labels=2)
    tf.ViTForImageClassification(config).save_pretrained(path)
    tf.ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def make_imagefolder(root: Path, per_class: int = NUM_IMAGES // 2, corrupt: bool = True,
                     classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    """Structured random PNGs in ``validation/<class>/`` (class 1 is darker in its upper half), plus a corrupt file."""
    import PIL.Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / "validation" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            pixels[: 4 + 4 * c] //= 2 + c
            PIL.Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    if corrupt:
        (root / "validation" / classes[0] / "corrupt.png").write_bytes(b"this is not a PNG")
    return root


def launch(args: list[str], num_processes: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch [--multi_gpu --num_processes 2] scripts/probe.py ARGS`` on CPU processes."""
    return subprocess.run(launch_command(args, num_processes), env=launch_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def launch_command(args: list[str], num_processes: int) -> list[str]:
    from accelerate.test_utils.testing import get_launch_command, get_torch_dist_unique_port

    options = dict(num_processes=num_processes, num_machines=1, mixed_precision="no", dynamo_backend="no")
    if num_processes > 1:  # plain --cpu would start ONE process (accelerate#2741)
        options.update(multi_gpu=True, main_process_port=get_torch_dist_unique_port() + 41)
    return [*get_launch_command(**options), str(SCRIPT), *args]


def launch_env() -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


def check_ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def results_table(output_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(output_dir / "results" / "data.parquet")


def assert_same_results(a: Path, b: Path) -> None:
    """Same rows, and every metric equal within the default (mixed) precision's run-to-run tolerance (nulls
    in the same places)."""
    ta, tb = results_table(a), results_table(b)
    assert ta[["model", "layer", "num_images", "phase"]].equals(tb[["model", "layer", "num_images", "phase"]])
    assert_columns_close(ta, tb)


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` in this process: exit status and the error lines it printed (libraries' progress bars
    go to stderr too)."""
    code = probe.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "".join(line + "\n" for line in err.splitlines() if line.startswith("probe.py: error:"))


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_assets")
    return {
        "models": [str(save_tiny_vit(root / "vit-3", layers=3)), str(save_tiny_vit(root / "vit-5", layers=5, seed=1))],
        "images": make_imagefolder(root / "images"),
        "root": root,
    }


def base_args(assets, output_dir: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", *assets["models"], "--dataset", str(assets["images"]),
            "--output_dir", str(output_dir), "--batch_size", "8", *extra]


@pytest.fixture(scope="module")
def one_process_run(assets):
    out = assets["root"] / "run-1proc"
    check_ok(launch(base_args(assets, out)))
    return out


@pytest.fixture(autouse=True)
def reset_accelerate_state(monkeypatch):
    """In-process runs: no global logging changes, and a fresh accelerate state afterwards."""
    monkeypatch.setattr(probe, "setup_logging", lambda level, accelerator: None)
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# -- the distributed run ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_and_two_processes_give_the_same_results(assets, one_process_run):
    two = assets["root"] / "run-2proc"
    check_ok(launch(base_args(assets, two), num_processes=2))
    assert_same_results(one_process_run, two)
    run = json.loads((two / "summary.json").read_text())["run"]
    assert run["num_processes"] == 2 and run["distributed_type"] == "MULTI_CPU"
    assert run["num_images_skipped"] == 1 and run["num_images"] == NUM_IMAGES  # counted across processes
    # models are dealt round-robin: the second one was finalised on rank 1
    ranks = [r.provenance["finalised_by_rank"] for r in load_results(two).values()]
    assert ranks == [0, 1]


@pytest.mark.slow
def test_results_folder_schema_summary_and_plots(assets, one_process_run):
    import datasets

    out = one_process_run
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "plots", "results", "summary.json"]
    assert not Path(str(out) + ".partial").exists()

    loaded = datasets.load_dataset(str(out))
    assert list(loaded) == ["train"]
    table = loaded["train"]
    assert table.features == results_features()
    assert set(REQUIRED_COLUMNS) <= set(table.column_names)
    assert table.features["layer"].dtype == "int32" and table.features["isi"].dtype == "float64"
    rows = table.to_pandas()
    assert len(rows) == (3 + 2) + (5 + 2)  # layers -1, 0, 1..L of each model
    assert rows["layer"].min() == -1 and set(rows["num_images"]) == {NUM_IMAGES}
    pre_pe = rows[rows["layer"] == -1].iloc[0]
    assert pre_pe["probe_cls_acc"] is None or np.isnan(pre_pe["probe_cls_acc"])  # no CLS before PE: null, not 0
    assert rows["probe_mean_acc"].notna().sum() > 0 and rows["isi"].notna().sum() > 0
    assert set(rows["phase"]) <= {"cliff", "plateau", "climb", "none"}

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == assets["models"]
    provenance = summary["models"][assets["models"][0]]["provenance"]
    for key in ("model", "revision", "transformers_version", "torch_version", "dtype", "attn_implementation",
                "num_processes", "command_line", "dataset", "wall_time_s", "num_images_skipped"):
        assert key in provenance, key
    assert provenance["attn_implementation"] == "eager" and provenance["dtype"] == "float32"
    run = summary["run"]
    for key in ("command_line", "num_processes", "wall_time_s", "seed", "dtype", "dataset", "num_images",
                "num_images_skipped", "skipped_ids", "started_at", "arguments"):
        assert key in run, key
    assert run["num_processes"] == 1 and run["num_images_skipped"] == 1
    assert run["skipped_files"][0].endswith("corrupt.png")
    alignment = summary["alignment"]["phases"]["centered_similarity"]
    assert alignment["reference"] == assets["models"][0]  # the shallower model
    assert set(summary["alignment"]["tradeoff"]["models"]) == set(assets["models"])

    plots = {p.name for p in (out / "plots").iterdir()}
    assert {plot_filename(m) for m in assets["models"]} <= plots
    assert "comparison_centered_similarity.png" in plots
    card = (out / "README.md").read_text()
    assert "configs:" in card and "results/*.parquet" in card

    reports = load_results(out)
    assert list(reports) == assets["models"]
    again = reports[assets["models"][1]].table
    assert again["layer"].tolist() == list(range(-1, 6))
    np.testing.assert_array_equal(again["isi"].to_numpy(float),
                                  rows[rows["model"] == assets["models"][1]]["isi"].to_numpy(float))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_numbers(assets, one_process_run):
    out = assets["root"] / "run-killed"
    partial = Path(str(out) + ".partial")
    log = (assets["root"] / "killed.log").open("w")
    proc = subprocess.Popen(launch_command(base_args(assets, out, "--batch_size", "1", "--checkpoint_every", "1"), 1),
                            env=launch_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoint = partial / "checkpoints" / "model-0-rank-0.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert checkpoint.exists(), (assets["root"] / "killed.log").read_text()[-3000:]
    assert partial.is_dir() and not out.exists()  # nothing that looks complete

    resumed = check_ok(launch(base_args(assets, out, "--resume")))  # another batch size: same numbers
    assert "resuming at image" in resumed.stderr
    assert out.is_dir() and not partial.exists()
    assert_same_results(one_process_run, out)
    assert json.loads((out / "summary.json").read_text())["run"]["resumed"] is True


@pytest.mark.slow
def test_fewer_images_than_processes(assets):
    images = make_imagefolder(assets["root"] / "one-image", per_class=1, corrupt=False, classes=("cat",))
    out = assets["root"] / "run-one-image"
    check_ok(launch(["--model_name_or_path", assets["models"][0], "--dataset", str(images),
                     "--output_dir", str(out)], num_processes=2))
    rows = results_table(out)
    assert set(rows["num_images"]) == {1} and rows["centered_similarity"].notna().all()
    assert rows["probe_mean_acc"].isna().all()  # one class: no probes, null


@pytest.mark.slow
def test_default_run_needs_no_arguments(tmp_path):
    """The built-in default (reference models on scikit-learn's digits), shortened: 40 images, and 4-dim ISI
    projections (the default 16 makes d16's ISI maps 1024-dimensional: ~25 s of ridge solves on 2 cores)."""
    from hf_isi.zoo import DEFAULT_MODELS

    out = tmp_path / "default"
    check_ok(launch(["--max_samples", "40", "--isi_dim", "4", "--output_dir", str(out)], timeout=600))
    rows = results_table(out)
    assert list(dict.fromkeys(rows["model"])) == list(DEFAULT_MODELS)
    assert set(rows["num_images"]) == {40} and rows["probe_mean_acc"].notna().any()
    run = json.loads((out / "summary.json").read_text())["run"]
    assert run["dataset"]["dataset"] == "digits" and run["num_images_skipped"] == 0


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_model_is_one_line_without_traceback(assets, tmp_path):
    """The real command line (a plain ``python`` process: ``accelerate launch`` adds its own report)."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--model_name_or_path", "no-such-org/no-such-vit",
                             "--dataset", str(assets["images"]), "--output_dir", str(tmp_path / "out")],
                            env=launch_env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and errors[0].startswith("probe.py: error: cannot load model 'no-such-org/")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_path_that_is_not_a_vision_transformer(assets, tmp_path, capsys):
    import transformers as tf

    bert = tmp_path / "bert"
    tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                               vocab_size=64)).save_pretrained(bert)
    for model, message in ((bert, "takes 'input_ids', not images"), (tmp_path, "cannot load")):
        code, err = run_in_process(["--model_name_or_path", str(model), "--dataset", str(assets["images"]),
                                    "--output_dir", str(tmp_path / "out")], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.partial").exists()  # refused before anything was written


def test_strict_refuses_the_corrupt_file(assets, tmp_path, capsys):
    code, err = run_in_process(base_args(assets, tmp_path / "out", "--strict"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "corrupt.png" in err and "drop --strict" in err


def test_existing_output_dir_is_refused_without_flags(assets, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, err = run_in_process(base_args(assets, out), capsys)
    assert code == 2 and "already exists: pass --overwrite" in err and err.count("\n") == 1
    stranger = tmp_path / "not-results"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    code, err = run_in_process(base_args(assets, stranger, "--overwrite"), capsys)
    assert code == 2 and "was not made by probe.py" in err
    assert (stranger / "precious.txt").exists()


def test_missing_label_column_disables_probes(assets, tmp_path, capsys):
    """A parquet dataset with images only: the run succeeds, probe and NC columns are null."""
    import datasets

    images = datasets.load_dataset("imagefolder", data_dir=str(assets["images"]), split="validation")
    images.remove_columns("label").select(range(12)).to_parquet(str(tmp_path / "images.parquet"))
    out = tmp_path / "out"
    code, err = run_in_process(["--model_name_or_path", assets["models"][0], "--dataset",
                                str(tmp_path / "images.parquet"), "--output_dir", str(out), "--no_plots"], capsys)
    assert code == 0, err
    rows = results_table(out)
    for column in ("probe_cls_acc", "probe_mean_acc", "probe_cls_control_acc", "nc1_cls", "nc1_mean"):
        assert rows[column].isna().all(), column
    assert rows["centered_similarity"].notna().all()
    assert "probes" not in json.loads((out / "summary.json").read_text())["run"]["metrics"]


# -- arguments and the output folder (no model runs) --------------------------------------------------
def test_config_file_then_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: my-model\nmax_samples: 7\nisi_dim: 4\nplots: false\n")
    args = probe.parse_args([str(config), "--max_samples", "9"])
    assert args.model.model_name_or_path == ["my-model"] and args.data.max_samples == 9
    assert args.analysis.isi_dim == 4 and args.run.plots is False
    (tmp_path / "bad.json").write_text(json.dumps({"isi_dimension": 4}))
    with pytest.raises(ValueError, match="unknown arguments: isi_dimension"):
        probe.parse_args([str(tmp_path / "bad.json")])
    assert probe.parse_args([]).model.model_name_or_path == list(probe.DEFAULT_MODELS)


def test_workspace_plan(tmp_path):
    run = probe.RunArguments
    fingerprint = {"models": ["a"]}
    ws = probe.Workspace(tmp_path / "out")
    assert ws.plan(run(), fingerprint) == "fresh"
    ws.prepare("fresh", fingerprint)  # a killed run leaves only the staging folder
    with pytest.raises(ValueError, match="unfinished run"):
        ws.plan(run(), fingerprint)
    assert ws.plan(run(resume=True), fingerprint) == "resume"
    with pytest.raises(ValueError, match="used other models"):
        ws.plan(run(resume=True), {"models": ["b"]})
    assert ws.plan(run(overwrite=True), fingerprint) == "fresh"
    (ws.staging / "summary.json").write_text("{}")  # complete, killed before the rename
    assert ws.plan(run(resume=True), fingerprint) == "publish"
    ws.publish()
    assert sorted(p.name for p in ws.output_dir.iterdir()) == ["summary.json"] and not ws.staging.exists()
    assert ws.plan(run(resume=True), fingerprint) == "done"
    assert ws.plan(run(overwrite=True), fingerprint) == "fresh"
    ws.prepare("fresh", fingerprint)  # --overwrite: the old folder stays until the new one is complete
    (ws.staging / "summary.json").write_text('{"new": true}')
    assert json.loads((ws.output_dir / "summary.json").read_text()) == {}
    ws.publish()
    assert json.loads((ws.output_dir / "summary.json").read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
