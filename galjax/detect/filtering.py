"""Matched filtering: per-band detection SNR maps of point sources, and their combination.

A point source of flux ``F`` at pixel ``x0`` gives pixels ``d_p = F phi(p - x0) + n_p``
with PSF ``phi`` and Gaussian noise ``n``. The matched filter is the linear
statistic that maximises the signal-to-noise ratio of ``F`` (Bertin 2001,
"Mining pixels"; in Fourier space ``H(k) = conj(Phi(k)) / P(k)``). galjax
normalises it so that its output is a **detection SNR map**: in pure noise each
pixel of the map is a unit-variance Gaussian, and at a source it is the flux
estimate divided by its standard deviation,

``S(x) = sum_p w_p phi(p - x) d_p / sqrt(sum_p w_p phi(p - x)^2)``,  ``w_p = 1 / sigma_p^2``.

Multi-band images ``(..., h, w, bands)`` are filtered band by band (one PSF per
band); :func:`combine_snr` merges the per-band SNR maps into one detection image
(quadrature sum of the positive parts by default, or the chi^2 image of Szalay,
Connolly & Szokoly 1999). Everything here is pure JAX and works under ``jit`` and
``vmap``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import (
    as_float_array,
    check_image,
    check_odd_psf,
    is_concrete,
    mask_nonfinite,
)
from galjax.sim.psf import convolve_fft

__all__ = [
    "COMBINE_METHODS",
    "matched_filter",
    "matched_filter_fourier",
    "noise_power_spectrum",
    "combine_snr",
    "check_broadcastable",
    "check_noise",
    "snr_map_kernel",
]

#: Multi-band merges of :func:`combine_snr`.
COMBINE_METHODS = ("quadrature", "chi2", "sum")


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


def check_broadcastable(name, x, image, what):
    """``x`` as a float array of the image's dtype whose shape broadcasts to the image's.

    Args:
      name: argument name used in messages.
      x: array-like (a map, a per-band value or a scalar).
      image: the ``(..., h, w, bands)`` image ``x`` goes with.
      what: what ``x`` is, for the message (e.g. ``"weights"``).

    Returns:
      ``x`` in ``image.dtype``, unbroadcast.
    """
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


def check_noise(noise, image):
    """Boundary checks on a noise std ``noise``: > 0 where finite; ``inf`` marks unusable pixels.

    Args:
      noise: per-pixel noise standard deviation broadcastable to ``image``, or None.
      image: the ``(..., h, w, bands)`` image.

    Returns:
      ``noise`` in ``image.dtype`` (None stays None).
    """
    if noise is None:
        return None
    noise = check_broadcastable("noise", noise, image, "a per-pixel standard deviation")
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
def snr_map_kernel(image, good, psf, noise, mask, background=None, combine=None):
    """Background subtraction, weights and matched filter in one compiled function.

    Inputs are already checked (:func:`matched_filter`, :func:`galjax.detect.detect`).

    Args:
      image: ``(..., h, w, bands)`` image with non-finite pixels set to 0.
      good: image-shaped 1/0 usable-pixel mask.
      psf: ``(psf_h, psf_w, bands)`` odd-sized PSF, unit sum, the image's dtype.
      noise: per-pixel noise std broadcastable to ``image`` (``inf`` = unusable), or None.
      mask: weights broadcastable to ``image``, or None.
      background: ``(map, good)`` subtracted first, or None.
      combine: a method of :func:`combine_snr` (static), or None to keep the bands.

    Returns:
      ``(..., h, w, bands)`` SNR map, or ``(..., h, w, 1)`` when combined.
    """
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
    psf = check_odd_psf("psf", psf, bands=image.shape[-1]).astype(image.dtype)
    image, good = mask_nonfinite("image", image)
    noise = check_noise(noise, image)
    mask = None if mask is None else check_broadcastable("mask", mask, image, "weights")
    return snr_map_kernel(image, good, psf, noise, mask)


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
    check_odd_psf("template", template, normalise=False)
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
    if method not in COMBINE_METHODS:
        raise ValueError(f"method: expected one of {COMBINE_METHODS}, got {method!r}")
    snr = check_image("snr", snr)
    bands = snr.shape[-1]
    if method == "quadrature":
        return jnp.sqrt(jnp.sum(jnp.square(jnp.maximum(snr, 0.0)), axis=-1, keepdims=True))
    if method == "chi2":
        return jnp.sum(jnp.square(snr), axis=-1, keepdims=True)
    return jnp.sum(snr, axis=-1, keepdims=True) / math.sqrt(bands)
