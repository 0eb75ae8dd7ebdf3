"""Peak finding on detection maps and the detection pipeline :func:`detect`.

Peaks of the SNR map of :mod:`galjax.detect.filtering` above a threshold are the
detections. Everything here is pure JAX and works under ``jit`` and ``vmap``
(static shapes: a fixed number of output slots with a mask).

Positions are ``(x, y)`` = (column, row) in 0-based pixels with pixel centres at
integers (add 1 for FITS/SExtractor coordinates).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from galjax.core.checks import check_image, check_odd_psf, is_concrete, mask_nonfinite
from galjax.detect.filtering import (
    COMBINE_METHODS,
    check_broadcastable,
    check_noise,
    snr_map_kernel,
)

__all__ = ["Peaks", "Detections", "find_peaks", "detect"]


class Peaks(NamedTuple):
    """Peaks of a detection map, padded to a static ``max_peaks``.

    Attributes:
      positions: ``(..., max_peaks, 2)`` sub-pixel ``(x, y)`` in 0-based pixels;
        0 where ``mask`` is False.
      values: ``(..., max_peaks)`` map value at the peak pixel, in descending
        order; 0 where ``mask`` is False.
      mask: ``(..., max_peaks)`` bool, True for real peaks (they come first).
    """

    positions: jax.Array
    values: jax.Array
    mask: jax.Array


class Detections(NamedTuple):
    """Output of :func:`detect`.

    Attributes:
      positions: ``(..., max_peaks, 2)`` ``(x, y)`` 0-based pixels.
      snr: ``(..., max_peaks)`` detection SNR at each peak, descending.
      mask: ``(..., max_peaks)`` bool, True for real detections.
      snr_map: ``(..., h, w, 1)`` the combined detection image.
    """

    positions: jax.Array
    snr: jax.Array
    mask: jax.Array
    snr_map: jax.Array


# ---------------------------------------------------------------- peak finding

# 3x3 least-squares quadratic fit f = a + b x + c y + d x^2 + e x y + g y^2 on the
# offsets {-1, 0, 1}^2: the basis is orthogonal after centring x^2 and y^2, so
# each coefficient is one weighted sum of the nine samples.
_OFF = np.array([-1.0, 0.0, 1.0])
_GX = np.tile(_OFF, (3, 1))  # column offset (x), rows = y
_GY = _GX.T
_QUAD_WEIGHTS = np.stack(
    [_GX / 6.0, _GY / 6.0, (_GX**2 - 2.0 / 3.0) / 2.0, _GX * _GY / 4.0, (_GY**2 - 2.0 / 3.0) / 2.0]
)  # (5, 3, 3) -> b, c, d, e, g


def _quadratic_offset(patch):
    """Sub-pixel ``(dx, dy)`` of the maximum of the quadratic fitted to ``(..., 3, 3)`` patches.

    The stationary point solves ``[[2d, e], [e, 2g]] [dx, dy] = -[b, c]``. Where
    the fit is not a maximum (Hessian not negative definite, e.g. flat plateaus)
    the offset is 0; it is clipped to +-0.5 px (the maximum of a smooth peak lies
    within half a pixel of its brightest sample).
    """
    coef = jnp.einsum("...ij,kij->...k", patch, jnp.asarray(_QUAD_WEIGHTS, patch.dtype))
    b, c, d, e, g = (coef[..., i] for i in range(5))
    det = 4.0 * d * g - e * e
    ok = (d < 0) & (g < 0) & (det > 0)
    safe = jnp.where(ok, det, 1.0)
    dx = jnp.where(ok, (-2.0 * g * b + e * c) / safe, 0.0)
    dy = jnp.where(ok, (e * b - 2.0 * d * c) / safe, 0.0)
    return jnp.clip(jnp.stack([dx, dy], axis=-1), -0.5, 0.5)


def _find_peaks_2d(snr, threshold, min_separation, border, max_peaks, window, n_candidates):
    """Peaks of one ``(h, w)`` map; see :func:`find_peaks`."""
    h, w = snr.shape
    dtype = snr.dtype
    neg_inf = jnp.asarray(-jnp.inf, dtype)
    local_max = lax.reduce_window(snr, neg_inf, lax.max, (window, window), (1, 1), "SAME")
    rows = jnp.arange(h, dtype=jnp.int32).reshape(h, 1)  # int32 like top_k's indices
    cols = jnp.arange(w, dtype=jnp.int32).reshape(1, w)
    inside = (rows >= border) & (rows < h - border) & (cols >= border) & (cols < w - border)
    is_peak = (snr >= local_max) & (snr > threshold) & inside
    scores = jnp.where(is_peak, snr, neg_inf).reshape(-1)
    k = max(n_candidates, max_peaks)
    if k > h * w:  # tiny maps: pad so top_k can return k entries
        scores = jnp.concatenate([scores, jnp.full((k - h * w,), neg_inf, dtype)])
    values, flat = lax.top_k(scores, k)  # descending
    valid = values > neg_inf
    flat = jnp.minimum(flat, h * w - 1)
    iy, ix = flat // w, flat % w

    # Sub-pixel refinement from the 3x3 neighbourhood (edge-padded at the border).
    padded = jnp.pad(snr, 1, mode="edge")
    off = jnp.arange(3, dtype=jnp.int32)
    patch = padded[
        iy.reshape(k, 1, 1) + off.reshape(1, 3, 1), ix.reshape(k, 1, 1) + off.reshape(1, 1, 3)
    ]
    pos = jnp.stack([ix, iy], axis=-1).astype(dtype) + _quadratic_offset(patch)

    # Greedy non-maximum suppression in descending order of value: keep a
    # candidate unless a kept one lies closer than min_separation.
    sep2 = jnp.square(jnp.asarray(min_separation, dtype))

    def step(carry, i):
        kept, count = carry
        d2 = jnp.sum(jnp.square(pos - pos[i].reshape(1, 2)), axis=-1)
        suppressed = jnp.any(kept & (d2 < sep2))
        keep = valid[i] & ~suppressed & (count < max_peaks)
        return (kept.at[i].set(keep), count + keep.astype(jnp.int32)), None

    init = (jnp.zeros((k,), bool), jnp.zeros((), jnp.int32))
    (kept, _), _ = lax.scan(step, init, jnp.arange(k, dtype=jnp.int32))

    # The kept candidates, still in descending order, into max_peaks slots.
    rank = jnp.where(kept, k - jnp.arange(k, dtype=jnp.int32), -1)
    _, sel = lax.top_k(rank, max_peaks)
    mask = kept[sel]
    positions = jnp.where(mask.reshape(max_peaks, 1), pos[sel], 0.0)
    return Peaks(positions, jnp.where(mask, values[sel], 0.0), mask)


def _check_peak_args(threshold, min_separation, max_peaks, border, window):
    if not isinstance(max_peaks, int | np.integer) or max_peaks < 1:
        raise ValueError(f"max_peaks: expected a positive int, got {max_peaks!r}")
    if not isinstance(window, int | np.integer) or window < 3 or window % 2 != 1:
        raise ValueError(f"window: expected an odd int >= 3, got {window!r}")
    if is_concrete(border) and (np.ndim(border) != 0 or int(border) != border or border < 0):
        raise ValueError(f"border: expected an int >= 0, got {border!r}")
    for name, val in (("threshold", threshold), ("min_separation", min_separation)):
        if is_concrete(val):
            a = np.asarray(val)
            if a.ndim != 0 or not np.isfinite(a):
                raise ValueError(f"{name}: expected a finite scalar, got {val!r}")
    if is_concrete(min_separation) and float(min_separation) < 0:
        raise ValueError(f"min_separation: expected a value >= 0, got {min_separation!r}")


def find_peaks(
    snr_map,
    threshold=5.0,
    min_separation=3.0,
    max_peaks: int = 256,
    border: int = 0,
    window: int = 3,
    n_candidates: int | None = None,
):
    """Local maxima above a threshold with greedy non-maximum suppression, static shapes.

    1. Candidates are pixels equal to the maximum of their ``window x window``
       neighbourhood, above ``threshold`` and at least ``border`` pixels from the
       edge; the ``n_candidates`` highest are taken with ``lax.top_k``.
    2. Each is refined to sub-pixel accuracy by the maximum of a least-squares
       quadratic fitted to its 3x3 neighbourhood (offset clipped to +-0.5 px).
    3. Greedy suppression (``lax.scan``): in descending order, a candidate is kept
       unless a kept peak lies closer than ``min_separation`` pixels; at most
       ``max_peaks`` are kept.

    Works under ``jit`` (``max_peaks``, ``window``, ``n_candidates`` static;
    ``threshold``, ``min_separation`` and ``border`` may be traced) and ``vmap``; a map
    with leading batch axes is processed image by image.

    Args:
      snr_map: ``(..., h, w, 1)`` detection image (see
        :func:`~galjax.detect.filtering.combine_snr`).
      threshold: minimum peak value (exclusive), same units as the map.
      min_separation: minimum distance in pixels between kept peaks.
      max_peaks: number of output slots (static).
      border: ignore peaks closer than this many pixels to the edge.
      window: odd side of the local-maximum window (static, >= 3).
      n_candidates: local maxima considered for suppression (static); default
        ``4 * max_peaks``. Raise it if many peaks are suppressed.

    Returns:
      :class:`Peaks` with ``positions (..., max_peaks, 2)`` as ``(x, y)`` 0-based
      pixels, ``values (..., max_peaks)`` descending and ``mask (..., max_peaks)``.

    >>> import jax.numpy as jnp
    >>> m = jnp.zeros((9, 9, 1)).at[4, 6, 0].set(7.0)
    >>> p = find_peaks(m, threshold=5.0, max_peaks=2)
    >>> p.positions[0].tolist(), p.mask.tolist()
    ([6.0, 4.0], [True, False])
    """
    snr_map = check_image("snr_map", snr_map, bands=None)
    if snr_map.shape[-1] != 1:
        raise ValueError(
            f"snr_map: expected one band on the last axis (h, w, 1), got shape {snr_map.shape}; "
            "merge bands with combine_snr first"
        )
    _check_peak_args(threshold, min_separation, max_peaks, border, window)
    n_cand = 4 * int(max_peaks) if n_candidates is None else int(n_candidates)
    return _find_peaks_jit(
        snr_map,
        jnp.asarray(threshold, snr_map.dtype),
        jnp.asarray(min_separation, snr_map.dtype),
        jnp.asarray(border, jnp.int32),
        int(max_peaks),
        int(window),
        n_cand,
    )


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _find_peaks_jit(snr_map, threshold, min_separation, border, max_peaks, window, n_cand):
    lead = snr_map.shape[:-3]
    maps = snr_map[..., 0].reshape((-1,) + snr_map.shape[-3:-1])
    fn = functools.partial(_find_peaks_2d, max_peaks=max_peaks, window=window, n_candidates=n_cand)
    out = jax.vmap(fn, in_axes=(0, None, None, None))(maps, threshold, min_separation, border)
    return Peaks(*(x.reshape(lead + x.shape[1:]) for x in out))


# ---------------------------------------------------------------- pipeline


def detect(
    image,
    psf,
    noise,
    threshold=5.0,
    min_separation=3.0,
    max_peaks: int = 256,
    background=None,
    mask=None,
    combine: str = "quadrature",
    border: int = 0,
):
    """Detect point-like sources: subtract background, matched-filter, combine bands, find peaks.

    ``snr_map = combine_snr(matched_filter(image - background, psf, noise), combine)``
    then ``find_peaks(snr_map, threshold, min_separation, max_peaks, border)``.
    Inputs are checked once here (outside ``jit``): NaN/inf image pixels are
    masked with a warning, ``noise`` must be > 0 (``inf`` marks unusable pixels),
    the PSF is normalised per band (refused if it does not sum to a positive
    finite value) and must have odd sizes. The whole function also runs under
    ``jax.jit`` (``max_peaks``, ``combine`` static).

    The SNR assumes uncorrelated pixel noise. Co-added or resampled images have
    correlated noise, and then the SNR map's rms in blank sky exceeds 1: raise the
    threshold by that factor (measured on a real field in benchmarks/README.md,
    section "Detection on the ESO/NTT field vs SExtractor"), or whiten with
    :func:`~galjax.detect.filtering.matched_filter_fourier` when the noise power spectrum
    is known.

    Args:
      image: ``(..., h, w, bands)`` image in counts.
      psf: ``(psf_h, psf_w, bands)`` effective PSF.
      noise: per-pixel background noise standard deviation, broadcastable to
        ``image`` (e.g. SExtractor's rms map, or a scalar).
      threshold: detection threshold on the combined SNR map (sigma for one band).
      min_separation: minimum distance between detections in pixels.
      max_peaks: static number of output slots.
      background: scalar or map broadcastable to ``image`` subtracted first; None
        if the image is already background-subtracted (see
        :func:`galjax.image.background.estimate_background`).
      mask: optional weights broadcastable to ``image``, 1 = good, 0 = bad.
      combine: multi-band merge, see :func:`~galjax.detect.filtering.combine_snr`.
      border: ignore peaks closer than this many pixels to the edge.

    Returns:
      :class:`Detections`.

    >>> import jax
    >>> from galjax.sim import gaussian_psf
    >>> psf = gaussian_psf(3.0, size=11)
    >>> img = jax.random.normal(jax.random.key(0), (32, 32, 1))
    >>> img = img.at[10:21, 5:16].add(200.0 * psf)  # a source at (x, y) = (10, 15)
    >>> det = detect(img, psf, noise=1.0, max_peaks=4)
    >>> det.positions[0].round().tolist(), int(det.mask.sum())
    ([10.0, 15.0], 1)
    """
    image = check_image("image", image)
    psf = check_odd_psf("psf", psf, bands=image.shape[-1]).astype(image.dtype)
    if combine not in COMBINE_METHODS:
        raise ValueError(f"combine: expected one of {COMBINE_METHODS}, got {combine!r}")
    _check_peak_args(threshold, min_separation, max_peaks, border, 3)
    noise = check_noise(noise, image)
    mask = None if mask is None else check_broadcastable("mask", mask, image, "weights")
    image, good = mask_nonfinite("image", image)
    if background is not None:
        background = check_broadcastable("background", background, image, "a background map")
        background = mask_nonfinite("background", background)
    snr_map = snr_map_kernel(image, good, psf, noise, mask, background, combine)
    peaks = find_peaks(snr_map, threshold, min_separation, max_peaks, border)
    return Detections(peaks.positions, peaks.values, peaks.mask, snr_map)
