"""Pure image transforms on ``(..., height, width, bands)`` arrays.

Every function here is a pure function of its inputs and works under ``jax.jit``
and ``jax.vmap``; shape arguments (``height``, ``width``, ``out_shape``, ``k``,
``size``) must be static (Python ints) under ``jit``. Stochastic transforms take a
PRNG key first. Leading batch axes are allowed everywhere.

Geometry conventions (shared with :mod:`galjax.io`): pixel centres sit at integer
indices, ``x`` is the column and ``y`` the row. ``crop_or_pad`` keeps the *centre
pixel* (index ``n // 2``, the FFT/GalSim convention for odd and even sizes) in
place; ``rotate`` and ``resample`` work about the *geometric centre*
``((w - 1) / 2, (h - 1) / 2)``.

The heavier transforms validate their arguments in the public function (outside
any trace) and then call a private ``jax.jit``-compiled kernel: called eagerly
they compile once per shape instead of dispatching dozens of small ops one by
one, and under the caller's own ``jit`` the kernel is simply inlined.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import check_image, check_positive, check_range

__all__ = [
    "arcsinh_stretch",
    "crop_or_pad",
    "cutouts",
    "flip",
    "gaussian_smear",
    "inverse_arcsinh_stretch",
    "normalise",
    "perturb_pixels",
    "random_dihedral",
    "resample",
    "rot90",
    "rotate",
]

_NORMALISE_METHODS = ("max", "sum", "percentile", "std")


def _as_param(name: str, value, dtype, ndim: int):
    """A scalar or per-band parameter as an array of ``dtype`` that broadcasts.

    Per-band values ``(bands,)`` get leading unit axes up to ``ndim`` so that they
    broadcast against ``(..., h, w, bands)`` under ``rank_promotion="raise"``.
    """
    arr = jnp.asarray(value)
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"{name}: expected a real number or array, got dtype {arr.dtype}")
    arr = arr.astype(dtype)
    if arr.ndim > ndim:
        raise ValueError(f"{name}: expected at most {ndim} dimensions, got shape {arr.shape}")
    return arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)


def arcsinh_stretch(x, sigma, scale=1.0):
    """Arcsinh stretch ``y = scale * arcsinh(x / sigma)``.

    Linear for ``|x| << sigma`` and logarithmic for ``|x| >> sigma``, so faint
    structure near the noise level and bright cores both stay visible; unlike a
    log stretch it is defined for negative (noise) pixels. This is the asinh
    magnitude of Lupton, Gunn & Szalay (1999, AJ 118, 1406) applied per
    pixel, without the magnitude offset. Written by hand because astropy's
    ``AsinhStretch`` works on [0, 1]-normalised numpy data and is not jit-able.

    Args:
      x: image ``(..., h, w, bands)``.
      sigma: softening (> 0), scalar or per band ``(bands,)``, in the units of
        ``x`` (typically the background noise rms).
      scale: output multiplier (scalar or ``(bands,)``).

    Returns:
      The stretched image, same shape and dtype as ``x``.

    >>> y = arcsinh_stretch(jnp.ones((4, 4, 1)), sigma=0.5)
    >>> bool(jnp.allclose(y, jnp.arcsinh(2.0)))
    True
    """
    x = check_image("x", x)
    check_positive("sigma", sigma)
    sigma = _as_param("sigma", sigma, x.dtype, x.ndim)
    scale = _as_param("scale", scale, x.dtype, x.ndim)
    return scale * jnp.arcsinh(x / sigma)


def inverse_arcsinh_stretch(y, sigma, scale=1.0):
    """Invert :func:`arcsinh_stretch`: ``x = sigma * sinh(y / scale)``.

    Args:
      y: stretched image ``(..., h, w, bands)``.
      sigma: the softening used in the forward stretch (> 0).
      scale: the output multiplier used in the forward stretch (non-zero).

    Returns:
      The image in the original units, same shape as ``y``.

    >>> x = jnp.linspace(-3.0, 100.0, 8).reshape(2, 4, 1)
    >>> bool(jnp.allclose(inverse_arcsinh_stretch(arcsinh_stretch(x, 2.0), 2.0), x))
    True
    """
    y = check_image("y", y)
    check_positive("sigma", sigma)
    sigma = _as_param("sigma", sigma, y.dtype, y.ndim)
    scale = _as_param("scale", scale, y.dtype, y.ndim)
    return sigma * jnp.sinh(y / scale)


def normalise(x, method: str = "max", q: float = 99.5, per_band: bool = False):
    """Divide each image by a scale and return the scale so it can be undone.

    Methods: ``"max"`` (peak pixel), ``"sum"`` (total flux), ``"percentile"``
    (``q``-th percentile of the pixels, robust to a few hot pixels) and
    ``"std"`` (pixel standard deviation). The scale is computed per image over
    ``(h, w, bands)``, or per band with ``per_band=True``. Undo with
    ``x = y * scale``.

    Args:
      x: image ``(..., h, w, bands)``.
      method: one of ``"max"``, ``"sum"``, ``"percentile"``, ``"std"``.
      q: percentile in [0, 100] for ``method="percentile"``.
      per_band: one scale per band instead of one per image.

    Returns:
      ``(y, scale)``: the normalised image (same shape as ``x``) and the scale,
      shaped ``(..., 1, 1, 1)`` or ``(..., 1, 1, bands)``. A scale that is not
      positive (blank or negative image) is replaced by 1, so ``y`` never
      becomes inf/NaN.

    >>> y, s = normalise(jnp.full((2, 2, 1), 4.0), "sum")
    >>> float(s.squeeze()), float(y.sum())
    (16.0, 1.0)
    """
    x = check_image("x", x)
    if method not in _NORMALISE_METHODS:
        raise ValueError(f"method: expected one of {_NORMALISE_METHODS}, got {method!r}")
    check_range("q", q, 0.0, 100.0)
    return _normalise(x, method, jnp.asarray(q, x.dtype), bool(per_band))


@functools.partial(jax.jit, static_argnames=("method", "per_band"))
def _normalise(x, method, q, per_band):
    axes = (-3, -2) if per_band else (-3, -2, -1)
    if method == "max":
        scale = jnp.max(x, axis=axes, keepdims=True)
    elif method == "sum":
        scale = jnp.sum(x, axis=axes, keepdims=True)
    elif method == "std":
        scale = jnp.std(x, axis=axes, keepdims=True)
    else:
        scale = jnp.percentile(x, q, axis=axes, keepdims=True)
    # A zero or negative scale would give inf/NaN or flip the sign: use 1 instead.
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    return x / scale, scale


def _check_size(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"{name}: expected a static Python int, got {type(n).__name__}")
    if n <= 0:
        raise ValueError(f"{name}: expected a positive size, got {n}")
    return int(n)


def _centre_crop_pad_axis(x, axis: int, target: int):
    """Crop or zero-pad one axis to ``target`` keeping index ``n // 2`` at ``target // 2``."""
    n = x.shape[axis]
    if n > target:
        start = n // 2 - target // 2
        return jax.lax.slice_in_dim(x, start, start + target, axis=axis)
    if n < target:
        before = target // 2 - n // 2
        pad = [(0, 0)] * x.ndim
        pad[axis] = (before, target - n - before)
        return jnp.pad(x, pad)
    return x


