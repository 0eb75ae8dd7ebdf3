"""Point sources (stars) in the deblender: their starting parameters and the
point-source test that finds them.

A point source is the PSF times one flux per band at a fitted sub-pixel offset;
its parameters live in a source's latent slots (:func:`~galjax.deblend.render.point_stamps`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from galjax.deblend.config import FAILED, DeblendResult
from galjax.deblend.inputs import noise_scales
from galjax.deblend.render import POINT_STEP, place_stamps, point_stamps

__all__ = ["point_latents", "point_source_test", "point_source_tests"]


def point_latents(field, positions, psf, latent_dim: int):
    """Initial point-source parameters in the latent slots of :func:`point_stamps`.

    Each band's flux starts at the field's value at the (rounded) position divided by
    the PSF's central value, at least 1e-3 (a star fainter than the noise then
    grows from there), and the offset at 0.

    Args:
      field: ``(h, w, bands)`` image.
      positions: ``(n_max, 2)`` ``(x, y)`` pixels.
      psf: ``(ph, pw, bands)`` PSF, odd sizes, unit sum per band.
      latent_dim: ``d >= bands + 2``.

    Returns:
      ``(n_max, latent_dim)`` latents ``z_b = log(flux_b) / POINT_STEP``, 0 elsewhere.
    """
    h, w, bands = field.shape
    ix = jnp.clip(jnp.round(positions[:, 0]).astype(jnp.int32), 0, w - 1)
    iy = jnp.clip(jnp.round(positions[:, 1]).astype(jnp.int32), 0, h - 1)
    peak = psf[psf.shape[0] // 2, psf.shape[1] // 2]  # (bands,)
    flux = jnp.maximum(field[iy, ix] / jnp.maximum(peak, 1e-12)[None], 1e-3)
    return (
        jnp.zeros((positions.shape[0], latent_dim), field.dtype)
        .at[:, :bands]
        .set(jnp.log(flux) / POINT_STEP)
    )


def point_source_test(result: DeblendResult, ivar, psf, positions, max_offset: float = 1.0,
                      n_grid: int = 9):  # fmt: skip
    """How much better each source is fitted as a point source: ``dchi2 (n_max,)``.

    For source ``i`` with model ``m_i`` in a deblended field, the data with the other
    sources removed is ``t = residual + m_i``. A point source ``F_b P_b(x_i + d)`` (the
    PSF at the position plus an offset ``d`` on an ``n_grid x n_grid`` grid within
    ``max_offset`` pixels, the fluxes ``F_b >= 0`` by weighted least squares) is fitted to
    ``t``, and

        dchi2_i = sum_p w_p residual_p^2 - min_d sum_p w_p (t_p - F_b P_b(x_i + d)_p)^2.

    ``dchi2 > 0``: the point source, with ``bands + 2`` parameters against the
    galaxy's latents, fits better, e.g. a star the galaxy decoder cannot draw.
    Deblend again with ``point=dchi2 > 0`` (:func:`~galjax.deblend.deblend`). Masked
    sources get 0. Pure, one field; :func:`point_source_tests` runs it over a
    result's fields.

    Args:
      result: one field's :class:`DeblendResult` (no field axis).
      ivar: ``(h, w, bands)`` inverse variance of the field.
      psf: ``(ph, pw, bands)`` the field's PSF (odd sizes, unit sum per band).
      positions: ``(n_max, 2)`` the positions ``(x, y)`` that were deblended.
      max_offset: largest offset tried, in pixels; default 1.
      n_grid: offsets per axis; default 9.

    Returns:
      ``(n_max,)`` ``dchi2``.
    """
    h, w, bands = result.residual.shape
    dtype = result.residual.dtype
    size = psf.shape[0] + 4 + 2 * int(np.ceil(max_offset))
    size += 1 - size % 2
    grid = jnp.linspace(-max_offset, max_offset, n_grid, dtype=dtype)
    offsets = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)  # (k, 2)
    k = offsets.shape[0]
    unit, _ = point_stamps(jnp.zeros((k, bands + 2), dtype), bands, size)  # unit fluxes
    chi2_gal = jnp.sum(ivar * result.residual**2)

    def one(model_i, pos_i, mask_i):
        t = (result.residual + model_i)[None]
        tmpl = place_stamps(unit, jnp.broadcast_to(pos_i, (k, 2)), jnp.ones(k, bool), h, w, psf,
                            offsets)  # fmt: skip
        wt = ivar[None] * tmpl
        flux = jnp.maximum(
            jnp.sum(wt * t, axis=(1, 2)) / jnp.maximum(jnp.sum(wt * tmpl, axis=(1, 2)), 1e-30), 0.0
        )  # (k, bands)
        chi2 = jnp.sum(ivar[None] * (t - flux[:, None, None, :] * tmpl) ** 2, axis=(1, 2, 3))
        return jnp.where(mask_i, chi2_gal - jnp.min(chi2), 0.0)

    return jax.lax.map(lambda a: one(*a), (result.models, positions, result.mask))


def point_source_tests(result: DeblendResult, ivar, psf, positions, max_offset: float = 1.0,
                       n_grid: int = 9):  # fmt: skip
    """:func:`point_source_test` for every field of a :func:`~galjax.deblend.deblend` result.

    Args:
      result: :class:`DeblendResult` with a leading field axis ``n``.
      ivar: ``(n, h, w, bands)`` inverse variance.
      psf: ``(ph, pw, bands)`` shared or ``(n, ph, pw, bands)`` one per field.
      positions: ``(n, n_max, 2)`` the positions ``(x, y)`` that were deblended.
      max_offset, n_grid: as for :func:`point_source_test`.

    Returns:
      ``dchi2 (n, n_max)`` numpy; ``point=dchi2 > 0`` flags the point sources. NaN
      for fields flagged ``NONFINITE`` or ``NO_DATA`` (``result.status``). Computed in
      noise units (``s = 1 / median(sigma)`` per field and band, float64 on the host:
      residual and models times ``s``, ``ivar / s^2``), which leave ``dchi2`` unchanged
      and keep ``w m^2`` inside float32 for any data units.
    """
    psf = jnp.asarray(psf)
    result = jax.tree.map(np.asarray, result)
    ivar = np.asarray(ivar, np.float64)
    s = noise_scales(ivar, np.ones(ivar.shape[-1]))  # (n, bands)
    dt = result.residual.dtype

    def scaled(a, shape):
        return np.nan_to_num(np.asarray(a, np.float64) * s.reshape(shape)).astype(dt)

    n, bands = s.shape
    result = result._replace(
        models=scaled(result.models, (n, 1, 1, 1, bands)),
        residual=scaled(result.residual, (n, 1, 1, bands)),
    )
    ivar = (ivar / (s**2)[:, None, None, :]).astype(dt)
    test = functools.partial(point_source_test, max_offset=max_offset, n_grid=n_grid)
    fn = jax.jit(jax.vmap(test, in_axes=(0, 0, 0 if psf.ndim == 4 else None, 0)))
    out = np.asarray(fn(jax.tree.map(jnp.asarray, result), jnp.asarray(ivar), psf,
                        jnp.asarray(positions)))  # fmt: skip
    failed = (np.asarray(result.status) & int(FAILED)) != 0
    return np.where(failed[:, None], np.nan, out)
