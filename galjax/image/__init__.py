"""Image operations on arrays (no models): stretches, normalisation, crops, rotations,
resampling, smearing, pixel perturbation (:mod:`galjax.image.transforms`); sky
background and noise estimation (:mod:`galjax.image.background`)."""

from galjax.image import background, transforms
from galjax.image.background import *  # noqa: F403
from galjax.image.background import __all__ as _background_all
from galjax.image.transforms import *  # noqa: F403
from galjax.image.transforms import __all__ as _transforms_all

__all__ = ["background", "transforms", *_background_all, *_transforms_all]
