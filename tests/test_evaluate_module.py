"""The evaluate module ``isi``: evaluate's own doctest convention, offline loading (repo root, packaged path,
installed wheel), equality with hf_isi's direct result, clear errors, and distributed runs (evaluate's
num_process/process_id and accelerate)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import evaluate
import numpy as np
import pytest
import torch
import transformers as tf

import hf_isi
from hf_isi import AnalysisConfig, ModelAdapter, analyze
from hf_isi.evaluate_isi import Isi
from hf_isi.report import METRIC_COLUMNS

REPO = Path(__file__).resolve().parents[1]
VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=16,
           patch_size=4, attn_implementation="eager")
RECONSTRUCTION = ("isi", "isi_r2_all", "isi_r2_self", "isi_normalized")
ATTENTION = ("isi_attention", "attn_residual_cosine", "attn_entropy")


def tiny_vit() -> tf.ViTModel:
    torch.manual_seed(0)
    return tf.ViTModel(tf.ViTConfig(**VIT)).eval()


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    return torch.randn(n, 3, 16, 16, generator=g) + labels[:, None, None, None] * 0.5, labels


def as_array(curve) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in curve], dtype=np.float64)


def assert_curves_close(results: dict, expected, columns, atol=1e-12):
    """``expected``: a Report table or another results dict; None/NaN must agree exactly."""
    for c in columns:
        a = as_array(results[c])
        b = expected[c].to_numpy(dtype=np.float64) if hasattr(expected, "columns") else as_array(expected[c])
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, equal_nan=True, err_msg=c)


def states_inputs(states, labels=None, ids=None) -> dict:
    """An add_batch call's arguments from LayerStates, as a user holding model outputs would pass them."""
    return dict(hidden_states=states.hidden_states, patch_embeddings=states.patch_embeddings,
                attentions=states.attentions, attention_residuals=states.attention_residuals, labels=labels,
                ids=ids, patch_size=states.layout.patch_size, position_embeddings=states.position_embeddings)


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS lookup or socket connection fails the test: proves that loading makes no network calls."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    return calls


# -- evaluate's conventions (tests/test_metric_common.py::LocalModuleTest.test_load) ---------------------------
@contextmanager
def use_local_module():
    """Like evaluate's ``use_local_metrics``: ``evaluate.load("isi")`` resolves to this repository's folder."""
    real_load = evaluate.load

    def load_local(name, *args, **kwargs):
        return real_load(str(REPO / name), *args, **kwargs)

    with mock.patch("evaluate.load", side_effect=load_local):
        yield


def test_doctests_run_like_evaluates_metric_common(no_network):
    module = importlib.import_module(evaluate.loading.evaluation_module_factory(str(REPO / "isi")).module_path)
    cls = evaluate.loading.import_main_class(module.__name__)
    assert cls is Isi
    parameters = inspect.signature(cls._compute).parameters
    assert all(p.kind != p.VAR_KEYWORD for p in parameters.values()), "_compute must not take **kwargs"
    for method in (cls.add_batch, cls.add, cls.compute):
        assert all(p.kind != p.VAR_KEYWORD for p in inspect.signature(method).parameters.values())
    doctest.ELLIPSIS_MARKER = "[...]"
    with use_local_module():
        try:
            results = doctest.testmod(module, verbose=False, raise_on_error=True)
        except doctest.UnexpectedException as e:
            raise e.exc_info[1]
        except doctest.DocTestFailure as e:
            pytest.fail(f"doctest failed: {e.example.source!r} expected {e.example.want!r}, got {e.got!r}")
    assert results.failed == 0
    assert results.attempted > 1
    assert no_network == []


def test_module_files_shims_and_metric_card():
    import yaml

    root_shim, packaged_shim = REPO / "isi" / "isi.py", REPO / "hf_isi" / "evaluate_module" / "isi" / "isi.py"
    assert root_shim.read_text() == packaged_shim.read_text()
    assert len(root_shim.read_text().strip().splitlines()) == 1
    card, packaged_card = REPO / "isi" / "README.md", REPO / "hf_isi" / "evaluate_module" / "isi" / "README.md"
    assert card.read_bytes() == packaged_card.read_bytes(), "keep hf_isi/evaluate_module/isi/README.md == isi/README.md"
    assert Path(hf_isi.ISI_METRIC_PATH) == packaged_shim.parent
    text = card.read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    for key in ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "pinned", "tags",
                "description"):
        assert key in header, key
    assert {"evaluate", "metric"} <= set(header["tags"])
    for section in ("## Metric Description", "## How to Use", "### Inputs", "### Output Values",
                    "## Limitations and Bias", "## Citation"):
        assert section in text, section
    assert "<namespace>/isi" in text and "HF_EVALUATE_OFFLINE" in text
    info = Isi().info
    assert "arXiv" in info.citation and "Examples:" in info.inputs_description and info.description