def crop_or_pad(x, height: int, width: int):
    """Centre-crop or zero-pad images to ``(height, width)``.

    The centre pixel (index ``n // 2`` along each axis) stays the centre pixel
    (index ``target // 2``), so a PSF or galaxy centred on it stays centred
    whatever the parities.

    Args:
      x: image ``(..., h, w, bands)``.
      height: output height (static int).
      width: output width (static int).

    Returns:
      ``(..., height, width, bands)`` array.

    >>> crop_or_pad(jnp.ones((5, 3, 2)), 4, 4).shape
    (4, 4, 2)
    """
    x = check_image("x", x)
    height = _check_size("height", height)
    width = _check_size("width", width)
    x = _centre_crop_pad_axis(x, x.ndim - 3, height)
    return _centre_crop_pad_axis(x, x.ndim - 2, width)


def rot90(x, k: int = 1):
    """Rotate images by ``k`` quarter turns, as :func:`numpy.rot90` on ``(h, w)``.

    Counter-clockwise when displayed with row 0 at the top (matplotlib's default
    ``origin="upper"``); clockwise with ``origin="lower"``.

    Args:
      x: image ``(..., h, w, bands)``.
      k: number of quarter turns (static int, any sign).

    Returns:
      ``(..., w, h, bands)`` for odd ``k``, else ``(..., h, w, bands)``.

    >>> rot90(jnp.zeros((2, 3, 1))).shape
    (3, 2, 1)
    """
    x = check_image("x", x)
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k: expected a static Python int, got {type(k).__name__}")
    return jnp.rot90(x, int(k), axes=(x.ndim - 3, x.ndim - 2))


