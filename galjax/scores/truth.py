"""Deblended sources scored against the truth of simulations (numpy, host side).

- :func:`evaluate`: model-flux error and SSIM of each galaxy against its true
  isolated, noiseless image.
- :func:`truth_apertures` and :func:`evaluate_apertures`: MADNESS's aperture
  photometry protocol (Biswas et al.), which measures only the light given to the
  wrong source.

Inputs are plain arrays (the deblender's models and residuals, the simulator's
truth), so this module needs no model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from galjax.scores.metrics import elliptical_aperture_flux, ssim
from galjax.sim.galaxy import half_light_ellipse

__all__ = ["evaluate", "truth_apertures", "evaluate_apertures"]


def evaluate(models, true_sources, mask, snr=None, snr_min: float = 10.0, stamp: int = 45):
    """Per-galaxy quality of deblended sources against the truth (numpy, host side).

    Args:
      models: ``(n, n_max, h, w, bands)`` deblended source images.
      true_sources: ``(n, n_max, h, w, bands)`` true isolated noiseless sources.
      mask: ``(n, n_max)`` real sources.
      snr: ``(n, n_max)`` source SNR; galaxies with ``snr < snr_min`` (default 10)
        are left out (all kept when None).
      stamp: side in pixels of the cutouts on which SSIM is computed, around the
        true source's brightest pixel in the first band; default 45.

    Returns:
      dict with per-galaxy arrays ``dflux`` (signed ``(F - F_true) / F_true`` in the
      first band), ``ssim`` and a ``summary`` of mean/median ``|dF/F|`` and mean SSIM.
    """
    models = np.asarray(models)
    true_sources = np.asarray(true_sources)
    sel = np.array(mask, bool)  # a copy: the caller's mask must not change
    if snr is not None:
        sel &= np.asarray(snr) >= snr_min
    f_true = true_sources.sum(axis=(2, 3))[..., 0]
    f_model = models.sum(axis=(2, 3))[..., 0]
    dflux = (f_model - f_true)[sel] / f_true[sel]
    # Cutouts around the truth's brightest pixel for SSIM.
    t, m = true_sources[sel], models[sel]
    h, w = t.shape[1], t.shape[2]
    size = min(stamp, h, w)
    peak = t[..., 0].reshape(len(t), -1).argmax(axis=1)
    py, px = np.unravel_index(peak, (h, w))
    y0 = np.clip(py - size // 2, 0, h - size)
    x0 = np.clip(px - size // 2, 0, w - size)
    ct = np.stack([a[y : y + size, x : x + size] for a, y, x in zip(t, y0, x0, strict=True)])
    cm = np.stack([a[y : y + size, x : x + size] for a, y, x in zip(m, y0, x0, strict=True)])
    rng = np.maximum(ct.max(axis=(1, 2, 3)), 1e-12)
    s = np.asarray(
        jax.vmap(lambda a, b, r: ssim(a, b, r))(jnp.asarray(cm), jnp.asarray(ct), jnp.asarray(rng))
    )
    summary = {
        "n_galaxies": int(sel.sum()),
        "mean_abs_dflux": float(np.mean(np.abs(dflux))),
        "median_abs_dflux": float(np.median(np.abs(dflux))),
        "mean_dflux": float(np.mean(dflux)),
        "mean_ssim": float(np.mean(s)),
    }
    return {"dflux": dflux, "ssim": s, "summary": summary}


def truth_apertures(params, positions, psf_fwhm: float, scale: float = 2.0, band: int = 0):
    """Elliptical photometry apertures from the true galaxies, as MADNESS's benchmark.

    Semi-axes ``scale * sqrt(a_h^2 + (fwhm / 2)^2)`` (and the same for ``b``) around the
    true position, with ``(a_h, b_h, theta)`` the half-light ellipse of the larger of
    bulge and disk (:func:`galjax.sim.half_light_ellipse`).

    Args:
      params: the truth's :class:`~galjax.sim.GalaxyParams`, leading axes ``(n, n_max)``.
      positions: ``(n, n_max, 2)`` true ``(x, y)`` (pixels).
      psf_fwhm: PSF FWHM in pixels.
      scale: aperture size in units of the PSF-broadened half-light axes.
      band: band whose flux fractions pick bulge or disk.

    Returns:
      ``(x, y, a, b, theta)``, each ``(n, n_max)`` numpy (pixels, radians).
    """
    a, b, theta = (np.asarray(v) for v in half_light_ellipse(params, band))
    if not (np.isfinite(psf_fwhm) and psf_fwhm > 0):
        raise ValueError(f"psf_fwhm: expected a positive number of pixels, got {psf_fwhm}")
    half = 0.5 * float(psf_fwhm)
    pos = np.asarray(positions)
    return (pos[..., 0], pos[..., 1], scale * np.sqrt(a**2 + half**2),
            scale * np.sqrt(b**2 + half**2), theta)  # fmt: skip


def evaluate_apertures(models, residual, field, noiseless, true_sources, mask, apertures,
                       snr=None, snr_min: float = 10.0, band: int = 0,
                       max_contamination: float = 5.0, subsample: int = 5):  # fmt: skip
    """Aperture photometry against the truth by MADNESS's protocol (numpy, host side).

    Each galaxy ``i`` is measured in its aperture ``A_i`` three ways:

    - deblended: ``A_i(r + m_i)``, the field's residual ``r = y - sum_j m_j`` added back
      to its model ``m_i``;
    - truth: ``A_i(n + s_i)``, the true noiseless source ``s_i`` plus the field's noise
      ``n = y - sum_j s_j``;
    - blended (no deblending): ``A_i(y)``.

    The noise is the same on both sides, so ``dF/F = A_i(r + m_i) / A_i(n + s_i) - 1 =
    A_i(sum_{j != i} (s_j - m_j)) / A_i(n + s_i)`` measures only the light given to the
    wrong source: an isolated galaxy scores 0 whatever its model. This is the
    statistic of MADNESS's published comparison (mean ``|dF/F|``, r band), which
    drops galaxies whose blended flux exceeds the truth more than
    ``max_contamination`` times. The model-flux error of :func:`evaluate` includes the
    noise, and is the stricter test.

    Args:
      models: ``(n, n_max, h, w, bands)`` deblended sources.
      residual: ``(n, h, w, bands)`` field minus the sum of the models.
      field: ``(n, h, w, bands)`` the observed (noisy) fields.
      noiseless: ``(n, h, w, bands)`` the sum of the true sources.
      true_sources: ``(n, n_max, h, w, bands)``.
      mask: ``(n, n_max)`` real sources.
      apertures: ``(x, y, a, b, theta)`` each ``(n, n_max)`` (:func:`truth_apertures`).
      snr: ``(n, n_max)``; galaxies below ``snr_min`` are left out (all kept if None).
      band: the band measured.
      max_contamination: MADNESS's cut on ``A_i(y) / A_i(n + s_i) - 1``.
      subsample: sub-pixels per side of
        :func:`galjax.scores.metrics.elliptical_aperture_flux`; default 5.

    Returns:
      dict: per selected galaxy ``dflux`` and ``dflux_blended`` (signed),
      ``blended`` (True where the field has other sources), and a ``summary`` of
      mean/median ``|dF/F|`` over all, over blended galaxies, and for no deblending,
      with the number removed by the contamination cut.
    """
    models = np.asarray(models)[..., band : band + 1]
    n, n_max = models.shape[:2]
    x, y, a, b, t = (np.broadcast_to(np.asarray(v, np.float32), (n, n_max)) for v in apertures)
    residual = np.asarray(residual)[..., band : band + 1]
    field = np.asarray(field)[..., band : band + 1]
    noise = field - np.asarray(noiseless)[..., band : band + 1]
    sources = np.asarray(true_sources)[..., band : band + 1]
    sel = np.array(mask, bool)
    if snr is not None:
        sel &= np.asarray(snr) >= snr_min
    f, s = np.nonzero(sel)
    if f.size == 0:
        raise ValueError("mask: no source passes the selection; nothing to measure")
    ap = tuple(jnp.asarray(v[f, s]) for v in (x, y, a, b, t))
    measure = functools.partial(_aperture_fluxes, subsample=subsample)
    deb = np.asarray(measure(jnp.asarray(residual[f] + models[f, s]), *ap))[:, 0]
    true = np.asarray(measure(jnp.asarray(noise[f] + sources[f, s]), *ap))[:, 0]
    blend = np.asarray(measure(jnp.asarray(field[f]), *ap))[:, 0]
    contamination = blend / true - 1.0
    keep = np.isfinite(contamination) & (contamination <= max_contamination) & (true != 0)
    dflux = (deb / true - 1.0)[keep]
    dblend = contamination[keep]
    blended = (np.asarray(mask, bool).sum(axis=1)[f] > 1)[keep]
    summary = {
        "n_galaxies": int(keep.sum()),
        "n_removed_by_contamination_cut": int((~keep).sum()),
        "mean_abs_dflux": float(np.mean(np.abs(dflux))),
        "median_abs_dflux": float(np.median(np.abs(dflux))),
        "mean_dflux": float(np.mean(dflux)),
        "n_blended": int(blended.sum()),
        "mean_abs_dflux_blended": float(np.mean(np.abs(dflux[blended]))) if blended.any() else None,
        "median_abs_dflux_blended": float(np.median(np.abs(dflux[blended])))
        if blended.any() else None,
        "no_deblending_mean_abs_dflux": float(np.mean(np.abs(dblend))),
        "no_deblending_mean_abs_dflux_blended": float(np.mean(np.abs(dblend[blended])))
        if blended.any() else None,
    }  # fmt: skip
    return {"dflux": dflux, "dflux_blended": dblend, "blended": blended, "summary": summary}


@functools.partial(jax.jit, static_argnames="subsample")
def _aperture_fluxes(images, x, y, a, b, theta, subsample):
    """:func:`elliptical_aperture_flux` vmapped over ``(n, h, w, bands)``
    images and their apertures; compiled once per shape, not once per call."""
    one = lambda img, *e: elliptical_aperture_flux(img, *e, subsample)  # noqa: E731
    return jax.vmap(one)(images, x, y, a, b, theta)
