"""Image operations on arrays (no models): stretches, normalisation, crops, rotations,
resampling, smearing, pixel perturbation (:mod:`galjax.image.transforms`)."""

from galjax.image import transforms
from galjax.image.transforms import *  # noqa: F403
from galjax.image.transforms import __all__ as _transforms_all

__all__ = ["transforms", *_transforms_all]
