"""Publishing (hf_isi/hub/, scripts/publish.py, isi/app.py): every Hub-ready folder is built and validated
offline; uploads go to an in-process fake Hub (huggingface_hub's ``set_client_factory`` with an httpx2
``MockTransport``) that records which repos were created and which files each commit carried.

The models published here are tiny random ViTs saved in temporary folders with cards written through
``huggingface_hub.ModelCard``; the built-in reference models (``hf_isi/reference_models``) and their cards
(``model_cards/``) are also exercised when they exist. Tests that start a Python subprocess (the Space import
checks) are marked ``slow``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import pytest

from _modules import load_module
import torch

from hf_isi import hub
from hf_isi.results import RESULTS_SPLIT, load_results, write_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "publish.py"
TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"  # what a token looks like; asserted never to leak
NAMESPACE = "me"


publish = load_module("hf_isi_publish_script", SCRIPT)


# -- inputs: tiny models, results folders, cards -----------------------------------------------------------
def _tiny_vit(layers: int, seed: int, num_labels: int = 3):
    import transformers as tf

    torch.manual_seed(seed)
    return tf.ViTForImageClassification(tf.ViTConfig(
        hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32, image_size=16,
        patch_size=4, num_labels=num_labels, architectures=["ViTForImageClassification"]))


def _results_folder(path: Path, specs: list[tuple[str, int]], plots: bool = False) -> Path:
    """A results folder of tiny random ViTs (``specs``: (model name, layers)), written by hf_isi.results."""
    import hf_isi

    reports = []
    for i, (name, layers) in enumerate(specs):
        model = _tiny_vit(layers, seed=i)
        model.config.name_or_path = name
        g = torch.Generator().manual_seed(i)
        pixels, labels = torch.randn(30, 3, 16, 16, generator=g), torch.arange(30) % 3
        reports.append(hf_isi.analyze(model, pixels, labels,
                                      config=hf_isi.AnalysisConfig(isi_dim=2, calibration_images=8)))
    write_results(reports, path, run={"dataset": {"dataset": "random", "split": "train"}, "num_images": 30,
                                      "command_line": "tests/test_publish.py", "num_processes": 1}, plots=plots)
    return path


def _model_card(name: str, accuracy: float = 0.5):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data = ModelCardData(model_name=name, license="apache-2.0", library_name="transformers",
                         pipeline_tag="image-classification", eval_results=[
                             EvalResult(task_type="image-classification", dataset_type="digits",
                                        dataset_name="scikit-learn digits", dataset_split="test",
                                        metric_type="accuracy", metric_value=accuracy),
                             EvalResult(task_type="image-classification", dataset_type="digits",
                                        dataset_name="scikit-learn digits", dataset_split="test",
                                        metric_type="isi", metric_name="mean ISI", metric_value=0.25)])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {name}\n\nA tiny random ViT for tests.\n")


def _saved_model(root: Path, name: str, card: bool = True) -> tuple[Path, Path]:
    """``(model folder, cards folder)``: a tiny ViT saved like a reference model, and its card if ``card``."""
    import transformers as tf

    folder, cards = root / name, root / "cards"
    _tiny_vit(2, seed=7, num_labels=10).save_pretrained(folder)
    tf.ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(folder)
    (folder / "training_results.json").write_text(json.dumps({"test_accuracy": 0.5}))
    cards.mkdir(exist_ok=True)
    if card:
        _model_card(name).save(cards / f"{name}.md")
    return folder, cards


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish_inputs")
    results = _results_folder(root / "results", [("tiny-a", 2), ("org/tiny-b", 3)], plots=True)
    other = _results_folder(root / "results-more", [("tiny-c", 4)])
    model, cards = _saved_model(root, "tiny-vit")
    return {"root": root, "results": results, "other": other, "model": model, "cards": cards}


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    """Dataset + model folders built and validated (in-process checks only), Spaces built, not validated."""
    out = tmp_path_factory.mktemp("hub")
    folders = hub.build_all(out, what=["dataset", "models"], results_dirs=[inputs["results"]],
                            models=[str(inputs["model"])], model_cards_dir=inputs["cards"], namespace=NAMESPACE)
    spaces = hub.build_all(out, what=["metric", "space"], validate=False)
    return {"out": out, **{f.kind: f for f in folders + spaces}}


def _hash_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- the fake Hub ------------------------------------------------------------------------------------------
class FakeHub:
    """Answers huggingface_hub's requests in-process and records them.

    ``fail_commit_of``: a repo id whose commit gets a 500. Every preuploaded file is answered "regular", so
    the commit carries its content inline (base64), which is what the assertions read.
    """

    def __init__(self, fail_commit_of: str | None = None) -> None:
        self.fail_commit_of = fail_commit_of
        self.reject_cards = False  # answer /api/validate-yaml with 400, as the Hub does for a bad card
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.branches: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.authorization: set[str] = set()

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if "authorization" in request.headers:
            self.authorization.add(request.headers["authorization"])
        if path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            prefix = {"dataset": "datasets/", "space": "spaces/"}.get(body.get("type"), "")
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{prefix}{body['organization']}/"
                                                     f"{body['name']}"})
        if path == "/api/validate-yaml":
            if self.reject_cards:
                return httpx2.Response(400, text='"license" must be one of [apache-2.0, mit, ...]')
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        m = re.match(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$", path)
        if m is None:
            return httpx2.Response(404, json={"error": f"no route for {path}"})
        kind, repo_id, action, revision = m.groups()
        if action == "branch":
            self.branches.append((repo_id, revision))
            return httpx2.Response(200, json={})
        if action == "preupload":
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if repo_id == self.fail_commit_of:
            return httpx2.Response(500, json={"error": "Internal Error - We're working hard to fix this"})
        lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
        files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                 for line in lines if line["key"] == "file"}
        header = next(line["value"] for line in lines if line["key"] == "header")
        self.commits.append({"repo_type": kind[:-1], "repo_id": repo_id, "revision": revision, "files": files,
                             "message": header["summary"]})
        prefix = "" if kind == "models" else f"{kind}/"
        return httpx2.Response(200, json={"commitOid": "a" * 40,
                                          "commitUrl": f"https://huggingface.co/{prefix}{repo_id}/commit/{'a' * 40}"})

    def repos(self) -> list[tuple[str, str]]:
        return [(f"{c['organization']}/{c['name']}", c.get("type", "model")) for c in self.created]

    def committed(self, repo_id: str) -> dict[str, bytes]:
        commits = [c for c in self.commits if c["repo_id"] == repo_id]
        assert len(commits) == 1, f"expected exactly one commit to {repo_id}, got {len(commits)}"
        return commits[0]["files"]


@pytest.fixture
def fake_hub(monkeypatch):
    """Route every huggingface_hub request to a FakeHub (online mode); restore the real client afterwards."""
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 for everything else
    huggingface_hub.set_client_factory(lambda: httpx2.Client(
        transport=httpx2.MockTransport(fake.handler), event_hooks={"request": [hf_request_event_hook]},
        follow_redirects=True))
    try:
        yield fake
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


@pytest.fixture
def token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    return TOKEN


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))


def _assert_no_token(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert TOKEN not in text
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p


# -- the dataset -------------------------------------------------------------------------------------------
def test_dataset_folder_is_one_parquet_per_model_and_loads_like_the_source(inputs, built):
    import datasets
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    folder = built["dataset"]
    assert folder.ok, folder.errors
    path = folder.path
    assert path == built["out"].resolve() / "datasets" / hub.DEFAULT_DATASET_NAME
    names = {rel for rel, _ in folder.files()}
    assert {"README.md", "summary.json", "results/tiny-a.parquet", "results/org_tiny-b.parquet"} <= names
    assert any(n.startswith("plots/") and n.endswith(".png") for n in names)
    assert (path / "summary.json").read_bytes() == (inputs["results"] / "summary.json").read_bytes()
    # the card's configs: "all" (default) + one per model, and they round-trip
    configs = DatasetCard.load(path / "README.md").data.configs
    assert [c["config_name"] for c in configs] == ["all", "tiny-a", "org_tiny-b"]
    assert configs[0]["default"] is True
    source = pq.read_table(inputs["results"] / "results" / "data.parquet").to_pandas()
    for config, model in (("all", None), ("tiny-a", "tiny-a"), ("org_tiny-b", "org/tiny-b")):
        ds = datasets.load_dataset(str(path), config, split=RESULTS_SPLIT)
        want = source if model is None else source[source["model"] == model]
        got = ds.to_pandas().sort_values(["model", "layer"]).reset_index(drop=True)
        want = want.sort_values(["model", "layer"]).reset_index(drop=True)
        assert got[["model", "layer"]].equals(want[["model", "layer"]])
        assert got["isi"].fillna(-9).tolist() == pytest.approx(want["isi"].fillna(-9).tolist())
    default = datasets.load_dataset(str(path), split=RESULTS_SPLIT)
    assert default.num_rows == len(source)
    assert sorted(load_results(path)) == ["org/tiny-b", "tiny-a"]
    card = (path / "README.md").read_text()
    assert f"{NAMESPACE}/{hub.DEFAULT_DATASET_NAME}" in card and "## Provenance" in card and "sha256" in card
    assert any("round-trips" in c for c in folder.checks)
    assert any("load_dataset" in c for c in folder.checks)


def test_several_results_folders_are_merged(inputs, tmp_path):
    folders = hub.build_all(tmp_path / "hub", what=["dataset"], results_dirs=[inputs["results"], inputs["other"]])
    (folder,) = folders
    assert folder.ok, folder.errors
    assert [c["config_name"] for c in folder.meta["configs"]] == ["all", "tiny-a", "org_tiny-b", "tiny-c"]
    summary = json.loads((folder.path / "summary.json").read_text())
    assert sorted(summary["models"]) == ["org/tiny-b", "tiny-a", "tiny-c"]
    assert [r["results_dir"] for r in summary["run"]["merged_from"]] == ["results", "results-more"]
    assert set(summary["alignment"]["phases"]["centered_similarity"]["models"]) == set(summary["models"])
    assert (folder.path / "plots" / "comparison_centered_similarity.png").is_file()
    # the same model twice is refused, naming it
    (dup,) = hub.build_all(tmp_path / "hub2", what=["dataset"], results_dirs=[inputs["results"], inputs["results"]])
    assert not dup.ok and "'tiny-a' is in two results folders" in dup.errors[0]


@pytest.mark.parametrize("damage", ["no_summary", "summary_mismatch", "corrupt_parquet", "missing"])
def test_broken_results_folder_fails(inputs, tmp_path, damage):
    broken = tmp_path / "broken"
    if damage != "missing":
        shutil.copytree(inputs["results"], broken)
    if damage == "no_summary":
        (broken / "summary.json").unlink()
    elif damage == "summary_mismatch":
        summary = json.loads((broken / "summary.json").read_text())
        summary["models"]["ghost"] = summary["models"]["tiny-a"]
        (broken / "summary.json").write_text(json.dumps(summary))
    elif damage == "corrupt_parquet":
        (broken / "results" / "data.parquet").write_bytes(b"PAR1 this is not parquet")
    (folder,) = hub.build_all(tmp_path / "hub", what=["dataset"], results_dirs=[broken])
    assert not folder.ok
    expected = {"no_summary": "not a finished results folder", "summary_mismatch": "ghost",
                "corrupt_parquet": "unreadable parquet", "missing": "does not exist"}[damage]
    assert expected in folder.errors[0]


def test_dataset_validation_catches_rows_that_differ_from_the_source(inputs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder,) = hub.build_all(tmp_path / "hub", what=["dataset"], results_dirs=[inputs["results"]])
    assert folder.ok
    target = folder.path / "results" / "tiny-a.parquet"
    table = pq.read_table(target)
    layers = pa.array([v + 100 for v in table["layer"].to_pylist()], type=table.schema.field("layer").type)
    pq.write_table(table.set_column(table.schema.get_field_index("layer"), "layer", layers), target)
    folder.errors, folder.checks, folder.manifest = [], [], None
    hub.validate_folder(folder)
    assert not folder.ok
    assert any("differ from the" in e for e in folder.errors), folder.errors


def test_published_dataset_holds_no_local_path(inputs, tmp_path, monkeypatch):
    """summary.json and README.md of the built dataset carry no absolute path of the machine: paths become
    relative to the results folder or start with ~, also for folders written before paths were made relative."""
    home = tmp_path / "home" / "me"
    monkeypatch.setenv("HOME", str(home))
    old = tmp_path / "old-results"
    shutil.copytree(inputs["results"], old)
    summary = json.loads((old / "summary.json").read_text())  # as written before: absolute paths
    summary["run"].update(command_line=f"python scripts/probe.py --output_dir {old} --dataset {tmp_path}/images "
                                       f"--cache_dir {home}/.cache", output_dir=str(old),
                          dataset={"dataset": str(tmp_path / "images"), "split": "train"})
    for info in summary["models"].values():
        info["provenance"]["command_line"] = summary["run"]["command_line"]
    (old / "summary.json").write_text(json.dumps(summary, indent=2))
    for results_dirs in ([old], [old, inputs["other"]]):
        (folder,) = hub.build_all(tmp_path / "hub", what=["dataset"], results_dirs=results_dirs)
        assert folder.ok, folder.errors
        for name in ("summary.json", "README.md"):
            text = (folder.path / name).read_text()
            for local in (tmp_path, home, inputs["root"]):
                assert str(local) not in text, (results_dirs, name, local)
        card = (folder.path / "README.md").read_text()
        assert "--output_dir . --dataset ../images --cache_dir ~/.cache" in card
    run = json.loads((folder.path / "summary.json").read_text())["run"]["merged_from"][0]
    assert run["output_dir"] == "." and run["dataset"]["dataset"] == "../images"


# -- model repos -------------------------------------------------------------------------------------------
def test_model_folder_holds_weights_and_card(inputs, built):
    from huggingface_hub import ModelCard

    folder = built["models"]
    assert folder.ok, folder.errors
    assert folder.name == "tiny-vit" and folder.repo_type == "model"
    names = {rel for rel, _ in folder.files()}
    assert names == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json",
                     "training_results.json"}
    assert (folder.path / "README.md").read_text() == (inputs["cards"] / "tiny-vit.md").read_text()
    results = ModelCard.load(folder.path / "README.md").data.eval_results
    assert {r.metric_type for r in results} == {"accuracy", "isi"}
    assert any("round-trips 2 eval_results" in c for c in folder.checks)
    assert any("from_pretrained" in c for c in folder.checks)


def test_model_without_card_fails_validation_with_a_clear_message(inputs, tmp_path):
    model, _ = _saved_model(tmp_path, "no-card-vit", card=False)
    (folder,) = hub.build_all(tmp_path / "hub", what=["models"], models=[str(model)],
                              model_cards_dir=tmp_path / "cards")
    assert not folder.ok
    assert folder.errors[0].startswith("no model card:")
    assert str(tmp_path / "cards" / "no-card-vit.md") in folder.errors[0]
    assert "never uploaded without its card" in folder.errors[0]


def test_model_card_without_eval_results_fails(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    model, cards = _saved_model(tmp_path, "bare-card-vit", card=False)
    ModelCard(f"---\n{ModelCardData(license='apache-2.0').to_yaml()}\n---\n\n# bare\n").save(cards / "bare-card-vit.md")
    (folder,) = hub.build_all(tmp_path / "hub", what=["models"], models=[str(model)], model_cards_dir=cards)
    assert not folder.ok and "no eval_results" in folder.errors[0]


@pytest.mark.parametrize("damage", ["garbage", "missing_layer"])
def test_model_with_broken_weights_fails(tmp_path, damage):
    model, cards = _saved_model(tmp_path, "broken-vit")
    if damage == "garbage":
        (model / "model.safetensors").write_bytes(b"not safetensors")
    else:  # the config promises a block the weights do not have: from_pretrained would silently random-init it
        config = json.loads((model / "config.json").read_text())
        config["num_hidden_layers"] += 1
        (model / "config.json").write_text(json.dumps(config))
    (folder,) = hub.build_all(tmp_path / "hub", what=["models"], models=[str(model)], model_cards_dir=cards)
    expected = "from_pretrained(folder) fails" if damage == "garbage" else "does not load every weight"
    assert not folder.ok and any(expected in e for e in folder.errors), folder.errors


def test_model_with_custom_code_fails_without_running_it(tmp_path, monkeypatch):
    """A config with ``auto_map`` asks transformers to run the folder's own code: validation loads with
    ``trust_remote_code=False``, so even a ``y`` on stdin (transformers' prompt) never runs it."""
    import io

    model, cards = _saved_model(tmp_path, "custom-vit")
    ran = tmp_path / "custom-code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="custom-vit", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModel": "modeling_custom.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    for module in ("configuration_custom", "modeling_custom"):
        (model / f"{module}.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    (folder,) = hub.build_all(tmp_path / "hub", what=["models"], models=[str(model)], model_cards_dir=cards)
    assert not folder.ok and any("from_pretrained(folder) fails" in e for e in folder.errors), folder.errors
    assert not ran.exists()


def test_reference_models_publish_only_when_trained_and_carded(tmp_path):
    """The real reference models: not trained -> a build error; trained without card -> a validation error;
    trained with a card in model_cards/ -> a valid folder."""
    from hf_isi import zoo

    folders = hub.build_all(tmp_path / "hub", what=["models"], model_cards_dir=ROOT / "model_cards")
    assert [f.name for f in folders] == zoo.list_reference_models()
    for f in folders:
        trained = all((zoo.reference_model_path(f.name) / n).is_file()
                      for n in ("config.json", "model.safetensors", "preprocessor_config.json"))
        carded = (ROOT / "model_cards" / f"{f.name}.md").is_file()
        if not (zoo.reference_model_path(f.name) / "config.json").is_file():
            assert not f.ok and "is not trained" in f.errors[0]
        elif not trained:
            assert not f.ok  # being written right now
        elif not carded:
            assert not f.ok and f.errors[0].startswith("no model card:")
        else:
            assert f.ok, f.errors
            assert (f.path / "model.safetensors").is_file() and (f.path / "README.md").is_file()


# -- the Spaces (structure; the isolated import checks are the slow tests below) ---------------------------
def test_reference_model_by_name(tmp_path, monkeypatch):
    """A reference model named on the command line is taken from the package and carded by its name."""
    from hf_isi import zoo

    name = zoo.list_reference_models()[0]
    folder, cards = _saved_model(tmp_path / "package_models", name)
    monkeypatch.setattr(zoo, "reference_model_path", lambda n: tmp_path / "package_models" / n)
    (built_model,) = hub.build_all(tmp_path / "hub", what=["models"], models=[name], model_cards_dir=cards)
    assert built_model.ok, built_model.errors
    assert built_model.repo_id(NAMESPACE) == f"{NAMESPACE}/{name}"
    assert built_model.sources == [folder, cards / f"{name}.md"]


def _package_with_reference_models(root: Path, complete: list[str], partial: list[str]) -> Path:
    """A copy of the hf_isi package whose reference_models/ holds tiny models (complete ones, and folders
    with only a config.json, as while training)."""
    import transformers as tf

    package = root / "hf_isi"
    shutil.copytree(ROOT / "hf_isi", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "reference_models"))
    for name in complete:
        _tiny_vit(2, seed=3, num_labels=10).save_pretrained(package / "reference_models" / name)
        tf.ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(package / "reference_models" / name)
    for name in partial:
        (package / "reference_models" / name).mkdir(parents=True)
        (package / "reference_models" / name / "config.json").write_text("{}")
    return package


def test_space_with_a_model_still_training_fails(tmp_path):
    from hf_isi import zoo

    first, second = zoo.list_reference_models()[:2]
    package = _package_with_reference_models(tmp_path, [first], [second])
    folder = hub.build_demo_space(tmp_path / "hub", space_dir=ROOT / "spaces_app", package=package)
    hub.validate_folder(folder)
    assert not folder.ok
    assert any("incomplete reference models" in e and f"{second} (no model.safetensors" in e for e in folder.errors)


def test_metric_space_layout_and_module_loads_by_path(built):
    import evaluate
    import numpy as np
    from huggingface_hub import SpaceCard

    folder = built["metric"]
    path = folder.path
    assert path.name == "isi" and folder.repo_type == "space" and folder.space_sdk == "gradio"
    for name in ("isi.py", "app.py", "requirements.txt", "README.md"):
        assert (path / name).read_bytes() == (ROOT / "isi" / name).read_bytes()
    assert (path / "hf_isi" / "__init__.py").is_file() and (path / "hf_isi" / "evaluate_isi.py").is_file()
    assert not list(path.rglob("__pycache__"))
    data = SpaceCard.load(path / "README.md").data
    assert (data.sdk, str(data.sdk_version), data.app_file) == ("gradio", "6.31.0", "app.py")
    metric = evaluate.load(str(path), isi_dim=2, calibration_images=16)  # by path: isi/isi.py, offline
    rng = np.random.default_rng(0)
    res = metric.compute(hidden_states=rng.normal(size=(40, 3, 5, 4)), patch_embeddings=rng.normal(size=(40, 4, 4)))
    assert res["layers"] == [-1, 0, 1, 2] and res["num_images"] == 40


def test_demo_space_layout_mirrors_spaces_app_plus_the_package(built):
    from huggingface_hub import SpaceCard

    folder = built["space"]
    path = folder.path
    source = {p.relative_to(ROOT / "spaces_app").as_posix() for p in (ROOT / "spaces_app").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
    names = {rel for rel, _ in folder.files()}
    assert {n for n in names if not n.startswith("hf_isi/")} == source - set(hub.SPACE_EXCLUDE)
    copied = {n[len("hf_isi/"):] for n in names if n.startswith("hf_isi/")}
    modules = {p.relative_to(ROOT / "hf_isi").as_posix() for p in (ROOT / "hf_isi").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {n for n in copied if n.endswith(".py")} == modules
    assert {"py.typed", "evaluate_module/isi/isi.py", "evaluate_module/isi/README.md"} <= copied
    for rel in (n for n in copied if n.startswith("reference_models/")):  # the trained models travel with it
        assert (path / "hf_isi" / rel).read_bytes() == (ROOT / "hf_isi" / rel).read_bytes()
    data = SpaceCard.load(path / "README.md").data
    assert (data.sdk, str(data.sdk_version), data.app_file) == ("gradio", "6.31.0", "app.py")
    assert (path / "requirements.txt").is_file()


@pytest.mark.slow
def test_space_offers_the_reference_models_of_its_copy(tmp_path):
    from hf_isi import zoo

    name = zoo.list_reference_models()[0]
    package = _package_with_reference_models(tmp_path, [name], [])
    folder = hub.build_demo_space(tmp_path / "hub", space_dir=ROOT / "spaces_app", package=package)
    hub.validate_folder(folder)
    assert folder.ok, folder.errors
    assert any(f"built-in models: {name})" in c for c in folder.checks), folder.checks
    assert (folder.path / "hf_isi" / "reference_models" / name / "model.safetensors").is_file()


@pytest.mark.slow
def test_space_cannot_fall_back_on_the_checkout(tmp_path):
    """A copy missing a module the app needs fails, although the checkout (and the editable install) has it."""
    (folder,) = hub.build_all(tmp_path / "hub", what=["space"], validate=False)
    (folder.path / "hf_isi" / "plotting.py").unlink()
    hub.validate_folder(folder)
    assert not folder.ok
    assert any("does not import in a fresh Python" in e and "plotting" in e for e in folder.errors), folder.errors


def test_bad_space_card_fails(tmp_path):
    space = tmp_path / "space_src"
    shutil.copytree(ROOT / "spaces_app", space, ignore=shutil.ignore_patterns("__pycache__"))
    text = (space / "README.md").read_text().replace("sdk_version: 6.31.0", "sdk_version: 3.19.1")
    (space / "README.md").write_text(text)
    (space / "requirements.txt").unlink()
    (folder,) = hub.build_all(tmp_path / "hub", what=["space"], space_dir=space)
    assert not folder.ok
    assert "lacks requirements.txt" in folder.errors[0]
    (space / "requirements.txt").write_text("torch==2.13.0\n")
    (folder,) = hub.build_all(tmp_path / "hub", what=["space"], space_dir=space)
    assert any("sdk_version 3.19.1 is not the tested gradio" in e for e in folder.errors), folder.errors


def test_out_dir_not_made_by_publish_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(hub.PublishError, match="was not made by the publish script"):
        hub.build_all(tmp_path, what=["dataset"])
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_metric_card_has_one_source(built, tmp_path, capsys):
    """The Space's card is the packaged one; isi/README.md is a copy that the sync command writes and checks."""
    from hf_isi.hub import metric_space

    packaged = ROOT / "hf_isi" / "evaluate_module" / "isi" / "README.md"
    assert (built["metric"].path / "README.md").read_bytes() == packaged.read_bytes()
    isi = tmp_path / "isi"
    shutil.copytree(ROOT / "isi", isi)
    assert metric_space.main(["--check", "--isi_dir", str(isi)]) == 0
    (isi / "README.md").write_text("stale\n")
    assert metric_space.main(["--check", "--isi_dir", str(isi)]) == 1 and "OUT OF DATE" in capsys.readouterr().out
    folder = hub.build_metric_space(tmp_path / "hub", isi_dir=isi)
    assert (folder.path / "README.md").read_bytes() == packaged.read_bytes()
    assert any("differs from the packaged metric card" in w for w in folder.warnings)
    assert metric_space.main(["--isi_dir", str(isi)]) == 0
    assert (isi / "README.md").read_bytes() == packaged.read_bytes()


def test_isolation_check_is_a_module():
    from hf_isi.hub import _isolation

    assert _isolation.main(["bogus", "a", "b"]) == 2
    proc = subprocess.run([sys.executable, "-m", "hf_isi.hub._isolation"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2 and "usage: python -m hf_isi.hub._isolation" in proc.stderr


# -- the metric Space's app --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metric_app(inputs):
    os.environ["HF_ISI_METRIC_MODELS"] = f"tiny-vit={inputs['model']}"
    try:
        module = load_module("hf_isi_metric_space_app", ROOT / "isi" / "app.py")
    finally:
        del os.environ["HF_ISI_METRIC_MODELS"]
    return module


def test_metric_app_computes_the_isi_on_digits_and_uploads(metric_app):
    import gradio as gr

    assert isinstance(metric_app.demo, gr.Blocks)
    assert "tiny-vit" in metric_app.MODELS
    assert metric_app.module_path() == str(ROOT / "isi" / "isi.py")
    fig, summary, table = metric_app.compute("tiny-vit", "reconstruction", metric_app.DIGITS, 200, None, 2)
    assert summary["images"] == 200 and summary["config"] == "reconstruction" and "isi" in summary["phases"]
    assert list(table.columns) == ["layer", "isi", "isi_r2_all", "isi_r2_self"]
    assert table["layer"].tolist() == [-1, 0, 1, 2]
    assert fig.axes and fig.axes[0].get_lines()
    examples = sorted(str(p) for p in (ROOT / "spaces_app" / "examples").glob("*.png"))
    _, summary, table = metric_app.compute("tiny-vit", "attention", metric_app.UPLOAD, 0, examples, 2)
    assert summary["images"] == len(examples) and "isi_attention" in table.columns
    for args, message in ((("nope", "reconstruction"), "Unknown model"), (("tiny-vit", "bogus"), "Unknown config"),
                          (("tiny-vit", "full", metric_app.UPLOAD, 0, []), "Upload some images"),
                          (("tiny-vit", "full", metric_app.DIGITS, 3), "between 10 and")):
        with pytest.raises(gr.Error, match=message):
            metric_app.compute(*args)
    assert "Metric Card for ISI" in metric_app.card_markdown()


# -- uploading ---------------------------------------------------------------------------------------------
def test_secret_is_masked():
    secret = hub.Secret(TOKEN)
    assert TOKEN not in repr(secret) and TOKEN not in str(secret) and TOKEN not in f"{secret}"
    assert secret.scrub(f"bad {TOKEN}!") == "bad ***!"
    with pytest.raises(TypeError):
        __import__("pickle").dumps(secret)


def test_dry_run_without_token_prints_the_plan(inputs, tmp_path, no_token, fake_hub, capsys):
    out = tmp_path / "hub"
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "models", "--models",
                       str(inputs["model"]), "--model_cards_dir", str(inputs["cards"]), "--out_dir", str(out),
                       "--namespace", NAMESPACE])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert fake_hub.requests == []  # nothing left the machine
    assert "no Hugging Face token found" in captured.out and "nothing was uploaded" in captured.out
    assert f"dataset {NAMESPACE}/hf-isi-results  [OK]" in captured.out
    assert f"model   {NAMESPACE}/tiny-vit  [OK]" in captured.out
    assert re.search(r"results/tiny-a\.parquet\s+[\d.]+ kB", captured.out)
    assert re.search(r"model\.safetensors\s+[\d.]+ kB", captured.out)


def test_dry_run_flag_with_a_token_uploads_nothing(inputs, tmp_path, token, fake_hub, capsys):
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "--out_dir",
                       str(tmp_path / "hub"), "--namespace", NAMESPACE, "--dry_run"])
    captured = capsys.readouterr()
    assert rc == 0 and fake_hub.requests == []
    assert "Dry run (--dry_run)" in captured.out
    _assert_no_token(captured.out, captured.err, folders=(tmp_path / "hub",))


def test_upload_needs_a_namespace(inputs, tmp_path, token, fake_hub, capsys):
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "--out_dir",
                       str(tmp_path / "hub")])
    assert rc == 2 and "--namespace is required" in capsys.readouterr().err
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "--out_dir",
                       str(tmp_path / "hub"), "--namespace", "../etc"])
    assert rc == 2 and "invalid namespace '../etc'" in capsys.readouterr().err
    assert fake_hub.requests == []


