"""Calibration checks for probabilistic classifiers and binned PDFs.

* :func:`reliability_curve`: observed frequency of the event in bins of the
  predicted probability (the "true-positive rate in bins of predicted
  probability" of Bertin, seed 001); a calibrated predictor lies on the diagonal.
* :func:`expected_calibration_error`: ``ECE = sum_b (n_b / n) |acc_b - conf_b|``
  (Naeini et al. 2015; Guo et al. 2017), optionally with per-example weights
  (e.g. ``P(c) / P_test(c)`` to evaluate at another class mix).
* :func:`roc_per_class`: one-vs-rest ROC curves and AUCs from
  :func:`galjax.scores.metrics.roc_curve` / :func:`galjax.scores.metrics.auc`;
  :func:`threshold_at_fpr` the score threshold reaching a chosen false-positive rate.
* :func:`pit_histogram`, :func:`pit_uniformity`: histogram of probability integral
  transform values and Kolmogorov-Smirnov / chi^2 tests of their uniformity.

Multi-class probabilities ``(n, k)`` with integer labels are reduced to the
top-label event ("is the arg-max class right?" with confidence ``max_c p_c``);
binary problems take ``(n,)`` probabilities of the positive class and 0/1 labels.
Figures for each check live in :mod:`galjax.plot_calibration`.

>>> import jax.numpy as jnp
>>> round(float(expected_calibration_error(jnp.full(10, 0.3), jnp.array([1, 1, 1] + [0] * 7))), 6)
0.0
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from galjax.core.checks import as_float_array, check_probabilities, is_concrete
from galjax.scores.metrics import auc, roc_curve

__all__ = [
    "ReliabilityCurve",
    "reliability_curve",
    "expected_calibration_error",
    "roc_per_class",
    "threshold_at_fpr",
    "pit_histogram",
    "pit_uniformity",
]


class ReliabilityCurve(NamedTuple):
    """Output of :func:`reliability_curve` (one entry per probability bin).

    Attributes:
      edges: ``(n_bins + 1,)`` bin edges on ``[0, 1]``.
      confidence: ``(n_bins,)`` weighted mean predicted probability in each bin (NaN if empty).
      frequency: ``(n_bins,)`` weighted observed frequency of the event (NaN if empty).
      weight: ``(n_bins,)`` total weight (the count without weights) in each bin.
    """

    edges: jax.Array
    confidence: jax.Array
    frequency: jax.Array
    weight: jax.Array


_check_unit = check_probabilities


def _event(probs, labels):
    """Reduce to ``(confidence (n,), outcome (n,) float)``; see the module docstring."""
    p = as_float_array("probs", probs)
    _check_unit("probs", p)
    lab = jnp.asarray(labels)
    if p.ndim == 1:
        if lab.shape != p.shape:
            raise ValueError(
                f"labels: expected {p.shape[0]} labels (one per probability), got shape {lab.shape}"
            )
        if is_concrete(lab) and not np.all(np.isin(np.asarray(lab), (0, 1))):
            raise ValueError("labels: expected 0/1 labels for (n,) binary probabilities")
        return p, lab.astype(p.dtype)
    if p.ndim != 2:
        raise ValueError(f"probs: expected (n,) or (n, n_classes), got shape {p.shape}")
    if lab.shape != p.shape[:1]:
        raise ValueError(
            f"labels: expected {p.shape[0]} labels (one per row of probs), got shape {lab.shape}"
        )
    if is_concrete(lab):
        a = np.asarray(lab)
        if a.size and (a.min() < 0 or a.max() >= p.shape[1]):
            raise ValueError(
                f"labels: expected class indices in [0, {p.shape[1]}), got range "
                f"[{int(a.min())}, {int(a.max())}]"
            )
    conf = jnp.max(p, axis=1)
    hit = (jnp.argmax(p, axis=1) == lab.astype(jnp.int32)).astype(p.dtype)
    return conf, hit


def _weights(weights, conf):
    if weights is None:
        return jnp.ones_like(conf)
    w = as_float_array("weights", weights).astype(conf.dtype)
    if w.shape != conf.shape:
        raise ValueError(f"weights: expected shape {conf.shape}, got {w.shape}")
    if is_concrete(w) and (not np.all(np.isfinite(np.asarray(w))) or np.any(np.asarray(w) < 0)):
        raise ValueError("weights: expected finite non-negative weights")
    return w


def _check_n_bins(n_bins):
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer, got {n_bins!r}")
    return int(n_bins)


@functools.partial(jax.jit, static_argnames="n_bins")
def _binned(conf, hit, w, n_bins):
    # bin b holds conf in [b/B, (b+1)/B); conf == 1 goes to the last bin
    b = jnp.clip(jnp.floor(conf * n_bins).astype(jnp.int32), 0, n_bins - 1)
    sw = jax.ops.segment_sum(w, b, n_bins)
    sc = jax.ops.segment_sum(w * conf, b, n_bins)
    sh = jax.ops.segment_sum(w * hit, b, n_bins)
    return sw, sc, sh


def reliability_curve(probs, labels, n_bins: int = 10, weights=None) -> ReliabilityCurve:
    """Observed event frequency in equal-width bins of predicted probability.

    For bin ``b``: ``conf_b = sum_{i in b} w_i p_i / W_b``, ``freq_b = sum_{i in b}
    w_i y_i / W_b`` with ``W_b = sum_{i in b} w_i``.

    Args:
      probs: ``(n,)`` probabilities of the positive class, or ``(n, k)`` class
        probabilities (top-label reduction).
      labels: ``(n,)`` 0/1 labels, or class indices for ``(n, k)`` input.
      n_bins: number of equal-width bins on ``[0, 1]``.
      weights: optional ``(n,)`` non-negative per-example weights.

    Returns:
      :class:`ReliabilityCurve`. Works under ``jit`` (with ``n_bins`` static).

    >>> import jax.numpy as jnp
    >>> rc = reliability_curve(jnp.array([0.1, 0.1, 0.9, 0.9]), jnp.array([0, 0, 1, 0]), 2)
    >>> rc.frequency.tolist(), rc.weight.tolist()
    ([0.0, 0.5], [2.0, 2.0])
    """
    n_bins = _check_n_bins(n_bins)
    conf, hit = _event(probs, labels)
    w = _weights(weights, conf)
    sw, sc, sh = _binned(conf, hit, w, n_bins)
    safe = jnp.where(sw > 0, sw, 1)
    nan = jnp.full_like(sw, jnp.nan)
    edges = jnp.linspace(0.0, 1.0, n_bins + 1, dtype=conf.dtype)
    return ReliabilityCurve(
        edges, jnp.where(sw > 0, sc / safe, nan), jnp.where(sw > 0, sh / safe, nan), sw
    )


def expected_calibration_error(probs, labels, n_bins: int = 15, weights=None):
    """Expected calibration error ``ECE = sum_b (W_b / W) |freq_b - conf_b|``.

    Args:
      probs, labels, n_bins, weights: as :func:`reliability_curve`.

    Returns:
      Scalar in ``[0, 1]`` (0 for a perfectly calibrated predictor, up to bin
      sampling noise ~ ``sqrt(n_bins / n)`` for a finite sample).

    >>> import jax.numpy as jnp
    >>> round(float(expected_calibration_error(jnp.array([0.9, 0.9]), jnp.array([1, 1]), 10)), 6)
    0.1
    """
    n_bins = _check_n_bins(n_bins)
    conf, hit = _event(probs, labels)
    w = _weights(weights, conf)
    sw, sc, sh = _binned(conf, hit, w, n_bins)
    # |sum w (y - p)| per bin = W_b |freq_b - conf_b|; empty bins contribute 0
    return jnp.sum(jnp.abs(sh - sc)) / jnp.sum(sw)


def roc_per_class(probs, labels, class_names=None):
    """One-vs-rest ROC curve and AUC for every class.

    Args:
      probs: ``(n, k)`` class probabilities (or any per-class scores).
      labels: ``(n,)`` class indices; every class must occur and not be alone.
      class_names: optional ``k`` names (default ``"0"``, ``"1"``...).

    Returns:
      dict ``name -> {"fpr", "tpr", "thresholds", "auc"}`` (numpy arrays, float AUC).

    >>> import numpy as np
    >>> r = roc_per_class(np.eye(3), [0, 1, 2])
    >>> [round(v["auc"], 3) for v in r.values()]
    [1.0, 1.0, 1.0]
    """
    p = np.asarray(as_float_array("probs", probs))
    if p.ndim != 2:
        raise ValueError(f"probs: expected (n, n_classes), got shape {p.shape}")
    lab = np.asarray(labels)
    if lab.shape != p.shape[:1]:
        raise ValueError(f"labels: expected {p.shape[0]} labels, got shape {lab.shape}")
    k = p.shape[1]
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names: expected {k} names (one per class), got {len(names)}")
    out = {}
    for c, name in enumerate(names):
        y = (lab == c).astype(np.int32)
        if y.sum() in (0, y.size):
            raise ValueError(
                f"labels: class {c} ({name!r}) needs positives and negatives for a ROC curve, "
                f"got {int(y.sum())} of {y.size}"
            )
        fpr, tpr, thr = roc_curve(p[:, c], y)
        out[name] = {
            "fpr": np.asarray(fpr),
            "tpr": np.asarray(tpr),
            "thresholds": np.asarray(thr),
            "auc": float(auc(p[:, c], y)),
        }
    return out


def threshold_at_fpr(scores, labels, fpr: float):
    """Lowest score threshold whose false-positive rate does not exceed ``fpr``.

    Classify ``s >= t`` as positive. Among the ROC thresholds
    (:func:`galjax.scores.metrics.roc_curve`) with ``FPR(t) <= fpr`` this returns the one
    with the largest true-positive rate.

    Args:
      scores: ``(n,)`` scores (higher = more positive).
      labels: ``(n,)`` 0/1 labels with both classes present.
      fpr: target false-positive rate in ``[0, 1]``.

    Returns:
      ``(threshold, achieved_fpr, tpr)`` as Python floats (threshold may be
      ``inf`` when no finite threshold is strict enough).

    >>> import numpy as np
    >>> t, f, tpr = threshold_at_fpr(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), 0.0)
    >>> round(t, 6), f, tpr
    (0.8, 0.0, 0.5)
    """
    if not 0.0 <= float(fpr) <= 1.0:
        raise ValueError(f"fpr: expected a false-positive rate in [0, 1], got {fpr}")
    f, t, thr = (np.asarray(a) for a in roc_curve(scores, labels))
    ok = np.flatnonzero(f <= fpr)
    i = ok[np.argmax(t[ok] + 1e-12 * np.arange(ok.size))]  # largest TPR, then lowest threshold
    return float(thr[i]), float(f[i]), float(t[i])


def pit_histogram(pit, n_bins: int = 20):
    """Histogram of PIT values on ``[0, 1]`` normalised as a density.

    Args:
      pit: ``(n,)`` values in ``[0, 1]`` (:func:`galjax.scores.pdf.pit_values`).
      n_bins: number of equal bins.

    Returns:
      ``(density (n_bins,), edges (n_bins + 1,))`` numpy arrays; a uniform PIT
      gives density ~1 in every bin.
    """
    n_bins = _check_n_bins(n_bins)
    a = np.asarray(as_float_array("pit", pit), np.float64).ravel()
    _check_unit("pit", a)
    if a.size == 0:
        raise ValueError("pit: expected at least one value")
    counts, edges = np.histogram(a, bins=n_bins, range=(0.0, 1.0))
    return counts * n_bins / a.size, edges


def pit_uniformity(pit, n_bins: int = 20) -> dict:
    """Tests of ``PIT ~ U(0, 1)``: Kolmogorov-Smirnov and chi^2 on the histogram.

    Args:
      pit: ``(n,)`` PIT values in ``[0, 1]``.
      n_bins: bins of the chi^2 test.

    Returns:
      dict with ``ks_statistic``, ``ks_pvalue``, ``chi2``, ``chi2_dof``,
      ``chi2_pvalue`` and ``n``.
    """
    n_bins = _check_n_bins(n_bins)
    a = np.asarray(as_float_array("pit", pit), np.float64).ravel()
    _check_unit("pit", a)
    if a.size < 2:
        raise ValueError(f"pit: expected at least 2 values, got {a.size}")
    ks = stats.kstest(a, "uniform")
    counts, _ = np.histogram(a, bins=n_bins, range=(0.0, 1.0))
    chi = stats.chisquare(counts)
    return {
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "chi2": float(chi.statistic),
        "chi2_dof": n_bins - 1,
        "chi2_pvalue": float(chi.pvalue),
        "n": int(a.size),
    }
