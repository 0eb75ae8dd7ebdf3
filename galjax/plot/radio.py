"""Figures of the radio-galaxy WGAN study (:mod:`galjax.experiments.radio`).

:func:`plot_pairs` shows generated images above their closest real images (from
:func:`galjax.experiments.radio.best_matching_pairs`); :func:`plot_class_histograms`
the three normalised histograms of the checkpoint selection
(:mod:`galjax.scores.histograms`), real against generated, one row per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from galjax.core.checks import check_labels
from galjax.experiments.radio import Pairs, align_principal_axes
from galjax.io.radio import CLASS_NAMES, check_classes_present, check_gan_images
from galjax.plot.figure import new_figure, save_figure
from galjax.plot.images import image_grid
from galjax.scores.histograms import (
    HistogramConfig,
    Histograms,
    histogram_edges,
    histogram_rmae,
    image_histograms,
)

__all__ = ["plot_pairs", "plot_class_histograms"]


def plot_pairs(real, fake, pairs: Pairs, path=None, title: str = "", align: bool = True):
    """Figure: generated images (top row) above their closest real images (bottom row).

    Args:
      real, fake: ``(n, h, w, 1)`` real and generated images in [-1, 1].
      pairs: :class:`galjax.experiments.radio.Pairs` indexing them.
      path: file to save to, or None.
      title: prefix of the panel titles (e.g. the class name).
      align: rotate every image to its principal axis first (as the pairs were found).

    Returns:
      The ``matplotlib.figure.Figure``.
    """
    r = check_gan_images("real", real)
    f = check_gan_images("fake", fake, r.shape[1])
    if align:
        r, f = align_principal_axes(r), align_principal_axes(f)
    m = len(pairs.distance)
    if m == 0:
        raise ValueError("pairs: expected at least one pair")
    panels = np.concatenate([f[pairs.fake_index], r[pairs.real_index]]) + 1.0
    titles = [f"{title} gen d={d:.2g}" for d in pairs.distance] + [f"{title} real"] * m
    return image_grid(panels, ncols=m, titles=titles, path=path, percentile=100.0)


def plot_class_histograms(
    real_images,
    real_labels,
    fake_images,
    fake_labels,
    class_names: Sequence[str] = CLASS_NAMES,
    config: HistogramConfig = HistogramConfig(),
    path=None,
):
    """Figure: the three normalised histograms, real against generated, one row per class.

    Args:
      real_images, real_labels: ``(n, h, w, 1)`` in [-1, 1] and ``(n,)`` classes.
      fake_images, fake_labels: the generated images and their classes.
      class_names: names in label order (every class present in both sets).
      config: :class:`galjax.scores.histograms.HistogramConfig`.
      path: file to save to, or None.

    Returns:
      The ``matplotlib.figure.Figure`` (saved to ``path`` when given).
    """
    real = check_gan_images("real_images", real_images)
    fake = check_gan_images("fake_images", fake_images, real.shape[1])
    k = len(class_names)
    yr = check_labels("real_labels", real_labels, k, real.shape[0])
    yf = check_labels("fake_labels", fake_labels, k, fake.shape[0])
    check_classes_present(yr, k, "real_labels")
    check_classes_present(yf, k, "fake_labels")
    fig = new_figure(10, 2.2 * k)
    axes = fig.subplots(k, 3, squeeze=False)
    titles = ("pixel intensity (> threshold)", "pixels above threshold", "summed intensity")
    for c in range(k):
        edges = histogram_edges(real[yr == c], config)
        hr = image_histograms(real[yr == c], edges, config.threshold)
        hf = image_histograms(fake[yf == c], edges, config.threshold)
        r = histogram_rmae(hr, hf)
        for j, part in enumerate(Histograms._fields):
            ax = axes[c, j]
            e = getattr(edges, part)
            ax.stairs(getattr(hr, part), e, label="real")
            ax.stairs(getattr(hf, part), e, label="generated")
            ax.set_title(f"{class_names[c]}: {titles[j]}, RMAE {r[part]:.2f}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, path, dpi=100)
    return fig
