"""Neural Collapse (Papyan, Han & Donoho 2020) from streamed class statistics.

Notation: classes ``c = 1..C`` present in the data, ``n_c`` samples each, class means ``mu_c``, global mean
``mu_G`` (over all samples), ``M`` the ``C x D`` matrix of centred class means ``mu_c - mu_G``::

    Sigma_W = 1/n sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T = (sum x x^T - sum_c n_c mu_c mu_c^T) / n
    Sigma_B = 1/C sum_c (mu_c - mu_G)(mu_c - mu_G)^T
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassGeometry:
    """Class means and scatter matrices of one feature (one layer, one pooling), over the classes present."""

    means: torch.Tensor  # [C, D]
    global_mean: torch.Tensor  # [D]
    within: torch.Tensor  # Sigma_W [D, D]
    between: torch.Tensor  # Sigma_B [D, D]
    present: torch.Tensor  # [C_all] bool: which label ids have samples

    @property
    def centred_means(self) -> torch.Tensor:
        return self.means - self.global_mean

    @property
    def separated(self) -> bool:
        """Whether the class means differ at all; NC metrics are undefined for a feature that is constant
        across classes (e.g. the [CLS] token before the first block)."""
        scale = max(float(torch.trace(self.within)), float(self.global_mean.pow(2).sum()), 1e-300)
        return float(torch.trace(self.between)) > 1e-12 * scale


def class_geometry(counts: torch.Tensor, class_sums: torch.Tensor, gram: torch.Tensor) -> ClassGeometry:
    """Sigma_W and Sigma_B (module docstring) from class counts ``[C]``, class sums ``[C, D]`` and ``sum x x^T``."""
    present = counts > 0
    n_c, sums = counts[present], class_sums[present]
    n = n_c.sum()
    means = sums / n_c[:, None]
    global_mean = sums.sum(0) / n
    within = (gram - (means * n_c[:, None]).T @ means) / n
    centred = means - global_mean
    between = centred.T @ centred / means.shape[0]
    return ClassGeometry(means, global_mean, within, between, present)


def nc1(g: ClassGeometry) -> float:
    """NC1 = tr(Sigma_W Sigma_B^+) / C: within-class variability relative to between-class separation (-> 0)."""
    c = g.means.shape[0]
    return float(torch.trace(g.within @ torch.linalg.pinv(g.between, hermitian=True)) / c)


def simplex_etf(c: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The Frobenius-normalised Gram of a simplex equiangular tight frame, ``(I - 11^T/C) / |I - 11^T/C|_F``."""
    e = torch.eye(c, dtype=dtype) - torch.full((c, c), 1.0 / c, dtype=dtype)
    return e / torch.linalg.matrix_norm(e)


def nc2(g: ClassGeometry) -> float:
    """NC2 = | M M^T / |M M^T|_F - (I - 11^T/C) / |I - 11^T/C|_F |_F: distance of the centred class-mean Gram
    from the simplex ETF (0 when the means are equinorm and maximally, equally separated)."""
    m = g.centred_means
    gram = m @ m.T
    return float(torch.linalg.matrix_norm(gram / torch.linalg.matrix_norm(gram) - simplex_etf(m.shape[0]).to(m)))


def nc3(g: ClassGeometry, classifier: torch.Tensor) -> float:
    """NC3 = | W / |W|_F - M / |M|_F |_F with ``W`` the ``C x D`` classifier rows of the present classes
    (self-duality: classifier rows align with the centred class means)."""
    w = classifier[g.present]
    m = g.centred_means
    return float(torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)))


def nc4(g: ClassGeometry, features: torch.Tensor, predictions: torch.Tensor) -> float:
    """NC4 = fraction of samples whose nearest class mean (Euclidean) is the class the classifier predicts."""
    ids = torch.nonzero(g.present).squeeze(1)
    nearest = ids[torch.cdist(features.to(g.means), g.means).argmin(dim=1)]
    return float((nearest == predictions.to(nearest.device)).double().mean())
