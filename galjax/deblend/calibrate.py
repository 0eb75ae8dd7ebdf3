"""Calibration of the deblender's flux errors on simulations.

:func:`calibrate_flux_errors` (what ``galjax train calibrate`` runs) deblends
simulated blends, tabulates the flux noise bias against the measured SNR and finds
the fractional model error that gives the Laplace flux errors their nominal
coverage (:func:`calibrate_model_error`). The calibrated values go into the model's
metadata (``flux_bias``, ``flux_model_error``), which :func:`~galjax.deblend.deblend`
and :func:`~galjax.deblend.laplace_flux_errors` read.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np

from galjax.deblend.batching import deblend
from galjax.deblend.config import FAILED, DeblendConfig
from galjax.deblend.laplace import laplace_flux_errors
from galjax.deblend.photometry import debias_fluxes, fit_flux_bias, model_snr
from galjax.models.store import GalaxyModel
from galjax.sim.blend import simulate_fields
from galjax.sim.noise import noise_variance
from galjax.sim.survey import Survey

__all__ = ["calibrate_model_error", "calibrate_flux_errors"]


def calibrate_model_error(flux, flux_err, true_flux, coverage: float = 0.6827) -> float:
    """Fractional model error that gives 1-sigma intervals the nominal coverage.

    Finds the smallest ``s >= 0`` such that a fraction ``coverage`` of the sources
    has ``|flux - true_flux| <= sqrt(flux_err^2 + (s * flux)^2)`` (bisection: the
    coverage grows with ``s``). Calibrate on simulations that are not the ones you
    then check the coverage on. Host-side numpy.

    >>> round(calibrate_model_error([1.1, 0.9, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 0.9), 3)
    0.111

    Args:
      flux, flux_err, true_flux: 1-d arrays over sources (one band); ``flux_err``
        the statistical error alone (``model_error=0``).
      coverage: target fraction inside the interval, in (0, 1); default 0.6827
        (1 sigma).

    Returns:
      ``s`` (0 if the statistical errors already cover enough).
    """
    flux, flux_err, true_flux = (
        np.asarray(a, np.float64).ravel() for a in (flux, flux_err, true_flux)
    )
    if not (flux.shape == flux_err.shape == true_flux.shape) or flux.size == 0:
        raise ValueError("flux, flux_err, true_flux: expected non-empty arrays of the same length")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage: expected a fraction in (0, 1), got {coverage}")
    ok = np.isfinite(flux) & np.isfinite(flux_err) & np.isfinite(true_flux)
    flux, flux_err, true_flux = flux[ok], flux_err[ok], true_flux[ok]
    dev = np.abs(flux - true_flux)

    def cov_at(s):
        return np.mean(dev <= np.sqrt(flux_err**2 + (s * flux) ** 2))

    if cov_at(0.0) >= coverage:
        return 0.0
    lo, hi = 0.0, 1.0
    while cov_at(hi) < coverage and hi < 1e3:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cov_at(mid) >= coverage else (mid, hi)
    return float(hi)


def calibrate_flux_errors(key, model: GalaxyModel, survey: Survey, n_fields: int = 256,
                          config: DeblendConfig | None = None, snr_min: float = 10.0,
                          progress: bool = True) -> dict:  # fmt: skip
    """Calibrate the flux noise bias and the Laplace model error on simulations.

    Simulates ``n_fields`` blended fields of ``survey`` (1-4 galaxies) and deblends
    them without debiasing. Then:

    1. tabulates the noise bias ``<dF/F>`` against each source's measured SNR
       (:func:`~galjax.deblend.photometry.fit_flux_bias`, all sources and bands) and divides
       it out (:func:`~galjax.deblend.photometry.debias_fluxes`);
    2. finds with :func:`calibrate_model_error` the fractional error
       that, added in quadrature to the statistical Laplace error of the debiased
       fluxes, puts the true flux of 68.3 % of the galaxies with ``SNR >= snr_min``
       (all bands) inside the 1-sigma interval.

    Use fields the results are not checked on.

    Args:
      key: PRNG key of the simulation.
      model: the :class:`~galjax.models.GalaxyModel` to calibrate.
      survey: the :class:`~galjax.sim.Survey` simulated (the model's).
      n_fields: simulated fields, >= 1; default 256.
      config: :class:`~galjax.deblend.DeblendConfig` of the deblending (default
        ``DeblendConfig()``), run with ``debias=False``.
      snr_min: galaxies with a true SNR >= ``snr_min`` set the model error; default 10.
      progress: show progress bars.

    Returns:
      dict with ``flux_bias`` (the bias table, or None when too few sources are
      within 50 % of their true flux to tabulate it; for
      ``model.meta["flux_bias"]``), ``flux_model_error``, ``coverage_statistical``
      (coverage with no model error), the mean signed ``dF/F`` before and after the
      bias correction, ``n_galaxies``, ``n_fields``, ``snr_min`` and the deblend config.
    """
    cfg = dataclasses.replace(config or DeblendConfig(), debias=False)
    truth = simulate_fields(key, n_fields, survey, n_max=4, progress=progress)
    sigma = np.sqrt(noise_variance(truth.image, np.asarray(survey.sky_sigma), survey.gain))
    ivar = 1.0 / sigma**2
    psf = survey.pixel_psf() if model.vae_config.psf_explicit else None
    res = deblend(model, truth.image, truth.positions, truth.mask, sigma=sigma, psf=psf,
                  config=cfg, progress=progress)  # fmt: skip
    true_flux = truth.sources.sum(axis=(2, 3))
    fitted = (np.asarray(res.status) & int(FAILED)) == 0  # flagged fields: NaN fluxes
    real = truth.mask & (true_flux[..., 0] > 0) & fitted[:, None]
    snr = np.asarray(model_snr(res.models, ivar))
    dflux = (res.fluxes - true_flux)[real] / true_flux[real]
    try:
        table = fit_flux_bias(snr[real], dflux)
    except ValueError as exc:  # e.g. an untrained model: nearly every flux is far off
        warnings.warn(f"flux bias not calibrated: {exc}", stacklevel=2)
        table = None
    if table is not None:
        res = jax.tree.map(np.asarray, debias_fluxes(res, ivar, table))
    err = laplace_flux_errors(model, res, truth.positions, ivar, psf, model_error=0.0)
    sel = truth.mask & (truth.snr >= snr_min) & fitted[:, None]
    flux, err, tf = np.asarray(res.fluxes)[sel], err[sel], true_flux[sel]
    if flux.size == 0:
        raise ValueError(f"n_fields: no galaxy with SNR >= {snr_min} in {n_fields} fields")
    s = calibrate_model_error(flux, err, tf)
    debiased = (res.fluxes - true_flux)[real] / true_flux[real]
    near = np.abs(dflux) <= 0.5
    return {
        "flux_bias": table,
        "flux_model_error": s,
        "coverage_statistical": float(np.mean(np.abs(flux - tf) <= err)),
        # Mean signed dF/F of the sources within 50 % of their true flux.
        "mean_dflux_raw": float(np.mean(dflux[near])) if near.any() else None,
        "mean_dflux_debiased": float(np.mean(debiased[near])) if near.any() else None,
        "n_galaxies": int(sel.sum()),
        "n_fields": n_fields,
        "snr_min": snr_min,
        "deblend_config": dataclasses.replace(cfg, debias=True).to_dict(),
    }
