"""Drawing sources into a field: decoded galaxies and point sources, shifted and placed.

A source ``i`` at position ``x_i = (x, y)`` (0-based pixels, pixel centres on
integers) is drawn on a ``(s, s, bands)`` stamp centred on its central pixel
``(s - 1) // 2``, convolved with the PSF for explicit-PSF models, shifted by the
sub-pixel part ``x_i - round(x_i)`` with a Fourier phase ramp and placed with its
centre on pixel ``round(x_i)`` of an empty ``(h, w, bands)`` field.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from galjax.models.vae import decode
from galjax.sim.blend import place_stamp
from galjax.sim.psf import convolve_fft, fft_size

__all__ = ["POINT_STEP", "shift_stamp", "place_stamps", "point_stamps", "render_sources"]

#: Point-source parameters per latent unit (see :func:`point_stamps`).
POINT_STEP = 0.2


def shift_stamp(stamp, shift):
    """Shift a stamp by a sub-pixel offset with a Fourier phase ramp.

    Zero-padded to a fast FFT size so that the shifted light does not wrap.

    Args:
      stamp: ``(s, s, bands)``.
      shift: ``(2,)`` offset ``(dx, dy)`` in pixels.

    Returns:
      ``(s, s, bands)``, ``out(x + dx, y + dy) = stamp(x, y)``.

    >>> import jax.numpy as jnp
    >>> img = jnp.zeros((9, 9, 1)).at[4, 4, 0].set(1.0)
    >>> out = shift_stamp(img, jnp.array([1.0, 0.0]))
    >>> round(float(out[4, 5, 0]), 4)
    1.0
    """
    s = stamp.shape[0]
    n = fft_size(s + 4)
    delta = jnp.zeros((1, 1, stamp.shape[-1]), stamp.dtype).at[0, 0].set(1.0)
    out = convolve_fft(jnp.pad(stamp, ((0, n - s), (0, n - s), (0, 0))), delta, shift=shift)
    return out[:s, :s]


def place_stamps(stamps, positions, mask, height: int, width: int, psf=None, offsets=None):
    """Convolve, shift and place stamps in an empty field, one per source.

    Args:
      stamps: ``(n, s, s, bands)`` sources on their stamps.
      positions: ``(n, 2)`` ``(x, y)`` pixels.
      mask: ``(n,)`` bool; False sources are zeroed.
      height, width: field size in pixels.
      psf: ``(ph, pw, bands)`` convolved with each stamp first (None: none).
      offsets: ``(n, 2)`` extra shifts in pixels, added to the positions' sub-pixel
        parts (None: none).

    Returns:
      ``(n, height, width, bands)``.
    """
    if psf is not None:
        stamps = convolve_fft(stamps, psf)
    frac = positions - jnp.round(positions)
    if offsets is not None:
        frac = frac + offsets
    stamps = jax.vmap(shift_stamp)(stamps, frac)
    place = lambda st, p: place_stamp(st, p[0], p[1], height, width)
    placed = jax.vmap(place)(stamps, positions)
    return placed * mask.astype(placed.dtype)[:, None, None, None]


def point_stamps(z, bands: int, size: int):
    """Point sources before the PSF: stamps and offsets from their latent slots.

    A point source (a star, or a galaxy too small to resolve) is a delta function
    with one flux per band at a sub-pixel offset from its position; the delta sits
    on the stamp's central pixel ``(size - 1) // 2`` (the position, as for decoded
    galaxies) and the offset is applied after the PSF, with the position's own
    sub-pixel shift (a delta is not band-limited: shifting it alone by a Fourier
    phase ramp rings). Its parameters live in the latent slots:

        flux_b = exp(c z_b)  (b < bands),   (dx, dy) = 1.5 tanh(c z_[bands:bands+2] / 1.5)

    with ``c = POINT_STEP = 0.2``: fluxes in the field's units, offsets in pixels
    within 1.5 of the position; an Adam step of 0.05 in ``z`` (the deblender's
    default learning rate) moves a star by 0.01 pixel or 1 % in flux. The other
    latent entries are unused.

    Args:
      z: ``(n, d)`` latents, ``d >= bands + 2``.
      bands: number of bands.
      size: stamp side (odd).

    Returns:
      ``(n, size, size, bands)`` stamps and ``(n, 2)`` offsets ``(dx, dy)``.
    """
    c = (size - 1) // 2
    delta = jnp.zeros((size, size, bands), z.dtype).at[c, c].set(1.0)
    flux = jnp.exp(jnp.minimum(POINT_STEP * z[:, :bands], 40.0))
    offset = 1.5 * jnp.tanh(POINT_STEP * z[:, bands : bands + 2] / 1.5)
    return delta[None] * flux[:, None, None, :], offset


def render_sources(vae_params, vae_config, z, positions, mask, height: int, width: int, psf=None,
                   point=None):  # fmt: skip
    """Decode latents and place each source in the field: ``(n_max, h, w, bands)``.

    Args:
      vae_params, vae_config: the VAE whose decoder draws the galaxies.
      z: ``(n_max, latent_dim)`` latents.
      positions: ``(n_max, 2)`` ``(x, y)`` pixels.
      mask: ``(n_max,)`` bool, real sources.
      height, width: field size in pixels.
      psf: ``(ph, pw, bands)`` effective PSF for explicit-PSF models (ignored otherwise).
      point: ``(n_max,)`` bool, sources drawn as point sources (:func:`point_stamps`)
        instead of decoded galaxies (explicit-PSF models only); None: none.
    """
    offsets = None
    if point is None:
        stamps, _ = decode(vae_params, vae_config, z)
    else:
        stamps, _ = decode(vae_params, vae_config, jnp.where(point[:, None], 0.0, z))
        stars, offsets = point_stamps(z, vae_config.bands, vae_config.stamp_size)
        stamps = jnp.where(point[:, None, None, None], stars, stamps)
        offsets = jnp.where(point[:, None], offsets, 0.0)
    return place_stamps(stamps, positions, mask, height, width,
                        psf if vae_config.psf_explicit else None, offsets)  # fmt: skip
