"""Sersic archetype fits: one elliptical Sersic profile per image, vmapped over a batch.

The archetype likelihood ratio of Zanisi et al. (2021) compares a galaxy's
likelihood with that of its smooth archetype: the Sersic profile with the same
global properties (flux per band, half-light radius, index, ellipticity, centre).
:func:`fit_sersic` fits those properties to every image of a batch (Adam through
:func:`galjax.core.optim.minimise`, vmapped) and :func:`render_archetypes` draws the
noiseless archetypes with the same renderer and PSF; put them on a background with
:func:`galjax.sim.add_background` and score with :mod:`galjax.ood`.

Coordinates are pixels ``(x, y)`` = (column, row), 0-based, pixel centres at
integers; images are ``(n, height, width, bands)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.checks import check_image, check_positive, check_psf, is_concrete
from galjax.core.chunks import chunked_map
from galjax.core.optim import minimise
from galjax.fit.common import bounded
from galjax.sim import RenderConfig, render, sersic_sb

__all__ = [
    "FIT_RENDER",
    "SersicFit",
    "FitConfig",
    "moment_guess",
    "fit_sersic",
    "render_archetypes",
]

#: Fast renderer for fitting and archetypes: pixel-centre sampling (with the
#: midpoint Laplacian correction) plus 3 levels of cusp refinement, pixel-level PSF.
FIT_RENDER = RenderConfig(oversample=1, refine_levels=3, refine_cells=4, refine_factor=4, pad=4)


class SersicFit(NamedTuple):
    """Sersic fits of a batch of images (pixel units; leading axis = image).

    Attributes:
      flux: ``(n, bands)`` total flux per band.
      hlr: ``(n,)`` half-light radius [pixels].
      n: ``(n,)`` Sersic index.
      e1, e2: ``(n,)`` reduced-shear ellipticity (GalSim convention).
      x, y: ``(n,)`` centre [pixels, 0-based, x = column].
      chi2: ``(n,)`` reduced chi^2 ``sum((image - model)^2 / sigma^2) / n_pix``
        (about 1 for a good fit to a smooth galaxy; larger where there is detail).
      flux_residual: ``(n,)`` ``sum(image - model) / sum(model)`` over bands.
    """

    flux: jax.Array
    hlr: jax.Array
    n: jax.Array
    e1: jax.Array
    e2: jax.Array
    x: jax.Array
    y: jax.Array
    chi2: jax.Array
    flux_residual: jax.Array


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_sersic` and :func:`render_archetypes`.

    Attributes:
      n_steps: Adam steps per image, int >= 1 (default 300).
      lr: Adam learning rate, > 0 (default 0.05), constant; it acts on the
        unconstrained parameters: log flux, log half-light radius [log pixels],
        logit of ``n`` in ``n_range``, ellipticity pre-image ``a`` and centre [pixels].
      n_range: ``(lo, hi)`` Sersic index interval (default ``(0.5, 6.0)``);
        ``n = lo + (hi - lo) sigmoid(t)`` keeps it inside.
      e_max: largest ``|e|``, in (0, 1) (default 0.95); ``e = e_max a / sqrt(1 + |a|^2)``.
      render: the :class:`~galjax.sim.RenderConfig` of the model images (default
        :data:`FIT_RENDER`).
      chunk: images per compiled vmapped call, int >= 1 (default 256; bounds memory).
    """

    n_steps: int = 300
    lr: float = 0.05
    n_range: tuple[float, float] = (0.5, 6.0)
    e_max: float = 0.95
    render: RenderConfig = FIT_RENDER
    chunk: int = 256


def _sersic_image(theta, height, width, psf, cfg: FitConfig):
    """Render the Sersic of unconstrained parameters ``theta`` -> ``(h, w, bands)``."""
    flux, hlr, n, e1, e2, x, y = _unpack(theta, cfg)
    sb = lambda dx, dy: (
        sersic_sb(dx, dy, 1.0, hlr, n, e1, e2)[..., None] * flux.reshape((1,) * dx.ndim + (-1,))
    )
    return render(sb, jnp.stack([x, y]), height, width, psf, 1, cfg.render)


def _unpack(theta, cfg: FitConfig):
    n = bounded(theta["t_n"], *cfg.n_range)
    a = theta["a_e"]
    # e = e_max * a / sqrt(1 + |a|^2): smooth, |e| < e_max, no angle (atan2 has NaN grads at 0).
    e = cfg.e_max * a / jnp.sqrt(1.0 + jnp.sum(a * a))
    return (
        jnp.exp(theta["log_flux"]),
        jnp.exp(theta["log_hlr"]),
        n,
        e[0],
        e[1],
        theta["xy"][0],
        theta["xy"][1],
    )


