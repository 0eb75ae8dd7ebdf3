"""Pixel noise: Gaussian sky plus Poisson source noise (exact or Gaussian approximation).

Images are in flux units per pixel; ``gain`` converts them to counts
(electrons) for the Poisson term, so the variance of a pixel is
``sigma_sky^2 + max(image, 0) / gain``. ``gain=None`` means sky noise only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from galjax.core.checks import check_image, check_positive

__all__ = ["noise_variance", "add_noise", "add_background"]


def noise_variance(image, sky_sigma, gain=None):
    """Per-pixel variance ``sigma_sky^2 + max(image, 0) / gain``.

    This is the Poisson approximation used by MADNESS for the MAP objective.

    Args:
      image: ``(..., h, w, bands)`` noiseless flux per pixel.
      sky_sigma: sky noise std per pixel, scalar, ``(bands,)`` or broadcastable.
      gain: counts per flux unit, scalar or ``(bands,)``; None for sky only.

    Returns:
      Variance with the shape of ``image``.
    """
    var = jnp.broadcast_to(jnp.asarray(sky_sigma, image.dtype) ** 2, image.shape)
    if gain is not None:
        var = var + jnp.maximum(image, 0.0) / jnp.broadcast_to(
            jnp.asarray(gain, image.dtype), image.shape
        )
    return var


def add_noise(key, image, sky_sigma, gain=None, poisson: str = "gaussian"):
    """Add sky and source noise to a noiseless image.

    Args:
      key: PRNG key.
      image: ``(..., h, w, bands)`` noiseless flux per pixel.
      sky_sigma: sky noise std per pixel (scalar or ``(bands,)``).
      gain: counts per flux unit for the Poisson term (None: sky noise only).
      poisson: ``"gaussian"`` (variance ``image / gain``, differentiable) or
        ``"exact"`` (Poisson draws of ``gain * image`` counts; not differentiable).

    Returns:
      Noisy image, same shape and dtype.

    >>> img = jnp.zeros((8, 8, 1))
    >>> add_noise(jax.random.key(0), img, 1.0).shape
    (8, 8, 1)
    """
    k_sky, k_src = jax.random.split(key)
    # Explicit broadcasting of per-band (bands,) values (rank promotion may be an error).
    sky_sigma = jnp.broadcast_to(jnp.asarray(sky_sigma, image.dtype), image.shape)
    sky = sky_sigma * jax.random.normal(k_sky, image.shape, image.dtype)
    if gain is None:
        return image + sky
    gain = jnp.broadcast_to(jnp.asarray(gain, image.dtype), image.shape)
    src = jnp.maximum(image, 0.0)
    if poisson == "gaussian":
        noise = jnp.sqrt(src / gain) * jax.random.normal(k_src, image.shape, image.dtype)
        return image + sky + noise
    if poisson == "exact":
        counts = jax.random.poisson(k_src, src * gain, image.shape).astype(image.dtype)
        return counts / gain + (image - src) + sky
    raise ValueError(f"poisson: expected 'gaussian' or 'exact', got {poisson!r}")


def add_background(key, images, sigma, level=0.0, gain=None):
    """Put noiseless images on a background: ``image + level + noise``.

    The noise is :func:`add_noise` (sky std ``sigma``, Gaussian approximation of
    the Poisson term with ``gain``), so that simulated images (e.g. the Sersic
    archetypes of :mod:`galjax.ood`) get the same kind of background and noise as
    the real images they stand for.

    Args:
      key: PRNG key.
      images: ``(n, h, w, bands)`` noiseless flux per pixel.
      sigma: sky noise std (> 0), broadcastable to ``images`` (per image: ``(n, 1, 1, 1)``).
      level: background level added, broadcastable to ``images`` (default 0), e.g. from
        :func:`galjax.image.background.estimate_background` (``method="border"``).
      gain: counts per flux unit for the Poisson term, or None (default) for sky only.

    Returns:
      ``(n, h, w, bands)`` noisy images, the dtype of ``images``.

    >>> x = add_background(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), 1.0, level=5.0)
    >>> x.shape, bool(abs(float(x.mean()) - 5.0) < 0.5)
    ((2, 8, 8, 1), True)
    """
    x = check_image("images", images)
    check_positive("sigma", sigma)
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)
    lv = jnp.broadcast_to(jnp.asarray(level, x.dtype), x.shape)
    return add_noise(key, x, s, gain) + lv