@pytest.mark.parametrize("private", [False, True])
def test_upload_creates_each_repo_and_commits_the_built_files(inputs, tmp_path, token, fake_hub, capsys, private):
    out = tmp_path / "hub"
    argv = ["--results_dir", str(inputs["results"]), "--what", "dataset", "models", "--models", str(inputs["model"]),
            "--model_cards_dir", str(inputs["cards"]), "--out_dir", str(out), "--namespace", NAMESPACE]
    rc = publish.main(argv + (["--private"] if private else []))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert fake_hub.repos() == [(f"{NAMESPACE}/hf-isi-results", "dataset"), (f"{NAMESPACE}/tiny-vit", "model")]
    for body in fake_hub.created:
        assert (body.get("visibility") == "private") is private
        assert body.get("private") in (None, private)
    for repo_id, folder in ((f"{NAMESPACE}/hf-isi-results", out / "datasets" / "hf-isi-results"),
                            (f"{NAMESPACE}/tiny-vit", out / "models" / "tiny-vit")):
        committed = fake_hub.committed(repo_id)  # exactly one commit per repo
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert committed == local
    assert {"results/tiny-a.parquet", "results/org_tiny-b.parquet", "README.md", "summary.json"} <= set(
        fake_hub.committed(f"{NAMESPACE}/hf-isi-results"))
    assert [c["revision"] for c in fake_hub.commits] == ["main", "main"]
    assert fake_hub.authorization == {f"Bearer {TOKEN}"}  # the token was used ...
    _assert_no_token(captured.out, captured.err, folders=(out,))  # ... and never shown or written
    assert f"Published 2 repo(s): dataset {NAMESPACE}/hf-isi-results, model {NAMESPACE}/tiny-vit" in captured.out


