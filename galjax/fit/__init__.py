"""Parametric fits: the classical measurements the deblender and the models are judged by.

- :mod:`galjax.fit.gaussian`: one bivariate Gaussian per image (Regier et al.'s
  baseline), :func:`gaussian_best_sigma_loglik`.
- :mod:`galjax.fit.scene`: one Sersic or Gaussian per source, fitted jointly
  (a parametric deblender).
- :mod:`galjax.fit.segmentation`: no deblending, fluxes summed over segments.
- :mod:`galjax.fit.sersic`: one Sersic per image over a batch (the archetypes of
  :mod:`galjax.ood`).
- :mod:`galjax.fit.common`: checks, linear flux solve, optimiser, reparametrisations.

All fits are pure functions that work under ``jit`` and ``vmap``; the nonlinear
parameters move by optax steps through :func:`galjax.core.optim.minimise`.
"""

from galjax.fit import common, gaussian, scene, segmentation, sersic
from galjax.fit.gaussian import (
    GAUSSIAN_RENDER,
    GaussianFit,
    GaussianParams,
    fit_gaussian,
    gaussian_best_sigma_loglik,
    render_gaussian,
)
from galjax.fit.scene import SCENE_N_RANGE, SCENE_RENDER, SceneFit, SourceParams, fit_scene
from galjax.fit.segmentation import Segmentation, segmentation_fluxes
from galjax.fit.sersic import (
    FIT_RENDER,
    FitConfig,
    SersicFit,
    fit_sersic,
    moment_guess,
    render_archetypes,
)

__all__ = [
    "common",
    "gaussian",
    "scene",
    "segmentation",
    "sersic",
    "GAUSSIAN_RENDER",
    "GaussianFit",
    "GaussianParams",
    "fit_gaussian",
    "gaussian_best_sigma_loglik",
    "render_gaussian",
    "SCENE_N_RANGE",
    "SCENE_RENDER",
    "SceneFit",
    "SourceParams",
    "fit_scene",
    "Segmentation",
    "segmentation_fluxes",
    "FIT_RENDER",
    "FitConfig",
    "SersicFit",
    "fit_sersic",
    "moment_guess",
    "render_archetypes",
]
