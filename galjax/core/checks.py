"""Boundary checks shared by galjax's public entry points.

Public functions validate their inputs once, outside ``jit``, and raise a
``ValueError``/``TypeError`` that names the argument, what was expected and what
was given. Under tracing (inside ``jit``/``vmap``/``grad``) value checks are
skipped, because values are unknown; shape checks still run because shapes are
static.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "as_float_array",
    "check_rank",
    "check_image",
    "broadcast_as",
    "check_finite",
    "check_positive",
    "check_range",
    "mask_nonfinite",
    "check_psf",
    "check_probabilities",
    "check_odd_psf",
    "check_psf_centred",
    "InputError",
]


class InputError(ValueError):
    """Bad input to a galjax entry point (a ``ValueError``); the message starts with the
    argument's name and ``": "``, e.g. ``"sigma: expected finite values > 0, got nan"``."""


def is_concrete(x) -> bool:
    """True when ``x`` holds concrete values (not a JAX tracer)."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, x, dtype=None):
    """Convert ``x`` to a floating JAX array, refusing non-numeric input.

    Integer input is converted to float32; float64 input is kept when x64 is on.
    """
    if isinstance(x, str | bytes) or x is None:
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}")
    try:
        arr = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}") from err
    if dtype is not None:
        return arr.astype(dtype)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if not (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_):
            raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        arr = arr.astype(jnp.float32)
    return arr


def check_rank(name: str, x, min_ndim: int, max_ndim: int | None = None, what: str = ""):
    """Raise unless ``min_ndim <= x.ndim <= max_ndim``."""
    nd = jnp.ndim(x)
    hi = min_ndim if max_ndim is None else max_ndim
    if not (min_ndim <= nd <= hi):
        want = f"{min_ndim}" if hi == min_ndim else f"{min_ndim} to {hi}"
        shape_hint = f" {what}" if what else ""
        raise ValueError(
            f"{name}: expected {want} dimensions{shape_hint}, got shape {tuple(jnp.shape(x))}"
        )


def check_image(name: str, x, bands: int | None = None, min_ndim: int = 3):
    """Check an image array ``(..., h, w, bands)`` and return it as float.

    Args:
      name: argument name used in messages.
      x: array-like, at least ``min_ndim`` dimensions.
      bands: expected size of the last axis, or None for any.
      min_ndim: minimum rank (3 for one image ``(h, w, bands)``).
    """
    arr = as_float_array(name, x)
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected an image shaped (..., height, width, bands) with at least "
            f"{min_ndim} dimensions, got shape {arr.shape}; add a trailing band axis with "
            "x[..., None] for single-band images"
        )
    if bands is not None and arr.shape[-1] != bands:
        raise ValueError(
            f"{name}: expected {bands} band(s) on the last axis, got shape {arr.shape}"
        )
    if arr.shape[-2] == 0 or arr.shape[-3] == 0:
        raise ValueError(f"{name}: image is empty, shape {arr.shape}")
    return arr


def broadcast_as(name: str, x, shape):
    """Broadcast ``x`` to ``shape``, raising a ``ValueError`` that names the argument."""
    try:
        return jnp.broadcast_to(x, shape)
    except ValueError as err:
        raise ValueError(
            f"{name}: expected a shape broadcastable to {tuple(shape)}, got {jnp.shape(x)}"
        ) from err


def check_finite(name: str, x):
    """Raise if a concrete array holds NaN or infinity."""
    if is_concrete(x):
        a = np.asarray(x)
        if a.size and not np.all(np.isfinite(a)):
            n_bad = int(np.sum(~np.isfinite(a)))
            raise ValueError(f"{name}: expected finite values, found {n_bad} NaN/inf entries")
    return x


def check_positive(name: str, x, allow_zero: bool = False):
    """Raise if a concrete array has entries <= 0 (or < 0 with ``allow_zero``)."""
    check_finite(name, x)
    if is_concrete(x):
        a = np.asarray(x)
        bad = (a < 0) if allow_zero else (a <= 0)
        if a.size and np.any(bad):
            rel = ">= 0" if allow_zero else "> 0"
            raise ValueError(
                f"{name}: expected values {rel}, got min {float(np.min(a)):.6g} "
                f"({int(np.sum(bad))} offending entries)"
            )
    return x


def check_range(name: str, x, lo: float, hi: float):
    """Raise if a concrete array has entries outside ``[lo, hi]``."""
    check_finite(name, x)
    if is_concrete(x):
        a = np.asarray(x)
        if a.size and (np.min(a) < lo or np.max(a) > hi):
            raise ValueError(
                f"{name}: expected values in [{lo}, {hi}], got range "
                f"[{float(np.min(a)):.6g}, {float(np.max(a)):.6g}]"
            )
    return x


def mask_nonfinite(name: str, x, mask=None):
    """Replace NaN/inf pixels by 0 and return ``(clean, mask)`` with a warning.

    ``mask`` is 1 for good pixels and 0 for bad ones (float, same shape as ``x``);
    an incoming ``mask`` is combined with the non-finite pixels. Works on tracers
    too (then no warning can be issued).

    Returns:
      clean: ``x`` with non-finite entries set to 0.
      mask: float array of the same shape, 1 where the pixel is usable.
    """
    arr = jnp.asarray(x)
    finite = jnp.isfinite(arr)
    if is_concrete(arr):
        n_bad = int(np.sum(~np.asarray(finite)))
        if n_bad:
            warnings.warn(
                f"{name}: {n_bad} non-finite pixel(s) were masked (weight 0)",
                RuntimeWarning,
                stacklevel=3,
            )
    good = finite.astype(arr.dtype)
    if mask is not None:
        good = good * jnp.asarray(mask, arr.dtype)
    return jnp.where(finite, arr, 0.0), good


def check_psf(name: str, psf, bands: int | None = None, normalise: bool = True):
    """Check a pixelised PSF ``(psf_h, psf_w, bands)`` and normalise it to unit sum.

    A PSF whose per-band sum is not positive, or which is not finite, is refused.
    With ``normalise=False`` a PSF that does not sum to 1 within 1e-3 is refused.
    """
    arr = as_float_array(name, psf)
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected shape (psf_h, psf_w, bands), got shape {arr.shape}")
    if bands is not None and arr.shape[-1] != bands:
        raise ValueError(
            f"{name}: expected {bands} band(s) on the last axis, got shape {arr.shape}"
        )
    check_finite(name, arr)
    total = jnp.sum(arr, axis=(0, 1), keepdims=True)
    if is_concrete(total):
        t = np.asarray(total).ravel()
        if np.any(t <= 0):
            raise ValueError(f"{name}: PSF must sum to a positive value per band, got sums {t}")
        if not normalise and np.any(np.abs(t - 1) > 1e-3):
            raise ValueError(f"{name}: PSF must sum to 1 per band, got sums {t}")
    return arr / total if normalise else arr


def check_probabilities(name: str, x) -> None:
    """Refuse non-finite values or values outside ``[0, 1]`` (concrete inputs only)."""
    if is_concrete(x):
        a = np.asarray(x)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: expected finite probabilities, found NaN/inf")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(
                f"{name}: expected probabilities in [0, 1], got range "
                f"[{float(a.min()):.6g}, {float(a.max()):.6g}]"
            )


def check_odd_psf(name: str, psf, bands: int | None = None, normalise: bool = True):
    """Check a PSF (or matched-filter template) ``(psf_h, psf_w, bands)`` with odd sizes.

    Odd sizes put the PSF's centre on its central pixel (index ``size // 2``), the
    convention of :func:`galjax.sim.convolve_fft` and of the fits and filters that
    use it.

    Args:
      name: argument name used in messages.
      psf: array-like ``(psf_h, psf_w, bands)``.
      bands: expected number of bands, or None for any.
      normalise: True (default): check and normalise to unit sum per band with
        :func:`check_psf`; False: check the rank, band count and sizes only and return
        the values unchanged (a template whose scale does not matter).

    Returns:
      The PSF as a float array of the input's float dtype (normalised if asked).

    >>> check_odd_psf("psf", jnp.ones((3, 3, 1))).sum().item()
    1.0
    >>> check_odd_psf("psf", jnp.ones((4, 3, 1)))
    Traceback (most recent call last):
    ...
    ValueError: psf: expected odd sizes so the PSF centre is a pixel, got shape (4, 3, 1)
    """
    if normalise:
        # check_psf divides (h, w, bands) by (1, 1, bands): allow that rank promotion.
        with jax.numpy_rank_promotion("allow"):
            arr = check_psf(name, psf, bands=bands)
    else:
        arr = as_float_array(name, psf)
        if arr.ndim != 3:
            raise ValueError(f"{name}: expected shape (psf_h, psf_w, bands), got shape {arr.shape}")
        if bands is not None and arr.shape[-1] != bands:
            raise ValueError(
                f"{name}: expected {bands} band(s) on the last axis, got shape {arr.shape}"
            )
    if arr.shape[0] % 2 != 1 or arr.shape[1] % 2 != 1:
        raise ValueError(
            f"{name}: expected odd sizes so the PSF centre is a pixel, got shape {arr.shape}"
        )
    return arr


def check_psf_centred(name: str, psf, max_offset: float = 1.0):
    """Refuse a PSF ``(psf_h, psf_w, bands)`` whose centroid is off its central pixel.

    Per band the centroid is ``c = sum_p x_p P_p / sum_p P_p`` (``x_p = (x, y)`` the pixel
    indices) and the central pixel ``((psf_w - 1) / 2, (psf_h - 1) / 2)``; a distance
    ``|c - centre| > max_offset`` pixels is refused: a PSF stored off centre would shift
    every model drawn with it. Host-side numpy (concrete input only; tracers pass).

    Args:
      name: argument name used in messages.
      psf: array-like ``(psf_h, psf_w, bands)`` with a positive sum per band
        (:func:`check_psf`).
      max_offset: largest distance allowed, in pixels; default 1.

    Returns:
      ``psf``, unchanged.

    >>> p = np.zeros((5, 5, 1)); p[2, 2] = 1.0
    >>> check_psf_centred("psf", p).shape
    (5, 5, 1)
    >>> p = np.zeros((11, 11, 1)); p[5, 10] = 1.0
    >>> check_psf_centred("psf", p)
    Traceback (most recent call last):
    ...
    ValueError: psf: centroid (dx, dy) = (5, 0) px from the central pixel in band 0; ...
    """
    if not is_concrete(psf):
        return psf
    a = np.asarray(psf, np.float64)
    if a.ndim != 3:
        raise ValueError(f"{name}: expected shape (psf_h, psf_w, bands), got shape {a.shape}")
    total = a.sum(axis=(0, 1))
    y, x = np.arange(a.shape[0]), np.arange(a.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = np.einsum("hwb,w->b", a, x) / total - (a.shape[1] - 1) / 2
        dy = np.einsum("hwb,h->b", a, y) / total - (a.shape[0] - 1) / 2
    dist = np.hypot(dx, dy)
    bad = ~(dist <= max_offset)
    if np.any(bad):
        b = int(np.argmax(bad))
        raise ValueError(
            f"{name}: centroid (dx, dy) = ({dx[b]:.3g}, {dy[b]:.3g}) px from the central pixel in "
            f"band {b}; expected within {max_offset:g} px (a PSF centred on its central pixel)"
        )
    return psf


def check_labels(name: str, labels, n_classes: int | None = None, n: int | None = None):
    """Check integer class labels ``(n,)`` in ``[0, n_classes)``; return them as int32 numpy.

    Floating-point labels holding whole numbers (``1.0``) are accepted and converted.

    Args:
      name: argument name used in messages.
      labels: 1-D array-like of class indices.
      n_classes: number of classes, or None for no range check.
      n: expected number of labels (one per example), or None for any.

    Raises:
      ValueError: not 1-D, not ``n`` labels, or an index outside ``[0, n_classes)``.
      TypeError: not integer class indices.

    >>> check_labels("labels", [0, 2, 1], n_classes=3).tolist()
    [0, 2, 1]
    >>> check_labels("labels", [0, 3], n_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: labels: expected class indices in [0, 3), got range [0, 3]
    """
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {lab.shape}")
    if n is not None and lab.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per example), got {lab.shape[0]}")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int32)
        else:
            raise TypeError(f"{name}: expected integer class indices, got dtype {lab.dtype}")
    if n_classes is not None and lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(
            f"{name}: expected class indices in [0, {n_classes}), got range "
            f"[{int(lab.min())}, {int(lab.max())}]"
        )
    return lab.astype(np.int32)


__all__ += ["check_labels"]