def test_token_from_the_stored_login(inputs, tmp_path, fake_hub, monkeypatch, capsys):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    stored = tmp_path / "token"
    stored.write_text(TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(stored))
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "--out_dir",
                       str(tmp_path / "hub"), "--namespace", NAMESPACE, "--revision", "v1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert fake_hub.authorization == {f"Bearer {TOKEN}"}
    assert fake_hub.branches == [(f"{NAMESPACE}/hf-isi-results", "v1")]
    assert [c["revision"] for c in fake_hub.commits] == ["v1"]
    _assert_no_token(captured.out, captured.err, folders=(tmp_path / "hub",))


def test_invalid_folder_is_never_uploaded(inputs, tmp_path, token, fake_hub, capsys):
    model, cards = _saved_model(tmp_path, "card-less", card=False)
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "models", "--models", str(model),
                       "--model_cards_dir", str(cards), "--out_dir", str(tmp_path / "hub"), "--namespace", NAMESPACE])
    captured = capsys.readouterr()
    assert rc == 1
    assert fake_hub.requests == []  # not even the valid dataset: all or nothing
    assert "ERROR:   no model card:" in captured.out
    assert "failed validation" in captured.err and "Nothing was uploaded" in captured.err
    _assert_no_token(captured.out, captured.err)


