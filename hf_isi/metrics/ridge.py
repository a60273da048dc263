"""Ridge regression from sufficient statistics: the linear algebra shared by the ISI and the probes.

A split's statistics are sums over its samples (rows ``x`` in R^P, targets ``y`` in R^Q)::

    n, sx = sum x, sy = sum y, xx = sum x x^T, xy = sum x y^T, yy = sum y * y (per output)

They add across batches and processes, and they are all a ridge fit with intercept or its squared error needs:

    fit:  W(lam) = (Xc^T Xc + lam I)^-1 Xc^T Yc,  b = (sy - W^T sx) / n      (Xc, Yc centred on the fit means)
    SSE:  sum ||y - W^T x - b||^2 = sum yy - 2 tr(W^T xy) - 2 b.sy + tr(W^T xx W) + 2 b.W^T sx + n b.b

Penalties are given relative to the scale of the centred Gram, ``lam = alpha * tr(Xc^T Xc) / P``, so one grid
suits every layer and model. All penalties of a grid cost one eigendecomposition of the fit Gram.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_PENALTIES: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class RidgeStats:
    """Sufficient statistics of a multi-output regression on one split (see the module docstring)."""

    n: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    xx: torch.Tensor
    xy: torch.Tensor
    yy: torch.Tensor

    def shifted(self, mx: torch.Tensor, my: torch.Tensor) -> RidgeStats:
        """The statistics of the same samples with ``x - mx`` and ``y - my`` (leading batch dims allowed)."""
        n = self.n

        def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a.unsqueeze(-1) * b.unsqueeze(-2)

        return RidgeStats(
            n,
            self.sx - n * mx,
            self.sy - n * my,
            self.xx - outer(self.sx, mx) - outer(mx, self.sx) + n * outer(mx, mx),
            self.xy - outer(self.sx, my) - outer(mx, self.sy) + n * outer(mx, my),
            self.yy - 2 * my * self.sy + n * my * my,
        )

    def total_sum_of_squares(self) -> torch.Tensor:
        """SST = sum over outputs of sum_i (y_i - mean y)^2."""
        n = self.n.clamp_min(1)
        return (self.yy - self.sy**2 / n).sum()


@dataclass
class RidgeFit:
    """A fitted ridge map: ``y_hat = W^T x + b``, with the absolute penalty that was chosen."""

    weight: torch.Tensor
    bias: torch.Tensor
    penalty: float
    alpha: float

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias

    def sse(self, s: RidgeStats) -> torch.Tensor:
        """Pooled squared error of this map on a split, from that split's statistics alone."""
        w, b = self.weight, self.bias
        return (
            s.yy.sum()
            - 2 * (w * s.xy).sum()
            - 2 * b @ s.sy
            + (w * (s.xx @ w)).sum()
            + 2 * b @ (w.T @ s.sx)
            + s.n * (b @ b)
        )


def select_ridge(fit: RidgeStats, val: RidgeStats, alphas: tuple[float, ...] = DEFAULT_PENALTIES) -> RidgeFit:
    """Fit ridge on ``fit`` for every relative penalty in ``alphas``; keep the one with least SSE on ``val``.

    With no validation samples the middle of the grid is used. Computed in the fit Gram's eigenbasis
    ``Xc^T Xc = V diag(s) V^T``: with ``A = V^T Xc^T Yc`` and ``d = 1 / (s + lam)``, ``W = V diag(d) A``, and the
    validation SSE of each penalty needs only O(P^2) work once ``A A^T`` and ``V^T xx_val V`` are formed.
    """
    n = fit.n.clamp_min(1)
    mx, my = fit.sx / n, fit.sy / n
    xxc = fit.xx - n * torch.outer(mx, mx)
    xyc = fit.xy - n * torch.outer(mx, my)
    s, v = torch.linalg.eigh(xxc)
    s = s.clamp_min(0)
    a = v.T @ xyc
    scale = float(s.sum() / s.numel()) or 1.0

    def fit_for(alpha: float) -> RidgeFit:
        lam = alpha * scale
        w = v @ (a / (s + lam)[:, None])
        return RidgeFit(w, my - w.T @ mx, lam, alpha)

    if float(val.n) < 1 or len(alphas) == 1:
        return fit_for(alphas[len(alphas) // 2])

    # Validation SSE per penalty in the eigenbasis (see docstring).
    gram_a = a @ a.T
    val_xx = v.T @ val.xx @ v
    val_xy_dot = (a * (v.T @ val.xy)).sum(dim=1)
    val_sx, fit_mx = v.T @ val.sx, v.T @ mx
    errors = []
    for alpha in alphas:
        d = 1.0 / (s + alpha * scale)
        wt = d[:, None] * a  # W in the eigenbasis
        b = my - wt.T @ fit_mx
        sse = (
            val.yy.sum()
            - 2 * (d * val_xy_dot).sum()
            - 2 * b @ val.sy
            + (torch.outer(d, d) * gram_a * val_xx).sum()
            + 2 * b @ (wt.T @ val_sx)
            + val.n * (b @ b)
        )
        errors.append(float(sse))
    # Penalties whose errors differ only by rounding (e.g. a feature that is constant) tie: take the largest,
    # so the choice does not depend on summation order.
    best = min(errors)
    tol = 1e-9 * max(abs(best), float(val.yy.sum()), 1e-300)
    return fit_for(max(alpha for alpha, e in zip(alphas, errors) if e <= best + tol))
