"""Scores on arrays (no models; rank 3, above :mod:`galjax.sim`).

- :mod:`galjax.scores.metrics`: MSE, SSIM, flux errors, aperture fluxes, chi^2, bits/dim, ROC/AUC.
- :mod:`galjax.scores.calibration`: reliability curves, ECE, per-class ROC, PIT tests.
- :mod:`galjax.scores.classification`: accuracy, class priors and their correction.
- :mod:`galjax.scores.pdf`: binned redshift-like PDFs: CDF, PIT values, sigma_MAD, outliers.
- :mod:`galjax.scores.histograms`: pixel-statistics histograms and RMAE (GAN selection).
- :mod:`galjax.scores.truth`: deblending results against the simulated truth.
"""

from galjax.scores import calibration, classification, histograms, metrics, pdf, truth
from galjax.scores.calibration import *  # noqa: F403
from galjax.scores.classification import *  # noqa: F403
from galjax.scores.histograms import *  # noqa: F403
from galjax.scores.metrics import *  # noqa: F403
from galjax.scores.pdf import *  # noqa: F403
from galjax.scores.truth import *  # noqa: F403

__all__ = [
    "calibration", "classification", "histograms", "metrics", "pdf", "truth",
    *calibration.__all__, *classification.__all__, *histograms.__all__, *metrics.__all__,
    *pdf.__all__, *truth.__all__,
]  # fmt: skip
