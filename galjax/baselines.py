"""Baseline measurements against which the deblender and the generative models are judged.

Three classical methods, each a pure function that works under ``jit`` and ``vmap``
(the public wrappers also accept leading batch axes and vmap over them):

- :func:`fit_gaussian`: one bivariate Gaussian (per-band flux, shared centre and
  2x2 covariance) fitted to an image by least squares, the baseline of Regier et
  al.'s VAE for galaxy images; :func:`gaussian_best_sigma_loglik` scores pixels
  under ``N(model, sigma^2 I)`` at the best ``sigma``.
- :func:`fit_scene`: a parametric deblender, one Sersic (or Gaussian) profile per
  detected source, all sources of a field fitted jointly through the PSF.
- :func:`segmentation_fluxes`: no deblending, the flux of each source is the sum
  of the pixels of its segment in a thresholded segmentation of the field.

Fitting minimises ``chi^2 = sum_p w_p (d_p - m_p)^2`` with ``w_p = mask_p / sigma_p^2``
over pixels and bands ``p``. The model is linear in the fluxes, so they are not
optimised by gradient steps: for given shapes they are the exact weighted
least-squares solution (variable projection, Golub & Pereyra 1973), and optax
(Adam or L-BFGS) moves only the non-linear shape parameters. The minimum over the
fluxes has the same minimiser as the joint problem, and Adam needs no per-parameter
learning rates for fluxes that range over orders of magnitude. Fluxes are therefore
unconstrained and may come out negative for sources drowned in noise.

Coordinates are pixels ``(x, y)`` = (column, row), 0-based, pixel centres at
integers; images are ``(..., height, width, bands)``; PSFs are pixel-level effective
PSFs ``(psf_h, psf_w, bands)`` (odd sizes, normalised to unit sum here).

All rendering goes through :func:`galjax.sim.render`, which is float32; the
model is cast to the data's dtype, so the fits also run with ``JAX_ENABLE_X64=1``
(least-squares solves and chi^2 are then float64).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import gammaln

from galjax.core.checks import (
    as_float_array,
    broadcast_as,
    check_image,
    check_positive,
    check_psf,
    is_concrete,
    mask_nonfinite,
)
from galjax.sim import (
    SERSIC_N_RANGE,
    RenderConfig,
    convolve_fft,
    elliptical_radius2,
    gaussian_sb,
    place_stamp,
    render,
)

__all__ = [
    "GaussianParams",
    "GaussianFit",
    "SourceParams",
    "SceneFit",
    "Segmentation",
    "render_gaussian",
    "fit_gaussian",
    "gaussian_best_sigma_loglik",
    "fit_scene",
    "segmentation_fluxes",
    "GAUSSIAN_RENDER",
    "SCENE_RENDER",
    "SCENE_N_RANGE",
]

_F32 = jnp.float32
#: Pixel integration of a smooth Gaussian: 3x3 midpoints with the Laplacian correction
#: of ``pixelate`` are accurate to ~1e-4 of the peak for sigma >= 1 px; no cusp to refine.
GAUSSIAN_RENDER = RenderConfig(oversample=3, refine_levels=0, pad=4)
#: The cheap rendering of :func:`fit_scene`: pixel midpoints with two nested cusp
#: refinements; the PSF is applied once at field level.
SCENE_RENDER = RenderConfig(oversample=1, refine_levels=2, pad=0)
#: Sersic indices reachable by :func:`fit_scene` (a logistic map keeps ``n`` inside).
SCENE_N_RANGE = (0.5, 6.0)
_E_MAX = 0.95  # largest |e| reachable by the fits: |e| -> 1 is a degenerate line


def _standard_promotion():
    # Batching the renderer's dynamic_update_slice concatenates its int32 start
    # indices with a Python 0, which is int64 under x64: strict dtype promotion
    # refuses that, so rendering (all float32) is traced under standard promotion.
    return jax.numpy_dtype_promotion("standard")


# -- results ------------------------------------------------------------------------


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


class SourceParams(NamedTuple):
    """Fitted profile parameters of the sources of one field (leading axis ``n_max``).

    Attributes:
      flux: ``(n_max, bands)`` total flux of the untruncated profile per band.
      x, y: ``(n_max,)`` centres in field pixels (the given positions plus the
        fitted offsets).
      hlr: ``(n_max,)`` half-light radius in pixels (geometric mean of the half-light
        ellipse's semi-axes; ``sigma sqrt(2 ln 2)`` for a Gaussian).
      n: ``(n_max,)`` Sersic index (0.5 for ``profile="gaussian"``, which is a
        Sersic n = 0.5).
      e1, e2: ``(n_max,)`` reduced-shear ellipticity (GalSim convention).

    Entries of padded sources are meaningless (their flux is 0).
    """

    flux: jax.Array
    x: jax.Array
    y: jax.Array
    hlr: jax.Array
    n: jax.Array
    e1: jax.Array
    e2: jax.Array


class SceneFit(NamedTuple):
    """Result of :func:`fit_scene` (one field; batches add leading axes).

    Attributes:
      params: :class:`SourceParams`.
      sources: ``(n_max, h, w, bands)`` each source's PSF-convolved model image in
        the field (zero for padded sources).
      model: ``(h, w, bands)`` sum of ``sources``.
      chi2: ``()`` the minimised weighted sum of squared residuals.
      chi2_per_pixel: ``()`` ``chi2`` divided by the number of unmasked pixel values.
    """

    params: SourceParams
    sources: jax.Array
    model: jax.Array
    chi2: jax.Array
    chi2_per_pixel: jax.Array

    @property
    def fluxes(self) -> jax.Array:
        """``(..., n_max, bands)`` fitted total fluxes (``params.flux``)."""
        return self.params.flux


class Segmentation(NamedTuple):
    """Result of :func:`segmentation_fluxes` (one field; batches add leading axes).

    Attributes:
      fluxes: ``(n_max, bands)`` sum of the field's pixels over each source's segment
        (zero for padded sources and for sources with an empty segment).
      segmap: ``(h, w)`` int32 index of the source owning each pixel, -1 for pixels
        outside every segment.
      npix: ``(n_max,)`` int32 number of pixels in each segment.
    """

    fluxes: jax.Array
    segmap: jax.Array
    npix: jax.Array


# -- boundary checks ----------------------------------------------------------------


def _check_inputs(image, sigma, psf, pixel_mask, name="image"):
    """Common checks: image rank, NaN -> mask, sigma > 0 and broadcastable, PSF."""
    image = check_image(name, image)
    dtype = image.dtype
    pm = None
    if pixel_mask is not None:
        pm = broadcast_as(
            "pixel_mask", as_float_array("pixel_mask", pixel_mask, dtype), image.shape
        )
    image, pm = mask_nonfinite(name, image, pm)
    if sigma is None:
        sig = jnp.ones(image.shape, dtype)
    else:
        sig = broadcast_as("sigma", as_float_array("sigma", sigma, dtype), image.shape)
        check_positive("sigma", sig)
    return image, sig, _check_odd_psf(psf, image.shape[-1]), pm


def _check_odd_psf(psf, bands=None):
    """``check_psf`` (unit sum per band) plus odd sizes; float32 like the renderer."""
    if psf is None:
        return None
    # check_psf divides (h, w, bands) by (bands,): a rank promotion it relies on.
    with jax.numpy_rank_promotion("allow"):
        psf = check_psf("psf", psf, bands=bands).astype(_F32)
    if psf.shape[0] % 2 != 1 or psf.shape[1] % 2 != 1:
        raise ValueError(f"psf: expected odd sizes centred on a pixel, got shape {psf.shape}")
    return psf


def _check_positions(positions, mask, image_shape):
    """Check ``(..., n_max, 2)`` positions and ``(..., n_max)`` mask against the image."""
    batch, (h, w) = image_shape[:-3], image_shape[-3:-1]
    pos = as_float_array("positions", positions)
    if pos.ndim < 2 or pos.shape[-1] != 2 or pos.shape[:-2] != batch:
        raise ValueError(
            f"positions: expected shape {batch + ('n_max', 2)} of (x, y) pixels, got {pos.shape}"
        )
    n_max = pos.shape[-2]
    if n_max < 1:
        raise ValueError("positions: expected at least one source, got n_max = 0")
    if mask is None:
        m = jnp.ones(pos.shape[:-1], bool)
    else:
        m = jnp.asarray(mask)
        if m.shape != pos.shape[:-1]:
            raise ValueError(
                f"mask: expected shape {pos.shape[:-1]} (one per source), got {m.shape}"
            )
        if m.dtype != jnp.bool_:
            m = m != 0
    if is_concrete(pos) and is_concrete(m):
        p, mm = np.asarray(pos), np.asarray(m)
        active = p[mm]
        if not np.all(np.isfinite(active)):
            raise ValueError("positions: expected finite (x, y) for the real sources (mask True)")
        out = (active[:, 0] < -0.5) | (active[:, 0] >= w - 0.5)
        out |= (active[:, 1] < -0.5) | (active[:, 1] >= h - 0.5)
        if np.any(out):
            raise ValueError(
                f"positions: {int(np.sum(out))} source(s) outside the {h}x{w} field "
                f"(x in [-0.5, {w - 0.5}), y in [-0.5, {h - 0.5})), e.g. {active[out][0]}"
            )
    # Padded sources may carry any value (NaN included): park them at the origin.
    pos = jnp.where(m[..., None], pos, jnp.zeros_like(pos))
    return pos, m


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _check_steps(n_steps, learning_rate, method):
    _check_choice("method", method, ("adam", "lbfgs"))
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected > 0, got {learning_rate}")


def _batched(core, batch_shape, *args):
    """Apply a single-image ``core`` over flattened leading batch axes of ``args``.

    Arguments given as ``(array, ndim_single)`` are flattened; others are shared.
    """
    if not batch_shape:
        return core(*(a[0] if isinstance(a, tuple) else a for a in args))
    n = math.prod(batch_shape)
    flat, axes = [], []
    for a in args:
        if isinstance(a, tuple):
            arr, nd = a
            flat.append(arr.reshape((n,) + arr.shape[arr.ndim - nd :]))
            axes.append(0)
        else:
            flat.append(a)
            axes.append(None)
    out = jax.vmap(core, in_axes=tuple(axes))(*flat)
    return jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), out)


# -- shared numerics ----------------------------------------------------------------


def _weights(sigma, pm):
    """``w = mask / sigma^2``, zero where sigma <= 0 (only reachable under jit)."""
    ok = sigma > 0
    safe = jnp.where(ok, sigma, jnp.ones_like(sigma))  # avoids 1/0 -> inf * 0 = NaN
    return jnp.where(ok, pm / safe**2, jnp.zeros_like(sigma))


def _solve_fluxes(templates, data, weight, active):
    """Weighted least-squares fluxes of unit-flux templates, per band.

    Minimises ``sum_p w_p (d_p - sum_i f_ib T_ip)^2`` for each band ``b``: the
    normal equations ``A_b f_b = r_b`` with ``A_bij = sum_p w T_i T_j`` and
    ``r_bi = sum_p w T_i d``.

    Args:
      templates: ``(n, h, w, bands)`` unit-flux model images ``T_i``.
      data: ``(h, w, bands)``; weight: ``(h, w, bands)``.
      active: ``(n,)`` bool; inactive templates must be zero and get flux 0.

    Returns:
      ``(n, bands)`` fluxes.
    """
    hi = jax.lax.Precision.HIGHEST  # TF32 on GPUs would cost ~1e-3 relative in the fluxes
    tw = templates * weight[None]
    a = jnp.einsum("ihwb,jhwb->bij", tw, templates, precision=hi)
    r = jnp.einsum("ihwb,hwb->bi", tw, data, precision=hi)
    n = templates.shape[0]
    eye = jnp.eye(n, dtype=a.dtype)
    diag = jnp.diagonal(a, axis1=1, axis2=2)  # (bands, n)
    scale = jnp.sum(diag, axis=1) / jnp.maximum(jnp.sum(active), 1).astype(a.dtype)
    # A tiny ridge keeps A invertible when two sources coincide (a rank-deficient
    # blend); a unit diagonal for padded sources, whose rows are all zero, gives f = 0.
    ridge = 1e-6 * scale + jnp.finfo(a.dtype).tiny
    inactive = (~active).astype(a.dtype)
    a = a + eye[None] * (ridge[:, None, None] + inactive[None, :, None])
    f = jnp.linalg.solve(a, r[..., None])[..., 0]  # (bands, n)
    return f.T * active[:, None].astype(f.dtype)


def _minimise(fun, x0, n_steps: int, method: str, learning_rate: float):
    """Minimise ``fun(x)`` over a pytree ``x`` with a fixed number of optax steps.

    The objectives minimise over the fluxes inside ``fun``: ``g(x) = min_f chi2(x, f)``.
    Since ``d chi2 / d f = 0`` at the minimiser, ``dg/dx = d chi2 / dx`` at fixed
    ``f*(x)`` (envelope theorem), so ``fun`` stops the gradient through the linear
    solve: the same gradient without differentiating ``linalg.solve``.
    """
    if method == "adam":
        schedule = optax.cosine_decay_schedule(learning_rate, n_steps, alpha=0.02)
        # zero_nans: a NaN gradient from an extreme trial shape would otherwise
        # poison Adam's moments and every later step.
        opt = optax.chain(optax.zero_nans(), optax.adam(schedule))

        def step(carry, _):
            x, state = carry
            value, grad = jax.value_and_grad(fun)(x)
            with jax.numpy_dtype_promotion("standard"):  # optax's decay**count: float ** int32
                updates, state = opt.update(grad, state, x)
            return (optax.apply_updates(x, updates), state), value

    else:
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(fun)

        def step(carry, _):
            x, state = carry
            value, grad = value_and_grad(x, state=state)
            with jax.numpy_dtype_promotion("standard"):  # optax mixes int and float scalars
                updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
            return (optax.apply_updates(x, updates), state), value

    with jax.numpy_dtype_promotion("standard"):
        state0 = opt.init(x0)
    (x, _), _ = jax.lax.scan(step, (x0, state0), None, length=n_steps)
    return x


def _bounded(u, lo, hi):
    """Logistic map of an unconstrained ``u`` onto ``(lo, hi)``."""
    return lo + (hi - lo) * jax.nn.sigmoid(u)


def _unbounded(v, lo, hi):
    """Inverse of :func:`_bounded`."""
    t = (v - lo) / (hi - lo)
    return jnp.log(t) - jnp.log1p(-t)


def _ellipticity(g1, g2):
    """Map unconstrained ``(g1, g2)`` to ``|e| < _E_MAX`` smoothly (identity near 0)."""
    s = _E_MAX / jnp.sqrt(_E_MAX**2 + g1 * g1 + g2 * g2)
    return g1 * s, g2 * s


# -- bivariate Gaussian -------------------------------------------------------------


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
    with _standard_promotion():
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
    psf = _check_odd_psf(psf, flux.shape[-1])
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
    weight = _weights(sigma, pm)
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
        f = jax.lax.stop_gradient(_solve_fluxes(t, image, weight, active))  # envelope theorem
        model = jnp.sum(t * f[:, None, None, :], axis=0)
        return jnp.sum(weight * (image - model) ** 2) / n_used  # per pixel: O(1) for L-BFGS

    x = _minimise(chi2, x0, n_steps, method, learning_rate)
    t = templates(x)
    f = _solve_fluxes(t, image, weight, active)
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
    _check_steps(n_steps, learning_rate, method)
    image, sig, psf, pm = _check_inputs(image, sigma, psf, pixel_mask)
    cfg = GAUSSIAN_RENDER if config is None else config
    core = functools.partial(
        _fit_gaussian, n_steps=int(n_steps), method=method,
        learning_rate=float(learning_rate), config=cfg, noise_known=sigma is not None,
    )  # fmt: skip
    return _batched(core, image.shape[:-3], (image, 3), (sig, 3), (pm, 3), psf)


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


# -- parametric scene fit -----------------------------------------------------------


class _SceneState(NamedTuple):
    """Unconstrained shape parameters of :func:`fit_scene`, each ``(n_max,)``."""

    dx: jax.Array  # offset = max_offset * tanh(dx / max_offset)
    dy: jax.Array
    log_hlr: jax.Array
    u_n: jax.Array  # n = logistic map onto SCENE_N_RANGE
    g1: jax.Array  # e = g * E_MAX / sqrt(E_MAX^2 + |g|^2)
    g2: jax.Array


def _scene_shapes(s: _SceneState, positions, profile, max_offset):
    """Physical (x, y, hlr, n, e1, e2) from the unconstrained state, float32."""
    off = lambda u: max_offset * jnp.tanh(u / max_offset)
    x = positions[:, 0] + off(s.dx)
    y = positions[:, 1] + off(s.dy)
    hlr = jnp.exp(s.log_hlr)
    n = _bounded(s.u_n, *SCENE_N_RANGE) if profile == "sersic" else jnp.full_like(hlr, 0.5)
    e1, e2 = _ellipticity(s.g1, s.g2)
    return x, y, hlr, n, e1, e2


@functools.lru_cache(maxsize=1)
def _sersic_bn_table():
    """``(n, b_n)`` on 1024 points over :data:`~galjax.sim.SERSIC_N_RANGE`, numpy float32.

    ``b_n`` solves ``P(2n, b_n) = 1/2`` as :func:`galjax.sim.sersic_bn` does; it is
    computed once in numpy (``scipy``, a dependency of jax) so that a first call
    inside a ``jit``/``vmap`` trace still gives constants.
    """
    from scipy.special import gammaincinv

    n = np.linspace(*SERSIC_N_RANGE, 1024)
    return n.astype(np.float32), gammaincinv(2.0 * n, 0.5).astype(np.float32)


def _unit_sersic_sb(hlr, n, e1, e2):
    """Unit-flux Sersic ``sb(dx, dy)``: :func:`galjax.sim.sersic_sb` with ``b_n`` tabulated.

    ``sersic_sb`` solves for ``b_n`` (six Newton steps through ``gammainc`` and an
    implicit gradient through its derivative in ``a``) on every call, and
    ``pixelate`` calls the profile once per refinement level: inside an optimiser
    loop that adds to compile and run time. Here ``b_n`` is linearly interpolated
    in a table (1024 points: error ~1e-6, negligible against the fit); the formula
    is otherwise the same (tested against ``sersic_sb``).
    """
    grid, table = _sersic_bn_table()
    b = jnp.interp(n, jnp.asarray(grid), jnp.asarray(table))
    two_n = 2.0 * n
    log_norm = two_n * jnp.log(b) - jnp.log(2.0 * jnp.pi * n) - gammaln(two_n) - 2.0 * jnp.log(hlr)

    def sb(dx, dy):
        r2 = elliptical_radius2(dx, dy, e1, e2)
        # r^(1/n) with r^2 floored: its gradient at r = 0 is infinite for n > 1.
        x = jnp.exp(jnp.log(jnp.maximum(r2 / hlr**2, 1e-30)) / two_n)
        return jnp.exp(log_norm - b * x)

    return sb


def _scene_templates(s, positions, active, h, w, psf, profile, stamp, max_offset, config):
    """Unit-flux source images ``(n_max, h, w, 1 or bands)``, float32, PSF-convolved.

    Each source is rendered into a ``stamp x stamp`` cut-out whose central pixel is
    placed on the source's nearest field pixel; the per-source fields are convolved
    with the PSF at field level (one FFT batched over sources).
    """
    pos = positions.astype(_F32)
    x, y, hlr, n, e1, e2 = _scene_shapes(s, pos, profile, max_offset)
    c = (stamp - 1) / 2.0

    def one(px, py, x, y, hlr, n, e1, e2):
        centre = jnp.stack([c + x - jnp.round(px), c + y - jnp.round(py)])
        if profile == "sersic":
            unit = _unit_sersic_sb(hlr, n, e1, e2)
            sb = lambda dx, dy: unit(dx, dy)[..., None]
        else:  # hlr = sigma sqrt(2 ln 2) for a Gaussian
            sig = hlr / math.sqrt(2.0 * math.log(2.0))
            sb = lambda dx, dy: gaussian_sb(dx, dy, 1.0, sig, e1, e2)[..., None]
        with _standard_promotion():
            img = render(sb, centre, stamp, stamp, None, 1, config)
            return place_stamp(img, px, py, h, w)

    t = jax.vmap(one)(pos[:, 0], pos[:, 1], x, y, hlr, n, e1, e2)
    t = t * active.astype(t.dtype)[:, None, None, None]
    return convolve_fft(t, psf) if psf is not None else t


@functools.partial(
    jax.jit,
    static_argnames=(
        "profile", "n_steps", "method", "learning_rate", "stamp", "max_offset", "init_hlr",
        "config",
    ),
)  # fmt: skip
def _fit_scene(
    field, positions, active, sigma, pm, psf, profile, n_steps, method, learning_rate, stamp,
    max_offset, init_hlr, config,
):  # fmt: skip
    h, w, bands = field.shape
    dtype = field.dtype
    n_max = positions.shape[0]
    weight = _weights(sigma, pm)
    n_used = jnp.maximum(jnp.sum(pm), 1.0)
    z = jnp.zeros((n_max,), _F32)
    n0 = _unbounded(jnp.asarray(1.0, _F32), *SCENE_N_RANGE)  # start exponential
    s0 = _SceneState(z, z, z + math.log(init_hlr), z + n0, z, z)
    args = (positions, active, h, w, psf, profile, stamp, max_offset, config)

    def templates(s):
        t = _scene_templates(s, *args)
        return jnp.broadcast_to(t, (n_max, h, w, bands)).astype(dtype)

    def chi2(s):
        t = templates(s)
        f = jax.lax.stop_gradient(_solve_fluxes(t, field, weight, active))  # envelope theorem
        model = jnp.einsum("ihwb,ib->hwb", t, f)
        return jnp.sum(weight * (field - model) ** 2) / n_used

    s = _minimise(chi2, s0, n_steps, method, learning_rate)
    t = templates(s)
    f = _solve_fluxes(t, field, weight, active)
    sources = t * f[:, None, None, :]
    model = jnp.sum(sources, axis=0)
    total = jnp.sum(weight * (field - model) ** 2)
    x, y, hlr, n, e1, e2 = _scene_shapes(s, positions.astype(_F32), profile, max_offset)
    cast = lambda a: a.astype(dtype)
    params = SourceParams(f, cast(x), cast(y), cast(hlr), cast(n), cast(e1), cast(e2))
    return SceneFit(params, sources, model, total, total / n_used)


def fit_scene(
    field,
    positions,
    mask,
    sigma,
    psf=None,
    *,
    profile: str = "sersic",
    n_steps: int = 200,
    method: str = "adam",
    learning_rate: float = 0.05,
    stamp_size: int = 25,
    max_offset: float = 2.0,
    init_hlr: float = 2.0,
    pixel_mask=None,
    config: RenderConfig | None = None,
) -> SceneFit:
    """Parametric deblending: one Sersic or Gaussian profile per source, fitted jointly.

    The model of a field is ``m = PSF * sum_i F_ib S_i(x_i, y_i, r_i, n_i, e1_i, e2_i)``
    with unit-flux profiles ``S_i`` rendered in ``stamp_size`` cut-outs placed at the
    sources' positions (:func:`galjax.sim.place_stamp`) and one FFT convolution with
    the pixel-level PSF at field level. ``chi^2 = sum_p w_p (d_p - m_p)^2`` with
    ``w_p = pixel_mask_p / sigma_p^2`` is minimised over the shapes by ``n_steps``
    optax steps (Adam, cosine-decayed learning rate, or L-BFGS); the fluxes
    ``F`` (per source and band) are the exact weighted least-squares solution for
    each set of shapes, so they may be negative for undetectable sources.

    Parameterisation (unconstrained for the optimiser): centre offset
    ``max_offset tanh(u / max_offset)`` from ``positions`` in each axis, ``log hlr``,
    ``n`` logistic in :data:`SCENE_N_RANGE` (fixed at 0.5 for ``"gaussian"``),
    ellipticity ``e = g E / sqrt(E^2 + |g|^2)`` with ``E = 0.95``. Starts: zero
    offsets, ``hlr = init_hlr``, ``n = 1``, round.

    Rendering uses ``config`` (default :data:`SCENE_RENDER`: pixel midpoints with two
    nested refinements of the cusp) and truncates each profile at its stamp: for
    sources larger than about ``stamp_size / 8`` half-light radii, raise ``stamp_size``.
    Pure and static-shaped: ``jax.vmap`` over fields works, and leading batch axes
    of ``field`` are vmapped here.

    Args:
      field: ``(..., h, w, bands)`` image; NaN/inf pixels are masked with a warning.
      positions: ``(..., n_max, 2)`` source positions ``(x, y)`` in pixels, inside
        the field for real sources (padded ones may hold anything).
      mask: ``(..., n_max)`` True for real sources (None: all real).
      sigma: per-pixel noise std broadcastable to ``field`` (> 0).
      psf: optional ``(psf_h, psf_w, bands)`` pixel-level effective PSF (odd sizes).
      profile: ``"sersic"`` or ``"gaussian"``.
      n_steps: optimiser steps (static).
      method: ``"adam"`` or ``"lbfgs"``.
      learning_rate: Adam's initial learning rate.
      stamp_size: odd side of each source's cut-out in pixels (static).
      max_offset: largest centre offset from ``positions`` in pixels, per axis.
      init_hlr: starting half-light radius in pixels.
      pixel_mask: optional weights broadcastable to ``field`` (1 = use, 0 = ignore).
      config: :class:`~galjax.sim.RenderConfig` for the cut-outs (its ``pad`` is unused).

    Returns:
      :class:`SceneFit` (with leading batch axes): ``params``, ``sources``
      ``(n_max, h, w, bands)``, ``model``, ``chi2``, ``chi2_per_pixel`` and
      ``fluxes`` ``(n_max, bands)``.

    >>> from galjax import sim
    >>> psf = sim.moffat_psf(3.5, size=15)
    >>> img = sim.render_sersic(400.0, 2.0, 1.0, x=10.0, y=12.0, height=32, width=32, psf=psf)
    >>> fit = fit_scene(img, jnp.array([[10.0, 12.0]]), None, 0.5, psf, n_steps=100)
    >>> bool(abs(float(fit.fluxes[0, 0]) / 400.0 - 1.0) < 0.02)
    True
    """
    _check_choice("profile", profile, ("sersic", "gaussian"))
    _check_steps(n_steps, learning_rate, method)
    if int(stamp_size) != stamp_size or stamp_size < 3 or stamp_size % 2 != 1:
        raise ValueError(f"stamp_size: expected an odd integer >= 3, got {stamp_size}")
    if not max_offset > 0:
        raise ValueError(f"max_offset: expected > 0 pixels, got {max_offset}")
    if not init_hlr > 0:
        raise ValueError(f"init_hlr: expected > 0 pixels, got {init_hlr}")
    if sigma is None:
        raise ValueError("sigma: expected a per-pixel noise std, got None")
    field, sig, psf, pm = _check_inputs(field, sigma, psf, pixel_mask, name="field")
    positions, active = _check_positions(positions, mask, field.shape)
    positions = positions.astype(field.dtype)
    core = functools.partial(
        _fit_scene, profile=profile, n_steps=int(n_steps), method=method,
        learning_rate=float(learning_rate), stamp=int(stamp_size), max_offset=float(max_offset),
        init_hlr=float(init_hlr), config=SCENE_RENDER if config is None else config,
    )  # fmt: skip
    return _batched(
        core, field.shape[:-3], (field, 3), (positions, 2), (active, 1), (sig, 3), (pm, 3), psf
    )


# -- segmentation (no deblending) ---------------------------------------------------

_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _shift(a, dy: int, dx: int, fill):
    """``out[..., i, j] = a[..., i - dy, j - dx]``, ``fill`` where that is outside."""
    p = jnp.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    h, w = a.shape[-2], a.shape[-1]
    return p[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def _detection_snr(field, sigma, pm, smooth: float):
    """Signal-to-noise image ``(h, w)`` of the inverse-variance weighted band sum.

    ``D = sum_b w_b d_b / sqrt(sum_b w_b)`` with ``w = mask / sigma^2`` has unit noise;
    smoothing by a normalised Gaussian ``k`` is followed by division by
    ``sqrt(sum k^2)``, so that the smoothed image has unit noise as well.
    """
    wgt = _weights(sigma, pm)
    sw = jnp.sum(wgt, axis=-1)
    safe = jnp.where(sw > 0, sw, jnp.ones_like(sw))
    snr = jnp.where(sw > 0, jnp.sum(wgt * field, axis=-1) / jnp.sqrt(safe), jnp.zeros_like(sw))
    if smooth > 0:
        r = int(math.ceil(3.0 * smooth))
        t = jnp.arange(-r, r + 1, dtype=field.dtype)
        g = jnp.exp(-0.5 * (t / smooth) ** 2)
        k = g[:, None] * g[None, :]
        k = k / jnp.sum(k)
        snr = convolve_fft(snr[..., None], k[..., None])[..., 0] / jnp.sqrt(jnp.sum(k * k))
    return snr


@functools.partial(jax.jit, static_argnames=("threshold", "smooth"))
def _segment(field, positions, active, sigma, pm, threshold, smooth):
    h, w, _ = field.shape
    n_max = positions.shape[0]
    dtype = field.dtype
    # The segmentation is piecewise constant in the data: no gradient flows through
    # it (and none could through the while_loop); fluxes stay differentiable in field.
    snr = jax.lax.stop_gradient(_detection_snr(field, sigma, pm, smooth))
    foot = (snr > threshold) & jnp.any(pm > 0, axis=-1)
    iy = jnp.clip(jnp.round(positions[:, 1]).astype(jnp.int32), 0, h - 1)
    ix = jnp.clip(jnp.round(positions[:, 0]).astype(jnp.int32), 0, w - 1)
    rows = jnp.arange(h, dtype=jnp.int32)[None, :, None]
    cols = jnp.arange(w, dtype=jnp.int32)[None, None, :]
    seed = (rows == iy[:, None, None]) & (cols == ix[:, None, None]) & active[:, None, None]
    allowed = seed | (foot[None] & active[:, None, None])
    inf = jnp.asarray(jnp.inf, dtype)
    dist0 = jnp.where(seed, jnp.zeros((), dtype), inf)

    # Geodesic (within the footprint) chamfer distance from each source's seed pixel:
    # relax d <- min(d, d(neighbour) + step) over the 8 neighbours until nothing changes.
    def relax(d):
        best = d
        for dy, dx in _NEIGHBOURS:
            step = math.sqrt(2.0) if dy and dx else 1.0
            best = jnp.minimum(best, _shift(d, dy, dx, inf) + step)
        return jnp.where(allowed, best, inf)

    def cond(state):
        _, changed, it = state
        return changed & (it < h * w)  # a geodesic path visits at most h w pixels

    def body(state):
        d, _, it = state
        new = relax(d)
        return new, jnp.any(new < d), it + 1

    dist, _, _ = jax.lax.while_loop(cond, body, (dist0, jnp.asarray(True), jnp.int32(0)))
    # Ties in the chamfer distance go to the source nearer in straight line.
    ex = (cols.astype(dtype) - positions[:, 0, None, None]) ** 2
    ey = (rows.astype(dtype) - positions[:, 1, None, None]) ** 2
    score = dist + 1e-3 * jnp.sqrt(ex + ey)
    owner = jnp.argmin(score, axis=0).astype(jnp.int32)
    segmap = jnp.where(jnp.isfinite(jnp.min(dist, axis=0)), owner, -1)
    onehot = (segmap[None] == jnp.arange(n_max, dtype=jnp.int32)[:, None, None]).astype(dtype)
    fluxes = jnp.einsum("ihw,hwb->ib", onehot, field * pm, precision=jax.lax.Precision.HIGHEST)
    npix = jnp.sum(onehot, axis=(1, 2)).astype(jnp.int32)
    return Segmentation(fluxes, segmap, npix)


def segmentation_fluxes(
    field, positions, mask, sigma, threshold: float = 3.0, smooth: float = 1.0, pixel_mask=None
) -> Segmentation:
    """No-deblending baseline: each source's flux is the sum of its segment's pixels.

    Rule: the detection image is the inverse-variance weighted band sum in units
    of its noise, ``D = sum_b d_b / sigma_b^2 / sqrt(sum_b 1 / sigma_b^2)`` (for one
    band ``d / sigma``), optionally smoothed by a Gaussian of ``smooth`` pixels
    (rescaled to unit noise). The footprint is ``D > threshold`` (for one band and
    no smoothing, pixels above ``threshold * sigma``). Each source grows from the
    pixel containing its position through 8-connected footprint pixels, and a
    pixel belongs to the source with the smallest geodesic (within the footprint,
    chamfer) distance: the nearest source position along the footprint, like a
    watershed from the sources. Footprint pixels connected to no source (noise
    peaks, undetected sources) are left out. A source's own pixel is always in its
    segment. The flux is ``F_ib = sum_{p in segment i} pixel_mask_p d_pb``, so the
    fluxes of all sources add up to the flux of the segmented pixels.

    Pure and static-shaped (``jax.vmap`` over fields works; leading batch axes are
    vmapped here). ``jax.grad`` of the fluxes with respect to ``field`` is the
    indicator of the segment (the segmentation itself gets no gradient).

    Args:
      field: ``(..., h, w, bands)``; NaN/inf pixels are masked with a warning.
      positions: ``(..., n_max, 2)`` source positions ``(x, y)`` in pixels.
      mask: ``(..., n_max)`` True for real sources (None: all real).
      sigma: per-pixel noise std broadcastable to ``field`` (> 0).
      threshold: detection threshold in units of the detection image's noise.
      smooth: Gaussian smoothing std of the detection image in pixels (0: none).
      pixel_mask: optional weights broadcastable to ``field`` (0 = ignore the pixel).

    Returns:
      :class:`Segmentation` ``(fluxes (n_max, bands), segmap (h, w), npix (n_max,))``.

    >>> img = jnp.zeros((9, 12, 1)).at[4, 2:5].set(10.0).at[4, 8:10].set(5.0)
    >>> seg = segmentation_fluxes(img, jnp.array([[3.0, 4.0], [8.0, 4.0]]), None, 1.0,
    ...                           smooth=0.0)
    >>> seg.fluxes[:, 0].tolist(), seg.npix.tolist()
    ([30.0, 10.0], [3, 2])
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number, got {threshold}")
    if not (np.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth: expected a smoothing std >= 0 pixels, got {smooth}")
    if sigma is None:
        raise ValueError("sigma: expected a per-pixel noise std, got None")
    field, sig, _, pm = _check_inputs(field, sigma, None, pixel_mask, name="field")
    positions, active = _check_positions(positions, mask, field.shape)
    positions = positions.astype(field.dtype)
    core = functools.partial(_segment, threshold=float(threshold), smooth=float(smooth))
    return _batched(
        core, field.shape[:-3], (field, 3), (positions, 2), (active, 1), (sig, 3), (pm, 3)
    )