def flip(x, axis: str):
    """Mirror images left-right (``axis="x"``) or top-bottom (``axis="y"``).

    Args:
      x: image ``(..., h, w, bands)``.
      axis: ``"x"`` reverses the columns, ``"y"`` the rows.

    Returns:
      The flipped image, same shape.

    >>> flip(jnp.arange(3.0).reshape(1, 3, 1), "x").ravel().tolist()
    [2.0, 1.0, 0.0]
    """
    x = check_image("x", x)
    if axis not in ("x", "y"):
        raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
    return jnp.flip(x, axis=x.ndim - 2 if axis == "x" else x.ndim - 3)


def _dihedral_one(k, img):
    """Symmetry ``k`` (0..7) of one square image: ``rot90^(k % 4)``, mirrored if k >= 4."""

    def branch(quarter_turns: int, mirror: bool):
        def apply(a):
            a = jnp.rot90(a, quarter_turns, axes=(0, 1))
            return jnp.flip(a, axis=1) if mirror else a

        return apply

    branches = [branch(r, m) for m in (False, True) for r in range(4)]
    return jax.lax.switch(k, branches, img)


def random_dihedral(key, x):
    """Apply one of the 8 symmetries of the square, drawn independently per image.

    The dihedral group D4 (4 rotations, each optionally mirrored) leaves the pixel
    grid invariant, so it is a lossless augmentation for orientation-free data.

    Args:
      key: PRNG key.
      x: square images ``(..., n, n, bands)``; each image along the leading axes
        gets its own symmetry.

    Returns:
      The transformed images, same shape.

    >>> y = random_dihedral(jax.random.key(0), jnp.ones((3, 4, 4, 1)))
    >>> y.shape
    (3, 4, 4, 1)
    """
    x = check_image("x", x)
    if x.shape[-3] != x.shape[-2]:
        raise ValueError(f"x: random_dihedral needs square images, got shape {x.shape}")
    return _random_dihedral(key, x)


@jax.jit
def _random_dihedral(key, x):
    flat = x.reshape((-1,) + x.shape[-3:])
    ks = jax.random.randint(key, (flat.shape[0],), 0, 8)
    out = jax.vmap(_dihedral_one)(ks, flat)
    return out.reshape(x.shape)


def _per_plane(fn, x):
    """Apply ``fn`` to every 2-D ``(h, w)`` plane of ``(..., h, w, bands)``."""
    planes = jnp.moveaxis(x, -1, -3).reshape((-1,) + x.shape[-3:-1])
    out = jax.vmap(fn)(planes)
    out = out.reshape(x.shape[:-3] + (x.shape[-1],) + out.shape[-2:])
    return jnp.moveaxis(out, -3, -1)


def rotate(x, angle):
    """Rotate images by an arbitrary angle about their geometric centre.

    Bilinear interpolation with :func:`jax.scipy.ndimage.map_coordinates` (the
    only orders JAX offers are 0 and 1); pixels mapped from outside the image are
    0. Rotation has unit Jacobian, so flux is conserved up to interpolation error
    and whatever leaves the frame. ``rotate(x, k * pi / 2)`` matches
    ``rot90(x, k)`` for square images. Differentiable in ``angle``.

    Args:
      x: image ``(..., h, w, bands)``.
      angle: rotation in radians (scalar, may be traced); positive is the
        :func:`rot90` sense (counter-clockwise with row 0 at the top).

    Returns:
      The rotated image, same shape as ``x``.

    >>> y = rotate(jnp.ones((5, 5, 1)), 0.0)
    >>> bool(jnp.allclose(y, 1.0))
    True
    """
    x = check_image("x", x)
    angle = jnp.asarray(angle)
    if angle.ndim != 0:
        raise ValueError(f"angle: expected a scalar, got shape {angle.shape}")
    return _rotate(x, angle.astype(x.dtype))


@jax.jit
def _rotate(x, angle):
    h, w = x.shape[-3], x.shape[-2]
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=x.dtype) - (h - 1) / 2,
        jnp.arange(w, dtype=x.dtype) - (w - 1) / 2,
        indexing="ij",
    )
    c, s = jnp.cos(angle), jnp.sin(angle)
    # Output pixel (row r, col q) samples the input at the inverse rotation.
    rows = c * yy + s * xx + (h - 1) / 2
    cols = c * xx - s * yy + (w - 1) / 2
    interp = lambda a: jax.scipy.ndimage.map_coordinates(a, [rows, cols], order=1, cval=0.0)
    return _per_plane(interp, x)


