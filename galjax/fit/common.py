"""Pieces shared by the parametric fits of :mod:`galjax.fit`.

- Boundary checks (:func:`check_fit_inputs`, :func:`check_positions`,
  :func:`check_steps`, :func:`fit_psf`) and the vmap over leading batch axes
  (:func:`batched`).
- The weighted linear least-squares flux solve (:func:`solve_fluxes`, variable
  projection) and its weights ``w = mask / sigma^2`` (:func:`pixel_weights`).
- The optimiser of the shape parameters (:func:`minimise_shapes`, on
  :func:`galjax.core.optim.minimise`).
- Bounded reparametrisations: logistic :func:`bounded` / :func:`unbounded` and the
  smooth ellipticity map :func:`bounded_ellipticity`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.checks import (
    as_float_array,
    broadcast_as,
    check_image,
    check_odd_psf,
    check_positive,
    is_concrete,
    mask_nonfinite,
)
from galjax.core.optim import minimise

__all__ = [
    "E_MAX",
    "FIT_METHODS",
    "standard_promotion",
    "fit_psf",
    "check_fit_inputs",
    "check_positions",
    "check_choice",
    "check_steps",
    "batched",
    "pixel_weights",
    "solve_fluxes",
    "minimise_shapes",
    "bounded",
    "unbounded",
    "bounded_ellipticity",
]

#: Largest ``|e|`` reachable by the Gaussian and scene fits: ``|e| -> 1`` is a degenerate line.
E_MAX = 0.95
#: Optimisers of :func:`minimise_shapes`.
FIT_METHODS = ("adam", "lbfgs")


def standard_promotion():
    """Context manager for rendering inside the fits: standard dtype promotion.

    Batching the renderer's ``dynamic_update_slice`` concatenates its int32 start
    indices with a Python 0, which is int64 under x64: strict dtype promotion refuses
    that, so rendering (all float32) is traced under standard promotion.
    """
    return jax.numpy_dtype_promotion("standard")


# -- boundary checks ----------------------------------------------------------------


def fit_psf(psf, bands: int | None = None):
    """``psf`` checked by :func:`~galjax.core.checks.check_odd_psf`, float32 like the renderer.

    Args:
      psf: ``(psf_h, psf_w, bands)`` pixel-level PSF with odd sizes, or None.
      bands: expected number of bands, or None for any.

    Returns:
      ``(psf_h, psf_w, bands)`` float32 PSF with unit sum per band, or None.
    """
    if psf is None:
        return None
    return check_odd_psf("psf", psf, bands=bands).astype(jnp.float32)


def check_fit_inputs(image, sigma, psf, pixel_mask, name: str = "image"):
    """Common checks: image rank, NaN -> mask, sigma > 0 and broadcastable, PSF.

    Args:
      image: ``(..., h, w, bands)``; non-finite pixels are set to 0 and masked (warning).
      sigma: per-pixel noise std broadcastable to ``image`` (> 0), or None for 1.
      psf: ``(psf_h, psf_w, bands)`` odd-sized PSF, or None.
      pixel_mask: weights broadcastable to ``image`` (1 = use, 0 = ignore), or None.
      name: argument name of ``image`` in messages.

    Returns:
      ``(image, sigma, psf, pixel_mask)``: image-shaped arrays (``psf`` float32 or None).
    """
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
    return image, sig, fit_psf(psf, image.shape[-1]), pm


def check_positions(positions, mask, image_shape):
    """Check ``(..., n_max, 2)`` positions and ``(..., n_max)`` mask against the image.

    Real sources (mask True) must be finite and inside the field
    (``x in [-0.5, w - 0.5)``, ``y in [-0.5, h - 0.5)``); padded ones are set to (0, 0).

    Returns:
      ``(positions, mask)``: float positions and a bool mask (None: all real).
    """
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


def check_choice(name: str, value, choices) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_steps(n_steps, learning_rate, method) -> None:
    """Check the optimiser settings of :func:`minimise_shapes`."""
    check_choice("method", method, FIT_METHODS)
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected > 0, got {learning_rate}")


def batched(core, batch_shape, *args):
    """Apply a single-image ``core`` over flattened leading batch axes of ``args``.

    Arguments given as ``(array, ndim_single)`` are flattened to ``(n, ...)`` and
    vmapped; others are shared. Outputs get the batch axes back.
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


