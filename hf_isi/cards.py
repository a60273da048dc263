"""Model cards of the reference models: huggingface_hub ``ModelCard``s with a model-index holding the measured
test accuracy and the headline ISI / phase results of an analysis run."""

from __future__ import annotations

import math
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .report import Report

DATASET = {"dataset_type": "sklearn/digits", "dataset_name": "scikit-learn digits (load_digits)"}

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
    rows = [("test top-1 accuracy", f"{training['test_accuracy']:.4f} ({training['test_correct']}/{training['test_size']})")]
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
        **{k: arch[k] for k in ("depth", "width", "heads", "head_dim", "intermediate_size", "image_size", "patch_size")},
    )