def perturb_pixels(key, x, rate, low=None, high=None):
    """Randomly replace pixels by uniform noise (Ren et al. 2019 background model).

    Each pixel value (each band independently) is replaced, with probability
    ``rate``, by a value drawn uniformly in ``[low, high]``. Training a
    "background" model on inputs perturbed this way is the recipe of Ren et al.
    (2019, NeurIPS, "Likelihood Ratios for Out-of-Distribution Detection",
    Sec. 3.1) for the likelihood-ratio score.

    Args:
      key: PRNG key.
      x: image ``(..., h, w, bands)``.
      rate: replacement probability in [0, 1] (scalar, may be traced).
      low: lower bound of the replacement values (scalar or ``(bands,)``);
        default each image's minimum.
      high: upper bound (scalar or ``(bands,)``); default each image's maximum.

    Returns:
      The perturbed image, same shape and dtype as ``x``.

    >>> y = perturb_pixels(jax.random.key(0), jnp.zeros((8, 8, 1)), 1.0, 2.0, 3.0)
    >>> bool(jnp.all((y >= 2.0) & (y <= 3.0)))
    True
    """
    x = check_image("x", x)
    check_range("rate", rate, 0.0, 1.0)
    rate = jnp.asarray(rate, x.dtype)
    if rate.ndim != 0:
        raise ValueError(f"rate: expected a scalar, got shape {rate.shape}")
    axes = (-3, -2, -1)
    if low is None:
        low = jnp.min(x, axis=axes, keepdims=True)
    if high is None:
        high = jnp.max(x, axis=axes, keepdims=True)
    low = _as_param("low", low, x.dtype, x.ndim)
    high = _as_param("high", high, x.dtype, x.ndim)
    return _perturb_pixels(key, x, rate, low, high)


@jax.jit
def _perturb_pixels(key, x, rate, low, high):
    key_mask, key_value = jax.random.split(key)
    replace = jax.random.bernoulli(key_mask, rate, x.shape)
    u = jax.random.uniform(key_value, x.shape, dtype=x.dtype)
    return jnp.where(replace, low + u * (high - low), x)


def gaussian_smear(x, sigma, size: int = 3):
    """Convolve each band with a normalised ``size x size`` Gaussian kernel.

    The "smearing" augmentation of Rustige et al. (2023, RASTI 2, 264,
    "Morphological classification of radio galaxies with wGAN-supported
    augmentation"): a small random blur with ``sigma`` drawn per image.
    ``sigma = 0`` is exactly the identity. The kernel sums to 1, so flux is kept
    except at the border (zero padding, "same" output size).

    Args:
      x: image ``(..., h, w, bands)``.
      sigma: kernel standard deviation in pixels (scalar >= 0, may be traced).
      size: kernel width in pixels (static odd int).

    Returns:
      The smeared image, same shape as ``x``.

    >>> y = gaussian_smear(jnp.ones((5, 5, 1)), 0.0)
    >>> bool(jnp.allclose(y, 1.0))
    True
    """
    x = check_image("x", x)
    size = _check_size("size", size)
    if size % 2 == 0:
        raise ValueError(f"size: expected an odd kernel size, got {size}")
    check_positive("sigma", sigma, allow_zero=True)
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim != 0:
        raise ValueError(f"sigma: expected a scalar, got shape {sigma.shape}")
    return _gaussian_smear(x, sigma, size)


@functools.partial(jax.jit, static_argnames="size")
def _gaussian_smear(x, sigma, size):
    r = jnp.arange(size, dtype=x.dtype) - size // 2
    # sigma = 0 would divide by zero (NaN kernel and NaN gradients): compute with a
    # safe sigma and select the delta kernel instead.
    safe = jnp.where(sigma > 0, sigma, jnp.ones_like(sigma))
    g = jnp.exp(-0.5 * (r / safe) ** 2)
    delta = (r == 0).astype(x.dtype)
    g = jnp.where(sigma > 0, g / jnp.sum(g), delta)
    kernel = jnp.outer(g, g)
    # HIGHEST: on GPUs the default (TF32) convolution would round pixels to ~3
    # significant digits, so sigma = 0 would no longer be the identity.
    conv = lambda a: jax.scipy.signal.convolve2d(
        a, kernel, mode="same", precision=jax.lax.Precision.HIGHEST
    )
    return _per_plane(conv, x)


