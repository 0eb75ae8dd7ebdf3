"""Point-spread functions and FFT convolution at a fixed stamp size.

PSFs are images ``(psf_h, psf_w, bands)`` normalised to unit sum per band. They
are *effective* PSFs: the optical PSF convolved with the unit pixel, sampled at
pixel centres (``oversample = 1``) or on a sub-pixel grid. Convolving point
samples of a galaxy with them gives pixel values directly. Any pixelised PSF
image (e.g. from PSFEx or a survey pipeline) is an effective PSF of this kind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .profiles import elliptical_radius2

__all__ = [
    "moffat_sb",
    "moffat_alpha",
    "gaussian_psf",
    "moffat_psf",
    "convolve_fft",
    "fft_size",
]


def moffat_alpha(fwhm, beta):
    """Moffat scale ``alpha = FWHM / (2 sqrt(2^(1/beta) - 1))`` (same units as ``fwhm``)."""
    return fwhm / (2.0 * jnp.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_sb(dx, dy, fwhm, beta, e1=0.0, e2=0.0):
    """Unit-flux Moffat surface brightness ``(beta - 1) / (pi alpha^2) (1 + (r/alpha)^2)^-beta``.

    Untruncated (as ``galsim.Moffat(beta, fwhm)`` with ``trunc=0``); ``fwhm`` in pixels.
    """
    alpha = moffat_alpha(fwhm, beta)
    r2 = elliptical_radius2(dx, dy, e1, e2)
    return (beta - 1.0) / (jnp.pi * alpha**2) * (1.0 + r2 / alpha**2) ** (-beta)


def _render_psf(sb, size: int, oversample: int, normalise: bool, quad: int = 5):
    """Effective (pixel-integrated) PSF ``K = P * Box_1`` sampled every ``1/oversample`` px.

    ``K(u)`` is the mean of ``P`` over the unit pixel centred on ``u``, computed by
    a midpoint rule with ``oversample * quad`` points per side (P is smooth), so
    that ``sum_c f(y_c) K(x - y_c) h^2`` is the pixel value at ``x`` of the
    galaxy ``f`` sampled at sub-pixel centres ``y_c``.
    """
    if size % 2 != 1 or oversample % 2 != 1:
        raise ValueError(
            "size and oversample must be odd so the PSF centre is a sample, got "
            f"{size}, {oversample}"
        )
    s, q = oversample, quad
    n = size * s
    w = s * q  # fine points per pixel box
    d = 1.0 / w
    m = (n - 1) * q + w
    t = (jnp.arange(m, dtype=jnp.float32) - (m - 1) / 2.0) * d
    xx, yy = jnp.meshgrid(t, t, indexing="xy")
    fine = sb(xx, yy)
    box = jax.lax.reduce_window(
        fine, 0.0, jax.lax.add, (w, w) + (1,) * (fine.ndim - 2), (q, q) + (1,) * (fine.ndim - 2),
        "VALID",
    ) / (w * w)  # fmt: skip
    img = box / s**2  # weight of each sub-pixel sample (h^2 = 1 / s^2)
    return img / jnp.sum(img, axis=(0, 1), keepdims=True) if normalise else img


def moffat_psf(
    fwhm, beta=2.5, size: int = 25, oversample: int = 1, e1=0.0, e2=0.0, normalise: bool = True
):
    """Moffat PSF image centred on the central pixel, unit sum per band.

    Args:
      fwhm: FWHM in pixels, scalar or ``(bands,)``.
      beta: Moffat index, scalar or ``(bands,)``.
      size: odd stamp side in pixels (static).
      oversample: odd number of sub-pixels per pixel (static); the image is then
        ``(size * oversample, size * oversample, bands)`` point samples.
      e1, e2: PSF ellipticity (reduced shear).
      normalise: scale the truncated stamp to unit sum (True), or keep the
        analytic normalisation so the light outside the stamp is lost (False;
        the core then matches the untruncated profile exactly).

    Returns:
      ``(size * oversample, size * oversample, bands)`` normalised to unit sum.

    >>> moffat_psf(3.5).shape
    (25, 25, 1)
    """
    fwhm = jnp.atleast_1d(jnp.asarray(fwhm, jnp.float32))[None, None, :]
    beta = jnp.broadcast_to(jnp.asarray(beta, fwhm.dtype), fwhm.shape)
    return _render_psf(
        lambda x, y: moffat_sb(x[..., None], y[..., None], fwhm, beta, e1, e2),
        size,
        oversample,
        normalise,
    )


def gaussian_psf(fwhm, size: int = 25, oversample: int = 1, normalise: bool = True):
    """Circular Gaussian PSF of the given FWHM (pixels), unit sum per band.

    Returns ``(size * oversample, size * oversample, bands)``.
    """
    fwhm = jnp.atleast_1d(jnp.asarray(fwhm, jnp.float32))[None, None, :]
    sigma = fwhm / (2.0 * float(np.sqrt(2.0 * np.log(2.0))))  # a Python float keeps fwhm's dtype
    return _render_psf(
        lambda x, y: (
            jnp.exp(-0.5 * (x[..., None] ** 2 + y[..., None] ** 2) / sigma**2)
            / (2.0 * jnp.pi * sigma**2)
        ),
        size,
        oversample,
        normalise,
    )


def fft_size(n: int) -> int:
    """Smallest size >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = int(n)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _lead(a, ndim: int):
    """Prepend unit axes so ``a`` has ``ndim`` dimensions (explicit broadcasting)."""
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def convolve_fft(image, kernel, shift=None):
    """Linear (non-circular) 'same' convolution of images with a kernel, per band.

    ``out[y, x] = sum_{u, v} image[y - v, x - u] kernel[v + cy, u + cx]`` with the
    kernel centre ``(cy, cx) = (kh // 2, kw // 2)``; both are zero-padded to a
    fast FFT size of at least ``h + kh // 2``, enough for the output window to be
    free of wrap-around.

    Args:
      image: ``(..., h, w, bands)``.
      kernel: ``(kh, kw, bands)`` or ``(..., kh, kw, bands)`` broadcastable.
      shift: optional ``(..., 2)`` sub-pixel shift ``(dx, dy)`` in pixels of
        ``image`` applied to the result through a Fourier phase ramp
        ``exp(-2 pi i (f_x dx + f_y dy))``; exact for band-limited results, and
        so accurate for anything convolved with a well-sampled PSF.

    Returns:
      ``(..., h, w, bands)``.
    """
    h, w = image.shape[-3], image.shape[-2]
    kh, kw = kernel.shape[-3], kernel.shape[-2]
    # The 'same' window [cy, cy + h) of a circular convolution of length N is free of
    # wrap-around once N >= h + kh // 2, about half the padding of the full h + kh - 1.
    ph, pw = fft_size(h + kh // 2), fft_size(w + kw // 2)
    fi = jnp.fft.rfft2(image, s=(ph, pw), axes=(-3, -2))
    fk = jnp.fft.rfft2(kernel, s=(ph, pw), axes=(-3, -2))
    nd = max(fi.ndim, fk.ndim)
    prod = _lead(fi, nd) * _lead(fk, nd)
    if shift is not None:
        # Shift and frequencies in the image's dtype: under x64 the default float64 of
        # fftfreq (or of a shift given as a list) would not promote with float32.
        shift = jnp.asarray(shift, image.dtype)
        fy = jnp.fft.fftfreq(ph, dtype=image.dtype).reshape(ph, 1, 1)
        fx = jnp.fft.rfftfreq(pw, dtype=image.dtype).reshape(1, pw // 2 + 1, 1)
        sx = shift[..., 0].reshape(shift.shape[:-1] + (1, 1, 1))
        sy = shift[..., 1].reshape(shift.shape[:-1] + (1, 1, 1))
        phase = -2.0 * jnp.pi * (_lead(fx, sx.ndim) * sx + _lead(fy, sy.ndim) * sy)
        ramp = jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
        nd = max(prod.ndim, ramp.ndim)
        prod = _lead(prod, nd) * _lead(ramp.astype(prod.dtype), nd)
    full = jnp.fft.irfft2(prod, s=(ph, pw), axes=(-3, -2))
    cy, cx = kh // 2, kw // 2
    return full[..., cy : cy + h, cx : cx + w, :].astype(image.dtype)
