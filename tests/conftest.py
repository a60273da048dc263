"""Shared fixtures: isolated caches, offline mode, and random LayerStates for metric tests."""

from __future__ import annotations

import os
import tempfile

# Isolate every cache before any HF library is imported, and never touch the network.
_SCRATCH = tempfile.mkdtemp(prefix="hf_isi_tests_")
for _var in ("HF_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "GRADIO_TEMP_DIR"):
    os.environ.setdefault(_var, os.path.join(_SCRATCH, _var.lower()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_isi.states import LayerStates, TokenLayout, example_keys  # noqa: E402


def random_states(
    batch_size: int = 6,
    num_layers: int = 3,
    grid: tuple[int, int] = (3, 3),
    dim: int = 8,
    prefix: int = 1,
    heads: int = 2,
    num_classes: int | None = 3,
    attentions: bool = True,
    seed: int = 0,
    ids: range | list | None = None,
) -> LayerStates:
    """A batch of random states shaped like a ViT's, with softmax attentions and a residual pair per block."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    t = prefix + n
    z0 = torch.randn(batch_size, n, dim, generator=g)
    hidden = tuple(torch.randn(batch_size, t, dim, generator=g) for _ in range(num_layers + 1))
    attn = residuals = None
    if attentions:
        attn = tuple(
            torch.softmax(2 * torch.randn(batch_size, heads, t, t, generator=g), dim=-1) for _ in range(num_layers)
        )
        residuals = tuple(
            (hidden[i], hidden[i] + 0.5 * torch.randn(batch_size, t, dim, generator=g)) for i in range(num_layers)
        )
    labels = None if num_classes is None else torch.randint(0, num_classes, (batch_size,), generator=g)
    ids = range(seed * 10_000, seed * 10_000 + batch_size) if ids is None else ids
    return LayerStates(
        patch_embeddings=z0,
        hidden_states=hidden,
        layout=TokenLayout(prefix, 0 if prefix else None, grid, (4, 4)),
        attentions=attn,
        attention_residuals=residuals,
        labels=labels,
        keys=example_keys(ids),
    )


@pytest.fixture
def make_states():
    return random_states
