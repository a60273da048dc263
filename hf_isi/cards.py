"""The cards hf_isi writes with huggingface_hub: the model cards of the reference models (a ``ModelCard`` whose
model-index holds the measured test accuracy and the headline ISI / phase results of an analysis run), the
dataset card of a results folder or published results dataset (a ``DatasetCard`` with its YAML ``configs``),
and the scrubbing of local paths from what is published (:func:`relative_paths`)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .phases import PhaseFit
from .report import Report

if TYPE_CHECKING:  # imported where used: huggingface_hub's card classes load its whole Hub client
    from huggingface_hub import DatasetCard, ModelCard

DATASET: dict[str, Any] = {"dataset_type": "sklearn/digits", "dataset_name": "scikit-learn digits (load_digits)"}

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ description }}. One of the reference models of hf_isi: small
vision transformers trained from scratch on scikit-learn's digits, so that the layer-wise diagnostics of
"Mechanisms of Non-Monotonic Scaling in Vision Transformers" (arXiv 2511.21635) can be run on real, trained models
without downloading anything.

## Results

| measurement | value |
|---|---|
{% for row in result_rows -%}
| {{ row[0] }} | {{ row[1] }} |
{% endfor %}
{{ phase_text }}

## Use

```python
import hf_isi
report = hf_isi.analyze("{{ model_name }}", images, labels)      # built in: loads offline from the package

from transformers import ViTForImageClassification, ViTImageProcessorPil
model = ViTForImageClassification.from_pretrained("<namespace>/{{ model_name }}", attn_implementation="eager")
processor = ViTImageProcessorPil.from_pretrained("<namespace>/{{ model_name }}")
```

## Training

- Data: {{ data_source }}; test split: {{ test_split }}; validation split: {{ val_split }}; augmentation:
  {{ augmentation }}.
- Architecture: `ViTForImageClassification`, {{ depth }} blocks, width {{ width }}, {{ heads }} heads (head dim
  {{ head_dim }}), MLP {{ intermediate_size }}, {{ image_size }}x{{ image_size }} input (the 8x8 digit resized by the
  saved `ViTImageProcessorPil`), {{ patch_size }}x{{ patch_size }} patches: {{ grid }} patch tokens + [CLS];
  {{ num_parameters }} parameters, weights stored in {{ saved_dtype }}.
- Recipe: {{ epochs }} epochs ({{ steps }} steps), seed {{ seed }}, hyperparameters
  `{{ hyperparameters }}`; {{ wall_time_s }} s on CPU.
- Reproduce: `{{ command }}`.

## Limitations

- A miniature: 1,797 8x8 digits, 64 patch tokens. Its layer dynamics illustrate the diagnostics and the tool; they
  are not evidence for or against claims about ImageNet-scale ViTs.
- Accuracy is top-1 on the held-out stratified 20 % split (360 images, never used for any choice), measured after
  reloading the saved {{ saved_dtype }} weights; other digit images (handwriting photos, other resolutions) are out
  of distribution.
- The ISI and phase numbers come from one analysis run ({{ analysis_images }} images, hf_isi's streaming
  estimators and our definitions where the paper is silent; see the hf_isi README).

## Citation

```bibtex
@article{kumar2025nonmonotonic,
  title   = {Mechanisms of Non-Monotonic Scaling in Vision Transformers},
  author  = {Kumar, Krishna},
  journal = {arXiv preprint arXiv:2511.21635},
  year    = {2025}
}
```
"""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def headline_results(report: Report) -> dict[str, float]:
    """The numbers a card's model-index reports from an analysis: ISI and probe accuracy at the last layer,
    the phase boundaries of the centred similarity, the trade-off layer and PE dominance (finite values only)."""
    last = report.table.iloc[-1]
    fit = report.phases.get("centered_similarity")
    values = {
        "isi_last_layer": last["isi"],
        "isi_attention_last_layer": last["isi_attention"],
        "probe_cls_accuracy_last_layer": last["probe_cls_acc"],
        "probe_mean_accuracy_last_layer": last["probe_mean_acc"],
        "plateau_start_layer": fit.plateau_start if fit else None,
        "climb_start_layer": fit.climb_start if fit else None,
        "tradeoff_layer": report.scalars.get("tradeoff_layer"),
        "pe_dominance": report.scalars.get("pe_dominance"),
    }
    return {k: float(v) for k, v in values.items() if _finite(v)}


