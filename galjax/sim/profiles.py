"""Analytic surface-brightness profiles and their pixel integration.

Every function here is pure JAX and works under ``jit``, ``vmap`` and ``grad``
with traced parameters. Coordinates are pixels: 0-based, ``x`` = column,
``y`` = row, pixel centres at integers (pixel ``(i, j)`` covers
``[j - 0.5, j + 0.5) x [i - 0.5, i + 0.5)``).

Ellipticity is the reduced shear ``(e1, e2)`` of GalSim (``galsim.Shear(g1, g2)``):
``|e| = (1 - q) / (1 + q)`` with ``q = b / a`` the axis ratio, position angle
``beta = atan2(e2, e1) / 2`` counter-clockwise from the ``x`` axis. The shear is
area preserving, so the half-light radius is the geometric mean ``sqrt(a b)`` of
the half-light ellipse's semi-axes, as in GalSim.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import gammainc, gammaln

__all__ = [
    "SERSIC_N_RANGE",
    "sersic_bn",
    "sersic_sb",
    "gaussian_sb",
    "elliptical_radius2",
    "e_from_q_beta",
    "q_beta_from_e",
    "pixel_grid",
    "pixelate",
]

#: Sersic indices supported with an accurate ``b_n`` (GalSim's range).
SERSIC_N_RANGE = (0.3, 6.2)


def _bn_initial(n):
    # Ciotti & Bertin (1999) asymptotic series, good to ~1e-4 for n > 0.36;
    # Newton steps below make it exact for the whole supported range.
    return (
        2.0 * n
        - 1.0 / 3.0
        + 4.0 / (405.0 * n)
        + 46.0 / (25515.0 * n**2)
        + 131.0 / (1148175.0 * n**3)
        - 2194697.0 / (30690717750.0 * n**4)
    )


@jax.custom_jvp
def sersic_bn(n):
    """Sersic ``b_n``: the root of ``P(2n, b_n) = 1/2`` (regularised lower gamma).

    With this ``b_n`` the half-light radius ``r_e`` of
    ``I(r) = I_0 exp(-b_n (r / r_e)^(1/n))`` encloses half the total flux.
    Computed by Newton's method from the Ciotti & Bertin (1999) series; the
    derivative uses the implicit-function theorem, so ``grad`` is exact.

    Args:
      n: Sersic index, any shape, in [0.3, 6.2].

    Returns:
      ``b_n`` with the shape of ``n``.

    >>> float(sersic_bn(1.0))  # exponential disk
    1.678...
    """
    n = jnp.asarray(n)
    a = 2.0 * n
    b = _bn_initial(n)
    for _ in range(6):
        # P'(b) = b^(a-1) e^-b / Gamma(a), computed in logs to avoid overflow at large n.
        dp = jnp.exp((a - 1.0) * jnp.log(b) - b - gammaln(a))
        b = b - (gammainc(a, b) - 0.5) / dp
    return b


@sersic_bn.defjvp
def _sersic_bn_jvp(primals, tangents):
    (n,), (dn,) = primals, tangents
    b = sersic_bn(n)
    a = 2.0 * n
    # Implicit differentiation of P(2n, b) = 1/2: db/dn = -2 dP/da / dP/db.
    dp_da = jax.grad(lambda aa: jnp.sum(gammainc(aa, b)))(a)
    dp_db = jnp.exp((a - 1.0) * jnp.log(b) - b - gammaln(a))
    return b, -2.0 * dp_da / dp_db * dn


def e_from_q_beta(q, beta):
    """Reduced shear ``(e1, e2)`` from axis ratio ``q`` and position angle ``beta`` (rad)."""
    g = (1.0 - q) / (1.0 + q)
    return g * jnp.cos(2.0 * beta), g * jnp.sin(2.0 * beta)


def q_beta_from_e(e1, e2):
    """Axis ratio and position angle (rad) from the reduced shear ``(e1, e2)``."""
    g = jnp.hypot(e1, e2)
    return (1.0 - g) / (1.0 + g), 0.5 * jnp.arctan2(e2, e1)


def elliptical_radius2(dx, dy, e1, e2):
    """Squared circularised radius ``r^2`` of offsets ``(dx, dy)`` for a sheared profile.

    Implements ``r = |S^-1 d|`` with GalSim's area-preserving shear matrix
    ``S = [[1 + e1, e2], [e2, 1 - e1]] / sqrt(1 - |e|^2)``; written without
    angles so the gradient is smooth at ``e = 0``. The square avoids the
    infinite derivative of ``sqrt`` at ``r = 0``.
    """
    g2 = e1 * e1 + e2 * e2
    u = (1.0 - e1) * dx - e2 * dy
    v = -e2 * dx + (1.0 + e1) * dy
    return (u * u + v * v) / (1.0 - g2)


def sersic_sb(dx, dy, flux, hlr, n, e1=0.0, e2=0.0):
    """Surface brightness of an elliptical Sersic profile (flux per pixel^2).

    ``I(r) = F b_n^(2n) / (2 pi n Gamma(2n) r_e^2) exp(-b_n (r / r_e)^(1/n))``,
    normalised so the untruncated profile integrates to ``flux``.

    Args:
      dx, dy: offsets from the centre in pixels (any broadcastable shapes).
      flux: total flux; hlr: half-light radius in pixels; n: Sersic index.
      e1, e2: reduced-shear ellipticity.

    Returns:
      Surface brightness at the offsets, broadcast shape.
    """
    b = sersic_bn(n)
    r2 = elliptical_radius2(dx, dy, e1, e2)
    two_n = 2.0 * n
    log_norm = two_n * jnp.log(b) - jnp.log(2.0 * jnp.pi * n) - gammaln(two_n) - 2.0 * jnp.log(hlr)
    # (r / r_e)^(1/n) = exp(log(r^2 / r_e^2) / 2n) with r^2 floored: the gradient of
    # r^(1/n) at r = 0 is infinite for n > 1 and would otherwise poison grads with NaN.
    x = jnp.exp(jnp.log(jnp.maximum(r2 / hlr**2, 1e-30)) / two_n)
    return flux * jnp.exp(log_norm - b * x)


def gaussian_sb(dx, dy, flux, sigma, e1=0.0, e2=0.0):
    """Elliptical Gaussian ``F / (2 pi sigma^2) exp(-r^2 / (2 sigma^2))`` (flux per pixel^2)."""
    r2 = elliptical_radius2(dx, dy, e1, e2)
    return flux / (2.0 * jnp.pi * sigma**2) * jnp.exp(-0.5 * r2 / sigma**2)


def pixel_grid(height: int, width: int, oversample: int = 1):
    """Sub-pixel centre coordinates ``(x, y)`` of a ``(height, width)`` stamp.

    Returns two arrays of shape ``(height * oversample, width * oversample)``;
    with ``oversample = 1`` they are the integer pixel centres.
    """
    s = oversample
    ys = jnp.arange(height * s, dtype=jnp.float32) / s - 0.5 + 0.5 / s
    xs = jnp.arange(width * s, dtype=jnp.float32) / s - 0.5 + 0.5 / s
    return jnp.meshgrid(xs, ys, indexing="xy")


def _block_mean(a, kh: int, kw: int, r: int):
    """Mean over ``r x r`` blocks of a ``(kh r, kw r, ...)`` array -> ``(kh, kw, ...)``."""
    return a.reshape(kh, r, kw, r, *a.shape[2:]).mean(axis=(1, 3))


def _update(a, patch, start):
    """Write ``patch`` into ``a`` at ``start = (x, y)`` (rows = y), any trailing axes."""
    # Trailing indices share start's dtype: a Python 0 becomes int64 under x64, and mixed
    # index dtypes are a TypeError.
    tail = (jnp.zeros((), start.dtype),) * (a.ndim - 2)
    return jax.lax.dynamic_update_slice(a, patch, (start[1], start[0]) + tail)


def _refine(sb_fn, centre, origin, cell: float, k: int, r: int, levels: int):
    """Mean surface brightness of the ``k x k`` cells starting at ``origin``.

    Each cell (side ``cell`` pixels) is split into ``r x r`` children; the
    ``k x k`` children nearest ``centre`` are refined again, ``levels`` times.
    Static shapes throughout, so it works under jit/vmap with a traced centre.
    """
    h = cell / r
    n = k * r
    idx = (jnp.arange(n, dtype=jnp.float32) + 0.5) * h
    xx, yy = jnp.meshgrid(origin[0] + idx, origin[1] + idx, indexing="xy")
    vals = sb_fn(xx, yy)
    if levels > 1:
        c = (centre - origin) / h  # centre in child-cell units
        start = jnp.clip(jnp.floor(c - k / 2.0 + 0.5), 0.0, float(n - k)).astype(jnp.int32)
        inner = _refine(sb_fn, centre, origin + start.astype(origin.dtype) * h, h, k, r, levels - 1)
        vals = _update(vals, inner, start)
    return _block_mean(vals, k, k, r)


def pixelate(
    sb_fn: Callable,
    height: int,
    width: int,
    centre=None,
    oversample: int = 3,
    refine_levels: int = 5,
    refine_factor: int = 4,
    refine_cells: int = 8,
    reduce: bool = True,
):
    """Integrate a surface-brightness function over pixels by oversampling.

    Each pixel is split into ``oversample x oversample`` sub-pixels sampled at
    their centres (midpoint rule). Cuspy profiles (Sersic n >~ 2) are not
    resolved by any fixed grid, so around ``centre`` a block of
    ``refine_cells x refine_cells`` sub-pixels is integrated on a grid
    ``refine_factor`` times finer, recursively ``refine_levels`` times, and
    corrected to be midpoint-equivalent for smooth light (see the comment in the
    code). With the defaults an n = 4 profile convolved with a Moffat PSF
    matches GalSim to 4e-4 of the peak at a small extra cost.

    Args:
      sb_fn: ``sb_fn(x, y) -> surface brightness`` (flux per pixel^2), vectorised;
        it may append trailing axes (e.g. bands) to the shape of ``x``.
      height, width: stamp shape in pixels (static).
      centre: ``(2,)`` position ``(x, y)`` of the cusp in pixels, or None.
      oversample: sub-pixels per pixel side (static).
      refine_levels: number of nested refinements around the centre (0 = none).
      refine_factor, refine_cells: refinement ratio and block size (static).
      reduce: if False, return sub-pixel means ``(height * s, width * s)`` in
        flux per pixel^2 instead of pixel fluxes.

    Returns:
      ``(height, width, ...)`` flux per pixel (or sub-pixel surface brightness).
    """
    s = oversample
    xx, yy = pixel_grid(height, width, s)
    vals = sb_fn(xx, yy)
    if centre is None or refine_levels == 0:
        return vals if not reduce else _block_mean(vals + _laplacian(vals) / 24.0, height, width, s)
    centre = jnp.asarray(centre, vals.dtype)
    k = refine_cells
    # Centre in sub-pixel cell units; sub-pixel (0, 0) starts at (-0.5, -0.5).
    c = (centre + 0.5) * s
    hi = jnp.array([width * s - k, height * s - k], c.dtype)
    start = jnp.clip(jnp.floor(c - k / 2.0 + 0.5), 0.0, hi).astype(jnp.int32)
    origin = start.astype(vals.dtype) / s - 0.5
    inner = _refine(sb_fn, centre, origin, 1.0 / s, k, refine_factor, refine_levels)
    # Midpoint samples f(y_c) and cell averages differ by h^2/24 Laplacian(f) + O(h^4).
    # Pixel integration (reduce=True) wants averages everywhere: the midpoint samples
    # get + Laplacian / 24. Convolution with an effective PSF (reduce=False) wants
    # midpoint samples everywhere: the refined block of averages gets - Laplacian / 24.
    # Mixing the two leaves a box blur in part of the image, ~2e-3 of the peak.
    if reduce:
        vals = _update(vals + _laplacian(vals) / 24.0, inner, start)
        return _block_mean(vals, height, width, s)
    lap = _laplacian(_update(vals, inner, start))
    tail = (jnp.zeros((), start.dtype),) * (vals.ndim - 2)  # index dtypes must match
    lap_block = jax.lax.dynamic_slice(lap, (start[1], start[0]) + tail, inner.shape)
    return _update(vals, inner - lap_block / 24.0, start)


def _laplacian(a):
    """5-point discrete Laplacian over the first two axes, edges replicated."""
    p = jnp.pad(a, ((1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * a
