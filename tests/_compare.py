"""Run-to-run agreement of results tables: batching, merging, resuming, 1 vs 2 processes."""

from __future__ import annotations

import numpy as np

from hf_isi.report import METRIC_COLUMNS

#: ``float64``: the same numbers up to float64 summation order (1e-6 relative). ``mixed`` (the default
#: precision): the float32 ISI Gram products and attention ``x ln x`` sweeps also round differently when images
#: are grouped differently (measured up to 2e-6 absolute on R^2 / ISI with a 1e-4 ridge penalty), hence 1e-5
#: absolute on top. ``exact``: a save / load round trip.
TOLERANCE = {"float64": {"rtol": 1e-6, "atol": 1e-12}, "mixed": {"rtol": 1e-6, "atol": 1e-5},
             "exact": {"rtol": 0, "atol": 0}}


def assert_columns_close(a, b, precision: str = "mixed", columns=METRIC_COLUMNS) -> None:
    """Every metric column of tables ``a`` and ``b`` equal within ``TOLERANCE[precision]`` (NaNs alike)."""
    for column in columns:
        np.testing.assert_allclose(np.asarray(a[column], dtype=float), np.asarray(b[column], dtype=float),
                                   err_msg=column, **TOLERANCE[precision])