def pixel_weights(sigma, pm):
    """``w = mask / sigma^2``, zero where sigma <= 0 (only reachable under jit)."""
    ok = sigma > 0
    safe = jnp.where(ok, sigma, jnp.ones_like(sigma))  # avoids 1/0 -> inf * 0 = NaN
    return jnp.where(ok, pm / safe**2, jnp.zeros_like(sigma))


def solve_fluxes(templates, data, weight, active):
    """Weighted least-squares fluxes of unit-flux templates, per band.

    Minimises ``sum_p w_p (d_p - sum_i f_ib T_ip)^2`` for each band ``b``: the
    normal equations ``A_b f_b = r_b`` with ``A_bij = sum_p w T_i T_j`` and
    ``r_bi = sum_p w T_i d`` (variable projection, Golub & Pereyra 1973).

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


def minimise_shapes(fun, x0, n_steps: int, method: str, learning_rate: float):
    """Minimise ``fun(x)`` over a pytree ``x`` with ``n_steps`` optax steps.

    ``method="adam"``: ``optax.chain(zero_nans(), adam(schedule))`` with the cosine
    schedule ``learning_rate -> 0.02 learning_rate`` over ``n_steps``;
    ``method="lbfgs"``: ``optax.lbfgs()`` (zoom line search), its gradients taken by
    ``optax.value_and_grad_from_state`` to reuse the line search's evaluations. Both
    run through :func:`galjax.core.optim.minimise` (fixed steps, ``lax.scan``).

    The objectives minimise over the fluxes inside ``fun``: ``g(x) = min_f chi2(x, f)``.
    Since ``d chi2 / d f = 0`` at the minimiser, ``dg/dx = d chi2 / dx`` at fixed
    ``f*(x)`` (envelope theorem), so ``fun`` stops the gradient through the linear
    solve: the same gradient without differentiating ``linalg.solve``.

    Returns:
      The pytree after ``n_steps`` updates.
    """
    if method == "adam":
        schedule = optax.cosine_decay_schedule(learning_rate, n_steps, alpha=0.02)
        # zero_nans: a NaN gradient from an extreme trial shape would otherwise
        # poison Adam's moments and every later step.
        opt = optax.chain(optax.zero_nans(), optax.adam(schedule))
        x, _ = minimise(fun, x0, opt, n_steps)
    else:
        vg = optax.value_and_grad_from_state(fun)
        x, _ = minimise(fun, x0, optax.lbfgs(), n_steps, value_and_grad=lambda p, s: vg(p, state=s))
    return x


# -- bounded reparametrisations -----------------------------------------------------


def bounded(u, lo, hi):
    """Logistic map of an unconstrained ``u`` onto ``(lo, hi)``: ``lo + (hi - lo) sigmoid(u)``."""
    return lo + (hi - lo) * jax.nn.sigmoid(u)


def unbounded(v, lo, hi):
    """Inverse of :func:`bounded`: ``logit((v - lo) / (hi - lo))``."""
    t = (v - lo) / (hi - lo)
    return jnp.log(t) - jnp.log1p(-t)


def bounded_ellipticity(g1, g2, e_max: float = E_MAX):
    """Map unconstrained ``(g1, g2)`` to ``|e| < e_max`` smoothly (identity near 0).

    ``e = g e_max / sqrt(e_max^2 + |g|^2)``.
    """
    s = e_max / jnp.sqrt(e_max**2 + g1 * g1 + g2 * g2)
    return g1 * s, g2 * s