def test_card_rejected_by_the_hub_stops_every_upload(inputs, tmp_path, token, fake_hub, capsys):
    fake_hub.reject_cards = True
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "models", "--models",
                       str(inputs["model"]), "--model_cards_dir", str(inputs["cards"]), "--out_dir",
                       str(tmp_path / "hub"), "--namespace", NAMESPACE])
    captured = capsys.readouterr()
    assert rc == 1
    assert "the Hub does not accept the card of dataset me/hf-isi-results" in captured.err
    assert "nothing was uploaded" in captured.err
    assert fake_hub.created == [] and fake_hub.commits == []
    _assert_no_token(captured.out, captured.err)


def test_broken_results_folder_is_never_uploaded(inputs, tmp_path, token, fake_hub, capsys):
    hub.build_all(tmp_path / "hub", what=["dataset"], results_dirs=[inputs["results"]], validate=False)
    assert (tmp_path / "hub" / "datasets" / hub.DEFAULT_DATASET_NAME).is_dir()
    rc = publish.main(["--results_dir", str(tmp_path / "missing"), "--what", "dataset", "--out_dir",
                       str(tmp_path / "hub"), "--namespace", NAMESPACE])
    assert rc == 1 and fake_hub.requests == []
    assert "does not exist" in capsys.readouterr().out
    assert not (tmp_path / "hub" / "datasets" / hub.DEFAULT_DATASET_NAME).exists()  # the earlier build is gone


