"""Source detection: matched filtering, peak finding and background estimation.

A point source of flux ``F`` at pixel ``x0`` gives pixels ``d_p = F phi(p - x0) + n_p``
with PSF ``phi`` and Gaussian noise ``n``. The matched filter is the linear
statistic that maximises the signal-to-noise ratio of ``F`` (Bertin 2001,
"Mining pixels"; in Fourier space ``H(k) = conj(Phi(k)) / P(k)``). galjax
normalises it so that its output is a **detection SNR map**: in pure noise each
pixel of the map is a unit-variance Gaussian, and at a source it is the flux
estimate divided by its standard deviation,

``S(x) = sum_p w_p phi(p - x) d_p / sqrt(sum_p w_p phi(p - x)^2)``,  ``w_p = 1 / sigma_p^2``.

Peaks of ``S`` above a threshold (``find_peaks``) are the detections. Everything in
the pipeline except :func:`estimate_background` and :func:`match_positions`
(numpy, outside ``jit``) is pure JAX and works under ``jit`` and ``vmap``.

Positions are ``(x, y)`` = (column, row) in 0-based pixels with pixel centres at
integers (add 1 for FITS/SExtractor coordinates).

Multi-band images ``(..., h, w, bands)`` are filtered band by band (one PSF per
band); :func:`combine_snr` merges the per-band SNR maps into one detection image
(quadrature sum of the positive parts by default, or the chi^2 image of Szalay,
Connolly & Szokoly 1999).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from astropy.stats import sigma_clip
from jax import lax

from galjax.core.checks import (
    as_float_array,
    check_image,
    check_psf,
    is_concrete,
    mask_nonfinite,
)
from galjax.sim.psf import convolve_fft

__all__ = [
    "Background",
    "Detections",
    "Matches",
    "Peaks",
    "combine_snr",
    "detect",
    "estimate_background",
    "find_peaks",
    "match_positions",
    "matched_filter",
    "matched_filter_fourier",
    "noise_power_spectrum",
]

_COMBINE = ("quadrature", "chi2", "sum")


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


class Background(NamedTuple):
    """Background and background-rms maps (host numpy, float32, image shape)."""

    background: np.ndarray
    rms: np.ndarray


class Matches(NamedTuple):
    """One-to-one matches between found and true positions (:func:`match_positions`).

    Attributes:
      found_index: ``(m,)`` int indices into the found list.
      true_index: ``(m,)`` int indices into the true list.
      distance: ``(m,)`` separations in pixels.
      completeness: ``m / n_true`` (fraction of true sources recovered).
      purity: ``m / n_found`` (fraction of detections that are real).
    """

    found_index: np.ndarray
    true_index: np.ndarray
    distance: np.ndarray
    completeness: float
    purity: float


# ---------------------------------------------------------------- matched filter


def _flip(psf):
    """``phi(-u)``: correlating with ``phi`` is convolving with its flip."""
    return psf[::-1, ::-1, :]


def _snr_map(image, weight, psf):
    """Inverse-variance matched filter; ``weight`` = mask / variance, same shape as image.

    Numerator and denominator are linear FFT convolutions with the flipped PSF
    (and its square), so edges and masked pixels lose exactly the weight they lack.
    """
    flipped = _flip(psf)
    num = convolve_fft(image * weight, flipped)
    den = convolve_fft(weight, flipped * flipped)
    # FFT round-off leaves |den| ~ 1e-7 max(den) where the weight is zero; dividing
    # by it would turn noise into huge SNR, so such pixels are set to 0.
    tol = 1e-5 * jnp.max(den, axis=(-3, -2), keepdims=True)
    ok = den > tol
    return jnp.where(ok, num / jnp.sqrt(jnp.where(ok, den, 1.0)), 0.0)


def _check_odd_psf(name, psf):
    if psf.shape[0] % 2 != 1 or psf.shape[1] % 2 != 1:
        raise ValueError(
            f"{name}: expected odd stamp sizes so the PSF centre is a pixel, got shape {psf.shape}"
        )


def _checked_psf(psf, image):
    """``psf`` checked, normalised to unit sum per band, odd-sized, in the image's dtype."""
    # check_psf divides (h, w, bands) by (bands,): a rank promotion it relies on.
    with jax.numpy_rank_promotion("allow"):
        psf = check_psf("psf", psf, bands=image.shape[-1]).astype(image.dtype)
    _check_odd_psf("psf", psf)
    return psf


