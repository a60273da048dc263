"""Reference-model cards: model-index round-trips through ModelCard.load."""

import torch
import transformers as tf
from huggingface_hub import ModelCard

from hf_isi import analyze
from hf_isi.cards import headline_results, reference_model_card

TRAINING = {
    "test_accuracy": 0.9722, "test_correct": 350, "test_size": 360, "num_parameters": 12345, "saved_dtype": "float16",
    "epochs": 3, "steps": 60, "seed": 0, "wall_time_s": 12.3, "command": "python scripts/train_reference.py",
    "hyperparameters": {"learning_rate": 0.001, "batch_size": 64},
    "architecture": {"depth": 2, "width": 32, "heads": 2, "head_dim": 16, "intermediate_size": 128, "image_size": 16,
                     "patch_size": 4, "grid": [4, 4]},
    "data": {"source": "sklearn digits", "test_split": "20 %", "val_split": "10 %", "augmentation": "shifts"},
}


def test_card_metadata_round_trips(tmp_path):
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=64, image_size=16, patch_size=4, num_labels=3))
    report = analyze(model, torch.randn(90, 3, 16, 16), torch.arange(90) % 3)
    card = reference_model_card("tiny-ref", TRAINING, report, "A tiny test ViT")
    card.save(tmp_path / "tiny-ref.md")
    loaded = ModelCard.load(tmp_path / "tiny-ref.md")
    got = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    want = {"accuracy": 0.9722, **headline_results(report)}
    assert got == want
    assert "isi_last_layer" in got and got["isi_last_layer"] == report.table["isi"].iloc[-1]
    assert loaded.data.model_name == "tiny-ref" and loaded.data.library_name == "transformers"
    assert "## Limitations" in loaded.text and "350/360" in loaded.text


def test_card_without_analysis_has_accuracy_only():
    card = reference_model_card("tiny-ref", TRAINING)
    assert [r.metric_type for r in card.data.eval_results] == ["accuracy"]
    assert "No analysis run attached" in card.text
