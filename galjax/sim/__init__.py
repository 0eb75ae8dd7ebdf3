"""Differentiable galaxy simulator: profiles, PSFs, galaxies, noise, blended fields.

Pure JAX throughout: every function works under ``jit``, ``vmap`` and ``grad``.
"""

from .blend import (
    Field,
    place_stamp,
    sample_positions,
    simulate_field,
    simulate_fields,
    simulate_stamp,
)
from .contaminants import MASK_CLASSES, InjectionConfig, inject_contaminants
from .galaxy import (
    GalaxyParams,
    RenderConfig,
    galaxy_sb,
    half_light_ellipse,
    render,
    render_galaxy,
    render_sersic,
    smooth_twin,
    validate_galaxy_params,
)
from .mosaic import DEFAULT_DENSITY, Mosaic, mosaic_count, simulate_mosaic, write_mosaic
from .noise import add_background, add_noise, noise_variance
from .profiles import (
    SERSIC_N_RANGE,
    e_from_q_beta,
    elliptical_radius2,
    gaussian_sb,
    pixel_grid,
    pixelate,
    q_beta_from_e,
    sersic_bn,
    sersic_sb,
)
from .psf import convolve_fft, fft_size, gaussian_psf, moffat_alpha, moffat_psf, moffat_sb
from .survey import HSC, HST_F814W, LSST, LSST_R, SDSS_R, SURVEYS, Survey, sample_galaxy

__all__ = [
    "Field", "place_stamp", "sample_positions", "simulate_field", "simulate_fields",
    "simulate_stamp", "GalaxyParams", "RenderConfig", "galaxy_sb", "render", "render_galaxy",
    "render_sersic", "half_light_ellipse", "smooth_twin", "validate_galaxy_params", "add_noise",
    "noise_variance", "add_background", "MASK_CLASSES", "InjectionConfig", "inject_contaminants",
    "SERSIC_N_RANGE", "e_from_q_beta", "elliptical_radius2", "gaussian_sb", "pixel_grid",
    "pixelate", "q_beta_from_e", "sersic_bn", "sersic_sb", "convolve_fft", "fft_size",
    "gaussian_psf", "moffat_alpha", "moffat_psf", "moffat_sb", "HSC", "HST_F814W", "LSST",
    "LSST_R", "SDSS_R", "SURVEYS", "Survey", "sample_galaxy", "Mosaic", "DEFAULT_DENSITY",
    "mosaic_count", "simulate_mosaic", "write_mosaic",
]  # fmt: skip
