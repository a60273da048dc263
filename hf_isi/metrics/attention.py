"""Attention diagnostics and the attention variant of ISI (SCIENCE.md items 3 and 4), layer by layer.

Each formula is stated once, in the docstring of the pure function that computes it; the accumulator only
streams per-head sums of their outputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..states import LayerStates, TokenLayout
from ._scratch import Scratch, compute_dtype
from .base import Accumulator, MetricFamily, PerHead, float64_zeros

if TYPE_CHECKING:
    from ..engine import AnalysisConfig

_EPS = 1e-12
_ROW_SUM_TOLERANCE = 1e-3
_LN2 = math.log(2.0)

FAMILY = MetricFamily(
    "attention",
    columns=("isi_attention", "attn_residual_cosine", "attn_entropy", "aci", "ccc", "attn_distance"),
    per_head_columns=("attn_entropy_per_head", "ccc_per_head", "aci_per_head", "attn_distance_per_head"),
    requires=("attentions", "attention_residuals"),
)
#: scalar columns of :meth:`AttentionAccumulator.compute`
COLUMNS = FAMILY.columns
#: keys of :meth:`AttentionAccumulator.per_head`
PER_HEAD = FAMILY.per_head_columns


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    # epsilon inside the log only: 0 log 0 = 0, and no bias for p >= eps
    return p * torch.log(p.clamp_min(_EPS))


def _sum_xlogx(x: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_k x_k ln x_k`` over the last dim (0 ln 0 = 0) of a non-negative float64 or float32 tensor, in its
    dtype, using ``buffer`` (same shape and dtype as ``x``, not aliasing it) for the elementwise products.

    The logarithm dominates the attention metrics. On CPU with few threads it runs through numpy, whose
    ``log`` is SIMD-vectorised (about 2-3x faster per thread than torch's CPU kernel, same ~1 ulp accuracy;
    float32 at 0.65 ns per element, float64 at 1.16 ns); with more threads torch's multi-threaded kernel
    wins; on GPUs it is torch.
    """
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or torch.get_num_threads() > _NUMPY_LOG_MAX_THREADS):
        if buffer is None or buffer.data_ptr() == x.data_ptr():
            return torch.xlogy(x, x).sum(dim=-1)
        total = torch.mul(torch.log(x, out=buffer), x, out=buffer).sum(dim=-1)
    else:
        arr = x.contiguous().numpy()
        out = None if buffer is None or np.may_share_memory(arr, buffer.numpy()) else buffer.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            buf = np.log(arr, out=out)
            np.multiply(buf, arr, out=buf)
        total = torch.from_numpy(buf).sum(dim=-1)
    bad = torch.isnan(total)
    if bool(bad.any()):  # rows holding exact zeros (0 * -inf): redo them with 0 ln 0 = 0
        total[bad] = torch.xlogy(x[bad], x[bad]).sum(dim=-1)
    return total


#: up to this many torch threads, numpy's single-threaded float64 log beats torch's multi-threaded one
_NUMPY_LOG_MAX_THREADS = 3


def softmax_rows(p: torch.Tensor) -> torch.Tensor:
    """Check that ``p`` ``[..., T_k]`` holds probability rows and return them in float64, renormalised to 1.

    Rows must be non-negative and sum to 1 within ``max(1e-3, eps of p's dtype)``: a bf16 softmax row is only
    exact to its rounding (up to ~4e-3 for peaked rows), fp16/fp32 rows to well within 1e-3. The float64
    copy is renormalised so every metric sees exact distributions.
    """
    p64 = p.to(torch.float64)
    sums = p64.sum(dim=-1)
    _check_softmax(p, p64, sums)
    return p64 / sums.unsqueeze(-1).clamp_min(_EPS)


def _check_softmax(p: torch.Tensor, p64: torch.Tensor, sums: torch.Tensor) -> None:
    """Raise unless ``p64`` (``p`` in float64, row sums ``sums``) holds softmax rows (see :func:`softmax_rows`)."""
    if not p64.numel():
        return
    # one device-to-host transfer for both checks
    deviation, negative = torch.stack([(sums - 1).abs().max(), -p64.min()]).tolist()
    _raise_unless_softmax(p, deviation, negative)