def reference_model_card(name: str, training: Mapping[str, Any], report: Report | None = None,
                         description: str = "") -> ModelCard:
    """The card of a reference model from its ``training_results.json`` and (optionally) an analysis report."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    evals = [EvalResult(task_type="image-classification", metric_type="accuracy", metric_name="top-1 accuracy",
                        metric_value=float(training["test_accuracy"]), dataset_split="test", **DATASET)]
    headline = headline_results(report) if report is not None else {}
    evals += [EvalResult(task_type="image-classification", metric_type=key, metric_name=key.replace("_", " "),
                         metric_value=value, dataset_split="all", **DATASET)
              for key, value in headline.items()]
    data = ModelCardData(model_name=name, license="apache-2.0", library_name="transformers",
                         pipeline_tag="image-classification", datasets=["sklearn/digits"],
                         tags=["vision-transformer", "interpretability", "hf_isi", "digits"],
                         metrics=["accuracy"], eval_results=evals)
    accuracy = f"{training['test_accuracy']:.4f} ({training['test_correct']}/{training['test_size']})"
    rows = [("test top-1 accuracy", accuracy)]
    rows += [(k.replace("_", " "), f"{v:.4g}") for k, v in headline.items()]
    fit = report.phases.get("centered_similarity") if report is not None else None
    phase_text = f"Centred-similarity phases: {fit.reason}." if fit is not None else "No analysis run attached."
    arch, data_info = training["architecture"], training["data"]
    return ModelCard.from_template(
        data, template_str=TEMPLATE, model_name=name, description=description or f"A ViT with {arch['depth']} blocks",
        result_rows=rows, phase_text=phase_text, data_source=data_info["source"], test_split=data_info["test_split"],
        val_split=data_info["val_split"], augmentation=data_info["augmentation"], grid="x".join(map(str, arch["grid"])),
        num_parameters=f"{training['num_parameters']:,}", saved_dtype=training["saved_dtype"],
        epochs=training["epochs"], steps=training["steps"], seed=training["seed"],
        hyperparameters=", ".join(f"{k}={v}" for k, v in training["hyperparameters"].items()),
        wall_time_s=round(training["wall_time_s"]), command=training["command"],
        analysis_images=int(report.table["num_images"].iloc[0]) if report is not None else "no",
        **{k: arch[k] for k in ("depth", "width", "heads", "head_dim", "intermediate_size", "image_size",
                                "patch_size")},
    )


# ---------------------------------------------------------------------------------------------------------
# the dataset card of results
# ---------------------------------------------------------------------------------------------------------
#: cap on the skipped-image ids a card lists (summary.json keeps what the run recorded)
CARD_MAX_IDS = 20
_INTRO = (
    "Per-layer information-flow diagnostics of vision transformers computed by hf_isi's `scripts/probe.py` "
    "(method: [arXiv 2511.21635](https://arxiv.org/abs/2511.21635)): one row per model x layer (`layer` -1 = patch "
    "embeddings before position embeddings, 0 = with them, l = output of block l). Missing values are null, "
    "never 0. `summary.json` holds every curve's Cliff/Plateau/Climb phases, their alignment across models and "
    "the run's provenance; `plots/` the figures.")


@dataclass(frozen=True)
class CardSource:
    """One results folder (one run) behind a dataset card.

    Attributes:
        run: the ``run`` block of its ``summary.json``.
        name: the folder's name, said when a card merges several folders (``None``: the card's own folder).
        models: the models it holds.
        digests: ``{file name: sha256}`` of its tables.
    """

    run: Mapping[str, Any]
    name: str | None = None
    models: Sequence[str] = ()
    digests: Mapping[str, str] = field(default_factory=dict)


def results_card(summary: Mapping[str, Any], configs: Sequence[Mapping[str, Any]],
                 counts: Mapping[str, tuple[int, int | None]], *, sources: Sequence[CardSource],
                 config_of: Mapping[str, str] | None = None, repo_id: str | None = None,
                 footer: str = "") -> DatasetCard:
    """The dataset card of results: YAML ``configs`` (so ``datasets.load_dataset`` reads the parquet files),
    the configs, how to load them, each model's phase verdict, and the provenance of every source run.

    Args:
        summary: the ``summary.json`` content (models with their phases and provenance).
        configs: the YAML ``configs``; the first is the default and reads every row.
        counts: ``{model: (rows, images)}``.
        sources: the runs the rows come from (one for a results folder, one per folder when merged).
        config_of: ``{model: config}`` of the per-model configs (none for a results folder).
        repo_id: the repo the card is for (the usage example says "<this repo or folder>" without one).
        footer: a closing sentence (who wrote the card).
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    config_of = dict(config_of or {})
    models: Mapping[str, Any] = summary.get("models", {})
    num_rows = sum(rows for rows, _ in counts.values())
    default = configs[0]
    split = default["data_files"][0]["split"]
    data = DatasetCardData(pretty_name="hf_isi layer-wise diagnostics",
                           tags=["hf-isi", "interpretability", "vision-transformer", "tabular"],
                           size_categories=[_size_category(num_rows)], configs=[dict(c) for c in configs])
    repo = repo_id or "<this repo or folder>"
    lines = ["# hf_isi layer-wise diagnostics", "", _INTRO, "", "## Configs", "",
             f"Every config has one split, `{split}`.", "",
             "| config | files | model | rows |", "|---|---|---|---|",
             (f"| `{default['config_name']}` (default) | `{default['data_files'][0]['path']}` | every model "
              f"| {num_rows} |")]
    paths = {c["config_name"]: c["data_files"][0]["path"] for c in configs}
    lines += [f"| `{config}` | `{paths.get(config, '?')}` | {model} | {counts.get(model, ('?',))[0]} |"
              for model, config in config_of.items()]
    lines += ["", "```python", "import datasets",
              f'rows = datasets.load_dataset("{repo}", split="{split}")   # every model']
    if config_of:
        model, config = next(iter(config_of.items()))
        lines.append(f'one = datasets.load_dataset("{repo}", "{config}", split="{split}")   # {model} only')
    lines += ["from hf_isi.results import load_results",
              f'reports = load_results("{repo}")   # {{model: hf_isi.Report}} with phases and provenance', "```", ""]
    curve = next((m.get("provenance", {}).get("phase_curve") for m in models.values()), None) or "centered_similarity"
    lines += [f"## Phases ({curve})", "",
              "| model | layers | images | pattern | plateau starts | climb starts | verdict |",
              "|---|---|---|---|---|---|---|"]
    for model, info in models.items():
        fit = info.get("phases", {}).get(curve)
        fit = PhaseFit.from_dict(fit) if fit else None
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            model, info.get("num_layers", "?"), _dash(counts.get(model, (None, None))[1]),
            "yes" if fit is not None and fit.pattern else "no", _dash(fit.plateau_start if fit else None),
            _dash(fit.climb_start if fit else None), (fit.reason if fit else "not fitted").replace("|", "\\|")))
    lines += ["", "## Provenance", ""]
    for source in sources:
        lines += _source_lines(source)
    lines += ["| model | revision | class | attention | dtype | hf_isi | transformers | torch |",
              "|---|---|---|---|---|---|---|---|"]
    for model, info in models.items():
        p = info.get("provenance", {}) or {}
        cells = [p.get(k) for k in ("revision", "model_class", "attn_implementation", "dtype", "hf_isi_version",
                                    "transformers_version", "torch_version")]
        lines.append(f"| {model} | " + " | ".join(_dash(c) for c in cells) + " |")
    lines += ["", footer] if footer else []
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _source_lines(source: CardSource) -> list[str]:
    run = source.run
    dataset = run.get("dataset") or {}
    skipped = run.get("skipped_ids") or []
    ids = (f" ({', '.join(map(str, skipped[:CARD_MAX_IDS]))}{', ...' if len(skipped) > CARD_MAX_IDS else ''})"
           if skipped else "")
    lines = [f"From the results folder `{source.name}` ({', '.join(source.models)}):", ""] if source.name else []
    lines += [
        (f"- dataset: `{dataset.get('dataset', '?')}` split `{dataset.get('split', '?')}`, "
         f"{run.get('num_images', '?')} images used, {run.get('num_images_skipped', 0)} unreadable skipped{ids}"),
        (f"- processes: {run.get('num_processes', '?')}, dtype: {run.get('dtype', '?')}, seed: {run.get('seed', '?')}, "
         f"wall time: {run.get('wall_time_s', '?')} s"),
        f"- command: `{run.get('command_line', '?')}`",
    ]
    if source.digests:
        lines.append("- sha256 of the source tables: "
                     + ", ".join(f"`{n}` {d[:16]}" for n, d in source.digests.items()))
    return lines + [""]