# -- loading -------------------------------------------------------------------------------------------------
def test_load_offline_from_repo_root_and_packaged_path(no_network, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    default = evaluate.load("isi")
    assert isinstance(default, Isi) and default.config_name == "reconstruction"
    assert evaluate.load("isi", "attention").config_name == "attention"
    assert evaluate.load("isi", "full").config_name == "full"
    with pytest.raises(ValueError, match="unknown isi config"):
        evaluate.load("isi", "vibes")

    monkeypatch.chdir(tmp_path)
    packaged = evaluate.load(hf_isi.ISI_METRIC_PATH, "attention")
    assert type(packaged).__name__ == "Isi" and packaged.config_name == "attention"
    # a bare name that is not a local folder: offline, evaluate fails at once instead of asking the Hub
    with pytest.raises(FileNotFoundError):
        evaluate.load("isi")
    assert no_network == []


@pytest.mark.slow
def test_installed_wheel_loads_from_another_directory(tmp_path):
    """Build a wheel from a copy of the sources, install it into a target folder, and load the packaged module
    from an unrelated directory, offline, with hf_isi resolving to the installed copy."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hf_isi", src / "hf_isi", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, env=env, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("hf_isi-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "hf_isi/evaluate_module/isi/isi.py" in names and "hf_isi/evaluate_module/isi/README.md" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, env=env, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = textwrap.dedent(f"""
        import socket
        def refuse(*a, **k):
            raise AssertionError("network access attempted")
        socket.getaddrinfo = refuse
        socket.socket.connect = refuse
        import numpy as np, evaluate, hf_isi
        assert hf_isi.__file__.startswith({str(site)!r}), hf_isi.__file__
        isi = evaluate.load(hf_isi.ISI_METRIC_PATH, isi_dim=2)
        assert type(isi).__module__ == "hf_isi.evaluate_isi", type(isi).__module__
        import hf_isi.evaluate_isi as m
        assert m.__file__.startswith({str(site)!r})
        rng = np.random.default_rng(0)
        out = isi.compute(hidden_states=rng.normal(size=(40, 5, 10, 8)), patch_embeddings=rng.normal(size=(40, 9, 8)))
        print("LOADED", out["layers"], out["num_images"])
    """)
    run_env = {**os.environ, "PYTHONPATH": str(site), "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
               "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=elsewhere, env=run_env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED [-1, 0, 1, 2, 3, 4] 40" in out.stdout


# -- values: exactly hf_isi's -----------------------------------------------------------------------------------
def test_model_path_equals_hf_isi_analyze():
    pixels, labels = data()
    model = tiny_vit()
    reference = analyze(model, pixels, labels, config=AnalysisConfig(isi_dim=4, calibration_images=32),
                        batch_size=32)
    full = Isi("full", isi_dim=4, calibration_images=32, num_classes=3)
    for lo in range(0, 96, 32):
        full.add_batch(model=model, pixel_values=pixels[lo:lo + 32], labels=labels[lo:lo + 32])
    results = full.compute()
    assert_curves_close(results, reference.table, METRIC_COLUMNS)
    assert results["layers"] == [-1, 0, 1, 2, 3]
    assert results["num_images"] == 96
    assert results["phase"] == list(reference.table["phase"])
    assert results["pe_dominance"] == pytest.approx(reference.scalars["pe_dominance"], abs=1e-12)
    assert results["tradeoff_layer"] == reference.scalars["tradeoff_layer"]
    assert results["phases"] == {c: f.to_dict() for c, f in reference.phases.items()}
    assert results["isi_mean"] == pytest.approx(np.nanmean(reference.table["isi"].to_numpy()[2:]), abs=1e-12)


def test_model_outputs_equal_hf_isi_analyze_torch_numpy_and_single_examples():
    """Outputs captured with plain transformers (a hook for z0), fed as torch tuples, stacked numpy arrays, or one
    example at a time: all equal hf_isi.analyze on the same images."""
    pixels = data()[0]
    model = tiny_vit()
    reference = analyze(model, pixels, config=AnalysisConfig(metrics=["isi"], isi_dim=4, calibration_images=32),
                        batch_size=32)
    captured = {}
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: captured.update(z0=out))
    batches = []
    for lo in range(0, 96, 32):
        with torch.no_grad():
            out = model(pixels[lo:lo + 32], output_hidden_states=True)
        batches.append((out.hidden_states, captured["z0"]))
    hook.remove()

    as_torch, as_numpy, one_by_one = (Isi(isi_dim=4, calibration_images=32) for _ in range(3))
    for hidden, z0 in batches:
        as_torch.add_batch(hidden_states=hidden, patch_embeddings=z0)
        as_numpy.add_batch(hidden_states=torch.stack(hidden, 1).numpy(), patch_embeddings=z0.numpy())
    results = as_torch.compute()
    assert set(results) == {"layers", *RECONSTRUCTION, "isi_mean", "phases", "num_images"}
    assert_curves_close(results, reference.table, RECONSTRUCTION)
    assert_curves_close(as_numpy.compute(), reference.table, RECONSTRUCTION)
    assert results["phases"]["isi"] == reference.phases["isi"].to_dict()

    # add(): one example at a time (calibration: the first batch, here one image, so compare with that)
    one_image = Isi(isi_dim=4, calibration_images=1)
    for hidden, z0 in batches:
        one_image.add_batch(hidden_states=hidden, patch_embeddings=z0)
    for hidden, z0 in batches:
        for i in range(len(z0)):
            one_by_one.add(hidden_states=tuple(h[i] for h in hidden), patch_embeddings=z0[i])
    assert len(one_by_one) == 96
    assert_curves_close(one_by_one.compute(), one_image.compute(), RECONSTRUCTION, atol=1e-9)


def test_attention_config_equals_hf_isi_and_needs_the_residual_pairs():
    pixels = data(40)[0]
    model = tiny_vit()
    reference = analyze(model, pixels, config=AnalysisConfig(metrics=["attention"], calibration_images=20),
                        batch_size=20)
    by_model = Isi("attention")
    by_outputs = Isi("attention")
    adapter = ModelAdapter(model)
    for lo in (0, 20):
        by_model.add_batch(model=model, pixel_values=pixels[lo:lo + 20])
        states = adapter.capture(pixels[lo:lo + 20])
        # attention ISI from outputs alone: attentions and (x, x + a) pairs, stacked, as numpy
        by_outputs.add_batch(attentions=torch.stack(states.attentions, 1).numpy(),
                             attention_residuals=np.stack([np.stack([x.numpy(), y.numpy()], 1)
                                                           for x, y in states.attention_residuals], 1))
    for results in (by_model.compute(), by_outputs.compute()):
        assert set(results) == {"layers", *ATTENTION, "isi_attention_mean", "phases", "num_images"}
        assert_curves_close(results, reference.table, ATTENTION)
        assert results["isi_attention"][:2] == [None, None]
        assert results["isi_attention_mean"] == pytest.approx(np.mean(reference.table["isi_attention"][2:]))


def test_compute_resets_and_only_keys_go_through_arrow():
    rng = np.random.default_rng(0)
    hidden, z0 = rng.normal(size=(50, 4, 10, 8)), rng.normal(size=(50, 9, 8))
    isi = Isi(isi_dim=2)
    isi.add_batch(hidden_states=hidden[:30], patch_embeddings=z0[:30])
    isi.add_batch(hidden_states=hidden[30:], patch_embeddings=z0[30:])
    assert len(isi) == 50 and set(isi.selected_feature_format) == {"example_key"}
    first = isi.compute()
    # a new computation starts from scratch (new calibration, empty sums)
    isi.add_batch(hidden_states=hidden[:30], patch_embeddings=z0[:30])
    second = isi.compute(hidden_states=hidden[30:], patch_embeddings=z0[30:])
    assert first == second
    with pytest.raises(ValueError, match="nothing to compute"):
        isi.compute()


# -- bad inputs ----------------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_value_errors():
    rng = np.random.default_rng(0)
    hidden, z0 = rng.normal(size=(6, 4, 10, 8)), rng.normal(size=(6, 9, 8))
    attn = np.full((6, 3, 2, 10, 10), 0.1)
    res = rng.normal(size=(6, 3, 2, 10, 8))

    def fails(match, config="reconstruction", **inputs):
        with pytest.raises(ValueError, match=match):
            Isi(config, num_classes=3).add_batch(**inputs)

    fails("mismatched batch sizes.*patch_embeddings=5", hidden_states=hidden, patch_embeddings=z0[:5])
    fails("mismatched batch sizes.*labels=4", "full", hidden_states=hidden, patch_embeddings=z0, labels=[0, 1, 2, 0])
    fails("mismatched batch sizes.*ids=2", hidden_states=hidden, patch_embeddings=z0, ids=[1, 2])
    fails("needs patch_embeddings", hidden_states=hidden)
    fails("needs patch_embeddings", "full", hidden_states=hidden)
    fails("needs hidden_states", patch_embeddings=z0)
    fails("rank 3 or one stacked array", hidden_states=hidden[:, 0], patch_embeddings=z0)
    fails(r"hidden_states\[1\] must have rank 3", hidden_states=[hidden[:, 0], hidden[0, 0]], patch_embeddings=z0)
    fails("patch_embeddings must be", hidden_states=hidden, patch_embeddings=z0[:, 0])
    fails("attentions.*rank 4", "full", hidden_states=hidden, patch_embeddings=z0, attentions=attn[:, :, 0],
          attention_residuals=res)
    fails("3 attention tensors for 2 blocks", "full", hidden_states=hidden[:, :3], patch_embeddings=z0,
          attentions=attn, attention_residuals=res)
    fails("needs attentions.*and attention_residuals", "attention", attentions=attn)
    fails("attention_residuals as one array", "attention", attentions=attn, attention_residuals=res[:, :, 0])
    fails("attn_implementation='eager'", "attention", attentions=(), attention_residuals=())
    fails("must hold numbers", hidden_states=hidden, patch_embeddings=np.array([["a"]] * 6))
    fails("num_prefix_tokens must be 1", hidden_states=hidden, patch_embeddings=z0, num_prefix_tokens=2)
    fails("not both", model=tiny_vit(), pixel_values=torch.zeros(2, 3, 16, 16), hidden_states=hidden)
    fails("model and pixel_values go together", pixel_values=torch.zeros(2, 3, 16, 16))
    fails("pixel_values are", model=tiny_vit(), pixel_values=torch.zeros(2, 3, 8, 8))
    fails("contain NaN", hidden_states=hidden, patch_embeddings=np.full_like(z0, np.nan))

    isi = Isi("full", num_classes=3)
    isi.add_batch(hidden_states=hidden, patch_embeddings=z0, labels=[0, 1, 2] * 2)
    with pytest.raises(ValueError, match="same model"):
        isi.add_batch(hidden_states=hidden[:, :3], patch_embeddings=z0, labels=[0, 1, 2] * 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*num_classes"):
        isi.add_batch(hidden_states=hidden, patch_embeddings=z0, labels=[0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="had labels"):
        isi.add_batch(hidden_states=hidden, patch_embeddings=z0)
    with pytest.raises(ValueError, match="do not mix"):
        isi.add_batch(model=tiny_vit(), pixel_values=torch.zeros(2, 3, 16, 16))


# -- distributed -----------------------------------------------------------------------------------------------
def _synthetic(seed: int, n: int = 48):
    """Full-config inputs without a model (numpy, stacked): states, attentions, residual pairs, labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3, 2, 10, 10)) * 2
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return dict(hidden_states=rng.normal(size=(n, 4, 10, 8)), patch_embeddings=rng.normal(size=(n, 9, 8)),
                attentions=attn, attention_residuals=rng.normal(size=(n, 3, 2, 10, 8)), labels=np.arange(n) % 3)


