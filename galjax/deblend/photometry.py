"""Photometry of deblended sources: matched-filter SNR and the calibrated noise-bias
correction of the fluxes.

Shape-fitting photometry is biased at low SNR: the fitted shape follows the noise,
and a flux measured with it inherits the correlation. The bias ``b(s) = <dF/F>`` is
tabulated against the measured SNR ``s`` on simulations (:func:`fit_flux_bias`,
``galjax train calibrate``) and divided out (:func:`debias_fluxes`); its effect is
in ``benchmarks/README.md`` (section "Deblending quality", "Noise-bias correction").
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from galjax.deblend.config import DeblendResult, blank_failed
from galjax.scores.metrics import chi2_per_pixel

__all__ = ["model_snr", "flux_bias", "fit_flux_bias", "debias_fluxes"]


def model_snr(models, ivar):
    """Matched-filter SNR of each source model per band, ``s_ib = sqrt(sum_p w_p m_ip^2)``.

    The SNR of the model's flux when only its amplitude is free (the inverse of the
    amplitude-only fractional error). Measured, so usable on real data.

    Args:
      models: ``(..., n_max, h, w, bands)`` source models.
      ivar: ``(..., h, w, bands)`` inverse variance ``w_p``.

    Returns:
      ``(..., n_max, bands)``.
    """
    return jnp.sqrt(jnp.sum(models**2 * ivar[..., None, :, :, :], axis=(-3, -2)))


def flux_bias(snr, table):
    """Fractional flux bias at measured SNR ``s``: the calibration table interpolated.

    Linear in ``log s`` between the table's nodes and constant beyond the end ones.

    Args:
      snr: measured SNR (:func:`model_snr`), any shape.
      table: ``{"snr": [...], "bias": [...]}`` from :func:`fit_flux_bias`.

    Returns:
      ``b(s)``, the shape of ``snr``.

    >>> table = {"snr": [10.0, 1000.0], "bias": [0.1, 0.0]}
    >>> round(float(flux_bias(100.0, table)), 4)
    0.05
    """
    x = jnp.log(jnp.maximum(jnp.asarray(snr), 1e-3))
    return jnp.interp(x, jnp.log(jnp.asarray(table["snr"])), jnp.asarray(table["bias"]))


def fit_flux_bias(snr, dflux, n_bins: int | None = None, clip: float = 0.5) -> dict:
    """Tabulate the noise bias ``<dF/F>`` against the measured SNR (numpy).

    Shape-fitting photometry is biased at low SNR: the fitted shape follows the
    noise, and a flux measured with it inherits the correlation. This bins simulated
    sources with known fluxes by their measured SNR ``s`` (:func:`model_snr`) into
    ``n_bins`` equally populated bins and records the mean ``dF/F`` of each (sources
    with ``|dF/F| > clip``, blending failures rather than noise bias, left out);
    :func:`debias_fluxes` divides it out.

    Args:
      snr: 1-d measured SNR of each source.
      dflux: 1-d ``(F - F_true) / F_true`` of the same sources.
      n_bins: number of SNR bins; default ``min(8, n // 40)`` (at least 1) for ``n``
        usable sources.
      clip: leave out ``|dF/F| > clip``; default 0.5.

    Returns:
      ``{"snr": [...], "bias": [...], "n": [...]}``: each bin's median SNR, mean
      ``dF/F`` and source count, SNR increasing.
    """
    snr = np.asarray(snr, np.float64).ravel()
    d = np.asarray(dflux, np.float64).ravel()
    if snr.shape != d.shape:
        raise ValueError(f"snr, dflux: expected the same length, got {snr.shape}, {d.shape}")
    ok = np.isfinite(snr) & np.isfinite(d) & (np.abs(d) <= clip) & (snr > 0)
    n_ok = int(ok.sum())
    n_bins = max(1, min(8, n_ok // 40)) if n_bins is None else n_bins
    if n_bins < 1 or n_ok < 10 * n_bins:
        raise ValueError(
            f"snr, dflux: {n_ok} usable sources; at least {10 * max(n_bins, 1)} needed for "
            f"{n_bins} bins (10 per bin)"
        )
    order = np.argsort(snr[ok])
    bins = np.array_split(order, n_bins)
    s, d = snr[ok], d[ok]
    return {
        "snr": [float(np.median(s[i])) for i in bins],
        "bias": [float(np.mean(d[i])) for i in bins],
        "n": [len(i) for i in bins],
    }


def debias_fluxes(result: DeblendResult, ivar, table, max_factor: float = 2.0) -> DeblendResult:
    """Divide each source's model by ``1 + b(s)`` (:func:`flux_bias`), per band.

    ``s`` is the model's measured SNR (:func:`model_snr`); the factor is clipped to
    ``[1 / max_factor, max_factor]``. Point sources are left as they are. Models,
    fluxes, amplitudes, the residual and chi^2 are updated; fields flagged
    ``NONFINITE`` or ``NO_DATA`` keep their NaN fluxes and chi^2. ``s`` is invariant
    when the models and ``ivar^(-1/2)`` are scaled together, but ``m^2 w`` must stay
    inside float32: :func:`~galjax.deblend.deblend` applies it in noise units. Works on
    one field or many (leading axes of ``result``).

    Args:
      result: :class:`DeblendResult`.
      ivar: ``(..., h, w, bands)`` inverse variance of the fields.
      table: the bias table from :func:`fit_flux_bias`.
      max_factor: bound of the correction factor, >= 1; default 2.

    Returns:
      The corrected :class:`~galjax.deblend.DeblendResult` (JAX arrays).
    """
    models = jnp.asarray(result.models)
    ivar = jnp.asarray(ivar, models.dtype)
    b = flux_bias(model_snr(models, ivar), table)
    factor = jnp.clip(1.0 / jnp.maximum(1.0 + b, 1e-6), 1.0 / max_factor, max_factor)
    # the table is the galaxies' shape-fitting bias; a point source's shape is the PSF
    galaxy = jnp.asarray(result.mask) & ~jnp.asarray(result.point)
    factor = jnp.where(galaxy[..., None], factor, 1.0).astype(models.dtype)
    models = models * factor[..., None, None, :]
    field = jnp.asarray(result.residual) + jnp.sum(jnp.asarray(result.models), axis=-4)
    resid = field - jnp.sum(models, axis=-4)
    out = result._replace(
        models=models,
        fluxes=jnp.sum(models, axis=(-3, -2)),
        amplitudes=jnp.asarray(result.amplitudes) * factor,
        residual=resid,
        chi2=chi2_per_pixel(resid, ivar=ivar),
    )
    return blank_failed(out, field)