def _raise_unless_softmax(p: torch.Tensor, deviation: float, negative: float) -> None:
    tolerance = _ROW_SUM_TOLERANCE
    if p.is_floating_point():
        tolerance = max(tolerance, torch.finfo(p.dtype).eps)
    if deviation > tolerance or negative > tolerance:
        raise ValueError(
            "attention tensors do not look like softmax attention: rows must be non-negative and sum to 1 "
            f"(largest deviation of a row sum from 1: {deviation:.3g}); capture the "
            "attention probabilities (after softmax), not the scores"
        )


def layer_statistics(
    attn: torch.Tensor,
    num_prefix: int,
    cls_index: int | None,
    distances: torch.Tensor | None,
    scratch: Scratch | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """Entropy, CCC, ACI and mean distance per (map, head) of one layer's attention ``[maps, H, T_q, T_k]``, in
    one sweep: the values of :func:`attention_entropy`, :func:`cls_centrality` (only with ``cls_index``),
    :func:`consensus_index` and :func:`mean_attention_distance` (only with ``distances``) on
    :func:`softmax_rows` ``(attn)``, each ``[maps, H]`` in float64, with the softmax check included.

    It is the same arithmetic, rearranged so the ``[maps, H, T_q, T_k]`` work is two ``x ln x`` passes and a
    few products instead of a dozen temporaries. That elementwise work and its row sums run in ``dtype``
    (float32 under mixed precision); everything per row and beyond is float64. With row sums ``s_q`` and the
    renormalised rows ``p_q = a_q / s_q`` (``a`` the raw rows; ``S(x) = sum_k x_k ln x_k``, 0 ln 0 = 0)::

        S(p_q)  = S(a_q) / s_q - ln s_q                                   (as sum_k a_qk = s_q)
        JSD_q   = (S(p_q) + S(m)) / 2 - S((p_q + m) / 2)                  (nats; divided by ln 2 for bits)
        dist_q  = sum_k a_qk d_qk / sum_k a_qk        over patch keys k   (the scale s_q cancels)

    where the JSD line is the definition in :func:`consensus_index` with the two KL terms expanded. Maps are
    processed in chunks of bounded size, so the float64 temporaries do not grow with the batch; ``scratch``
    lets CPU callers reuse the chunk buffers across calls instead of allocating (and page-faulting) fresh
    ones every time.
    """
    maps, heads, t_q, t_k = attn.shape
    if attn.numel() == 0:  # nothing to chunk: the reference functions give the (empty or NaN) values
        p = softmax_rows(attn)
        out = {"entropy": attention_entropy(p), "aci": consensus_index(p, num_prefix)}
        if cls_index is not None:
            out["ccc"] = cls_centrality(p, cls_index, num_prefix)
        if distances is not None:
            out["distance"] = mean_attention_distance(p, distances, num_prefix)
        return out
    # one block per (map, head); chunks of whole blocks small enough to stay in cache on CPU
    blocks = attn.reshape(maps * heads, t_q, t_k)
    budget = _CHUNK_BYTES_GPU if attn.device.type != "cpu" else _CHUNK_BYTES_CPU
    step = max(1, budget // (t_q * t_k * dtype.itemsize))
    weights = None if distances is None else _padded_distances(distances, num_prefix, t_q, t_k).to(dtype)
    parts: list[dict[str, torch.Tensor]] = []
    checks: list[torch.Tensor] = []
    for lo in range(0, blocks.shape[0], step):
        chunk = blocks[lo : lo + step]
        work, spare = _buffer(scratch, chunk, dtype, "work"), _buffer(scratch, chunk, dtype, "spare")
        # the chunk itself when it is already contiguous in the compute dtype (it is only read), else a copy
        a = chunk
        if chunk.dtype != dtype or not chunk.is_contiguous():
            a = _buffer(scratch, chunk, dtype, "a").copy_(chunk)
        sums = a.sum(dim=-1).to(torch.float64)  # a float32 row sum is exact to ~1e-7 (and 5x faster than dtype=)
        checks.append(torch.stack([(sums - 1).abs().max(), -a.min()]))
        parts.append(_chunk_statistics(a, work, spare, sums, num_prefix, cls_index, weights))
    deviation, negative = torch.stack(checks).amax(dim=0).tolist()
    _raise_unless_softmax(attn, deviation, negative)
    return {k: torch.cat([part[k] for part in parts]).reshape(maps, heads) for k in parts[0]}


#: bytes per chunk of blocks: 4 MB on CPU (few Python steps, bounded memory), 512 MB on GPUs
_CHUNK_BYTES_CPU = 1 << 22
_CHUNK_BYTES_GPU = 1 << 29


def _padded_distances(distances: torch.Tensor, num_prefix: int, t_q: int, t_k: int) -> torch.Tensor:
    """The patch-key distances as a ``[T_q, T_k]`` float64 matrix with zero prefix rows and columns."""
    out = torch.zeros(t_q, t_k, dtype=torch.float64, device=distances.device)
    out[num_prefix:, num_prefix:] = distances
    return out


def _buffer(scratch: Scratch | None, chunk: torch.Tensor, dtype: torch.dtype, key: str) -> torch.Tensor:
    """A ``dtype`` buffer shaped like ``chunk``: from ``scratch`` on CPU when given, else fresh."""
    if scratch is None or chunk.device.type != "cpu":
        return torch.empty(chunk.shape, dtype=dtype, device=chunk.device)
    return scratch.empty(tuple(chunk.shape), f"attention_{key}", dtype)


def _chunk_statistics(a, work, spare, sums, num_prefix, cls_index, weights) -> dict[str, torch.Tensor]:
    """:func:`layer_statistics` of a chunk of blocks ``a`` ``[n, T_q, T_k]`` (raw rows in the compute dtype,
    float64 row sums ``sums``; only read), per block; ``work`` and ``spare`` are scratch space like ``a``,
    ``weights`` the padded distances in ``a``'s dtype. Row-level values are float64 (``.to`` is free when ``a``
    is float64)."""
    f64 = torch.float64
    t_k = a.shape[-1]
    sums = sums.clamp_min(_EPS)
    inv = 1.0 / sums
    out: dict[str, torch.Tensor] = {}
    # S(p_q) for every query row: the first x ln x pass
    plogp = _sum_xlogx(a, work).to(f64) * inv - torch.log(sums)
    if t_k < 2:
        out["entropy"] = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    else:
        out["entropy"] = (-plogp / math.log(t_k)).mean(dim=-1)
    if cls_index is not None:
        out["ccc"] = (a[:, num_prefix:, cls_index].to(f64) * inv[:, num_prefix:]).mean(dim=-1)
    if weights is not None:
        # contiguous full rows; the padded prefix rows/columns of the weights are zero
        weighted = torch.mul(a, weights, out=work).sum(dim=-1).to(f64)[:, num_prefix:]
        # summed directly, not as the row sum minus the prefix mass: rows that put nearly all their mass on
        # [CLS] would lose every digit of the difference (float32 rows moved distances by up to 675 px)
        patch_mass = a[:, num_prefix:, num_prefix:].sum(dim=-1).to(f64)
        out["distance"] = (weighted / patch_mass.clamp_min(_EPS)).mean(dim=-1)
    # ACI: the mean patch row m, then the second x ln x pass over the mixtures (p_q + m) / 2, formed for every
    # row (the prefix rows are discarded) so both buffers stay contiguous; the log goes into `spare`
    w = inv[:, num_prefix:].to(a.dtype)
    m = torch.matmul(w.unsqueeze(-2), a[:, num_prefix:]).squeeze(-2) / w.shape[-1]
    torch.addcmul((0.5 * m).unsqueeze(-2), a, (0.5 * inv).to(a.dtype).unsqueeze(-1), out=work)
    mlogm = _sum_xlogx(work, spare).to(f64)[:, num_prefix:]
    jsd = (0.5 * (plogp[:, num_prefix:] + _sum_xlogx(m).to(f64).unsqueeze(-1)) - mlogm) / _LN2
    out["aci"] = 1.0 - jsd.mean(dim=-1)
    return out


def attention_entropy(p: torch.Tensor) -> torch.Tensor:
    """Normalised attention entropy per (image, head), ``[B, H, T_q, T_k] -> [B, H]`` (float64).

    For each query row ``p_q``, ``h_q = -sum_k p_qk ln p_qk / ln T_k`` (in [0, 1]; 0 log 0 = 0), averaged over
    all queries. A single key (``T_k = 1``) has no spread: entropy 0.
    """
    t_k = p.shape[-1]
    if t_k < 2:
        return torch.zeros(p.shape[:2], dtype=torch.float64, device=p.device)
    return (-_xlogx(p).sum(dim=-1) / math.log(t_k)).mean(dim=-1)


def cls_centrality(p: torch.Tensor, cls_index: int, num_prefix: int) -> torch.Tensor:
    """CLS centrality (CCC) per (image, head), ``[B, H, T_q, T_k] -> [B, H]`` (float64).

    ``CCC = mean over patch queries q (positions >= num_prefix) of p_q,cls``: the attention mass patches put
    on the [CLS] key.
    """
    return p[:, :, num_prefix:, cls_index].mean(dim=-1)


def consensus_index(p: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Attention consensus index (ACI) per (image, head), ``[B, H, T_q, T_k] -> [B, H]`` (float64).

    With patch query rows ``p_q`` (positions >= num_prefix, full rows over all keys) and their mean
    ``m = mean_q p_q``::

        JSD_q = 1/2 KL(p_q || M_q) + 1/2 KL(m || M_q),   M_q = (p_q + m) / 2,   logs base 2  (in [0, 1])
        ACI   = 1 - mean_q JSD_q

    so ACI = 1 when every patch attends alike, and approaches 0 as the rows become disjoint.
    """
    q = p[:, :, num_prefix:]
    m = q.mean(dim=2, keepdim=True)
    mid = 0.5 * (q + m)
    log_mid = torch.log(mid.clamp_min(_EPS))
    kl_q = (_xlogx(q) - q * log_mid).sum(dim=-1)
    kl_m = (_xlogx(m) - m * log_mid).sum(dim=-1)
    jsd = 0.5 * (kl_q + kl_m) / _LN2
    return 1.0 - jsd.mean(dim=-1)


def patch_distances(grid: tuple[int, int], stride: tuple[float, float], device=None) -> torch.Tensor:
    """Pixel distance between the patches of a ``grid`` (rows, cols), row-major, ``[N, N]`` (float64).

    ``d(q, k) = sqrt((dr * stride_h)^2 + (dc * stride_w)^2)`` with ``(dr, dc)`` the grid offset.
    """
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64, device=device),
        torch.arange(grid[1], dtype=torch.float64, device=device),
        indexing="ij",
    )
    pos = torch.stack([rows.reshape(-1) * stride[0], cols.reshape(-1) * stride[1]], dim=-1)
    return torch.cdist(pos, pos)


def mean_attention_distance(p: torch.Tensor, distances: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Mean attention distance in pixels (ViT paper, Fig. 7) per (image, head), ``[B, H, T, T] -> [B, H]``.

    Patch queries attend over patch keys only: the prefix keys are dropped and each row renormalised,
    ``p'_qk = p_qk / sum_{k' patch} p_qk'`` (our choice: prefix tokens have no position). Then
    ``dist_q = sum_k p'_qk d(q, k)`` with ``d`` from :func:`patch_distances`, averaged over patch queries.
    A row with no mass on patches contributes 0.
    """
    pp = p[:, :, num_prefix:, num_prefix:]
    pp = pp / pp.sum(dim=-1, keepdim=True).clamp_min(_EPS)
    return (pp * distances).sum(dim=-1).mean(dim=-1)


def residual_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``cos(x_i, y_i)`` per image, ``[B, T, D] x2 -> [B]`` (float64).

    Used with ``y = x + a`` (the residual stream right after the attention branch): 1 means attention left
    the token's direction untouched. Zero vectors count as cosine 0.
    """
    return _residual_cosine(x, y, None)


def _residual_cosine(x: torch.Tensor, y: torch.Tensor, scratch: Scratch | None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    if scratch is None:
        x, y = x.to(dtype), y.to(dtype)
    elif x.dtype != dtype:
        x, y = scratch.cast(x, "cosine_x", dtype), scratch.cast(y, "cosine_y", dtype)
    dot = torch.linalg.vecdot(x, y).to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=-1).to(torch.float64) * torch.linalg.vector_norm(y, dim=-1)
    return (dot / norms.clamp_min(_EPS)).mean(dim=-1)


def _ratio(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


class AttentionAccumulator(Accumulator):
    """Streams the attention diagnostics of layers ``1..L`` (layers ``-1`` and ``0`` have no attention: NaN).

    Columns (float arrays over layers ``-1..L``):

    * ``attn_entropy``: H(l), :func:`attention_entropy` averaged over heads, queries and images (windows);
    * ``attn_residual_cosine``: c(l), :func:`residual_cosine` averaged over tokens and images;
    * ``isi_attention``: ``(1 - c(l)) * H(l)``, from the final c and H;
    * ``ccc``: :func:`cls_centrality`; NaN without a [CLS] token or for windowed attention;
    * ``aci``: :func:`consensus_index`;
    * ``attn_distance``: :func:`mean_attention_distance`, in pixels.

    :meth:`per_head` gives the per-head curves of entropy, CCC, ACI and distance.

    A layer's attention counts as **windowed** (Swin) when it has more rows than images or its query count is
    not ``num_prefix_tokens + num_patches``. Then there are no prefix tokens, every query of a window is a
    "patch query", ACI compares rows with their window's mean row, and for the distance each window is a
    square ``s x s`` local grid (``s = sqrt(T_k)``; shifted windows are treated as their local grid too, an
    approximation) with pixel stride ``patch_size * sqrt(N / n)``, ``N`` the patches at the embedding and
    ``n`` the tokens per image at that block (``x.shape[1] * (x.shape[0] // B)`` of the residual pair), i.e.
    the image size over the side of the block's token grid for square images. Layers whose positions are
    unknown (``T_q != T_k``, a non-square window) get no distance (NaN).
    """

    families = (FAMILY,)
    # states (registered by setup): per-layer per-head sums [H_l] and per-layer counts [L]
    entropy_sum: list[torch.Tensor]
    ccc_sum: list[torch.Tensor]
    aci_sum: list[torch.Tensor]
    dist_sum: list[torch.Tensor]
    maps: torch.Tensor
    ccc_maps: torch.Tensor
    dist_maps: torch.Tensor
    cos_sum: torch.Tensor
    cos_count: torch.Tensor

    def __init__(self, precision: str = "float64") -> None:
        super().__init__()
        self.precision, self.dtype = precision, compute_dtype(precision)
        self._scratch = Scratch()  # reusable CPU buffers, not state

    @classmethod
    def from_config(cls, config: AnalysisConfig, num_classes: int | None,
                    families: frozenset[str]) -> AttentionAccumulator:
        return cls(config.precision)

    def setup(self, states: LayerStates) -> None:
        super().setup(states)
        attentions, _ = _captured(states)
        device, n_layers = states.device, states.num_layers
        heads = [a.shape[1] for a in attentions]
        for state in ("entropy_sum", "ccc_sum", "aci_sum", "dist_sum"):
            self.add_state(state, [float64_zeros(h, device=device) for h in heads])
        # number of attention maps (images x windows) behind each sum; 0 = not applicable at that layer
        for state in ("maps", "ccc_maps", "dist_maps", "cos_sum", "cos_count"):
            self.add_state(state, float64_zeros(n_layers, device=device))

    def update(self, states: LayerStates) -> None:
        attentions, residuals = _captured(states)
        layout, batch = states.layout, states.batch_size
        for i, (attn, (x, x_plus_a)) in enumerate(zip(attentions, residuals)):
            maps, _, t_q, t_k = attn.shape
            if maps % batch:
                raise ValueError(f"layer {i + 1}: {maps} attention maps for a batch of {batch} images")
            windowed = maps != batch or t_q - layout.num_prefix_tokens != layout.num_patches
            prefix = 0 if windowed else layout.num_prefix_tokens
            cls_index = layout.cls_index if not windowed else None
            tokens_per_image = x.shape[1] * (x.shape[0] // batch)
            distances = _layer_distances(layout, windowed, t_q, t_k, tokens_per_image, attn.device)
            stats = layer_statistics(attn, prefix, cls_index, distances, self._scratch, self.dtype)

            self.entropy_sum[i] += stats["entropy"].sum(dim=0)
            self.aci_sum[i] += stats["aci"].sum(dim=0)
            self.maps[i] += maps
            if "ccc" in stats:
                self.ccc_sum[i] += stats["ccc"].sum(dim=0)
                self.ccc_maps[i] += maps
            if "distance" in stats:
                self.dist_sum[i] += stats["distance"].sum(dim=0)
                self.dist_maps[i] += maps

            cos = _residual_cosine(x, x_plus_a, self._scratch, self.dtype)
            self.cos_sum[i] += cos.sum()
            self.cos_count[i] += cos.numel()

    def _per_head(self) -> dict[str, list[torch.Tensor]]:
        pairs = {
            "attn_entropy": (self.entropy_sum, self.maps),
            "ccc": (self.ccc_sum, self.ccc_maps),
            "aci": (self.aci_sum, self.maps),
            "attn_distance": (self.dist_sum, self.dist_maps),
        }
        return {name: [_ratio(s, n[i]) for i, s in enumerate(sums)] for name, (sums, n) in pairs.items()}

    def compute(self) -> dict[str, np.ndarray]:
        missing = torch.full((2,), float("nan"), dtype=torch.float64)
        # every head averages over the same maps and queries, so the mean over heads is the overall mean
        columns = {
            name: torch.stack([v.mean() for v in values]).cpu() for name, values in self._per_head().items()
        }
        columns["attn_residual_cosine"] = _ratio(self.cos_sum, self.cos_count).cpu()
        columns["isi_attention"] = (1 - columns["attn_residual_cosine"]) * columns["attn_entropy"]
        return {name: torch.cat([missing, columns[name]]).numpy() for name in COLUMNS}

    def per_head(self) -> PerHead:
        """Per-head curves over layers ``-1..L``: per layer, the per-head values or ``None`` if missing."""
        out = {}
        for name, values in self._per_head().items():
            curve: list[list[float] | None] = [None, None]
            for v in values:
                curve.append(None if bool(torch.isnan(v).all()) else v.cpu().tolist())
            out[f"{name}_per_head"] = curve
        return out


def _captured(
    states: LayerStates,
) -> tuple[tuple[torch.Tensor, ...], tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
    if states.attentions is None:
        raise ValueError(
            "attention metrics need attention probabilities; load the model with attn_implementation='eager' "
            "and capture attentions (SDPA/flash attention kernels do not return them)"
        )
    if states.attention_residuals is None:
        raise ValueError(
            "attention metrics need the attention residual pairs (x, x + a) of every block; capture "
            "attention_residuals"
        )
    counts = (len(states.attentions), len(states.attention_residuals))
    if counts != (states.num_layers, states.num_layers):
        raise ValueError(
            f"expected {states.num_layers} attention tensors and residual pairs, "
            f"got {counts[0]} and {counts[1]}"
        )
    return states.attentions, states.attention_residuals


def _layer_distances(
    layout: TokenLayout, windowed: bool, t_q: int, t_k: int, tokens_per_image: int, device: torch.device
) -> torch.Tensor | None:
    """The pixel distance matrix between a layer's patch keys, or ``None`` where positions are unknown."""
    if t_q != t_k:
        return None
    if not windowed:
        return patch_distances(layout.patch_grid, layout.patch_size, device)
    side = math.isqrt(t_k)
    if side * side != t_k or tokens_per_image < 1:
        return None
    scale = math.sqrt(layout.num_patches / tokens_per_image)
    stride = (layout.patch_size[0] * scale, layout.patch_size[1] * scale)
    return patch_distances((side, side), stride, device)
