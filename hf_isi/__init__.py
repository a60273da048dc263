"""hf_isi: layer-wise information-flow diagnostics for Hugging Face vision transformers."""

__version__ = "0.1.0"
