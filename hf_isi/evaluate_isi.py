"""The Information Scrambling Index as an ``evaluate`` module: ``evaluate.load("isi")``.

The module is thin: every batch is turned into :class:`hf_isi.LayerStates` and fed straight into the same
streaming accumulators as :func:`hf_isi.analyze` (through :class:`hf_isi.Analyzer`), so the numbers are hf_isi's.
Token-level arrays never go through evaluate's Arrow cache (about 70x the cost of the arithmetic for
token-level arrays); evaluate only stores one int64 key per image, which drives its own cache files, locks and
rendez-vous in distributed runs. With ``num_process > 1`` each process writes its accumulator state next to
its Arrow cache file before releasing its lock, and process 0 merges them (sums add) in ``_compute``.

The loadable module folders (``isi/isi.py`` at the repository root, ``hf_isi/evaluate_module/isi/isi.py`` in
the installed package) are one-line shims that re-export :class:`Isi` (and ``__test__``, so that
``doctest.testmod`` on the shim runs the examples, as evaluate's own ``tests/test_metric_common.py`` does).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from .engine import ALL_METRICS, AnalysisConfig, Analyzer
from .models import ModelAdapter, load_model
from .report import METRIC_COLUMNS, PER_HEAD_COLUMNS, PHASE_CURVES
from .states import (
    LayerStates,
    TokenLayout,
    all_finite,
    example_keys,
    layer_states_from_outputs,
    patch_token_sequence,
)

logger = logging.getLogger(__name__)

CONFIGS = ("reconstruction", "attention", "full")
_CONFIG_METRICS = {"reconstruction": ["isi"], "attention": ["attention"], "full": list(ALL_METRICS)}

_CITATION = """\
@misc{hf_isi,
  title        = {hf\\_isi: layer-wise information-flow diagnostics for Hugging Face vision transformers},
  note         = {Information Scrambling Index (ISI), attention diagnostics and Cliff-Plateau-Climb phases},
  year         = {2026},
}
@article{nonmonotonic_scaling_vit,
  title   = {Mechanisms of Non-Monotonic Scaling in Vision Transformers},
  journal = {arXiv preprint arXiv:2511.21635},
  year    = {2025},
  url     = {https://arxiv.org/abs/2511.21635},
}
"""

_DESCRIPTION = """\
The Information Scrambling Index (ISI) measures, layer by layer, how much of the information about where each
patch came from a vision transformer has spread across tokens. At layer l it is the gain in held-out R^2 of
recovering the pre-position-embedding patch embeddings z0 from *all* the layer's patch tokens (one ridge map
from all N tokens to all N targets) over recovering each patch from its own token alone (one ridge map shared
by all positions): ISI(l) = R2_all(l) - R2_self(l). The attention variant, ISI_attn(l) = (1 - c(l)) * H(l),
combines how much the attention branch turns the residual stream (c: mean cosine between the stream x entering
the attention branch and x + a right after it) with how spread the attention is (H: mean normalised attention
entropy). The module delegates to hf_isi (the same streaming accumulators as hf_isi.analyze); configs:
"reconstruction" (default), "attention", and "full" (the whole per-layer diagnostic set of hf_isi's Report).
"""

_KWARGS_DESCRIPTION = """
Computes the per-layer ISI curves, a summary scalar and the Cliff-Plateau-Climb phases of a vision transformer
from its per-batch outputs.

Pass either the model outputs of a batch (hidden_states, patch_embeddings, and for the attention variant
attentions and attention_residuals), as numpy arrays or torch tensors, or the model and pixel_values (hf_isi
then captures everything with forward hooks). Add batches with `add_batch`, then call `compute`; or pass one
batch to `compute` directly.

Args:
    hidden_states (`tuple` of `L + 1` arrays `[B, T, D]`, or one array `[B, L + 1, T, D]`): the residual stream
        per layer, `output_hidden_states=True` (entry 0: embeddings with position embeddings and prefix tokens;
        entry l: the output of block l, before the final LayerNorm). A stacked array is batch-first: stack the
        tuple along dim 1 (`torch.stack(out.hidden_states, 1)`).
    patch_embeddings (`array` `[B, N, D0]`, or a conv map `[B, D0, h, w]`): z0, the patch embeddings *before*
        position embeddings, e.g. from a forward hook on `model.get_input_embeddings()`. Required by the
        "reconstruction" and "full" configs.
    attentions (`tuple` of `L` arrays `[B, H, T, T]`, or one array `[B, L, H, T, T]`): softmax attention
        probabilities, `output_attentions=True` with `attn_implementation="eager"` (sdpa returns none).
        Required by the "attention" config; optional for "full".
    attention_residuals (`tuple` of `L` pairs `(x, x + a)`, each `[B, T, D]`, or one array `[B, L, 2, T, D]`):
        per block, the residual stream entering the attention branch and right after it (for pre-norm blocks:
        the inputs of the block's two LayerNorms). They cannot be recovered from hidden_states (the MLP is added
        in between), so the attention ISI needs them; pass `model` and `pixel_values` to have hf_isi capture
        them. Required by the "attention" config; optional for "full".
    labels (`array` `[B]` of `int`, *optional*): class labels; the "full" config then adds the CLS/mean-pool
        probes and Neural Collapse.
    ids (`list` of length `B`, *optional*): stable example ids (e.g. dataset indices). They decide each image's
        fit/val/test split. Default: the position in the stream this process sees (0, 1, 2, ... across batches),
        which equals hf_isi.analyze's default on one process; pass ids for results independent of the process
        count.
    position_embeddings (`array` `[N, D]` or `[1, T, D]`, *optional*): absolute position embeddings, for the
        "full" config's PE dominance.
    num_prefix_tokens (`int`, *optional*): tokens before the patches (CLS, distillation, registers). Default:
        `T - N`.
    patch_grid (`tuple` `(rows, cols)`, *optional*): default square.
    patch_size (`tuple` `(h, w)` in pixels, *optional*): only scales `attn_distance`; default (1, 1), i.e. in
        patches.
    model (`PreTrainedModel`, `hf_isi.ModelAdapter` or path, *optional*): instead of the outputs above, with
        `pixel_values` (`array` `[B, C, H, W]`); the attention configs switch it to eager attention.

Module arguments (`evaluate.load("isi", config_name, **kwargs)`): `isi_dim` (projection size k per token,
default 16), `calibration_images` (default 64), `num_classes` (default: 1 + the largest label of the first
batch), `analysis_config` (an `hf_isi.AnalysisConfig` or dict; its `metrics` are set by the config name).

Returns:
    layers (`list` of `int`): -1 (pre-PE z0), 0 (+PE), 1..L.
    isi (`list` of `float` or `None`): ISI per layer (`None` where missing), a difference of held-out R^2
        values, usually in [0, 1] and negative when the all-to-all map only overfits; together with
        isi_r2_all, isi_r2_self (held-out R^2, <= 1) and isi_normalized ("reconstruction", "full").
    isi_mean (`float` or `None`): the summary scalar, the mean ISI over blocks 1..L ("reconstruction", "full").
    isi_attention (`list`): (1 - c) * H per layer, in [0, 2]; with attn_residual_cosine (c, in [-1, 1]) and
        attn_entropy (H, in [0, 1]); isi_attention_mean over blocks 1..L ("attention", "full").
    phases (`dict`): curve name -> `hf_isi.fit_phases(...).to_dict()` (boundaries, slopes, R^2, verdict).
    num_images (`int`): images accumulated.
    The "full" config returns every column of hf_isi's Report table plus its scalars (pe_dominance,
    tradeoff_layer, ...).

