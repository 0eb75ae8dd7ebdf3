"""MAP deblending of many blended fields at once in the latent space of a galaxy VAE.

Biswas et al. (MADNESS): with a decoder ``f`` and a flow prior ``p(z)``, the
sources of a field ``y`` are

    Z* = argmin_Z  1/2 sum_pixels w (y - sum_i place(f(z_i), x_i))^2 - sum_i lambda_i log p(z_i),

``w = 1 / sigma^2`` the inverse variance (0 on masked pixels), ``place`` puts a
decoded stamp at the source position ``x_i`` with a sub-pixel Fourier shift,
``lambda_i`` the source's prior weight. The posterior around the MAP is
approximated by a Laplace (Gauss-Newton) Gaussian in latent space, giving flux
uncertainties and posterior samples of each source's image.

Modules, in the order they build on each other:

- :mod:`~galjax.deblend.config`: :class:`DeblendConfig`, :class:`DeblendResult`,
  :class:`DeblendStatus` (each field's flags; :func:`status_text`).
- :mod:`~galjax.deblend.inputs`: input checks, pixel masking, noise normalisation.
- :mod:`~galjax.deblend.render`: drawing decoded galaxies and point sources in a field.
- :mod:`~galjax.deblend.point`: point sources (stars): start values, the point-source test.
- :mod:`~galjax.deblend.objective`: the MAP objective, prior weights, the flux refit.
- :mod:`~galjax.deblend.solve`: one field (:func:`deblend_field`), one compiled chunk.
- :mod:`~galjax.deblend.photometry`: matched-filter SNR, the noise-bias correction.
- :mod:`~galjax.deblend.batching`: :func:`deblend` over many fields, :func:`pad_fields`.
- :mod:`~galjax.deblend.laplace`: :func:`laplace`, :func:`laplace_flux_errors`.
- :mod:`~galjax.deblend.calibrate`: the flux errors' calibration on simulations.

Evaluation against the truth of simulations is in :mod:`galjax.scores.truth`.
"""

from galjax.deblend.batching import deblend, pad_fields
from galjax.deblend.calibrate import calibrate_flux_errors, calibrate_model_error
from galjax.deblend.config import DeblendConfig, DeblendResult, DeblendStatus, status_text
from galjax.deblend.laplace import LaplaceResult, laplace, laplace_flux_errors
from galjax.deblend.objective import refit_amplitudes
from galjax.deblend.photometry import debias_fluxes, fit_flux_bias, flux_bias, model_snr
from galjax.deblend.point import point_latents, point_source_test, point_source_tests
from galjax.deblend.render import point_stamps, render_sources, shift_stamp
from galjax.deblend.solve import deblend_field

__all__ = [
    "DeblendConfig",
    "DeblendResult",
    "DeblendStatus",
    "status_text",
    "LaplaceResult",
    "deblend",
    "deblend_field",
    "render_sources",
    "point_stamps",
    "point_latents",
    "point_source_test",
    "point_source_tests",
    "shift_stamp",
    "laplace",
    "laplace_flux_errors",
    "calibrate_model_error",
    "calibrate_flux_errors",
    "pad_fields",
    "refit_amplitudes",
    "model_snr",
    "flux_bias",
    "fit_flux_bias",
    "debias_fluxes",
]
