"""Figures (the top layer beside :mod:`galjax.cli`): every matplotlib call in galjax lives here.

- :mod:`galjax.plot.figure`: figure creation and atomic saving.
- :mod:`galjax.plot.images`: image grids, field/model/residual panels, VAE figures.
- :mod:`galjax.plot.calibration`: reliability diagram, ROC curves, PIT histogram.
"""

from galjax.plot import calibration, figure, images
from galjax.plot.calibration import pit_figure, reliability_diagram, roc_curves
from galjax.plot.figure import new_figure, save_figure
from galjax.plot.images import (
    field_panels,
    image_grid,
    latent_embedding,
    latent_traversal,
    reconstructions,
)

__all__ = [
    "calibration", "figure", "images",
    "pit_figure", "reliability_diagram", "roc_curves", "new_figure", "save_figure",
    "field_panels", "image_grid", "latent_embedding", "latent_traversal", "reconstructions",
]  # fmt: skip