def _size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


# ---------------------------------------------------------------------------------------------------------
# local paths in what is published
# ---------------------------------------------------------------------------------------------------------
#: an absolute POSIX path in running text: at the start or after a space, quote, '=', '(', ',' or '['
_ABS_PATH = re.compile(r"(?<![^\s'\"=(,\[])/(?!/)[^\s'\"]*")
_TRAILING = ".,;:)]}"


def relative_paths(value: Any, base: str | os.PathLike, keep: Sequence[str] = ()) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every absolute path in its strings rewritten so that
    no local path of the machine is published: a path inside ``base`` becomes relative to it (``.`` for
    ``base`` itself), one inside the home directory starts with ``~``, any other becomes relative to ``base``
    (``../data``). Relative paths, Hub ids and URLs are left alone; strings equal to one of ``keep`` (the
    model names, which key the results) are kept as they are. Dict keys are never changed."""
    base_dir = os.path.abspath(base)
    home = os.path.abspath(Path.home())

    def rewrite(match: re.Match[str]) -> str:
        text = match.group(0)
        tail = len(text) - len(text.rstrip(_TRAILING))
        path, rest = (text[:-tail], text[-tail:]) if tail else (text, "")
        path = os.path.normpath(path)
        if _inside(path, base_dir) or not (home != os.sep and _inside(path, home)):
            return os.path.relpath(path, base_dir) + rest
        return "~" + path[len(home):] + rest

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return v if v in keep else _ABS_PATH.sub(rewrite, v)
        if isinstance(v, Mapping):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(value)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
