"""Figures for calibration checks: reliability diagram, ROC curves per class, PIT histogram.

Like :mod:`galjax.plot`, figures are ``matplotlib.figure.Figure`` objects with an
Agg canvas (no ``pyplot`` state); pass ``path`` to save them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from galjax.plot.figure import new_figure, save_figure
from galjax.scores.calibration import ReliabilityCurve, pit_histogram, pit_uniformity

__all__ = ["reliability_diagram", "roc_curves", "pit_figure"]


def reliability_diagram(
    curves: ReliabilityCurve | Mapping[str, ReliabilityCurve], path=None, title: str | None = None
) -> Figure:
    """Observed frequency against predicted probability, with the diagonal and bin counts.

    Args:
      curves: one :class:`~galjax.scores.calibration.ReliabilityCurve` or a dict
        ``label -> curve`` (e.g. ``{"before": ..., "after prior correction": ...}``).
      path: optional file to save to.
      title: optional title.

    Returns:
      The figure (two axes: reliability on top, bin weights below).

    >>> import jax.numpy as jnp
    >>> from galjax.scores.calibration import reliability_curve
    >>> fig = reliability_diagram(reliability_curve(jnp.array([0.2, 0.8]), jnp.array([0, 1]), 5))
    >>> len(fig.axes)
    2
    """
    if isinstance(curves, ReliabilityCurve):
        curves = {"model": curves}
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError("curves: expected a ReliabilityCurve or a non-empty dict of them")
    fig = new_figure(4.2, 4.8)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="calibrated")
    for i, (name, rc) in enumerate(curves.items()):
        edges = np.asarray(rc.edges)
        ok = np.asarray(rc.weight) > 0
        top.plot(np.asarray(rc.confidence)[ok], np.asarray(rc.frequency)[ok], "o-", label=name)
        width = (edges[1] - edges[0]) / (len(curves) + 1)
        bottom.bar(edges[:-1] + (i + 0.5) * width, np.asarray(rc.weight), width=width, align="edge")
    top.set_ylabel("observed frequency")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=7, loc="upper left")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("weight")
    if title:
        top.set_title(title, fontsize=9)
    save_figure(fig, path)
    return fig


def roc_curves(rocs: Mapping[str, Mapping], path=None, title: str | None = None) -> Figure:
    """ROC curves of several classes on one axis, AUC in the legend.

    Args:
      rocs: ``name -> {"fpr", "tpr", "auc"}`` as returned by
        :func:`galjax.scores.calibration.roc_per_class`.
      path: optional file to save to.
      title: optional title.
    """
    if not isinstance(rocs, Mapping) or not rocs:
        raise TypeError("rocs: expected a non-empty dict name -> {'fpr', 'tpr', 'auc'}")
    fig = new_figure(4.2, 4.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    for name, r in rocs.items():
        ax.plot(np.asarray(r["fpr"]), np.asarray(r["tpr"]), label=f"{name} (AUC {r['auc']:.3f})")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)
    return fig


def pit_figure(pit, n_bins: int = 20, path=None, title: str | None = None) -> Figure:
    """PIT histogram (density) with the uniform level and the KS statistic.

    Args:
      pit: ``(n,)`` PIT values in ``[0, 1]`` or a dict ``label -> values``.
      n_bins: histogram bins.
      path: optional file to save to.
      title: optional title.
    """
    sets = pit if isinstance(pit, Mapping) else {"PIT": pit}
    fig = new_figure(4.2, 3.2)
    ax = fig.subplots()
    for name, values in sets.items():
        dens, edges = pit_histogram(values, n_bins)
        ks = pit_uniformity(values, n_bins)
        ax.stairs(dens, edges, label=f"{name} (KS {ks['ks_statistic']:.3f})")
    ax.axhline(1.0, color="0.6", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)
    return fig
