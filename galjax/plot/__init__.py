"""Figures (the top layer beside :mod:`galjax.cli`): every matplotlib call in galjax lives here.

- :mod:`galjax.plot.figure`: figure creation and atomic saving.
- :mod:`galjax.plot.images`: image grids, field/model/residual panels, VAE figures.
- :mod:`galjax.plot.calibration`: reliability diagram, ROC curves, PIT histogram.
- :mod:`galjax.plot.ood`: per-pixel likelihood-ratio panels.
- :mod:`galjax.plot.radio`: best-matching real/generated pairs, per-class histograms.
"""

from galjax.plot import calibration, figure, images, ood, radio
from galjax.plot.calibration import pit_figure, reliability_diagram, roc_curves
from galjax.plot.figure import new_figure, save_figure
from galjax.plot.images import (
    field_panels,
    image_grid,
    latent_embedding,
    latent_traversal,
    reconstructions,
)
from galjax.plot.ood import llr_figure
from galjax.plot.radio import plot_class_histograms, plot_pairs

__all__ = [
    "calibration", "figure", "images", "ood", "radio", "llr_figure", "plot_class_histograms",
    "plot_pairs",
    "pit_figure", "reliability_diagram", "roc_curves", "new_figure", "save_figure",
    "field_panels", "image_grid", "latent_embedding", "latent_traversal", "reconstructions",
]  # fmt: skip