def _shard(inputs: dict, lo: int, hi: int) -> dict:
    return {**{k: v[lo:hi] for k, v in inputs.items()}, "ids": list(range(lo, hi))}


def _distributed_worker(args):
    rank, cache_dir = args
    inputs = _synthetic(0)
    isi = evaluate.load(hf_isi.ISI_METRIC_PATH, "full", num_process=2, process_id=rank, cache_dir=cache_dir,
                        experiment_id="isi-test", isi_dim=2, num_classes=3)
    for lo in range(12 * rank, 48, 24):  # rank 0: 0-11, 24-35; rank 1: 12-23, 36-47
        isi.add_batch(**_shard(inputs, lo, lo + 12))
    return isi.compute()


@pytest.mark.slow
def test_two_processes_with_num_process_equal_one_process(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        rank0, rank1 = pool.map(_distributed_worker, [(0, str(tmp_path)), (1, str(tmp_path))])
    assert rank1 is None
    single = Isi("full", isi_dim=2, num_classes=3)
    inputs = _synthetic(0)
    for lo in range(0, 48, 12):  # the first batch (the calibration) is rank 0's first batch
        single.add_batch(**_shard(inputs, lo, lo + 12))
    expected = single.compute()
    assert rank0["num_images"] == expected["num_images"] == 48
    assert_curves_close(rank0, expected, METRIC_COLUMNS, atol=1e-6)
    assert rank0["phase"] == expected["phase"]
    # process 0 removed the per-process states and the shared calibration
    assert not list(tmp_path.rglob("*.isi.pt")) and not list(tmp_path.rglob("*.arrow"))


def _accelerate_worker():
    """Runs in each of 2 accelerate processes: (a) evaluate's num_process/process_id with accelerate's rank,
    (b) gather_for_metrics of the per-batch states and compute on the main process; both equal one process."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    acc = Accelerator(cpu=True)
    pixels, labels = data(96)
    model = tiny_vit()
    adapter = ModelAdapter(model)
    kwargs = dict(isi_dim=4, calibration_images=16, num_classes=3)
    loader = acc.prepare(DataLoader(torch.arange(96), batch_size=16, shuffle=False))

    by_files = evaluate.load(hf_isi.ISI_METRIC_PATH, "full", num_process=acc.num_processes,
                             process_id=acc.process_index, cache_dir=os.environ["HF_ISI_EVAL_CACHE"],
                             experiment_id="accelerate", **kwargs)
    gathered = evaluate.load(hf_isi.ISI_METRIC_PATH, "full", **kwargs)
    for idx in loader:
        by_files.add_batch(model=adapter, pixel_values=pixels[idx], labels=labels[idx], ids=idx.tolist())
        states = adapter.capture(pixels[idx])
        g = acc.gather_for_metrics({
            "hidden_states": torch.stack(states.hidden_states, 1), "patch_embeddings": states.patch_embeddings,
            "attentions": torch.stack(states.attentions, 1),
            "attention_residuals": torch.stack([torch.stack(p, 1) for p in states.attention_residuals], 1),
            "labels": labels[idx], "ids": idx,
        })
        if acc.is_main_process:
            gathered.add_batch(**{**g, "ids": g["ids"].tolist()}, patch_size=(4, 4),
                               position_embeddings=states.position_embeddings)
    result = by_files.compute()
    if acc.is_main_process:
        single = evaluate.load(hf_isi.ISI_METRIC_PATH, "full", **kwargs)
        for lo in range(0, 96, 16):
            single.add_batch(model=adapter, pixel_values=pixels[lo:lo + 16], labels=labels[lo:lo + 16],
                             ids=list(range(lo, lo + 16)))
        expected = single.compute()
        assert_curves_close(result, expected, METRIC_COLUMNS, atol=1e-6)
        assert_curves_close(gathered.compute(), expected, METRIC_COLUMNS, atol=1e-6)
    else:
        assert result is None
    acc.wait_for_everyone()
    print(f"EVAL_OK rank={acc.process_index} world={acc.num_processes}")


@pytest.mark.slow
def test_accelerate_two_processes_equal_one_process(tmp_path):
    """A real ``accelerate launch`` with 2 CPU processes (gloo), as in test_engine."""
    from accelerate.test_utils.testing import get_launch_command, get_torch_dist_unique_port

    cmd = get_launch_command(multi_gpu=True, num_processes=2, num_machines=1, mixed_precision="no",
                             dynamo_backend="no", main_process_port=get_torch_dist_unique_port() + 37)
    code = "import sys; sys.path.insert(0, 'tests'); import test_evaluate_module as t; t._accelerate_worker()"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_ISI_SNIPPET": code,
           "HF_ISI_EVAL_CACHE": str(tmp_path)}
    out = subprocess.run([*cmd, str(REPO / "tests" / "_run_snippet.py")], check=False, env=env, capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "EVAL_OK rank=0 world=2" in out.stdout and "EVAL_OK rank=1 world=2" in out.stdout
