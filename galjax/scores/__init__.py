"""Scores on arrays (no models): image metrics (:mod:`galjax.scores.metrics`) and
probability calibration (:mod:`galjax.scores.calibration`)."""

from galjax.scores import calibration, metrics
from galjax.scores.calibration import *  # noqa: F403
from galjax.scores.calibration import __all__ as _calibration_all
from galjax.scores.metrics import *  # noqa: F403
from galjax.scores.metrics import __all__ as _metrics_all

__all__ = ["calibration", "metrics", *_calibration_all, *_metrics_all]