def _checked_broadcastable(name, x, image, what):
    """``x`` as a float array of the image's dtype whose shape broadcasts to the image's."""
    x = as_float_array(name, x).astype(image.dtype)
    try:
        ok = np.broadcast_shapes(x.shape, image.shape) == image.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: expected {what} broadcastable to the image shape {image.shape}, "
            f"got shape {x.shape}"
        )
    return x


def _checked_noise(noise, image):
    """Boundary checks on ``noise``: > 0 where finite; ``inf`` means "no information"."""
    if noise is None:
        return None
    noise = _checked_broadcastable("noise", noise, image, "a per-pixel standard deviation")
    if is_concrete(noise):
        a = np.asarray(noise)
        bad = np.isnan(a) | (a <= 0)
        if np.any(bad):
            raise ValueError(
                f"noise: expected a standard deviation > 0 (inf marks unusable pixels), "
                f"found {int(np.sum(bad))} NaN or non-positive entries "
                f"(min {float(np.nanmin(a)):.6g})"
            )
    return noise


def _weight(image, good, noise, mask):
    """``w = good * mask / noise^2`` broadcast to the image (0 where ``noise`` is inf)."""
    w = good
    if noise is not None:
        noise = jnp.broadcast_to(noise, image.shape)
        w = w * jnp.where(jnp.isinf(noise), 0.0, 1.0 / jnp.square(noise))
    if mask is not None:
        w = w * jnp.broadcast_to(mask, image.shape)
    return w


@functools.partial(jax.jit, static_argnames="combine")
def _filter_core(image, good, psf, noise, mask, background=None, combine=None):
    """Background subtraction, weights and matched filter in one compiled function."""
    if background is not None:
        bg, bg_good = background
        image = image - jnp.broadcast_to(bg, image.shape)
        good = good * jnp.broadcast_to(bg_good, image.shape)
    snr = _snr_map(image, _weight(image, good, noise, mask), psf)
    return snr if combine is None else combine_snr(snr, combine)


def matched_filter(image, psf, noise=None, mask=None):
    """Per-band detection SNR map of a point source (PSF-matched filter).

    With per-pixel noise ``sigma_p`` (weights ``w_p = m_p / sigma_p^2``, ``m`` the
    mask) the maximum-likelihood flux of a point source centred on pixel ``x`` is
    ``F(x) = sum_p w_p phi(p - x) d_p / sum_p w_p phi(p - x)^2`` with variance
    ``1 / sum_p w_p phi(p - x)^2``, so its SNR is

    ``S(x) = [(d w) * flip(phi)](x) / sqrt([w * flip(phi)^2](x))``

    (``*`` = convolution; correlating with ``phi`` = convolving with ``phi``
    flipped). For white noise (``noise`` constant or None) this is Bertin's
    ``H(k) = conj(Phi(k)) / P(k)`` applied with linear (zero-padded) boundaries:
    ``S = (d * flip(phi)) / (sigma ||phi||_2)`` away from the edges. In pure noise
    ``S`` has unit variance; thresholds are in sigma.

    Args:
      image: ``(..., h, w, bands)`` background-subtracted image.
      psf: ``(psf_h, psf_w, bands)`` effective PSF with odd sizes (normalised to
        unit sum here; the SNR does not depend on the PSF's normalisation).
      noise: per-pixel noise standard deviation broadcastable to ``image``
        (``inf`` = unusable pixel), or None for unit white noise (the output is
        then the SNR in units of the pixel noise).
      mask: optional ``(..., h, w, bands)`` broadcastable weights, 1 = good, 0 = bad.

    Returns:
      ``(..., h, w, bands)`` SNR map (0 where no usable pixel lies under the PSF).

    >>> import jax.numpy as jnp
    >>> from galjax.sim import gaussian_psf
    >>> psf = gaussian_psf(3.0, size=15)
    >>> img = 10.0 * psf  # a point source of flux 10 at the centre of a 15x15 stamp
    >>> snr = matched_filter(img, psf, noise=0.1)
    >>> round(float(snr[7, 7, 0]), 1)  # = flux ||psf||_2 / sigma
    21.6
    """
    image = check_image("image", image)
    psf = _checked_psf(psf, image)
    image, good = mask_nonfinite("image", image)
    noise = _checked_noise(noise, image)
    mask = None if mask is None else _checked_broadcastable("mask", mask, image, "weights")
    return _filter_core(image, good, psf, noise, mask)


