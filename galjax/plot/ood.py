"""Figures for out-of-distribution scores: per-pixel likelihood-ratio panels.

Figures are ``matplotlib.figure.Figure`` objects with an Agg canvas (no ``pyplot``
state); pass ``path`` to save them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from galjax.core.checks import check_image
from galjax.plot.figure import new_figure, save_figure

__all__ = ["llr_figure"]


def llr_figure(
    image,
    logp_a,
    logp_b,
    path=None,
    titles=("image", "log p (model a)", "log p (model b)", "LLR"),
    band: int = 0,
) -> Figure:
    """Per-pixel LLR panels: the image, both log-likelihood maps and their difference.

    The last panel is ``LLR = log p_a - log p_b`` per pixel
    (:func:`galjax.ood.llr_map`) on a diverging colour map centred on 0; the two
    log-likelihood maps share the colour range of their 1st-99th percentiles.

    Args:
      image: ``(h, w, bands)`` image.
      logp_a, logp_b: ``(h, w)`` per-pixel log-likelihoods in nats
        (:func:`galjax.models.pixelcnn.log_prob_map`).
      path: file to save to (format from the extension), or None.
      titles: four panel titles.
      band: band shown in the image panel (default 0).

    Returns:
      The figure: four panels and their colour bars (eight axes).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> fig = llr_figure(rng.normal(size=(8, 8, 1)), rng.normal(size=(8, 8)), np.zeros((8, 8)))
    >>> len(fig.axes)
    8
    """
    img = np.asarray(check_image("image", image))
    if img.ndim != 3:
        raise ValueError(f"image: expected (h, w, bands), got shape {img.shape}")
    a, b = np.asarray(logp_a), np.asarray(logp_b)
    if a.shape != img.shape[:2] or b.shape != img.shape[:2]:
        raise ValueError(
            f"logp_a, logp_b: expected maps of shape {img.shape[:2]}, got {a.shape} and {b.shape}"
        )
    d = a - b
    fig = new_figure(10, 2.8)
    axes = fig.subplots(1, 4)
    lo, hi = np.percentile(np.concatenate([a.ravel(), b.ravel()]), [1, 99])
    lim = max(float(np.max(np.abs(d))), 1e-6)
    panels = [
        (img[..., band], "gray", None),
        (a, "viridis", dict(vmin=lo, vmax=hi)),
        (b, "viridis", dict(vmin=lo, vmax=hi)),
        (d, "RdBu_r", dict(norm=TwoSlopeNorm(0.0, -lim, lim))),
    ]
    for ax, (data, cmap, kw), title in zip(axes, panels, titles, strict=True):
        im = ax.imshow(data, cmap=cmap, origin="lower", **(kw or {}))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    save_figure(fig, path, dpi=120)
    return fig