def moment_guess(image, sigma):
    """Starting point of a fit from thresholded image moments (one image).

    Pixels of the band sum above ``min(2 sigma_rms, q_95)`` (``sigma_rms`` the rms of
    ``sigma``, ``q_95`` the 95th percentile of the image) give the centroid and the
    second moments ``Q`` (plus 0.1 px^2 on the diagonal);
    ``hlr = 1.18 det(Q)^(1/4)`` (exact for a Gaussian: ``sqrt(2 ln 2) sigma``), clipped
    to ``[0.5, max(h, w) / 2]``, and ``e = (Q_xx - Q_yy, 2 Q_xy) / (Q_xx + Q_yy +
    2 sqrt(det Q))`` in the reduced-shear convention. Pure (works under ``jit``/``vmap``).

    Args:
      image: ``(h, w, bands)`` background-subtracted image (flux per pixel).
      sigma: noise std per pixel, scalar or broadcastable to ``image``.

    Returns:
      dict of ``flux`` ``(bands,)`` (the image sum, floored at 1e-3), ``hlr`` [pixels],
      ``e1``, ``e2``, ``x``, ``y`` [pixels, 0-based] (scalars).

    >>> import jax.numpy as jnp
    >>> img = jnp.zeros((9, 9, 1)).at[4, 6, 0].set(10.0)
    >>> g = moment_guess(img, 1.0)
    >>> float(g["x"]), float(g["y"]), float(g["flux"][0])
    (6.0, 4.0, 10.0)
    """
    img = jnp.sum(image, axis=-1)
    h, w = img.shape
    s = jnp.sqrt(jnp.mean(jnp.asarray(sigma, img.dtype) ** 2))
    thr = jnp.minimum(2.0 * s, jnp.quantile(img, 0.95))
    wgt = jnp.where(img > thr, img, jnp.zeros_like(img))
    tot = jnp.maximum(jnp.sum(wgt), 1e-12)
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=img.dtype), jnp.arange(w, dtype=img.dtype), indexing="ij"
    )
    xc = jnp.sum(wgt * xx) / tot
    yc = jnp.sum(wgt * yy) / tot
    qxx = jnp.sum(wgt * (xx - xc) ** 2) / tot + 0.1
    qyy = jnp.sum(wgt * (yy - yc) ** 2) / tot + 0.1
    qxy = jnp.sum(wgt * (xx - xc) * (yy - yc)) / tot
    det = jnp.maximum(qxx * qyy - qxy**2, 1e-6)
    denom = qxx + qyy + 2.0 * jnp.sqrt(det)
    e1 = (qxx - qyy) / denom
    e2 = 2.0 * qxy / denom
    hlr = 1.18 * det**0.25
    flux = jnp.maximum(jnp.sum(image, axis=(0, 1)), 1e-3 * jnp.ones(image.shape[-1], image.dtype))
    return {
        "flux": flux,
        "hlr": jnp.clip(hlr, 0.5, 0.5 * max(h, w)),
        "e1": e1,
        "e2": e2,
        "x": xc,
        "y": yc,
    }


def _fit_one(image, sigma, psf, cfg: FitConfig):
    h, w, _ = image.shape
    g = moment_guess(image, sigma)
    lo, hi = cfg.n_range
    p0 = (1.5 - lo) / (hi - lo)
    e = jnp.stack([g["e1"], g["e2"]])
    e = e * jnp.minimum(1.0, 0.8 / jnp.maximum(jnp.sqrt(jnp.sum(e * e)), 1e-6))
    # Invert e = e_max a / sqrt(1 + |a|^2): a = e / sqrt(e_max^2 - |e|^2).
    a = e / jnp.sqrt(cfg.e_max**2 - jnp.sum(e * e))
    theta = {
        "log_flux": jnp.log(g["flux"]),
        "log_hlr": jnp.log(g["hlr"]),
        "t_n": jnp.log(p0 / (1.0 - p0)) * jnp.ones((), image.dtype),
        "a_e": a,
        "xy": jnp.stack([g["x"], g["y"]]),
    }
    inv_var = 1.0 / sigma**2

    def loss(th):
        r = image - _sersic_image(th, h, w, psf, cfg)
        return 0.5 * jnp.mean(r * r * inv_var)

    theta, _ = minimise(loss, theta, optax.adam(cfg.lr), cfg.n_steps)
    model = _sersic_image(theta, h, w, psf, cfg)
    flux, hlr, n, e1, e2, x, y = _unpack(theta, cfg)
    chi2 = jnp.mean((image - model) ** 2 * inv_var)
    fres = jnp.sum(image - model) / jnp.maximum(jnp.sum(model), 1e-12)
    return SersicFit(flux, hlr, n, e1, e2, x, y, chi2, fres)


@functools.partial(jax.jit, static_argnames="cfg")
def _fit_batch(images, sigma, psf, cfg):
    return jax.vmap(_fit_one, in_axes=(0, 0, None, None))(images, sigma, psf, cfg)


