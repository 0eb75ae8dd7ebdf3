"""Bivariate Gaussian fit: the baseline of Regier et al.'s VAE for galaxy images.

:func:`fit_gaussian` fits one bivariate Gaussian (per-band flux, shared centre and
2x2 covariance) to an image by weighted least squares through the PSF;
:func:`render_gaussian` draws one; :func:`gaussian_best_sigma_loglik` scores pixels
under ``N(model, sigma^2 I)`` at the best ``sigma``.

Fitting minimises ``chi^2 = sum_p w_p (d_p - m_p)^2`` with ``w_p = mask_p / sigma_p^2``
over pixels and bands ``p``. The model is linear in the fluxes, so they are not
optimised by gradient steps: for given shapes they are the exact weighted
least-squares solution (variable projection, :func:`galjax.fit.common.solve_fluxes`),
and optax (Adam or L-BFGS, :func:`galjax.fit.common.minimise_shapes`) moves only the
centre and covariance. Fluxes are therefore unconstrained and may come out negative
for sources drowned in noise.

Coordinates are pixels ``(x, y)`` = (column, row), 0-based, pixel centres at
integers; images are ``(..., height, width, bands)``; PSFs are pixel-level effective
PSFs ``(psf_h, psf_w, bands)`` (odd sizes, normalised to unit sum here). Rendering
goes through :func:`galjax.sim.render` (float32); the model is cast to the data's
dtype, so the fit also runs with ``JAX_ENABLE_X64=1`` (least-squares solves and
chi^2 are then float64).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import (
    as_float_array,
    broadcast_as,
    check_image,
    is_concrete,
    mask_nonfinite,
)
from galjax.fit.common import (
    batched,
    check_fit_inputs,
    check_steps,
    fit_psf,
    minimise_shapes,
    pixel_weights,
    solve_fluxes,
    standard_promotion,
)
from galjax.sim import RenderConfig, render

__all__ = [
    "GAUSSIAN_RENDER",
    "GaussianParams",
    "GaussianFit",
    "render_gaussian",
    "fit_gaussian",
    "gaussian_best_sigma_loglik",
]

_F32 = jnp.float32
#: Pixel integration of a smooth Gaussian: 3x3 midpoints with the Laplacian correction
#: of ``pixelate``; no cusp to refine (accuracy: see :func:`render_gaussian`).
GAUSSIAN_RENDER = RenderConfig(oversample=3, refine_levels=0, pad=4)


class GaussianParams(NamedTuple):
    """A bivariate Gaussian light profile in pixel units (one image; batches add axes).

    ``I(r) = sum_b F_b / (2 pi sqrt(det C)) exp(-(r - mu)^T C^-1 (r - mu) / 2)``
    with ``mu = (x, y)``.

    Attributes:
      flux: ``(bands,)`` total flux per band (image units).
      x, y: ``()`` centre in pixels.
      cov: ``(2, 2)`` covariance ``[[s_xx, s_xy], [s_xy, s_yy]]`` in pixel^2 of the
        intrinsic (pre-PSF) profile.
    """

    flux: jax.Array
    x: jax.Array
    y: jax.Array
    cov: jax.Array


class GaussianFit(NamedTuple):
    """Result of :func:`fit_gaussian` (one image; batches add leading axes).

    Attributes:
      params: the fitted :class:`GaussianParams`.
      model: ``(h, w, bands)`` model image (PSF-convolved when a PSF was given).
      chi2: ``()`` the minimised ``sum_p w_p (d_p - m_p)^2`` (a plain sum of squared
        residuals when ``sigma`` is None).
      chi2_per_pixel: ``()`` ``chi2`` divided by the number of unmasked pixel values.
    """

    params: GaussianParams
    model: jax.Array
    chi2: jax.Array
    chi2_per_pixel: jax.Array


def _gaussian_unit_sb(cov):
    """Unit-flux Gaussian ``sb(dx, dy) -> (..., 1)`` of covariance ``cov``, float32."""
    c = cov.astype(_F32)
    det = c[0, 0] * c[1, 1] - c[0, 1] * c[1, 0]
    norm = 1.0 / (2.0 * jnp.pi * jnp.sqrt(det))

    def sb(dx, dy):
        q = (c[1, 1] * dx * dx - 2.0 * c[0, 1] * dx * dy + c[0, 0] * dy * dy) / det
        return (norm * jnp.exp(-0.5 * q))[..., None]

    return sb


def _gaussian_template(x, y, cov, h, w, psf, config):
    """Unit-flux Gaussian ``(h, w, 1 or bands)``, pixel-integrated, PSF-convolved."""
    sb = _gaussian_unit_sb(cov)
    centre = jnp.stack([x, y]).astype(_F32)
    with standard_promotion():
        return render(sb, centre, h, w, psf, 1, config)


def render_gaussian(params: GaussianParams, height: int, width: int, psf=None, config=None):
    """Render a :class:`GaussianParams` into a ``(height, width, bands)`` image.

    Pixel values are integrals of the profile over the pixels, by the oversampled
    midpoint rule of :func:`galjax.sim.render` (``config``, default 3x3 sub-pixels
    with a Laplacian correction: ~1e-4 of the peak for sigma >= 1 px), then
    convolved with the pixel-level ``psf`` if one is given. Pure: works under
    ``jit``/``vmap``/``grad`` (one image; vmap over params for a batch).

    Args:
      params: one Gaussian (``flux`` ``(bands,)``, scalar ``x``, ``y``, ``cov`` ``(2, 2)``).
      height, width: image shape in pixels (static).
      psf: optional ``(psf_h, psf_w, bands)`` effective PSF (odd sizes; normalised
        here to unit sum per band).
      config: :class:`~galjax.sim.RenderConfig` (default :data:`GAUSSIAN_RENDER`).

    Returns:
      ``(height, width, bands)`` flux per pixel, float32.

    >>> p = GaussianParams(jnp.array([100.0]), jnp.array(7.0), jnp.array(8.0), 4.0 * jnp.eye(2))
    >>> img = render_gaussian(p, 16, 16)
    >>> img.shape, round(float(img.sum()), 1)
    ((16, 16, 1), 100.0)
    """
    cfg = GAUSSIAN_RENDER if config is None else config
    cov = jnp.asarray(params.cov, _F32)
    if cov.shape != (2, 2):
        raise ValueError(f"params.cov: expected shape (2, 2), got {cov.shape}")
    if is_concrete(cov):
        c = np.asarray(cov)
        if not (np.all(np.isfinite(c)) and c[0, 0] > 0 and np.linalg.det(c) > 0):
            raise ValueError(f"params.cov: expected a positive-definite matrix, got {c.tolist()}")
    flux = jnp.atleast_1d(jnp.asarray(params.flux, _F32))
    psf = fit_psf(psf, flux.shape[-1])
    return _render_gaussian(flux, params.x, params.y, cov, psf, height, width, cfg)


@functools.partial(jax.jit, static_argnames=("height", "width", "config"))
def _render_gaussian(flux, x, y, cov, psf, height, width, config):
    t = _gaussian_template(x, y, cov, height, width, psf, config)
    return t * flux.reshape(1, 1, -1)


def _moments_init(image, sigma, pm, psf, noise_known: bool):
    """Centre and covariance from thresholded image moments (jit-able).

    The detection image is the band sum; pixels below 2x its noise (from ``sigma``
    when ``noise_known``, else 1.4826 x the median absolute deviation of the image)
    are dropped so that the noise does not inflate the second moments.
    """
    h, w = image.shape[0], image.shape[1]
    dtype = image.dtype
    d = jnp.sum(image * pm, axis=-1)
    good = jnp.any(pm > 0, axis=-1)
    if noise_known:
        noise = jnp.sqrt(jnp.sum((sigma * pm) ** 2, axis=-1))
    else:
        med = jnp.nanmedian(jnp.where(good, d, jnp.nan))
        mad = 1.4826 * jnp.nanmedian(jnp.where(good, jnp.abs(d - med), jnp.nan))
        noise = jnp.where(jnp.isfinite(mad), mad, jnp.zeros_like(mad))
    wgt = jnp.where(good & (d > 2.0 * noise), d, jnp.zeros_like(d))
    total = jnp.sum(wgt)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype), indexing="ij")
    ok = total > 0
    safe = jnp.where(ok, total, jnp.ones_like(total))
    cx = jnp.where(ok, jnp.sum(wgt * xx) / safe, jnp.asarray((w - 1) / 2, dtype))
    cy = jnp.where(ok, jnp.sum(wgt * yy) / safe, jnp.asarray((h - 1) / 2, dtype))
    cx = jnp.clip(cx, 0.0, w - 1.0)
    cy = jnp.clip(cy, 0.0, h - 1.0)
    sxx = jnp.sum(wgt * (xx - cx) ** 2) / safe
    syy = jnp.sum(wgt * (yy - cy) ** 2) / safe
    sxy = jnp.sum(wgt * (xx - cx) * (yy - cy)) / safe
    if psf is not None:  # second moments add under convolution: remove the PSF's
        p = jnp.sum(psf, axis=-1).astype(dtype)
        p = p / jnp.sum(p)
        ph, pw = p.shape
        py, px = jnp.meshgrid(
            jnp.arange(ph, dtype=dtype) - ph // 2, jnp.arange(pw, dtype=dtype) - pw // 2,
            indexing="ij",
        )  # fmt: skip
        sxx = sxx - jnp.sum(p * px * px)
        syy = syy - jnp.sum(p * py * py)
        sxy = sxy - jnp.sum(p * px * py)
    # Thresholded moments of noisy data can be tiny or not positive definite.
    floor = jnp.asarray(0.25, dtype)
    sxx = jnp.where(ok, jnp.maximum(sxx, floor), jnp.ones_like(sxx))
    syy = jnp.where(ok, jnp.maximum(syy, floor), jnp.ones_like(syy))
    lim = 0.9 * jnp.sqrt(sxx * syy)
    sxy = jnp.where(ok, jnp.clip(sxy, -lim, lim), jnp.zeros_like(sxy))
    return cx, cy, sxx, sxy, syy


def _chol_params(sxx, sxy, syy):
    """Unconstrained ``(log l11, l21, log l22)`` of the Cholesky factor of the covariance."""
    l11 = jnp.sqrt(sxx)
    l21 = sxy / l11
    l22 = jnp.sqrt(jnp.maximum(syy - l21 * l21, 1e-6 * syy))
    return jnp.log(l11), l21, jnp.log(l22)


def _cov_from_chol(log_l11, l21, log_l22):
    """``C = L L^T`` with ``L = [[exp(a), 0], [b, exp(c)]]``: positive definite for all reals."""
    l11, l22 = jnp.exp(log_l11), jnp.exp(log_l22)
    return jnp.stack(
        [jnp.stack([l11 * l11, l11 * l21]), jnp.stack([l11 * l21, l21 * l21 + l22 * l22])]
    )


@functools.partial(
    jax.jit, static_argnames=("n_steps", "method", "learning_rate", "config", "noise_known")
)
def _fit_gaussian(image, sigma, pm, psf, n_steps, method, learning_rate, config, noise_known):
    h, w, bands = image.shape
    dtype = image.dtype
    weight = pixel_weights(sigma, pm)
    active = jnp.ones((1,), bool)
    cx, cy, sxx, sxy, syy = _moments_init(image, sigma, pm, psf, noise_known)
    x0 = dict(xy=jnp.stack([cx, cy]), chol=jnp.stack(_chol_params(sxx, sxy, syy)))
    n_used = jnp.maximum(jnp.sum(pm), 1.0)

    def templates(x):
        cov = _cov_from_chol(*x["chol"])
        t = _gaussian_template(x["xy"][0], x["xy"][1], cov, h, w, psf, config)
        return jnp.broadcast_to(t, (h, w, bands)).astype(dtype)[None]

    def chi2(x):
        t = templates(x)
        f = jax.lax.stop_gradient(solve_fluxes(t, image, weight, active))  # envelope theorem
        model = jnp.sum(t * f[:, None, None, :], axis=0)
        return jnp.sum(weight * (image - model) ** 2) / n_used  # per pixel: O(1) for L-BFGS

    x = minimise_shapes(chi2, x0, n_steps, method, learning_rate)
    t = templates(x)
    f = solve_fluxes(t, image, weight, active)
    model = t[0] * f[0][None, None, :]
    total = jnp.sum(weight * (image - model) ** 2)
    params = GaussianParams(f[0], x["xy"][0], x["xy"][1], _cov_from_chol(*x["chol"]))
    return GaussianFit(params, model, total, total / n_used)


def fit_gaussian(
    image,
    sigma=None,
    psf=None,
    *,
    n_steps: int = 200,
    method: str = "adam",
    learning_rate: float = 0.05,
    pixel_mask=None,
    config: RenderConfig | None = None,
) -> GaussianFit:
    """Least-squares fit of one bivariate Gaussian to an image (Regier et al. baseline).

    Minimises ``chi^2 = sum_p w_p (d_p - F_b(p) [G(mu, C) * PSF]_p)^2`` with
    ``w_p = mask_p / sigma_p^2`` over pixels and bands: a flux per band, a shared
    centre ``mu`` and covariance ``C = L L^T`` (``L`` lower triangular with
    log-diagonal, so ``C`` stays positive definite). Fluxes are solved exactly for
    each shape (linear least squares); ``mu`` and ``L`` start from thresholded image
    moments (PSF moments subtracted) and take ``n_steps`` optax steps: Adam with a
    cosine-decayed learning rate, or L-BFGS with a zoom line search
    (``optax.lbfgs``). ``chi^2`` is summed in the image's dtype.

    Args:
      image: ``(..., h, w, bands)``; leading axes are a batch (vmapped). NaN/inf
        pixels are masked with a warning.
      sigma: per-pixel noise std broadcastable to ``image`` (> 0), or None for
        unit weights (plain least squares).
      psf: optional ``(psf_h, psf_w, bands)`` pixel-level effective PSF (odd sizes);
        the fitted covariance is then that of the intrinsic profile.
      n_steps: optimiser steps (static).
      method: ``"adam"`` or ``"lbfgs"``.
      learning_rate: Adam's initial learning rate (pixels and log-pixels).
      pixel_mask: optional weights broadcastable to ``image`` (1 = use, 0 = ignore).
      config: :class:`~galjax.sim.RenderConfig` for the pixel integration
        (default :data:`GAUSSIAN_RENDER`).

    Returns:
      :class:`GaussianFit` with leading batch axes.

    >>> p = GaussianParams(jnp.array([500.0]), jnp.array(10.3), jnp.array(11.6),
    ...                    jnp.array([[6.0, 1.0], [1.0, 4.0]]))
    >>> fit = fit_gaussian(render_gaussian(p, 24, 24), sigma=1.0)
    >>> round(float(fit.params.flux[0])), round(float(fit.params.x), 2)
    (500, 10.3)
    """
    check_steps(n_steps, learning_rate, method)
    image, sig, psf, pm = check_fit_inputs(image, sigma, psf, pixel_mask)
    cfg = GAUSSIAN_RENDER if config is None else config
    core = functools.partial(
        _fit_gaussian, n_steps=int(n_steps), method=method,
        learning_rate=float(learning_rate), config=cfg, noise_known=sigma is not None,
    )  # fmt: skip
    return batched(core, image.shape[:-3], (image, 3), (sig, 3), (pm, 3), psf)


def gaussian_best_sigma_loglik(image, model, mask=None):
    """Log-likelihood of the pixels under ``N(model, sigma^2 I)`` at the best ``sigma``.

    ``log L(sigma) = -n/2 log(2 pi sigma^2) - RSS / (2 sigma^2)`` with
    ``RSS = sum_p m_p (x_p - mu_p)^2`` and ``n = sum_p m_p`` over pixels and bands
    is maximal at ``sigma^2 = RSS / n`` (the mean squared residual), where

    ``max_sigma log L = -n/2 (log(2 pi RSS / n) + 1)``  [nats].

    Pixels more probable under a model's likelihood than this bound are more
    probable than under ``N(model, sigma I)`` for every ``sigma`` (the comparison
    of Regier et al.'s VAE with a Gaussian fit). A perfect fit (``RSS = 0``) gives
    ``+inf``.

    Args:
      image: ``(..., h, w, bands)`` pixels; NaN/inf pixels are masked with a warning.
      model: the mean, same shape.
      mask: optional weights broadcastable to ``image`` (1 = use, 0 = ignore).

    Returns:
      ``(...)`` log-likelihood in nats (the best ``sigma`` is ``sqrt(RSS / n)``).

    >>> x = jnp.array([1.0, -1.0, 1.0, -1.0]).reshape(2, 2, 1)
    >>> round(float(gaussian_best_sigma_loglik(x, jnp.zeros((2, 2, 1)))), 4)  # -2 (log 2 pi + 1)
    -5.6758
    """
    image = check_image("image", image)
    model = check_image("model", model)
    if image.shape != model.shape:
        raise ValueError(
            f"image, model: expected equal shapes, got {image.shape} and {model.shape}"
        )
    dtype = np.promote_types(image.dtype, model.dtype)
    image, model = image.astype(dtype), model.astype(dtype)
    m = None
    if mask is not None:
        m = broadcast_as("mask", as_float_array("mask", mask, dtype), image.shape)
    image, m = mask_nonfinite("image", image, m)
    model, m = mask_nonfinite("model", model, m)
    return _best_sigma_loglik(image, model, m)


@jax.jit
def _best_sigma_loglik(image, model, m):
    axes = (-3, -2, -1)
    n = jnp.sum(m, axis=axes)
    rss = jnp.sum(m * (image - model) ** 2, axis=axes)
    safe_n = jnp.maximum(n, 1.0)
    return -0.5 * n * (jnp.log(2.0 * jnp.pi * rss / safe_n) + 1.0)
