"""Binned PDFs of a continuous target: bins, point estimates, CDF, PIT, sampling, scatter.

A regressor with a softmax over ``n_bins`` bins of a continuous target (e.g.
:class:`galjax.models.classifier.BinnedPDFRegressor`, photometric-redshift style as
in Pasquet et al. 2019) gives a binned PDF per example; its mean is the point
estimate (:func:`pdf_point_estimate`), and :func:`sigma_mad`,
:func:`outlier_fraction` and :func:`pit_values` score it.

>>> pdf_point_estimate([[0.5, 0.5, 0.0]], [0.0, 1.0, 2.0, 3.0]).tolist()
[1.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import as_float_array, is_concrete
from galjax.scores.classification import check_probability_rows

__all__ = [
    "bin_edges",
    "check_edges",
    "to_bins",
    "pdf_point_estimate",
    "pdf_cdf",
    "pit_values",
    "sample_pdf",
    "sigma_mad",
    "outlier_fraction",
]


def bin_edges(lo: float, hi: float, n_bins: int):
    """``(n_bins + 1,)`` float32 edges of equal bins over ``[lo, hi]``.

    >>> bin_edges(0.0, 1.0, 4).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"lo, hi: expected finite lo < hi, got {lo}, {hi}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 2:
        raise ValueError(f"n_bins: expected an integer >= 2, got {n_bins!r}")
    return np.linspace(lo, hi, n_bins + 1).astype(np.float32)


def check_edges(edges):
    """Check strictly increasing bin edges ``(n_bins + 1,)``, ``n_bins >= 2``; return them as float.

    Raises:
      ValueError: not 1-D, fewer than 3 edges, or not strictly increasing (checked
        when concrete).
    """
    e = as_float_array("edges", edges)
    if e.ndim != 1 or e.shape[0] < 3:
        raise ValueError(f"edges: expected a 1-D array of >= 3 bin edges, got shape {e.shape}")
    if is_concrete(e) and not np.all(np.diff(np.asarray(e)) > 0):
        raise ValueError("edges: expected strictly increasing bin edges")
    return e


def to_bins(values, edges):
    """Bin index of each value (values outside ``[edges[0], edges[-1]]`` are clipped).

    >>> to_bins([0.1, 0.6, 2.0], [0.0, 0.5, 1.0]).tolist()
    [0, 1, 1]
    """
    e = np.asarray(check_edges(edges))
    v = np.asarray(values, dtype=e.dtype)
    return np.clip(np.searchsorted(e, v, side="right") - 1, 0, e.size - 2).astype(np.int32)


def _check_pdf(name, pdf, edges):
    e = check_edges(edges)
    p = check_probability_rows(name, pdf)
    if p.shape[-1] != e.shape[0] - 1:
        raise ValueError(
            f"{name}: expected {e.shape[0] - 1} bins (len(edges) - 1) on the last axis, "
            f"got shape {p.shape}"
        )
    return p, e.astype(p.dtype)


def pdf_point_estimate(pdf, edges):
    """Mean of a binned PDF, ``z_hat = sum_b p_b (e_b + e_{b+1}) / 2``.

    Args:
      pdf: ``(..., n_bins)`` probabilities per bin (rows sum to one).
      edges: ``(n_bins + 1,)`` bin edges.

    Returns:
      ``(...)`` point estimates.

    >>> pdf_point_estimate([[0.5, 0.5, 0.0]], [0.0, 1.0, 2.0, 3.0]).tolist()
    [1.0]
    """
    p, e = _check_pdf("pdf", pdf, edges)
    centres = (e[1:] + e[:-1]) / 2
    return jnp.sum(p * jnp.broadcast_to(centres, p.shape), axis=-1)


def pdf_cdf(pdf, edges, values):
    """CDF of a binned PDF (uniform density inside each bin) at ``values``.

    ``F(z) = sum_{b < k} p_b + p_k (z - e_k) / (e_{k+1} - e_k)`` for ``z`` in bin
    ``k``; 0 below ``edges[0]`` and 1 above ``edges[-1]``.

    Args:
      pdf: ``(..., n_bins)``.
      edges: ``(n_bins + 1,)``.
      values: ``(...)`` broadcastable against ``pdf.shape[:-1]``.

    Returns:
      ``(...)`` values in ``[0, 1]``.
    """
    p, e = _check_pdf("pdf", pdf, edges)
    z = as_float_array("values", values).astype(p.dtype)
    return _pdf_cdf(p, e, z)