def _centred_on_grid(template, h, w):
    """Zero-pad a centred ``(th, tw, bands)`` template to ``(h, w)`` with its centre at (0, 0)."""
    th, tw = template.shape[0], template.shape[1]
    full = jnp.zeros((h, w, template.shape[-1]), template.dtype).at[:th, :tw].set(template)
    return jnp.roll(full, (-(th // 2), -(tw // 2)), axis=(0, 1))


def matched_filter_fourier(image, template, power_spectrum):
    """Matched-filter SNR map for stationary coloured noise, ``H(k) = conj(Phi(k)) / P(k)``.

    The noise is stationary on the periodic ``h x w`` grid with power spectrum
    ``P(k) = E|FFT(n)(k)|^2 / (h w)`` (numpy's unnormalised FFT; white noise of
    variance ``sigma^2`` has ``P = sigma^2`` everywhere; see
    :func:`noise_power_spectrum`). The filtered map and its noise level are

    ``s(x) = IFFT[conj(Phi) D / P](x)``,   ``Var s = mean_k |Phi(k)|^2 / P(k)``,

    and the result is ``s / sqrt(Var s)``: the SNR of a source shaped like the
    template centred on pixel ``x``, which equals ``t_x^T C^-1 d / sqrt(t_x^T C^-1 t_x)``
    for the circulant noise covariance ``C``. Boundaries are periodic.

    Args:
      image: ``(..., h, w, bands)``.
      template: ``(th, tw, bands)`` source profile (usually the PSF), odd sizes,
        ``th <= h``, ``tw <= w``, centred on its central pixel.
      power_spectrum: ``(h, w, bands)`` noise power on the full ``fft2`` grid
        (``P[0, 0]`` = zero frequency), positive.

    Returns:
      ``(..., h, w, bands)`` SNR map.

    >>> import jax.numpy as jnp
    >>> from galjax.sim import gaussian_psf
    >>> psf = gaussian_psf(3.0, size=15)
    >>> white = jnp.full((15, 15, 1), 0.01)  # sigma = 0.1
    >>> snr = matched_filter_fourier(10.0 * psf, psf, white)
    >>> round(float(snr[7, 7, 0]), 1)
    21.6
    """
    image = check_image("image", image)
    h, w, bands = image.shape[-3:]
    template = as_float_array("template", template).astype(image.dtype)
    if template.ndim != 3 or template.shape[-1] != bands:
        raise ValueError(
            f"template: expected shape (th, tw, {bands}) matching the image bands, "
            f"got {template.shape}"
        )
    _check_odd_psf("template", template)
    if template.shape[0] > h or template.shape[1] > w:
        raise ValueError(
            f"template: expected a stamp no larger than the image ({h}, {w}), got {template.shape}"
        )
    power = as_float_array("power_spectrum", power_spectrum).astype(image.dtype)
    if power.shape != (h, w, bands):
        raise ValueError(
            f"power_spectrum: expected shape {(h, w, bands)} (full fft2 grid), got {power.shape}"
        )
    if is_concrete(power):
        a = np.asarray(power)
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(
                f"power_spectrum: expected finite values > 0, got min {float(np.nanmin(a)):.6g}"
            )
    return _fourier_core(image, template, power)


@jax.jit
def _fourier_core(image, template, power):
    h, w = image.shape[-3], image.shape[-2]
    phi = jnp.fft.fft2(_centred_on_grid(template, h, w), axes=(0, 1))
    filt = jnp.conj(phi) / power.astype(phi.dtype)  # Bertin's H(k)
    data = jnp.fft.fft2(image, axes=(-3, -2))
    s = jnp.real(
        jnp.fft.ifft2(data * filt.reshape((1,) * (data.ndim - 3) + filt.shape), axes=(-3, -2))
    )
    var = jnp.mean(jnp.abs(phi) ** 2 / power, axis=(0, 1))
    return (s / jnp.sqrt(var).reshape((1,) * (s.ndim - 1) + var.shape)).astype(image.dtype)


def noise_power_spectrum(noise):
    """Periodogram ``P(k) = <|FFT(n)(k)|^2> / (h w)`` of noise images, averaged over leading axes.

    Args:
      noise: ``(..., h, w, bands)`` zero-mean noise realisations (or blank sky).

    Returns:
      ``(h, w, bands)``, in the normalisation :func:`matched_filter_fourier` expects.

    >>> import jax
    >>> p = noise_power_spectrum(jax.random.normal(jax.random.key(0), (64, 16, 16, 1)))
    >>> p.shape
    (16, 16, 1)
    """
    return _periodogram(check_image("noise", noise))


@jax.jit
def _periodogram(noise):
    h, w = noise.shape[-3], noise.shape[-2]
    power = jnp.abs(jnp.fft.fft2(noise, axes=(-3, -2))) ** 2 / (h * w)
    return jnp.mean(power.reshape((-1,) + power.shape[-3:]), axis=0)


def combine_snr(snr, method: str = "quadrature"):
    """Merge per-band SNR maps ``(..., h, w, bands)`` into one detection image ``(..., h, w, 1)``.

    Methods:
      ``"quadrature"``: ``sqrt(sum_b max(S_b, 0)^2)``, the quadrature sum of the
        positive parts. With one band it is ``max(S, 0)``, so thresholds keep their
        meaning in sigma; with ``B`` bands the pure-noise tail is heavier (a
        half-chi with ``B`` degrees of freedom), so raise the threshold a little.
      ``"chi2"``: ``sum_b S_b^2``, the chi^2 detection image of Szalay, Connolly &
        Szokoly (1999, AJ 117, 68), chi^2 with ``B`` degrees of freedom in pure
        noise; the threshold is then in chi^2 units (e.g. 25 for "5 sigma" in one
        band). Negative fluctuations count as well as positive ones.
      ``"sum"``: ``sum_b S_b / sqrt(B)``, unit variance in pure noise and optimal
        for sources with equal SNR in every band.

    >>> import jax.numpy as jnp
    >>> combine_snr(jnp.full((4, 4, 2), 3.0)).shape
    (4, 4, 1)
    """
    if method not in _COMBINE:
        raise ValueError(f"method: expected one of {_COMBINE}, got {method!r}")
    snr = check_image("snr", snr)
    bands = snr.shape[-1]
    if method == "quadrature":
        return jnp.sqrt(jnp.sum(jnp.square(jnp.maximum(snr, 0.0)), axis=-1, keepdims=True))
    if method == "chi2":
        return jnp.sum(jnp.square(snr), axis=-1, keepdims=True)
    return jnp.sum(snr, axis=-1, keepdims=True) / math.sqrt(bands)


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
      snr_map: ``(..., h, w, 1)`` detection image (see :func:`combine_snr`).
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
    correlated noise, and then the SNR map's rms in blank sky exceeds 1 (1.23 on
    the ESO/NTT field of ``benchmarks/detect_sep.py``, where threshold 7 maximises
    F1 against SExtractor): raise the threshold by that factor, or whiten with
    :func:`matched_filter_fourier` when the noise power spectrum is known.

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
        :func:`estimate_background`).
      mask: optional weights broadcastable to ``image``, 1 = good, 0 = bad.
      combine: multi-band merge, see :func:`combine_snr`.
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
    psf = _checked_psf(psf, image)
    if combine not in _COMBINE:
        raise ValueError(f"combine: expected one of {_COMBINE}, got {combine!r}")
    _check_peak_args(threshold, min_separation, max_peaks, border, 3)
    noise = _checked_noise(noise, image)
    mask = None if mask is None else _checked_broadcastable("mask", mask, image, "weights")
    image, good = mask_nonfinite("image", image)
    if background is not None:
        background = _checked_broadcastable("background", background, image, "a background map")
        background = mask_nonfinite("background", background)
    snr_map = _filter_core(image, good, psf, noise, mask, background, combine)
    peaks = find_peaks(snr_map, threshold, min_separation, max_peaks, border)
    return Detections(peaks.positions, peaks.values, peaks.mask, snr_map)


# ---------------------------------------------------------------- background


def _mesh_stats(pixels, sigma):
    """SExtractor's mesh estimate: clipped mode ``2.5 med - 1.5 mean`` (or median) and rms.

    As in SExtractor's ``backstat``/``backguess``: the mean and std ``s'`` of the
    pixels within ``mean +- 2 std`` set the histogram range ``mean' +- 5 s'``;
    pixels in that range are sigma-clipped about the median until convergence
    (Bertin & Arnouts 1996, sec. 3.1). The mode estimate is used unless
    ``|mean - med| / std >= 0.3`` (a crowded mesh), then the median.
    """
    m, s = np.mean(pixels), np.std(pixels)
    cut = pixels[(pixels >= m - 2.0 * s) & (pixels <= m + 2.0 * s)]
    m, s = np.mean(cut), np.std(cut)
    pixels = pixels[(pixels >= m - 5.0 * s) & (pixels <= m + 5.0 * s)]
    clipped = sigma_clip(pixels, sigma=sigma, maxiters=100, cenfunc="median", stdfunc="std")
    data = clipped.compressed()
    mean, med, std = float(np.mean(data)), float(np.median(data)), float(np.std(data))
    if std > 0 and abs(mean - med) / std < 0.3:
        return 2.5 * med - 1.5 * mean, std
    return med, std


def _natural_spline_matrix(nodes, x):
    """Matrix ``(len(x), len(nodes))`` evaluating the natural cubic spline through unit nodes.

    Columns are the splines through the unit vectors, so ``A @ values`` interpolates
    any node values; outside the nodes the end cubic segments are extended (as
    SExtractor's ``backline`` does).
    """
    n = len(nodes)
    if n == 1:
        return np.ones((len(x), 1))
    if n == 2:
        t = (x - nodes[0]) / (nodes[1] - nodes[0])
        return np.stack([1 - t, t], axis=-1)
    hstep = nodes[1] - nodes[0]
    # Second derivatives M solve the tridiagonal system with M_0 = M_{n-1} = 0.
    a = np.zeros((n - 2, n - 2))
    np.fill_diagonal(a, 4.0)
    idx = np.arange(n - 3)
    a[idx, idx + 1] = 1.0
    a[idx + 1, idx] = 1.0
    rhs = np.zeros((n - 2, n))
    rhs[np.arange(n - 2), np.arange(n - 2)] = 1.0
    rhs[np.arange(n - 2), np.arange(1, n - 1)] = -2.0
    rhs[np.arange(n - 2), np.arange(2, n)] = 1.0
    second = np.zeros((n, n))
    second[1:-1] = np.linalg.solve(a, 6.0 * rhs / hstep**2)
    seg = np.clip(np.floor((x - nodes[0]) / hstep).astype(int), 0, n - 2)
    t = (x - nodes[seg]) / hstep
    eye = np.eye(n)
    lo, hi = eye[seg], eye[seg + 1]
    c = (hstep**2 / 6.0) * (
        (t**3 - t)[:, None] * second[seg + 1] + ((1 - t) ** 3 - (1 - t))[:, None] * second[seg]
    )
    return (1 - t)[:, None] * lo + t[:, None] * hi + c


def _median_filter_mesh(mesh, size):
    """Median filter of a small mesh with a ``size x size`` window shrunk at the edges."""
    if size <= 1:
        return mesh
    r = size // 2
    out = np.empty_like(mesh)
    ny, nx = mesh.shape
    for j in range(ny):
        ry = min(r, j, ny - 1 - j)
        for i in range(nx):
            rx = min(r, i, nx - 1 - i)
            out[j, i] = np.median(mesh[j - ry : j + ry + 1, i - rx : i + rx + 1])
    return out


def _background_2d(img, good, box, filter_size, sigma):
    h, w = img.shape
    ny, nx = -(-h // box), -(-w // box)
    back = np.full((ny, nx), np.nan)
    rms = np.full((ny, nx), np.nan)
    for j in range(ny):
        for i in range(nx):
            sl = (slice(j * box, (j + 1) * box), slice(i * box, (i + 1) * box))
            pix = img[sl][good[sl]]
            if pix.size >= 0.5 * img[sl].size and pix.size > 2:
                back[j, i], rms[j, i] = _mesh_stats(pix.astype(np.float64), sigma)
    bad = np.isnan(back)
    if bad.all():
        raise ValueError("image: no background mesh has enough usable pixels")
    if bad.any():  # replace a bad mesh by the mean of its nearest good meshes (as SExtractor)
        jj, ii = np.nonzero(~bad)
        for j, i in zip(*np.nonzero(bad), strict=True):
            d2 = (jj - j) ** 2 + (ii - i) ** 2
            near = d2 == d2.min()
            back[j, i], rms[j, i] = back[jj, ii][near].mean(), rms[jj, ii][near].mean()
    back = _median_filter_mesh(back, filter_size)
    rms = _median_filter_mesh(rms, filter_size)
    ay = _natural_spline_matrix(np.arange(ny) * box + (box - 1) / 2.0, np.arange(h, dtype=float))
    ax = _natural_spline_matrix(np.arange(nx) * box + (box - 1) / 2.0, np.arange(w, dtype=float))
    return ay @ back @ ax.T, ay @ rms @ ax.T


def estimate_background(image, box: int = 64, filter_size: int = 3, sigma: float = 3.0, mask=None):
    """SExtractor-style background and rms maps from a mesh of sigma-clipped statistics.

    The image is cut into ``box x box`` meshes; in each, the background is the
    clipped mode ``2.5 median - 1.5 mean`` (the median in crowded meshes) and the
    rms the clipped standard deviation (Bertin & Arnouts 1996). The mesh maps are
    median-filtered over ``filter_size x filter_size`` meshes and interpolated to
    every pixel with a natural bicubic spline through the mesh centres. The
    defaults are SExtractor's and sep's (``BACK_SIZE 64``, ``BACK_FILTERSIZE 3``).

    This runs in numpy/astropy on host arrays, **outside** ``jit`` (the clipping
    is data-dependent); it is not differentiable. Estimate once, then pass the
    maps to the jitted pipeline.

    Args:
      image: ``(..., h, w, bands)`` image; each band of each image is done apart.
      box: mesh side in pixels (the last row/column of meshes may be smaller).
      filter_size: median filter size in meshes (1 = none).
      sigma: clipping threshold in standard deviations.
      mask: optional weights broadcastable to ``image``; pixels with weight 0 (and
        non-finite pixels) are ignored.

    Returns:
      :class:`Background` ``(background, rms)``, float32 numpy arrays of the image's shape.

    >>> import numpy as np
    >>> img = np.random.default_rng(0).normal(100.0, 5.0, (128, 128, 1))
    >>> bkg = estimate_background(img)
    >>> round(float(bkg.background.mean())), round(float(bkg.rms.mean()))
    (100, 5)
    """
    arr = np.asarray(check_image("image", image))
    if not isinstance(box, int | np.integer) or box < 2:
        raise ValueError(f"box: expected an int >= 2 (pixels), got {box!r}")
    if not isinstance(filter_size, int | np.integer) or filter_size < 1 or filter_size % 2 != 1:
        raise ValueError(f"filter_size: expected an odd int >= 1 (meshes), got {filter_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma: expected a value > 0, got {sigma!r}")
    good = np.isfinite(arr)
    if mask is not None:
        good &= np.broadcast_to(np.asarray(mask), arr.shape) > 0
    h, w, bands = arr.shape[-3:]
    flat = arr.reshape((-1, h, w, bands))
    gflat = good.reshape(flat.shape)
    back = np.empty(flat.shape, np.float32)
    rms = np.empty(flat.shape, np.float32)
    for n in range(flat.shape[0]):
        for b in range(bands):
            back[n, ..., b], rms[n, ..., b] = _background_2d(
                flat[n, ..., b], gflat[n, ..., b], int(box), int(filter_size), float(sigma)
            )
    return Background(back.reshape(arr.shape), rms.reshape(arr.shape))


# ---------------------------------------------------------------- matching


def match_positions(found, true, radius: float = 2.0, found_mask=None) -> Matches:
    """Greedy one-to-one matching of two position lists within ``radius`` pixels.

    Pairs are taken in increasing order of distance; each source is used once.
    Host numpy, outside ``jit`` (the number of matches is data-dependent).

    Args:
      found: ``(n, 2)`` detected ``(x, y)``.
      true: ``(m, 2)`` reference ``(x, y)`` in the same pixel convention.
      radius: maximum separation in pixels.
      found_mask: optional ``(n,)`` bool; False entries (padding) are ignored.

    Returns:
      :class:`Matches` with indices into ``found`` and ``true``, distances,
      completeness ``n_match / m`` and purity ``n_match / n_valid_found``.

    >>> m = match_positions([[0.0, 0.0], [5.0, 5.0]], [[0.5, 0.0], [9.0, 9.0]])
    >>> m.true_index.tolist(), m.completeness, m.purity
    ([0], 0.5, 0.5)
    """
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(found), bool) if found_mask is None else np.asarray(found_mask, bool)
    if keep.shape != (len(found),):
        raise ValueError(f"found_mask: expected shape ({len(found)},), got {keep.shape}")
    fidx = np.nonzero(keep)[0]
    d = np.hypot(*(found[fidx, None, :] - true[None, :, :]).transpose(2, 0, 1))
    pairs = np.argwhere(d <= radius)
    order = np.argsort(d[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_f, used_t, fi, ti = set(), set(), [], []
    for a, b in pairs[order]:
        if a not in used_f and b not in used_t:
            used_f.add(a)
            used_t.add(b)
            fi.append(fidx[a])
            ti.append(b)
    fi, ti = np.asarray(fi, int), np.asarray(ti, int)
    dist = np.hypot(*(found[fi] - true[ti]).T) if len(fi) else np.zeros(0)
    n = len(fi)
    return Matches(
        fi,
        ti,
        dist,
        n / len(true) if len(true) else 0.0,
        n / len(fidx) if len(fidx) else 0.0,
    )