def test_upload_folders_refuses_unvalidated_or_changed_folders(built, fake_hub):
    folder = built["space"]  # built with validate=False
    with pytest.raises(hub.PublishError, match="was not validated"):
        hub.upload_folders([folder], NAMESPACE, token=TOKEN)
    dataset = hub.HubFolder(**{k: getattr(built["dataset"], k) for k in
                               ("kind", "name", "path", "errors", "checks", "warnings", "sources", "meta")})
    dataset.manifest = dict(built["dataset"].manifest, **{"README.md": "0" * 64})
    with pytest.raises(hub.UploadError, match="changed after it was validated"):
        hub.upload_folders([dataset], NAMESPACE, token=TOKEN)
    assert fake_hub.created == [] and fake_hub.commits == []


def test_upload_failure_midway_is_reported_and_leaves_folders_intact(inputs, tmp_path, token, fake_hub, capsys,
                                                                     monkeypatch):
    import time
    import types

    out = tmp_path / "hub"
    fake_hub.fail_commit_of = f"{NAMESPACE}/tiny-vit"  # the second repo's commit answers 500 (retried 5 times)
    no_wait = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    no_wait.sleep = lambda seconds: None
    monkeypatch.setattr(huggingface_hub.utils._http, "time", no_wait)  # the retries' back-off, skipped
    rc = publish.main(["--results_dir", str(inputs["results"]), "--what", "dataset", "models", "--models",
                       str(inputs["model"]), "--model_cards_dir", str(inputs["cards"]), "--out_dir", str(out),
                       "--namespace", NAMESPACE, "--dry_run", "false"])
    before = _hash_tree(out)
    captured = capsys.readouterr()
    assert rc == 3
    error = [line for line in captured.err.splitlines() if line.startswith("publish.py: error:")]
    assert len(error) == 1, captured.err
    assert error[0].startswith("publish.py: error: upload of model me/tiny-vit failed (")
    assert "500" in error[0]
    assert f"already uploaded: dataset {NAMESPACE}/hf-isi-results; not uploaded: none" in error[0]
    assert [c["repo_id"] for c in fake_hub.commits] == [f"{NAMESPACE}/hf-isi-results"]
    assert _hash_tree(out) == before  # the failed upload touched nothing locally
    dataset_files = {rel.split("/", 2)[2] for rel in before if rel.startswith("datasets/")}
    assert set(fake_hub.committed(f"{NAMESPACE}/hf-isi-results")) == dataset_files
    _assert_no_token(captured.out, captured.err, folders=(out,))