Calibration: the first `calibration_images` images of the first batch (of process 0 with `num_process > 1`,
shared with the other processes through `cache_dir`) fix the ISI target scaling, exactly as
`hf_isi.Analyzer.setup` does.

Examples:
    Model outputs of a tiny random ViT, batch by batch:

    >>> import evaluate, torch, transformers
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
    ...     intermediate_size=64, image_size=16, patch_size=4, attn_implementation="eager")
    >>> model = transformers.ViTModel(config).eval()
    >>> captured = {}
    >>> hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: captured.update(z0=out))
    >>> isi = evaluate.load("isi", isi_dim=4)
    >>> for _ in range(4):
    ...     with torch.no_grad():
    ...         out = model(torch.randn(32, 3, 16, 16), output_hidden_states=True)
    ...     isi.add_batch(hidden_states=out.hidden_states, patch_embeddings=captured["z0"])
    >>> results = isi.compute()
    >>> hook.remove()
    >>> results["layers"], results["num_images"]
    ([-1, 0, 1, 2, 3, 4], 128)
    >>> round(results["isi_mean"], 1)  # random weights on noise: all-to-all only overfits, so ISI < 0
    -0.1
    >>> sorted(results["phases"]["isi"])[:4]
    ['boundaries', 'curve', 'fitted', 'labels']

    The attention variant, from the model and pixel values (hf_isi captures x and x + a per block):

    >>> isi_attention = evaluate.load("isi", "attention")
    >>> results = isi_attention.compute(model=model, pixel_values=torch.randn(8, 3, 16, 16))
    >>> [round(v, 2) for v in results["attn_entropy"][2:]]
    [1.0, 1.0, 1.0, 1.0]
    >>> results["isi_attention"][:2], 0 < results["isi_attention_mean"] < 2
    ([None, None], True)

    The whole diagnostic set from stacked numpy arrays (hidden states [B, L + 1, T, D]) with labels:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> full = evaluate.load("isi", "full", isi_dim=2, num_classes=3)
    >>> results = full.compute(hidden_states=rng.normal(size=(60, 5, 10, 8)),
    ...                        patch_embeddings=rng.normal(size=(60, 9, 8)), labels=np.arange(60) % 3)
    >>> len(results["centered_similarity"]), results["ccc"][0], results["num_images"]
    (6, None, 60)
    >>> results["phases"]["centered_similarity"]["pattern"]
    False
