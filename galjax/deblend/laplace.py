"""Laplace approximation of the deblending posterior around the MAP.

The posterior over a field's latents (and, with the flux refit, each source's flux
per band) is approximated by a Gaussian whose precision is the Gauss-Newton Hessian
of the objective (:func:`laplace`), giving flux uncertainties and posterior samples
of each source's image; :func:`laplace_flux_errors` runs it over many fields.

The Gauss-Newton Hessian is singular or nearly so when the data leave a direction
free (two sources on top of each other share their light; a very bright source
makes the flux block dwarf the latent ridge), and a plain float32 inverse then
gives NaN or negative variances. It is inverted after a Jacobi scaling with an
eigenvalue floor (:func:`regularised_inverse`), which leaves a well-conditioned
``H^-1`` unchanged and bounds the variance along the free directions.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.chunks import chunked_map
from galjax.deblend.batching import SLOT_FILL, chunk_slots, put_slots, take_slots
from galjax.deblend.config import FAILED, DeblendResult
from galjax.deblend.inputs import as_numeric, check_psfs, noise_scales, reference_sigma
from galjax.deblend.render import render_sources
from galjax.models.flow import log_prior
from galjax.models.store import GalaxyModel

__all__ = ["LaplaceResult", "laplace", "laplace_flux_errors", "regularised_inverse", "EIG_FLOOR"]

_LAPLACE_RIDGE = 1e-2  # on the latents, whose prior is ~N(0, 1)

#: Smallest eigenvalue of the Jacobi-scaled Hessian kept, relative to its largest
#: (:func:`regularised_inverse`): float32 eigenvalues below ~1e-6 of the largest are
#: rounding noise.
EIG_FLOOR = 1e-5


def regularised_inverse(hess, floor: float = EIG_FLOOR):
    """Inverse of a symmetric positive semi-definite ``(P, P)`` matrix, regularised.

    With ``D = diag(H)`` (Jacobi scaling) and the eigendecomposition of the scaled
    matrix ``A = D^-1/2 H D^-1/2 = V diag(lambda) V^T`` (unit diagonal, so its
    eigenvalues are comparable whatever the parameters' units),

        H^+ = D^-1/2 V diag(1 / max(lambda, floor * max(lambda))) V^T D^-1/2.

    When every ``lambda >= floor * max(lambda)`` this is ``H^-1``; a direction the
    matrix does not constrain (two coincident sources' flux difference) gets the
    floor's large but finite variance instead of NaN. Also returns the factor
    ``B = D^-1/2 V diag(max(lambda, ...)^-1/2)`` with ``B B^T = H^+`` (for samples).

    >>> import jax.numpy as jnp
    >>> cov, _ = regularised_inverse(jnp.array([[4.0, 0.0], [0.0, 1e-4]]))
    >>> [round(float(v), 4) for v in jnp.diagonal(cov)]
    [0.25, 10000.0]
    >>> cov, _ = regularised_inverse(jnp.array([[1.0, 1.0], [1.0, 1.0]]))  # singular
    >>> bool(jnp.all(jnp.isfinite(cov))) and float(cov[0, 0]) > 1e3
    True

    Args:
      hess: ``(P, P)`` symmetric matrix with a positive diagonal.
      floor: relative eigenvalue floor; default :data:`EIG_FLOOR`.

    Returns:
      ``(H^+, B)``, both ``(P, P)``.
    """
    d = jnp.diagonal(hess)
    tiny = jnp.finfo(hess.dtype).tiny
    scale = 1.0 / jnp.sqrt(jnp.maximum(d, tiny))
    a = hess * scale[:, None] * scale[None, :]
    evals, evecs = jnp.linalg.eigh(0.5 * (a + a.T))
    evals = jnp.maximum(evals, floor * jnp.max(evals))
    factor = scale[:, None] * evecs / jnp.sqrt(evals)[None, :]
    return factor @ factor.T, factor


class LaplaceResult(NamedTuple):
    """Gaussian approximation of the posterior around the MAP of one field.

    Attributes:
      cov: ``(P, P)`` covariance of the parameters (inverse Gauss-Newton Hessian):
        the flattened latents ``(n_max * d)`` followed, with free amplitudes, by the
        flattened fluxes ``(n_max * bands)``.
      flux_err: ``(n_max, bands)`` 1-sigma flux uncertainty (linearised).
      samples: ``(n_samples, n_max, h, w, bands)`` posterior samples of the source
        images (None when ``n_samples = 0``).
      sample_fluxes: ``(n_samples, n_max, bands)`` their fluxes (or None).
    """

    cov: jax.Array
    flux_err: jax.Array
    samples: jax.Array
    sample_fluxes: jax.Array


def laplace(key, model: GalaxyModel, field_result: DeblendResult, positions, ivar, psf=None,
            n_samples: int = 32, prior_weight: float | None = None, free_amplitudes: bool = True,
            model_error: float = 0.0) -> LaplaceResult:  # fmt: skip
    """Laplace approximation around one field's MAP (no field axis).

    With ``free_amplitudes`` (the flux refit of ``DeblendConfig``, on by default)
    the parameters are the latents ``Z`` and each source's flux per band ``F``, and a
    source is its flux times a unit-flux shape,

        source_ib = F_ib * u_ib(z_i),   u_ib = place(f(z_i))_b / sum_pixels place(f(z_i))_b,

    so that ``F`` is exactly the catalogue flux (a latent direction that only
    brightens the source is then constrained by the prior alone). Without it the
    parameters are ``Z`` and the fluxes follow from them. The Hessian is the
    Gauss-Newton matrix of the chi^2 term, ``H = J^T diag(w) J`` with
    ``J = d(sum_i source_i) / d(Z, F)``, plus each source's prior weight ``lambda_i``
    (the MAP's) times the Hessian of ``-log p(z_i)`` from the flow with its negative
    eigenvalues set to zero (so ``H`` stays positive definite), and a small ridge;
    ``cov = H^+``, the inverse with a relative eigenvalue floor after a Jacobi
    scaling (:func:`regularised_inverse`), finite for bright and coincident sources.
    Flux errors are the linearised ``sqrt(g^T cov g)`` (with free
    fluxes just ``sqrt(cov_FF)``) with a fractional model error added in quadrature,

        flux_err^2 = g^T cov g + (model_error * flux)^2,

    which accounts for the decoder not representing real galaxies exactly (the
    statistical term alone covers the truth too rarely; calibrate ``model_error`` on
    simulations with :func:`~galjax.deblend.calibrate_model_error`). With the MAP's own
    prior weights the statistical term covers the truth about as often as it should
    for faint sources and too rarely for bright ones, which the model error is for
    (coverage by SNR: ``benchmarks/README.md``, section "Deblending quality", "Laplace
    flux errors"). Samples decode ``(Z, F) ~ N((Z*, F*), cov)``. Point sources
    (``field_result.point``) take no prior term; their latent slots hold their offset
    (:func:`~galjax.deblend.point_stamps`), and with free amplitudes their flux error
    is that of ``F`` given the PSF. Pure: ``vmap`` over fields with
    ``in_axes=(0, None, 0, 0, 0)`` (split keys; and 0 for per-field PSFs). One
    compiled call per model structure, field shape, ``n_samples`` and
    ``free_amplitudes``.

    Args:
      key: PRNG key for the samples.
      model: the :class:`~galjax.models.GalaxyModel` used for ``field_result``.
      field_result: one field's :class:`~galjax.deblend.DeblendResult`.
      positions: ``(n_max, 2)`` ``(x, y)`` pixels.
      ivar: ``(h, w, bands)`` inverse variance.
      psf: ``(ph, pw, bands)`` effective PSF for explicit-PSF models.
      n_samples: posterior samples of the source images, >= 0 (0: none); default 32.
      prior_weight: the flow prior's weight, a scalar or ``(n_max,)`` per source (None,
        the default: the weights the MAP used, ``field_result.prior_weights``).
      free_amplitudes: treat the refit fluxes as parameters (default; use False for
        results of ``DeblendConfig(refit_fluxes=False)``).
      model_error: fractional flux error added in quadrature, >= 0; default 0.

    Returns:
      :class:`LaplaceResult`.
    """
    # The model goes in as a pytree (configs static); the initialisation encoder and
    # the metadata are not used here.
    model = model.replace(init_params=None, meta=None)
    return _laplace(key, model, field_result, positions, ivar, psf, prior_weight, model_error,
                    n_samples=int(n_samples),
                    free_amplitudes=bool(free_amplitudes))  # fmt: skip


@functools.partial(jax.jit, static_argnames=("n_samples", "free_amplitudes"))
def _laplace(key, model: GalaxyModel, field_result, positions, ivar, psf, prior_weight,
             model_error, *, n_samples, free_amplitudes):  # fmt: skip
    """:func:`laplace`, compiled (the model a pytree whose configs are static)."""
    vcfg = model.vae_config
    z, mask = field_result.latents, field_result.mask
    h, w = field_result.residual.shape[0], field_result.residual.shape[1]
    n_max, d = z.shape
    weights = field_result.prior_weights if prior_weight is None else prior_weight
    point = field_result.point
    weights = jnp.where(point, 0.0, jnp.broadcast_to(jnp.asarray(weights, z.dtype), (n_max,)))
    bands = field_result.amplitudes.shape[-1]
    nz = n_max * d

    def render_one(z_i, pos_i, mask_i, point_i):
        """Source i alone in the field: ``(h, w, bands)``."""
        return render_sources(model.vae_params, vcfg, z_i[None], pos_i[None], mask_i[None], h, w,
                              psf, point_i[None])[0]  # fmt: skip

    def unit_shape(img):
        total = jnp.sum(img, axis=(0, 1), keepdims=True)
        return img / jnp.where(total > 0, total, 1.0), total

    if free_amplitudes:
        shape_map, total_map = jax.vmap(unit_shape)(jax.vmap(render_one)(z, positions, mask, point))
        theta = jnp.concatenate([z.reshape(-1), field_result.fluxes.reshape(-1)])
    else:
        shape_map = total_map = jnp.zeros((n_max, 0), z.dtype)  # unused
        theta = z.reshape(-1)

    def one_source(theta_i, pos_i, mask_i, point_i, amp_i, shape_i, total_i):
        """Source i from its own parameters ``theta_i = (z_i[, F_i])``: ``(h, w, bands)``."""
        img = render_one(theta_i[:d], pos_i, mask_i, point_i)
        if not free_amplitudes:
            return amp_i[None, None, :] * img
        shape, total = unit_shape(img)
        # A sample far out along a direction only the prior constrains can decode to
        # (almost) no light; it keeps the MAP shape, so its flux is still F.
        shape = jnp.where(total > 1e-3 * total_i, shape, shape_i)
        return theta_i[None, None, d:] * shape

    per_source = (positions, mask, point, field_result.amplitudes, shape_map, total_map)
    # own[i]: the indices in theta = (Z, F) of source i's parameters (z_i[, F_i]).
    own = np.arange(n_max)[:, None] * d + np.arange(d)
    if free_amplitudes:
        own = np.concatenate([own, nz + np.arange(n_max)[:, None] * bands + np.arange(bands)], 1)

    def sources(theta):
        """All sources from the flattened parameters: ``(n_max, h, w, bands)``."""
        return jax.vmap(one_source)(theta[own], *per_source)

    # Source i depends on its own parameters alone, so its Jacobian is taken alone: one
    # forward-mode pass per source and parameter instead of per source pair.
    jac_i = jax.vmap(jax.jacfwd(one_source))(theta[own], *per_source)  # (n_max, h, w, b, q)
    jt = jnp.moveaxis(jac_i, 0, -2).reshape(-1, own.size)  # columns in `own` order
    jt = jt[:, np.argsort(own.reshape(-1))]  # d(total model) / d(Z, F)
    hess = jt.T @ (ivar.reshape(-1, 1) * jt)
    if model.flow_params is not None:
        hp = jax.vmap(jax.hessian(lambda zi: -log_prior(model.flow_params, model.flow_config, zi)))(
            jnp.where(point[:, None], 0.0, z)
        )
        # A curvature that overflowed (latents far outside the flow's support) is dropped:
        # that source's errors come from the data alone.
        hp = jnp.where(jnp.all(jnp.isfinite(hp), axis=(1, 2), keepdims=True), hp, 0.0)
        # Away from its modes the flow's -log p is not convex; an indefinite block can make
        # cov non-positive and a flux variance negative. Keep its positive-curvature part.
        evals, evecs = jnp.linalg.eigh(0.5 * (hp + jnp.swapaxes(hp, -1, -2)))
        hp = jnp.einsum("nij,nj,nkj->nik", evecs, jnp.maximum(evals, 0.0), evecs)
        hp = hp * jnp.where(mask, weights, 0.0)[:, None, None]
        hess = hess.at[:nz, :nz].add(jax.scipy.linalg.block_diag(*[hp[i] for i in range(n_max)]))
    # Padded sources have no data and no prior: a unit block keeps H invertible; a small
    # ridge on Z does the same for directions neither the data nor the prior constrain.
    diag = jnp.repeat(~mask, d).astype(hess.dtype) + _LAPLACE_RIDGE
    if free_amplitudes:
        g_ii = jnp.diagonal(hess)[nz:]
        empty = g_ii <= 1e-12 * jnp.maximum(jnp.max(g_ii), 1e-30)  # no light in the field
        diag = jnp.concatenate([diag, (jnp.repeat(~mask, bands) | empty).astype(hess.dtype)])
    hess = hess + jnp.diag(diag)
    hess = 0.5 * (hess + hess.T)
    cov, factor = regularised_inverse(hess)
    # flux_ib depends on source i's own parameters only: var_ib = g^T cov_ii g.
    g_own = jnp.sum(jac_i, axis=(1, 2))  # (n_max, b, q): d flux_ib / d theta_i
    cov_own = cov[own[:, :, None], own[:, None, :]]  # (n_max, q, q)
    var = jnp.einsum("ibk,ikl,ibl->ib", g_own, cov_own, g_own)
    var = jnp.maximum(var, 0.0) + (model_error * field_result.fluxes) ** 2
    flux_err = jnp.sqrt(var) * mask.astype(var.dtype)[:, None]
    if n_samples == 0:
        return LaplaceResult(cov, flux_err, None, None)
    eps = jax.random.normal(key, (n_samples, theta.size), theta.dtype)
    thetas = theta[None] + eps @ factor.T  # cov = factor factor^T
    samples = jax.vmap(sources)(thetas)
    return LaplaceResult(cov, flux_err, samples, jnp.sum(samples, axis=(2, 3)))


@functools.partial(jax.jit, static_argnames=("free_amplitudes", "per_field"))
def _flux_errors(model, result, positions, ivar, psf, model_error, *, free_amplitudes, per_field):
    """:func:`laplace`'s ``flux_err`` over a chunk of fields (vmapped, compiled once per
    model structure, shapes and flags)."""

    def one(r, p, iv, ps):
        return _laplace(jax.random.key(0), model, r, p, iv, ps, None, model_error, n_samples=0,
                        free_amplitudes=free_amplitudes).flux_err  # fmt: skip

    return jax.vmap(one, in_axes=(0, 0, 0, 0 if per_field else None))(result, positions, ivar, psf)


def laplace_flux_errors(model: GalaxyModel, result: DeblendResult, positions, ivar, psf=None,
                        chunk: int = 8, free_amplitudes: bool = True,
                        model_error: float | None = None,
                        prior_weight: float | None = None):  # fmt: skip
    """Laplace 1-sigma flux errors for many fields, in chunks: ``(n, n_max, bands)`` numpy.

    Args:
      model: the model used for ``result``.
      result: :class:`~galjax.deblend.DeblendResult` of :func:`~galjax.deblend.deblend`
        (leading field axis).
      positions: ``(n, n_max, 2)``; ivar: ``(n, h, w, bands)`` inverse variance.
      psf: effective PSF for explicit-PSF models, ``(ph, pw, bands)`` shared or
        ``(n, ph, pw, bands)`` per field.
      chunk: fields per compiled call, >= 1 (default 8); the forward-mode Jacobian
        carries one tangent per source parameter through that source's decoder, so
        memory grows as ``chunk * n_max * (latent_dim + bands)`` images of the field.
      free_amplitudes: the fluxes were refit (see :func:`laplace`).
      model_error: fractional flux error added in quadrature; None takes the value
        calibrated for the model (``model.meta["flux_model_error"]``, written by
        ``galjax train calibrate``), or 0 if it has none.
      prior_weight: the flow prior's weight, scalar or ``(n, n_max)`` (None: the
        weights the MAP used, ``result.prior_weights``).

    Returns:
      ``(n, n_max, bands)`` numpy 1-sigma flux errors, in the units of the fluxes.
      Source slots that no field uses are dropped first (real sources moved to the
      front, as in :func:`~galjax.deblend.deblend`); padded slots get a zero error,
      fields flagged ``NONFINITE`` or ``NO_DATA`` (``result.status``) NaN. The
      computation runs in noise units, as :func:`~galjax.deblend.deblend`'s solve
      (:mod:`~galjax.deblend.inputs`: ``s = ref_b / median(sigma)`` per field and band
      from ``ivar`` in float64; fluxes and models times ``s``, ``ivar / s^2``, errors
      divided by ``s``), so it does not overflow float32 for any data units.
    """
    if model_error is None:
        model_error = float((model.meta or {}).get("flux_model_error", 0.0))
    if isinstance(model_error, bool) or not np.isfinite(model_error) or model_error < 0:
        raise ValueError(f"model_error: expected a finite value >= 0, got {model_error}")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk: expected an integer >= 1, got {chunk}")
    result = jax.tree.map(np.asarray, result)
    n, n_max = result.mask.shape
    bands = result.models.shape[-1]
    field_shape = result.residual.shape
    ivar = as_numeric("ivar", ivar)
    if ivar.shape != field_shape:
        raise ValueError(f"ivar: expected shape {field_shape} (like the fields), got {ivar.shape}")
    ivar = np.asarray(ivar, np.float64)
    if not np.all(np.isfinite(ivar) & (ivar >= 0)):
        raise ValueError("ivar: expected finite values >= 0 (0 for a masked pixel)")
    positions = np.asarray(as_numeric("positions", positions), np.float32)
    if positions.shape != (n, n_max, 2):
        raise ValueError(f"positions: expected shape {(n, n_max, 2)}, got {positions.shape}")
    if n_max == 0:
        return np.zeros((n, 0, bands), result.fluxes.dtype)
    per_field = psf is not None and np.ndim(psf) == 4
    if psf is not None:
        psf = jnp.asarray(check_psfs(psf, n, bands))
    if prior_weight is not None:
        w = np.broadcast_to(np.asarray(prior_weight, np.float32), result.mask.shape)
        result = result._replace(prior_weights=np.where(result.mask, w, 0.0))
    failed = (np.asarray(result.status) & int(FAILED)) != 0
    # Noise units: s per field and band (float64), as in deblend().
    s = noise_scales(ivar, reference_sigma(model, bands))
    dt = result.fluxes.dtype

    def scaled(a, shape):
        return np.nan_to_num(np.asarray(a, np.float64) * s.reshape(shape)).astype(dt)

    result = result._replace(
        models=scaled(result.models, (n, 1, 1, 1, bands)),
        fluxes=scaled(result.fluxes, (n, 1, bands)),
        residual=scaled(result.residual, (n, 1, 1, bands)),
        amplitudes=scaled(result.amplitudes, (n, 1, bands)),
    )
    ivar = (ivar / (s**2)[:, None, None, :]).astype(np.float32)

    chunk = max(1, min(int(chunk), n))
    solver = model.replace(init_params=None, meta=None)  # as in laplace()
    per_source = (*SLOT_FILL, "mask")  # the result's per-source fields
    # Slots no field uses are dropped (all fields share one compiled shape: a compile
    # costs more than the slots it would save chunk by chunk).
    slots = chunk_slots(result.mask)
    result = result._replace(**{k: take_slots(getattr(result, k), slots) for k in per_source})
    positions = take_slots(positions, slots)

    def run(idx):  # the fields idx (the last chunk padded to one compiled shape)
        sub = jax.tree.map(lambda a: a[idx], result)
        ps = psf[idx] if per_field else psf
        return _flux_errors(solver, sub, positions[idx], ivar[idx], ps, model_error,
                            free_amplitudes=bool(free_amplitudes), per_field=per_field)  # fmt: skip

    out = np.asarray(chunked_map(run, np.arange(n), chunk_size=chunk), np.float64)
    out = put_slots(out / s[:, None, :], slots, n_max)
    out[failed] = np.nan
    return out.astype(dt)