@pytest.mark.slow
def test_publish_everything_end_to_end(inputs, tmp_path, token, fake_hub, capsys):
    out = tmp_path / "hub"
    rc = publish.main(["--results_dir", str(inputs["results"]), "--models", str(inputs["model"]),
                       "--model_cards_dir", str(inputs["cards"]), "--out_dir", str(out), "--namespace", NAMESPACE,
                       "--private"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert fake_hub.repos() == [(f"{NAMESPACE}/hf-isi-results", "dataset"), (f"{NAMESPACE}/tiny-vit", "model"),
                                (f"{NAMESPACE}/isi", "space"), (f"{NAMESPACE}/hf-isi-demo", "space")]
    assert [b.get("sdk") for b in fake_hub.created] == [None, None, "gradio", "gradio"]
    metric = fake_hub.committed(f"{NAMESPACE}/isi")
    assert {"isi.py", "app.py", "requirements.txt", "README.md", "hf_isi/__init__.py",
            "hf_isi/evaluate_isi.py"} <= set(metric)
    demo = fake_hub.committed(f"{NAMESPACE}/hf-isi-demo")
    assert {"app.py", "README.md", "requirements.txt", "hf_isi/__init__.py", "examples/cat.jpg"} <= set(demo)
    assert not any("__pycache__" in p or p.endswith(".pyc") for c in fake_hub.commits for p in c["files"])
    # both Spaces were validated in a fresh Python that saw only the built folder and its hf_isi/ copy
    assert captured.out.count("hf_isi from hf_isi/__init__.py") == 2
    assert "evaluate.load(folder) loads 'isi' by path offline and computes" in captured.out
    assert not list(out.rglob("__pycache__"))
    _assert_no_token(captured.out, captured.err, folders=(out,))


@pytest.mark.slow
def test_cli_without_token_is_a_dry_run(inputs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no stored login there
    proc = subprocess.run([sys.executable, str(SCRIPT), "--results_dir", str(inputs["results"]), "--what", "dataset",
                           "--out_dir", str(tmp_path / "hub")], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "<namespace>/hf-isi-results  [OK]" in proc.stdout and "nothing was uploaded" in proc.stdout


@pytest.mark.slow
def test_metric_app_serves_the_compute_endpoint(metric_app):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    _, url, _ = metric_app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        client = Client(url, verbose=False)
        assert "/compute" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        _, summary, table = client.predict("tiny-vit", "reconstruction", metric_app.DIGITS, 100, [], 2,
                                           api_name="/compute")
        assert summary["images"] == 100 and summary["config"] == "reconstruction"
        assert table["headers"][:2] == ["layer", "isi"]
        example = handle_file(str(ROOT / "spaces_app" / "examples" / "cat.jpg"))
        _, summary, _ = client.predict("tiny-vit", "attention", metric_app.UPLOAD, 10, [example], 2,
                                       api_name="/compute")
        assert summary["images"] == 1
        with pytest.raises(AppError, match="Upload some images"):
            client.predict("tiny-vit", "full", metric_app.UPLOAD, 10, [], 2, api_name="/compute")
    finally:
        metric_app.demo.close()