"""


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _tensor(x: Any, name: str) -> torch.Tensor:
    """A torch view of a numpy array / tensor / nested list (no copy for numpy and torch inputs)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name} must be a numpy array or torch tensor: {err}") from None
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got an array of dtype {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x)) if x.flags.writeable else torch.as_tensor(np.array(x))


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _layers(x: Any, name: str, rank: int, stacked_hint: str) -> tuple[torch.Tensor, ...]:
    """A per-layer sequence of ``rank``-D tensors, from a tuple/list of them or one batch-first stacked array."""
    if _is_array(x):
        t = _tensor(x, name)
        if t.ndim == rank + 1:
            return tuple(t.unbind(1))
        raise ValueError(
            f"{name} must be a tuple of per-layer arrays of rank {rank} or one stacked array {stacked_hint} of rank "
            f"{rank + 1}; got one array of shape {_shape(t)}"
        )
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{name} must be a tuple/list of arrays or one stacked array, got {type(x).__name__}")
    out = tuple(_tensor(v, f"{name}[{i}]") for i, v in enumerate(x))
    for i, t in enumerate(out):
        if t.ndim != rank:
            raise ValueError(f"{name}[{i}] must have rank {rank}, got shape {_shape(t)}")
    return out


def _residual_pairs(x: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    name = "attention_residuals"
    if _is_array(x):
        t = _tensor(x, name)
        if t.ndim != 5 or t.shape[2] != 2:
            raise ValueError(f"{name} as one array must be [B, L, 2, T, D] (x and x + a per block); got {_shape(t)}")
        return tuple((t[:, i, 0], t[:, i, 1]) for i in range(t.shape[1]))
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{name} must be a tuple of (x, x + a) pairs or one [B, L, 2, T, D] array")
    pairs = []
    for i, pair in enumerate(x):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{name}[{i}] must be a pair (x, x + a) of [B, T, D] arrays")
        a, b = _tensor(pair[0], f"{name}[{i}][0]"), _tensor(pair[1], f"{name}[{i}][1]")
        if a.ndim != 3 or a.shape != b.shape:
            raise ValueError(f"{name}[{i}]: x and x + a must both be [B, T, D] of equal shape, got {_shape(a)} "
                             f"and {_shape(b)}")
        pairs.append((a, b))
    return tuple(pairs)


def _finite(t: torch.Tensor, name: str) -> None:
    if not all_finite(t):
        raise ValueError(f"{name} contain NaN or inf")


def _curve(values: Any) -> list[float | None]:
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def _block_mean(curve: list[float | None]) -> float | None:
    """Mean over blocks 1..L (the curve runs over layers -1..L) of the finite values."""
    vals = [v for v in curve[2:] if v is not None]
    return float(np.mean(vals)) if vals else None


def _unbatched(x: Any) -> Any:
    """Add a leading batch dimension of 1 to every array of one example (for :meth:`Isi.add`)."""
    if x is None:
        return None
    if _is_array(x):
        return x[None]
    if isinstance(x, (list, tuple)):
        return type(x)(_unbatched(v) for v in x)
    return [x]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Isi(evaluate.Metric):
    """The Information Scrambling Index of a vision transformer, layer by layer (see the module docstring)."""

    config_name: str  # set by evaluate.Metric: "reconstruction", "attention" or "full"

    def __init__(self, config_name: str | None = None, *, isi_dim: int | None = None,
                 calibration_images: int | None = None, num_classes: int | None = None,
                 analysis_config: AnalysisConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config_name=config_name, **kwargs)
        if isinstance(analysis_config, Mapping):
            analysis_config = AnalysisConfig(**analysis_config)
        config = analysis_config or AnalysisConfig()
        overrides: dict[str, Any] = {"metrics": list(_CONFIG_METRICS[self.config_name])}
        if isi_dim is not None:
            overrides["isi_dim"] = int(isi_dim)
        if calibration_images is not None:
            overrides["calibration_images"] = int(calibration_images)
        self.analysis_config = AnalysisConfig(**{**asdict(config), **overrides})
        self.num_classes = None if num_classes is None else int(num_classes)
        self._reset()

    # -- evaluate's hooks ----------------------------------------------------------------------------------
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "default":
            self.config_name = "reconstruction"
        if self.config_name not in CONFIGS:
            raise ValueError(f"unknown isi config {self.config_name!r}; choose one of {', '.join(CONFIGS)}")
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Only one int64 key per image goes through evaluate's Arrow cache; the layer states go straight
            # into hf_isi's accumulators (see the module docstring).
            features=datasets.Features({"example_key": datasets.Value("int64")}),
            homepage="https://arxiv.org/abs/2511.21635",
            license="apache-2.0",
            codebase_urls=[],
            reference_urls=["https://arxiv.org/abs/2511.21635"],
        )

    def _reset(self) -> None:
        self._analyzer: Analyzer | None = None
        self._layout: TokenLayout | None = None
        self._model_ref: Any = None
        self._seen = 0

    # -- inputs ------------------------------------------------------------------------------------------
    def add_batch(self, *, hidden_states: Any = None, patch_embeddings: Any = None, attentions: Any = None,
                  attention_residuals: Any = None, labels: Any = None, ids: Sequence[Any] | None = None,
                  position_embeddings: Any = None, num_prefix_tokens: int | None = None,
                  patch_grid: tuple[int, int] | None = None, patch_size: tuple[int, int] | None = None,
                  model: Any = None, pixel_values: Any = None) -> None:
        """Add one batch of model outputs (or a model and its pixel_values) to the ISI accumulators.
        """
        if model is not None or pixel_values is not None:
            given = [n for n, v in (("hidden_states", hidden_states), ("patch_embeddings", patch_embeddings),
                                    ("attentions", attentions), ("attention_residuals", attention_residuals),
                                    ("position_embeddings", position_embeddings)) if v is not None]
            if given:
                raise ValueError(f"pass either model and pixel_values or the model outputs, not both (got {given})")
            if model is None or pixel_values is None:
                raise ValueError("model and pixel_values go together: pass both")
            self._add_pixels(model, pixel_values, labels, ids)
        else:
            self._add_states(self._states(hidden_states, patch_embeddings, attentions, attention_residuals,
                                          labels, ids, position_embeddings, num_prefix_tokens, patch_grid,
                                          patch_size))

    def add(self, *, hidden_states: Any = None, patch_embeddings: Any = None, attentions: Any = None,
            attention_residuals: Any = None, label: Any = None, id: Any = None, position_embeddings: Any = None,
            num_prefix_tokens: int | None = None, patch_grid: tuple[int, int] | None = None,
            patch_size: tuple[int, int] | None = None, model: Any = None, pixel_values: Any = None) -> None:
        """Add one example: the same inputs as ``add_batch`` without the batch dimension (slower: prefer
        ``add_batch``).
        """
        self.add_batch(hidden_states=_unbatched(hidden_states), patch_embeddings=_unbatched(patch_embeddings),
                       attentions=_unbatched(attentions), attention_residuals=_unbatched(attention_residuals),
                       labels=_unbatched(label), ids=None if id is None else [id],
                       position_embeddings=position_embeddings, num_prefix_tokens=num_prefix_tokens,
                       patch_grid=patch_grid, patch_size=patch_size, model=model,
                       pixel_values=_unbatched(pixel_values))

    def compute(self, *, hidden_states: Any = None, patch_embeddings: Any = None, attentions: Any = None,
                attention_residuals: Any = None, labels: Any = None, ids: Sequence[Any] | None = None,
                position_embeddings: Any = None, num_prefix_tokens: int | None = None,
                patch_grid: tuple[int, int] | None = None, patch_size: tuple[int, int] | None = None,
                model: Any = None, pixel_values: Any = None) -> dict[str, Any] | None:
        """Add the given batch (if any), then compute over every batch added since the last ``compute``.

        Returns the results dict on process 0 and ``None`` on the other processes (evaluate's semantics).
        """
        inputs = dict(hidden_states=hidden_states, patch_embeddings=patch_embeddings, attentions=attentions,
                      attention_residuals=attention_residuals, position_embeddings=position_embeddings,
                      model=model, pixel_values=pixel_values)
        if any(v is not None for v in inputs.values()):
            self.add_batch(**inputs, labels=labels, ids=ids, num_prefix_tokens=num_prefix_tokens,
                           patch_grid=patch_grid, patch_size=patch_size)
        if self._analyzer is None:
            raise ValueError("nothing to compute: pass a batch to compute() or call add_batch() first")
        try:
            if self.num_process > 1 and self.process_id > 0:
                # written before evaluate's _finalize releases this process's lock: once process 0 holds the
                # lock, the file is complete
                self._save(self._state_path(self.process_id), self._analyzer.state_dict())
            return super().compute()
        finally:
            self._reset()

    # -- evaluate calls this on process 0, after every process has finished -------------------------------
    def _compute(self, example_key: list[int]) -> dict[str, Any]:
        assert self._analyzer is not None
        for process_id in range(1, self.num_process):
            path = self._state_path(process_id)
            other = Analyzer(self._analyzer.adapter, self._analyzer.config, self._analyzer.num_classes)
            try:
                other.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except FileNotFoundError:
                raise ValueError(f"process {process_id} left no ISI state at {path}: every process must add at "
                                 "least one batch and call compute()") from None
            self._analyzer.merge(other)
            os.remove(path)
        if self.num_process > 1 and os.path.exists(self._calibration_path()):
            os.remove(self._calibration_path())
        repeated = sum(c - 1 for c in Counter(example_key).values() if c > 1)
        if repeated:
            logger.warning(
                "%d images were added more than once (same example id); each copy counts. With accelerate, gather "
                "with gather_for_metrics (it drops the padding duplicates of the last batch).", repeated)
        return self._results()

    def _results(self) -> dict[str, Any]:
        assert self._analyzer is not None
        report = self._analyzer.report()
        table = report.table
        out: dict[str, Any] = {"layers": [int(v) for v in table["layer"]]}
        name = self.config_name
        if name in ("reconstruction", "full"):
            cols = METRIC_COLUMNS if name == "full" else ("isi", "isi_r2_all", "isi_r2_self", "isi_normalized")
            out.update({c: _curve(table[c]) for c in cols})
            out["isi_mean"] = _block_mean(out["isi"])
        if name in ("attention", "full"):
            for c in ("isi_attention", "attn_residual_cosine", "attn_entropy"):
                out[c] = _curve(table[c])
            out["isi_attention_mean"] = _block_mean(out["isi_attention"])
        if name == "full":
            out.update({c: list(table[c]) for c in PER_HEAD_COLUMNS})
            out["phase"] = list(table["phase"])
            out.update({k: v for k, v in report.summary().items() if k not in ("model", "num_layers", "phases",
                                                                                   "provenance")})
        curves = {"reconstruction": ("isi",), "attention": ("isi_attention",), "full": PHASE_CURVES}[name]
        out["phases"] = {c: report.phases[c].to_dict() for c in curves}
        out["num_images"] = int(report.table["num_images"][0])
        return out

    # -- batches -----------------------------------------------------------------------------------------
    def _states(self, hidden_states: Any, patch_embeddings: Any, attentions: Any, attention_residuals: Any,
                labels: Any, ids: Any, position_embeddings: Any, num_prefix_tokens: int | None,
                patch_grid: tuple[int, int] | None, patch_size: tuple[int, int] | None) -> LayerStates:
        """Validate one batch of model outputs and wrap it as LayerStates (views, no copies)."""
        config = self.config_name
        wants_attention = config in ("attention", "full")
        if config != "attention" and patch_embeddings is None:
            raise ValueError(
                f"the {config!r} ISI needs patch_embeddings: z0, the patch embeddings before position embeddings "
                "[B, N, D0] (a forward hook on model.get_input_embeddings() returns them); or pass model= and "
                "pixel_values= and hf_isi captures them"
            )
        if config != "attention" and hidden_states is None:
            raise ValueError(f"the {config!r} ISI needs hidden_states (output_hidden_states=True): L + 1 arrays "
                             "[B, T, D] or one [B, L + 1, T, D] array")
        if config == "attention" and (attentions is None or attention_residuals is None):
            raise ValueError(
                "the attention ISI (1 - c) * H needs attentions (softmax probabilities, [B, H, T, T] per block, "
                "eager attention) and attention_residuals ((x, x + a) per block: the residual stream entering the "
                "attention branch and right after it, which hidden_states cannot give since the MLP is added in "
                "between); pass model= and pixel_values= to have hf_isi capture both"
            )
        hidden = None if hidden_states is None else _layers(hidden_states, "hidden_states", 3, "[B, L + 1, T, D]")
        attn = res = None
        if wants_attention and attentions is not None:
            attn = _layers(attentions, "attentions", 4, "[B, L, H, T, T]")
            if not attn:
                raise ValueError("attentions is empty: with sdpa attention transformers returns () for "
                                 "output_attentions=True; load the model with attn_implementation='eager'")
            if attention_residuals is None:
                if config == "full":
                    raise ValueError("the attention diagnostics need attention_residuals with attentions: pass both "
                                     "or neither (or pass model= and pixel_values=)")
            else:
                res = _residual_pairs(attention_residuals)
        elif wants_attention and attention_residuals is not None:
            raise ValueError("attention_residuals were given without attentions: pass both or neither")

        if hidden is not None and len(hidden) < 2:
            raise ValueError(f"hidden_states must hold L + 1 >= 2 layers (embeddings and every block), got {len(hidden)}")
        # the attention tensors of the first block: the layout of an attention-only batch comes from them
        first_attention = None if attn is None else (res[0][0] if res else attn[0])
        if hidden is not None:
            num_layers = len(hidden) - 1
        else:
            assert attn is not None  # every config needs hidden states or attentions (checked above)
            num_layers = len(attn)
        if attn is not None and len(attn) != num_layers:
            raise ValueError(f"{len(attn)} attention tensors for {num_layers} blocks (hidden_states has "
                             f"{num_layers + 1} entries): pass one per block")
        if res is not None and len(res) != num_layers:
            raise ValueError(f"{len(res)} attention_residuals pairs for {num_layers} blocks: pass one per block")

        z0 = None
        if patch_embeddings is not None:
            z0, conv_grid = patch_token_sequence(_tensor(patch_embeddings, "patch_embeddings"))
            patch_grid = patch_grid or conv_grid
            if z0.ndim != 3:
                raise ValueError(f"patch_embeddings must be [B, N, D0] (or a [B, D0, h, w] conv map), got {_shape(z0)}")

        # batch sizes
        sizes: dict[str, int] = {}
        if z0 is not None:
            sizes["patch_embeddings"] = z0.shape[0]
        if hidden is not None:
            for i, h in enumerate(hidden):
                sizes[f"hidden_states[{i}]"] = h.shape[0]
        batch = next(iter(sizes.values())) if sizes else None
        if attn is not None and first_attention is not None:
            if batch is None:
                batch = sizes["attention_residuals[0]"] = first_attention.shape[0]
            for i, a in enumerate(attn):
                if a.shape[0] % batch:
                    sizes[f"attentions[{i}]"] = a.shape[0]
            for i, (x, _) in enumerate(res or ()):
                if x.shape[0] % batch:
                    sizes[f"attention_residuals[{i}]"] = x.shape[0]
        label_t = None
        if labels is not None:
            label_t = _tensor(labels, "labels")
            if label_t.ndim != 1 or label_t.is_floating_point() and bool((label_t != label_t.round()).any()):
                raise ValueError(f"labels must be a 1-D array of integer class ids, got shape {_shape(label_t)}")
            label_t = label_t.to(torch.int64)
            sizes["labels"] = label_t.shape[0]
        if ids is not None:
            ids = ids.tolist() if _is_array(ids) else list(ids)
            sizes["ids"] = len(ids)
        if len(set(sizes.values())) > 1:
            raise ValueError("mismatched batch sizes: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
        assert batch is not None
        if batch == 0:
            raise ValueError("empty batch")

        if z0 is None or hidden is None:
            # attention config without z0/hidden states: patches = tokens - prefix; the attention accumulator
            # reads only the batch size and the layer count from these stand-ins
            assert first_attention is not None
            t0, dev = first_attention.shape[-2], first_attention.device
            n = t0 - (1 if num_prefix_tokens is None else int(num_prefix_tokens))
            z0 = torch.zeros(batch, max(n, 0), 0, device=dev)
            hidden = hidden or tuple(torch.zeros(batch, t0, 0, device=dev) for _ in range(num_layers + 1))
        n = z0.shape[1]
        if patch_grid is None and attn is not None and math.isqrt(n) ** 2 != n:
            raise ValueError(f"{n} patches do not form a square grid: pass patch_grid=(rows, cols)")
        _finite(z0, "patch_embeddings")
        for i, h in enumerate(hidden):
            _finite(h, f"hidden_states[{i}]")
        return layer_states_from_outputs(
            z0, hidden, num_prefix_tokens=num_prefix_tokens, patch_grid=patch_grid,
            patch_size=(1, 1) if patch_size is None else patch_size, attentions=attn, attention_residuals=res,
            labels=label_t, keys=example_keys(self._ids(ids, batch), self.analysis_config.seed),
            position_embeddings=None if position_embeddings is None
            else _tensor(position_embeddings, "position_embeddings"),
            split_fractions=(self.analysis_config.fit_fraction, self.analysis_config.val_fraction),
        )

    def _ids(self, ids: list | None, batch: int) -> list:
        """The batch's example ids: given, or the running position in this process's stream."""
        if ids is None:
            ids = list(range(self._seen, self._seen + batch))
            if self.num_process > 1:  # distinct across processes
                ids = [f"{self.process_id}:{i}" for i in ids]
        self._seen += batch
        return ids

    def _check_labels(self, labels: torch.Tensor | None) -> None:
        if labels is None or self._analyzer is None or self._analyzer.num_classes is None or not labels.numel():
            return
        if int(labels.min()) < 0 or int(labels.max()) >= self._analyzer.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self._analyzer.num_classes}) (num_classes "
                f"{'given' if self.num_classes else 'inferred from the first batch'}), got "
                f"{int(labels.min())}..{int(labels.max())}: pass num_classes= to evaluate.load('isi', ...)"
            )

    def _metrics_for(self, states: LayerStates) -> list[str]:
        metrics = list(self.analysis_config.metrics)
        if self.config_name == "full" and (states.attentions is None or states.attention_residuals is None):
            logger.warning("no attentions/attention_residuals: the attention diagnostics are left out (null)")
            metrics.remove("attention")
        return metrics

    def _new_analyzer(self, source: ModelAdapter | None, states: LayerStates | None, labels: torch.Tensor | None,
                      shared: dict[str, Any] | None) -> Analyzer:
        config = self.analysis_config
        if shared is not None:
            config, num_classes = AnalysisConfig(**shared["config"]), shared["num_classes"]
        else:
            if states is not None:
                config = replace(config, metrics=self._metrics_for(states))
            num_classes = self.num_classes
            if num_classes is None and labels is not None and config.needs_labels and labels.numel():
                num_classes = int(labels.max()) + 1
        # without labels, build_accumulators leaves the probes and neural collapse out (null), with a warning
        return Analyzer(source, config, num_classes if labels is not None or shared else None)

    def _add_states(self, states: LayerStates) -> None:
        first = self._analyzer is None
        try:
            self._update_states(states)
        except Exception:
            if first:  # a first batch that fails leaves nothing behind
                self._reset()
            raise

    def _update_states(self, states: LayerStates) -> None:
        recorded = False
        if self._analyzer is None:
            shared, recorded = self._rendezvous(states.keys)
            self._analyzer = self._new_analyzer(None, states, states.labels, shared)
            self._analyzer.setup_states(states)
            self._layout = states.layout
            self._share_calibration(shared)
        elif isinstance(self._analyzer.adapter, ModelAdapter):
            raise ValueError("this computation started with model= and pixel_values=; do not mix in model outputs")
        self._check_batch(states)
        self._check_labels(states.labels)
        self._analyzer.update_states(states)
        if not recorded:
            super().add_batch(example_key=states.keys.numpy())

    def _add_pixels(self, model: Any, pixel_values: Any, labels: Any, ids: Any) -> None:
        first = self._analyzer is None
        try:
            self._update_pixels(model, pixel_values, labels, ids)
        except Exception:
            if first:
                self._reset()
            raise

    def _update_pixels(self, model: Any, pixel_values: Any, labels: Any, ids: Any) -> None:
        pixels = _tensor(pixel_values, "pixel_values")
        label_t = None if labels is None else _tensor(labels, "labels").to(torch.int64)
        ids = None if ids is None else (ids.tolist() if _is_array(ids) else list(ids))
        for what, n in (("labels", None if label_t is None else len(label_t)),
                        ("ids", None if ids is None else len(ids))):
            if n is not None and n != len(pixels):
                raise ValueError(f"mismatched batch sizes: pixel_values={len(pixels)}, {what}={n}")
        if label_t is not None and label_t.ndim != 1:
            raise ValueError(f"labels must be a 1-D array of integer class ids, got shape {_shape(label_t)}")
        recorded = False
        if self._analyzer is None:
            attentions = self.config_name != "reconstruction"
            adapter = model if isinstance(model, ModelAdapter) else (
                ModelAdapter(model, attentions=attentions) if isinstance(model, torch.nn.Module)
                else load_model(model, attentions=attentions))
            adapter.check_pixel_values(pixels)
            self._model_ref = model
            ids = self._ids(ids, len(pixels))
            shared, recorded = self._rendezvous(example_keys(ids, self.analysis_config.seed))
            self._analyzer = self._new_analyzer(adapter, None, label_t, shared)
            c = max(1, self._analyzer.config.calibration_images)
            self._analyzer.setup(pixels[:c], None if label_t is None else label_t[:c])
            self._share_calibration(shared)
        else:
            source = self._analyzer.adapter
            if not isinstance(source, ModelAdapter):
                raise ValueError("this computation started with model outputs; do not mix in model= and pixel_values=")
            adapter = source
            if model is not adapter and model is not adapter.model and not (
                    isinstance(model, (str, os.PathLike)) and str(model) == str(self._model_ref)):
                raise ValueError("a different model was passed than in the first batch of this computation")
            ids = self._ids(ids, len(pixels))
        self._check_labels(label_t)
        if self._analyzer.config.needs_labels and self._analyzer.num_classes is not None and label_t is None:
            raise ValueError("the first batch had labels; this one has none")
        self._analyzer.update(pixels, label_t, ids)  # hf_isi's own capture and update: the code of hf_isi.analyze
        if not recorded:
            super().add_batch(example_key=example_keys(ids, self.analysis_config.seed).numpy())

    def _check_batch(self, states: LayerStates) -> None:
        assert self._analyzer is not None and self._layout is not None
        layers = self._analyzer.num_layers if self._analyzer.num_layers is not None else states.num_layers
        if states.num_layers != layers or states.layout != self._layout:
            raise ValueError(
                f"this batch has {states.num_layers} blocks and layout {states.layout}, but the first batch had "
                f"{layers} blocks and {self._layout}: every batch must come from the same model and image size"
            )
        if "attention" in self._analyzer.config.metrics and (states.attentions is None or
                                                              states.attention_residuals is None):
            raise ValueError("the first batch had attentions and attention_residuals; this one has not")
        if self._analyzer.config.needs_labels and self._analyzer.num_classes is not None and states.labels is None:
            raise ValueError("the first batch had labels; this one has none")

    # -- distributed: calibration and states through evaluate's cache_dir ----------------------------------
    def _calibration_path(self) -> str:
        return os.path.join(self.data_dir, f"{self.experiment_id}-{self.num_process}-calibration.isi.pt")

    def _state_path(self, process_id: int) -> str:
        return os.path.join(self.data_dir, f"{self.experiment_id}-{self.num_process}-{process_id}.isi.pt")

    @staticmethod
    def _save(path: str, obj: Any) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save(obj, tmp)
        os.replace(tmp, path)

    def _rendezvous(self, keys: torch.Tensor) -> tuple[dict[str, Any] | None, bool]:
        """First batch of a computation. A process > 0 records its keys here, which joins evaluate's rendez-vous
        (it waits until process 0 has written its calibration), and returns process 0's calibration and True;
        process 0 returns (None, False) and joins the rendez-vous after writing it (:meth:`_share_calibration`).
        """
        if self.num_process == 1 or self.process_id == 0:
            return None, False
        super().add_batch(example_key=keys.numpy())
        try:
            shared = torch.load(self._calibration_path(), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"process 0 wrote no calibration at {self._calibration_path()}: is cache_dir shared by "
                             "every process, with the same experiment_id?") from None
        return shared, True

    def _share_calibration(self, shared: dict[str, Any] | None) -> None:
        """After setup: process 0 publishes its calibration (projections, target scaling, shifts); the other
        processes adopt it, so every process uses process 0's calibration batch."""
        assert self._analyzer is not None
        if self.num_process == 1:
            return
        if self.process_id == 0:
            self._save(self._calibration_path(), self._analyzer.calibration())
            return
        assert shared is not None
        try:
            self._analyzer.load_calibration(shared)
        except ValueError as err:
            raise ValueError(f"process {self.process_id}'s batches do not match process 0's ({err}): every process "
                             "must run the same model") from None


#: doctest entry point: the shims re-export it, so ``doctest.testmod(<shim module>)`` runs the examples
__test__ = {"Isi": _KWARGS_DESCRIPTION}
