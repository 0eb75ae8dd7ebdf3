"""Contaminant masks of real images: tiled network inference and integer bit masks.

:func:`predict_mask` runs a trained :class:`galjax.models.masknet.MaskNet` over a
single-band image of any size with overlapping tiles whose centres only are kept;
equal to whole-image inference away from the image edges (margin >= receptive
radius). :func:`mask_bits` turns the per-class probabilities into an integer bit
mask (bit ``i`` = class ``i`` of :data:`galjax.sim.contaminants.MASK_CLASSES`),
written to FITS by :func:`galjax.io.write_mask_fits`.

The network input is ``arcsinh((image - background) / sigma)``
(:func:`galjax.models.masknet.stretch_for_mask`) with a scalar background and noise
estimated robustly from the whole image, so tiles see the same normalisation as the
whole image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.cache import bounded_cache
from galjax.core.checks import as_float_array, check_image, is_concrete
from galjax.core.chunks import chunked_map
from galjax.image.background import estimate_background
from galjax.models.masknet import MaskNet, receptive_radius, stretch_for_mask

__all__ = ["predict_mask", "mask_bits"]


def predict_mask(
    model: MaskNet,
    params,
    image,
    *,
    tile: int = 128,
    margin: int | None = None,
    background: float | None = None,
    sigma: float | None = None,
    batch_size: int = 8,
):
    """Per-pixel class probabilities of a single-band image of any size, by overlapping tiles.

    The image is stretched once (:func:`galjax.models.masknet.stretch_for_mask`;
    background and sigma from ``estimate_background(image, method="global")``, the
    median and ``1.4826 MAD``, unless given), reflect-padded by ``margin`` and cut
    into ``tile x tile`` tiles on a stride of ``tile - 2 margin``; only the central
    ``(tile - 2 margin)^2`` of each tile is kept. With ``margin >=
    receptive_radius(model)`` (the default) the result equals the network applied to
    the whole (reflect-padded) image: exactly, except within ``margin`` of the image
    edges where padding differs. Non-finite pixels are set to the background.

    Args:
      model, params: the trained :class:`galjax.models.masknet.MaskNet`.
      image: ``(h, w, 1)`` (or ``(h, w)``) image, ``h, w >= tile``.
      tile: tile size (pixels).
      margin: overlap kept off each tile side (default the receptive radius).
      background, sigma: scalar normalisation (robust estimates when None).
      batch_size: tiles per forward pass (the last batch is padded to one compiled shape).

    Returns:
      ``(h, w, n_classes)`` float32 numpy probabilities in ``[0, 1]``.

    >>> import jax, numpy as np
    >>> from galjax.models.masknet import MaskNet
    >>> net = MaskNet(features=2, dilations=(1,))
    >>> params = net.init(jax.random.key(0), np.zeros((1, 8, 8, 1)))["params"]
    >>> image = np.random.default_rng(0).normal(100.0, 5.0, (30, 20, 1))
    >>> predict_mask(net, params, image, tile=16).shape
    (30, 20, 5)
    """
    img = np.asarray(as_float_array("image", image), np.float32)
    if img.ndim == 2:
        img = img[..., None]
    img = np.asarray(check_image("image", img, bands=1))
    if img.ndim != 3:
        raise ValueError(f"image: expected one image (h, w, 1), got shape {img.shape}")
    h, w = img.shape[:2]
    margin = receptive_radius(model) if margin is None else int(margin)
    if margin < 0:
        raise ValueError(f"margin: expected >= 0, got {margin}")
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile <= 2 * margin:
        raise ValueError(f"tile: expected an integer > 2 * margin = {2 * margin}, got {tile!r}")
    if h < tile or w < tile:
        raise ValueError(
            f"image: {h}x{w} pixels is smaller than one tile ({tile}x{tile}); pass a smaller "
            f"tile (> 2 * margin = {2 * margin})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if background is None or sigma is None:
        bg_est, sig_est = estimate_background(img, method="global")
        background = bg_est if background is None else background
        sigma = sig_est if sigma is None else sigma
    good = np.isfinite(img)
    img = np.where(good, img, np.float32(background))  # NaN pixels -> background
    x = np.asarray(stretch_for_mask(img, background, sigma))
    core = tile - 2 * margin
    ny, nx = math.ceil(h / core), math.ceil(w / core)
    ph, pw = ny * core + 2 * margin, nx * core + 2 * margin
    padded = np.pad(
        x, ((margin, ph - h - margin), (margin, pw - w - margin), (0, 0)), mode="reflect"
    )
    starts = [(i * core, j * core) for i in range(ny) for j in range(nx)]
    tiles = np.stack([padded[y : y + tile, xx : xx + tile] for y, xx in starts])
    fn = _sigmoid_apply(model)
    probs = chunked_map(lambda t: fn(params, t), tiles, chunk_size=batch_size)
    probs = probs[:, margin : margin + core, margin : margin + core]
    out = np.zeros((ny * core, nx * core, probs.shape[-1]), np.float32)
    for (y, xx), p in zip(starts, probs, strict=True):
        out[y : y + core, xx : xx + core] = p
    return out[:h, :w]


@bounded_cache
def _sigmoid_apply(model: MaskNet):
    """The jitted ``(params, x) -> sigmoid(model(x))``, compiled once per (hashable) model."""
    return jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))


def mask_bits(probs, thresholds=0.5):
    """Integer bit mask: bit ``c`` set where ``probs[..., c] >= thresholds[c]``.

    Args:
      probs: ``(..., n_classes)`` probabilities in ``[0, 1]`` (``n_classes <= 31``).
      thresholds: scalar or ``(n_classes,)`` thresholds in ``[0, 1]``.

    Returns:
      ``(...)`` int32 mask ``sum_c 2^c [p_c >= t_c]``.

    >>> import numpy as np
    >>> mask_bits(np.array([[0.9, 0.1, 0.7]]), [0.5, 0.5, 0.8]).tolist()
    [1]
    """
    p = as_float_array("probs", probs)
    if p.ndim < 1 or p.shape[-1] > 31:
        raise ValueError(f"probs: expected (..., n_classes) with n_classes <= 31, got {p.shape}")
    if is_concrete(p):
        a = np.asarray(p)
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1):
            raise ValueError("probs: expected finite probabilities in [0, 1]")
    t = as_float_array("thresholds", thresholds).astype(p.dtype)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != p.shape[-1]):
        raise ValueError(
            f"thresholds: expected a scalar or {p.shape[-1]} values (one per class), "
            f"got shape {t.shape}"
        )
    if is_concrete(t) and (np.any(np.asarray(t) < 0) or np.any(np.asarray(t) > 1)):
        raise ValueError(f"thresholds: expected values in [0, 1], got {np.asarray(t).tolist()}")
    t = jnp.broadcast_to(t, p.shape)
    weights = jnp.broadcast_to(2 ** jnp.arange(p.shape[-1], dtype=jnp.int32), p.shape)
    return jnp.sum(jnp.where(p >= t, weights, 0), axis=-1).astype(jnp.int32)
