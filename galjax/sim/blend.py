"""Blended fields: several galaxies placed in one noisy image, with the truth.

``simulate_field(key, survey, n_max)`` is pure and static-shaped (sources are
padded to ``n_max`` with a mask), so ``jax.vmap`` over keys makes thousands of
fields at once; :func:`simulate_fields` does that in chunks and returns numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.cache import bounded_cache

from .galaxy import GalaxyParams, render_galaxy
from .noise import add_noise, noise_variance
from .survey import LSST_R, Survey, sample_galaxy

__all__ = [
    "Field",
    "sample_positions",
    "place_stamp",
    "simulate_stamp",
    "simulate_field",
    "simulate_fields",
]


class Field(NamedTuple):
    """A simulated blended field and its truth (one field; batches add a leading axis).

    Attributes:
      image: ``(h, w, bands)`` noisy field.
      noiseless: ``(h, w, bands)`` sum of the sources.
      sigma: ``(h, w, bands)`` per-pixel noise std used to draw the noise.
      sources: ``(n_max, h, w, bands)`` each source alone, noiseless, PSF-convolved.
      positions: ``(n_max, 2)`` source centres ``(x, y)`` in field pixels.
      fluxes: ``(n_max, bands)`` total model flux of each source.
      mask: ``(n_max,)`` True for real sources, False for padding.
      snr: ``(n_max,)`` optimal SNR of each source alone in the reference band.
      params: :class:`GalaxyParams` with leading axis ``n_max`` (field coordinates).
    """

    image: jax.Array
    noiseless: jax.Array
    sigma: jax.Array
    sources: jax.Array
    positions: jax.Array
    fluxes: jax.Array
    mask: jax.Array
    snr: jax.Array
    params: GalaxyParams


def sample_positions(key, n_max: int, size: int, min_sep: float, margin: float, tries: int = 32):
    """Random positions in a square field with a minimum separation.

    Sequential rejection with a static number of candidates per source: source
    ``i`` takes its first candidate at least ``min_sep`` from sources ``< i``
    (the farthest candidate when none qualifies).

    Args:
      key: PRNG key.
      n_max: number of positions (static).
      size: field side in pixels; positions lie in ``[margin, size - 1 - margin]``.
      min_sep: minimum separation in pixels.

    Returns:
      ``(n_max, 2)`` positions ``(x, y)``.
    """
    cand = jax.random.uniform(key, (n_max, tries, 2), minval=margin, maxval=size - 1.0 - margin)

    def step(placed, i):
        c = cand[i]  # (tries, 2)
        d = jnp.linalg.norm(c[:, None, :] - placed[None, :, :], axis=-1)  # (tries, n_max)
        d = jnp.where(jnp.arange(n_max)[None, :] < i, d, jnp.inf)
        dmin = d.min(axis=1)
        ok = dmin >= min_sep
        j = jnp.where(ok.any(), jnp.argmax(ok), jnp.argmax(dmin))
        placed = placed.at[i].set(c[j])
        return placed, None

    placed, _ = jax.lax.scan(step, jnp.zeros((n_max, 2), cand.dtype), jnp.arange(n_max))
    return placed


def place_stamp(stamp, x, y, height: int, width: int):
    """Place a stamp into an empty ``(height, width, bands)`` field.

    The stamp's central pixel ``((s - 1) / 2)`` goes to the integer pixel
    ``(round(x), round(y))``; parts falling outside the field are cut.
    Works with traced ``x, y``.
    """
    s_h, s_w = stamp.shape[0], stamp.shape[1]
    canvas = jnp.zeros((height + 2 * s_h, width + 2 * s_w, stamp.shape[-1]), stamp.dtype)
    # Clipped at 0: dynamic_update_slice reads a negative start from the far end, which
    # would wrap a stamp lying beyond the left/top edge onto the right/bottom edge.
    iy = jnp.maximum(jnp.round(y).astype(jnp.int32) - (s_h - 1) // 2 + s_h, 0)
    ix = jnp.maximum(jnp.round(x).astype(jnp.int32) - (s_w - 1) // 2 + s_w, 0)
    canvas = jax.lax.dynamic_update_slice(canvas, stamp, (iy, ix, jnp.zeros((), iy.dtype)))
    return canvas[s_h : s_h + height, s_w : s_w + width]


def _snr(source, sky_sigma, gain):
    var = noise_variance(source, sky_sigma, gain)
    return jnp.sqrt(jnp.sum(source**2 / var, axis=(-3, -2)))


def simulate_stamp(key, survey: Survey = LSST_R, detail: bool | None = None, psf=None):
    """One isolated galaxy: ``(noisy, noiseless, sigma, params)``, stamps ``(s, s, bands)``.

    The galaxy is centred within half a pixel of the stamp centre. ``psf`` is the
    oversampled survey PSF (computed when None; pass it to avoid recomputation
    inside ``vmap``).
    """
    k_gal, k_noise = jax.random.split(key)
    params = sample_galaxy(k_gal, survey, detail=detail)
    psf = survey.psf() if psf is None else psf
    s = survey.stamp_size
    img = render_galaxy(params, s, s, psf, survey.render.oversample, survey.render, survey.n_arms)
    sigma = jnp.sqrt(noise_variance(img, jnp.asarray(survey.sky_sigma), survey.gain))
    noisy = add_noise(k_noise, img, jnp.asarray(survey.sky_sigma), survey.gain)
    return noisy, img, sigma, params


def simulate_field(
    key,
    survey: Survey = LSST_R,
    n_max: int = 4,
    n_min: int = 1,
    min_sep: float = 4.0,
    margin: float = 6.0,
    detail: bool | None = None,
    psf=None,
) -> Field:
    """Simulate one blended field of ``survey.field_size`` pixels with 1..n_max galaxies.

    Args:
      key: PRNG key.
      survey: the :class:`Survey` (PSF, noise, population, sizes).
      n_max: static maximum number of sources (padding size).
      n_min: minimum number of sources (count uniform in ``[n_min, n_max]``).
      min_sep: minimum separation between centres [pixels].
      margin: keep centres this far from the field edges [pixels].
      detail: override ``survey.detail`` (clumps and arms).
      psf: precomputed ``survey.psf()`` (optional).

    Returns:
      :class:`Field`.

    >>> f = simulate_field(jax.random.key(0), n_max=3)
    >>> f.image.shape, f.positions.shape
    ((64, 64, 1), (3, 2))
    """
    size = survey.field_size
    s = survey.stamp_size
    k_n, k_pos, k_gal, k_noise = jax.random.split(key, 4)
    n = jax.random.randint(k_n, (), n_min, n_max + 1)
    mask = jnp.arange(n_max) < n
    pos = sample_positions(k_pos, n_max, size, min_sep, margin)
    psf = survey.psf() if psf is None else psf
    c = (s - 1) / 2.0

    def one(k, xy):
        frac = xy - jnp.round(xy)
        p = sample_galaxy(k, survey, x=c + frac[0], y=c + frac[1], detail=detail)
        stamp = render_galaxy(p, s, s, psf, survey.render.oversample, survey.render, survey.n_arms)
        img = place_stamp(stamp, xy[0], xy[1], size, size)
        return img, p._replace(x=xy[0], y=xy[1])

    sources, params = jax.vmap(one)(jax.random.split(k_gal, n_max), pos)
    fmask = mask.astype(sources.dtype)  # bool * float is an error under strict promotion
    sources = sources * fmask[:, None, None, None]
    noiseless = sources.sum(axis=0)
    sky = jnp.asarray(survey.sky_sigma, jnp.float32)
    sigma = jnp.sqrt(noise_variance(noiseless, sky, survey.gain))
    image = add_noise(k_noise, noiseless, sky, survey.gain)
    ref = min(2, survey.n_bands - 1) if survey.n_bands > 1 else 0
    snr = jax.vmap(lambda src: _snr(src, sky, survey.gain))(sources)[:, ref] * fmask
    fluxes = params.flux * fmask[:, None]
    return Field(image, noiseless, sigma, sources, pos, fluxes, mask, snr, params)


@bounded_cache(maxsize=16)
def _compiled_simulator(survey: Survey, n_max: int, items: tuple):
    # One jitted function per (survey, n_max, options): repeated calls reuse its
    # compiled executables instead of tracing and compiling a new lambda each time.
    psf = survey.psf()
    kwargs = dict(items)
    return jax.jit(jax.vmap(lambda k: simulate_field(k, survey, n_max, psf=psf, **kwargs)))


def simulate_fields(
    key,
    n_fields: int,
    survey: Survey = LSST_R,
    n_max: int = 4,
    chunk: int = 256,
    progress: bool = False,
    **kwargs,
) -> Field:
    """Simulate ``n_fields`` fields with one compiled, vmapped call per chunk.

    Every call is compiled for ``chunk`` fields, or, when all fields fit in one
    chunk, for the next power of two (at most ``chunk``), padding with repeated
    keys: compiling the simulator takes seconds, so calls of 5, 6 or 8 fields share
    one compiled shape.

    Args:
      key: PRNG key; field ``i`` uses ``fold_in(key, i)`` so results do not
        depend on ``chunk`` or on the padding.
      n_fields: number of fields.
      survey, n_max, **kwargs: passed to :func:`simulate_field`.
      chunk: fields per compiled call (bounds memory).
      progress: show a tqdm progress bar.

    Returns:
      :class:`Field` of numpy arrays with leading axis ``n_fields``.
    """
    if n_fields < 1:
        raise ValueError(f"n_fields: expected >= 1, got {n_fields}")
    if n_max < 1:
        raise ValueError(f"n_max: expected >= 1, got {n_max}")
    n_min = kwargs.get("n_min", 1)
    if not 0 <= n_min <= n_max:
        raise ValueError(f"n_min: expected 0 <= n_min <= n_max={n_max}, got {n_min}")
    if chunk < 1:
        raise ValueError(f"chunk: expected >= 1, got {chunk}")
    fn = _compiled_simulator(survey, n_max, tuple(sorted(kwargs.items())))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_fields))
    out = []
    starts = range(0, n_fields, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="simulating", unit="chunk")
    size = chunk if n_fields > chunk else min(1 << (n_fields - 1).bit_length(), chunk)
    for i in starts:
        k = keys[i : i + chunk]
        if k.shape[0] < size:  # keep one compiled shape
            pad = jnp.concatenate([k, jnp.broadcast_to(k[:1], (size - k.shape[0],))])
            res = jax.tree.map(lambda a, m=k.shape[0]: np.asarray(a[:m]), fn(pad))
        else:
            res = jax.tree.map(np.asarray, fn(k))
        out.append(res)
    return jax.tree.map(lambda *a: np.concatenate(a), *out)