def resample(x, in_scale, out_scale, out_shape: tuple[int, int], method: str = "lanczos3"):
    """Resample images to a new pixel scale on a centred grid, conserving flux.

    The surface brightness ``x / in_scale**2`` is interpolated with
    :func:`jax.image.scale_and_translate` (antialiased, so downsampling averages
    over the larger output pixels) and multiplied by the output pixel area
    ``out_scale**2``. The geometric centres of the input and output grids are
    aligned. Total flux is conserved for well-sampled sources that lie inside
    both grids.

    Args:
      x: image ``(..., h, w, bands)`` in flux per pixel.
      in_scale: input pixel scale (arcsec/px, > 0; may be traced).
      out_scale: output pixel scale (arcsec/px, > 0; may be traced).
      out_shape: ``(out_h, out_w)`` static output size.
      method: interpolation kernel of ``scale_and_translate``: ``"lanczos3"``,
        ``"lanczos5"``, ``"cubic"`` or ``"linear"``.

    Returns:
      ``(..., out_h, out_w, bands)`` array in flux per output pixel.

    >>> y = resample(jnp.ones((8, 8, 1)), 0.03, 0.06, (4, 4))
    >>> y.shape
    (4, 4, 1)
    """
    x = check_image("x", x)
    if method not in ("lanczos3", "lanczos5", "cubic", "linear"):
        raise ValueError(f"method: expected lanczos3, lanczos5, cubic or linear, got {method!r}")
    if not (isinstance(out_shape, tuple | list) and len(out_shape) == 2):
        raise ValueError(f"out_shape: expected (out_h, out_w), got {out_shape!r}")
    out_h = _check_size("out_shape[0]", out_shape[0])
    out_w = _check_size("out_shape[1]", out_shape[1])
    check_positive("in_scale", in_scale)
    check_positive("out_scale", out_scale)
    in_scale = jnp.asarray(in_scale, x.dtype)
    out_scale = jnp.asarray(out_scale, x.dtype)
    if in_scale.ndim or out_scale.ndim:
        raise ValueError("in_scale, out_scale: expected scalars")
    return _resample(x, in_scale, out_scale, (out_h, out_w), method)


@functools.partial(jax.jit, static_argnames=("out_shape", "method"))
def _resample(x, in_scale, out_scale, out_shape, method):
    (out_h, out_w), (h, w) = out_shape, x.shape[-3:-1]
    zoom = in_scale / out_scale  # output pixels per input pixel
    # scale_and_translate maps pixel-edge coordinates u_out = u_in * zoom + t;
    # matching the grid centres u_in = n_in / 2 -> u_out = n_out / 2 gives t.
    scale = jnp.stack([zoom, zoom])
    translation = jnp.stack([out_h / 2 - zoom * (h / 2), out_w / 2 - zoom * (w / 2)])
    out = jax.image.scale_and_translate(
        x,
        x.shape[:-3] + (out_h, out_w, x.shape[-1]),
        (x.ndim - 3, x.ndim - 2),
        scale,
        translation.astype(x.dtype),
        method=method,
        antialias=True,
    )
    return (out / zoom**2).astype(x.dtype)


def cutouts(image, positions, size: int):
    """``size x size`` cutouts of ``image (h, w, bands)`` centred on ``round(positions)``.

    Args:
      image: ``(h, w, bands)``.
      positions: ``(n, 2)`` centres ``(x, y)`` in pixels; the cutout's central
        pixel ``(size - 1) // 2`` is the pixel nearest each position.
      size: cutout side (static).

    Returns:
      ``(n, size, size, bands)``; pixels outside the image are zero. jit/vmap-safe.

    >>> cutouts(jnp.ones((10, 10, 1)), jnp.array([[0.0, 0.0]]), 3)[0, :, :, 0].sum()
    Array(4., dtype=float32)
    """
    half = (size - 1) // 2
    padded = jnp.pad(image, ((size, size), (size, size), (0, 0)))
    ij = jnp.round(positions).astype(jnp.int32) - half + size

    def one(xy):
        return jax.lax.dynamic_slice(padded, (xy[1], xy[0], 0), (size, size, image.shape[-1]))

    return jax.vmap(one)(ij)