@jax.jit
def _pdf_cdf(p, e, z):
    z = jnp.broadcast_to(z, p.shape[:-1])
    cum = jnp.cumsum(p, axis=-1)
    cum0 = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum], axis=-1)  # (..., n_bins + 1)
    k = jnp.clip(jnp.searchsorted(e, z, side="right") - 1, 0, e.shape[0] - 2)
    frac = jnp.clip((z - e[k]) / (e[k + 1] - e[k]), 0.0, 1.0)
    below = jnp.take_along_axis(cum0, k[..., None], axis=-1)[..., 0]
    pk = jnp.take_along_axis(p, k[..., None], axis=-1)[..., 0]
    return jnp.clip(below + pk * frac, 0.0, 1.0)


def pit_values(pdf, edges, truth):
    """Probability integral transform ``PIT_i = F_i(z_i)`` of the true values.

    For calibrated PDFs the PIT values are uniform on ``[0, 1]``; a U-shaped
    histogram means over-confident (too narrow) PDFs, a hump under-confident.

    Args:
      pdf: ``(n, n_bins)`` binned PDFs.
      edges: ``(n_bins + 1,)``.
      truth: ``(n,)`` true values.

    Returns:
      ``(n,)`` PIT values in ``[0, 1]``.
    """
    p, _ = _check_pdf("pdf", pdf, edges)
    t = as_float_array("truth", truth)
    if t.shape != p.shape[:-1]:
        raise ValueError(f"truth: expected shape {p.shape[:-1]} (one per PDF), got {t.shape}")
    return pdf_cdf(p, edges, t)


def sample_pdf(key, pdf, edges):
    """Draw one value from each binned PDF (bin by its probability, uniform inside it).

    Args:
      key: PRNG key.
      pdf: ``(n, n_bins)``.
      edges: ``(n_bins + 1,)``.

    Returns:
      ``(n,)`` samples.
    """
    p, e = _check_pdf("pdf", pdf, edges)
    k1, k2 = jax.random.split(key)
    # log(0) = -inf gives zero-probability bins zero chance of being drawn.
    b = jax.random.categorical(k1, jnp.log(p), axis=-1)
    u = jax.random.uniform(k2, b.shape, p.dtype)
    return e[b] + u * (e[b + 1] - e[b])


def _dz(pred, truth, relative: bool):
    pred = as_float_array("pred", pred)
    truth = as_float_array("truth", truth).astype(pred.dtype)
    if pred.shape != truth.shape or pred.ndim != 1 or pred.shape[0] == 0:
        raise ValueError(
            f"pred, truth: expected two non-empty 1-D arrays of equal length, got shapes "
            f"{pred.shape} and {truth.shape}"
        )
    dz = pred - truth
    return dz / (1 + truth) if relative else dz


def sigma_mad(pred, truth, relative: bool = False):
    """Robust scatter ``sigma_MAD = 1.4826 median|dz - median(dz)|``.

    ``dz = pred - truth``, or ``(pred - truth) / (1 + truth)`` with
    ``relative=True`` (the photometric-redshift convention).

    >>> round(float(sigma_mad([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])), 4)
    1.4826
    """
    dz = _dz(pred, truth, relative)
    return 1.4826 * jnp.median(jnp.abs(dz - jnp.median(dz)))


def outlier_fraction(pred, truth, threshold: float = 0.15, relative: bool = False):
    """Fraction of catastrophic outliers, ``mean(|dz| > threshold)``.

    >>> float(outlier_fraction([0.0, 0.1, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]))
    0.25
    """
    if not threshold > 0:
        raise ValueError(f"threshold: expected a positive value, got {threshold}")
    dz = _dz(pred, truth, relative)
    return jnp.mean((jnp.abs(dz) > threshold).astype(dz.dtype))