def fit_sersic(images, sigma, psf=None, config: FitConfig | None = None) -> SersicFit:
    """Fit one elliptical Sersic profile to each image by least squares (vmapped Adam).

    Minimises ``chi^2 / (2 n_pix)`` with ``chi^2 = sum_p (d_p - [PSF * S]_p)^2 / sigma_p^2``
    over pixels and bands, ``S`` the Sersic profile of (flux per band, hlr, n, e1, e2,
    x, y) rendered with ``config.render``, by ``config.n_steps`` Adam steps
    (:func:`galjax.core.optim.minimise`) from a moment-based start
    (:func:`moment_guess`), for every image at once: a jitted ``vmap`` over chunks of
    ``config.chunk`` images (:func:`galjax.core.chunks.chunked_map`, one compiled shape).

    Args:
      images: ``(n, h, w, bands)`` background-subtracted images (flux per pixel), finite.
      sigma: per-pixel noise std (> 0), broadcastable to ``images`` (e.g. ``(n, 1, 1, 1)``).
      psf: None (default) or a pixel-level PSF ``(ph, pw, bands)`` (normalised to unit
        sum here); the fitted parameters are then intrinsic, before the PSF.
      config: :class:`FitConfig` (default ``FitConfig()``).

    Returns:
      :class:`SersicFit` with the parameters and the fit quality per image.

    Example (skipped in the doctests for its compile time; run in ``tests/test_ood.py``):

    >>> import jax.numpy as jnp
    >>> from galjax.sim import render_sersic
    >>> img = render_sersic(800.0, 2.0, 1.0, x=8.0, y=8.0, height=16, width=16)[None]
    >>> fit = fit_sersic(img, 0.1, config=FitConfig(n_steps=150))  # doctest: +SKIP
    >>> round(float(fit.flux[0, 0]) / 800.0, 1), round(float(fit.hlr[0]), 1)  # doctest: +SKIP
    (1.0, 2.0)
    """
    cfg = config or FitConfig()
    x = check_image("images", images)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {x.shape}")
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(
            "images: expected finite values, found NaN/inf (mask or inpaint them first)"
        )
    check_positive("sigma", sigma)
    try:
        s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)
    except ValueError as err:
        raise ValueError(
            f"sigma: expected a shape broadcastable to {x.shape}, got {jnp.shape(sigma)}"
        ) from err
    if psf is not None:
        psf = check_psf("psf", psf, bands=x.shape[-1])
    # pad=False: padding the last chunk to one compiled shape would change its lanes'
    # float32 rounding (XLA vectorises by batch size); the unpadded chunks reproduce
    # the results of the whole batch at once to the last bit.
    fits = chunked_map(
        lambda xi, si: _fit_batch(xi, si, psf, cfg), x, s, chunk_size=cfg.chunk, pad=False
    )
    return jax.tree.map(jnp.asarray, fits)


def render_archetypes(
    fit: SersicFit, height: int, width: int, psf=None, config: FitConfig | None = None
):
    """Noiseless archetype images of fitted Sersic parameters.

    The archetype keeps the fitted flux per band, half-light radius, index,
    ellipticity and centre of each galaxy (Zanisi et al. 2021's "same global
    properties") and is drawn with the same renderer and PSF as the fit. Put it on
    a background with :func:`galjax.sim.add_background`.

    Args:
      fit: :class:`SersicFit` of ``n`` galaxies (``chi2``/``flux_residual`` unused).
      height, width: image size in pixels (static).
      psf: None (default) or the pixel-level PSF ``(ph, pw, bands)`` of the fit.
      config: :class:`FitConfig`; only ``render`` is used (default :data:`FIT_RENDER`).

    Returns:
      ``(n, height, width, bands)`` flux per pixel.

    >>> import jax.numpy as jnp
    >>> one = SersicFit(jnp.array([[100.0]]), *jnp.array([[2.0], [1.0], [0.0], [0.0],
    ...                 [7.5], [7.5]]), None, None)
    >>> img = render_archetypes(one, 16, 16)
    >>> img.shape, round(float(img.sum()) / 100.0, 1)
    ((1, 16, 16, 1), 1.0)
    """
    cfg = config or FitConfig()
    return _render_batch(
        fit.flux, fit.hlr, fit.n, fit.e1, fit.e2, fit.x, fit.y, psf, height, width, cfg.render
    )


@functools.partial(jax.jit, static_argnames=("height", "width", "render_config"))
def _render_batch(flux, hlr, n, e1, e2, x, y, psf, height, width, render_config):
    def one(f, hlr, n, e1, e2, x, y):
        sb = lambda dx, dy: (
            sersic_sb(dx, dy, 1.0, hlr, n, e1, e2)[..., None] * f.reshape((1,) * dx.ndim + (-1,))
        )
        return render(sb, jnp.stack([x, y]), height, width, psf, 1, render_config)

    return jax.vmap(one)(flux, hlr, n, e1, e2, x, y)
