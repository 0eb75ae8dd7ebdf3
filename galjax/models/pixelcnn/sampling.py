"""PixelCNN++ sampling: autoregressive draws, one network pass per pixel.

All the randomness is drawn up front (:func:`sample_noise`); :func:`draw_from_outputs`
turns raw outputs and noise into pixel values deterministically, and :func:`sample`
runs a ``lax.fori_loop`` over the pixels in raster order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from galjax.models.pixelcnn.likelihood import split_outputs
from galjax.models.pixelcnn.network import PixelCNNConfig, apply_pixelcnn, check_input

__all__ = ["sample", "sample_noise", "draw_from_outputs"]


def sample_noise(key, config: PixelCNNConfig, n: int):
    """All the randomness of :func:`sample`, drawn up front.

    Returns ``(gumbel, eps)``: ``(n, h, w, K)`` Gumbel noise for the component
    choice and ``(n, h, w, B)`` standard logistic (discrete and logistic heads) or
    normal (Gaussian head) noise.
    """
    kg, ke = jax.random.split(key)
    shape = (n, config.height, config.width)
    gumbel = jax.random.gumbel(kg, shape + (config.n_mix,), jnp.float32)
    if config.head == "gaussian":
        eps = jax.random.normal(ke, shape + (config.bands,), jnp.float32)
    else:
        eps = jax.random.logistic(ke, shape + (config.bands,), jnp.float32)
    return gumbel, eps


def draw_from_outputs(out, gumbel, eps, config: PixelCNNConfig):
    """Draw pixels from raw outputs with given noise (deterministic given the noise).

    Component ``k = argmax(log pi + gumbel)``; band ``c`` gets
    ``mu_kc + sum_{c'<c} alpha_kcc' x_c' + s_kc eps_c`` in band order (the
    discrete head rounds to the grid and clips to [-1, 1], which draws exactly
    the discretised logistic).

    Args:
      out: ``(..., n_outputs)``; gumbel: ``(..., K)``; eps: ``(..., B)``.

    Returns:
      ``(..., B)`` pixel values.
    """
    log_pi, means, log_s, coup = split_outputs(out, config)
    onehot = jax.nn.one_hot(jnp.argmax(log_pi + gumbel, axis=-1), config.n_mix, dtype=out.dtype)
    mu = jnp.sum(means * onehot[..., None], axis=-2)  # (..., B)
    ls = jnp.sum(log_s * onehot[..., None], axis=-2)  # (..., B)
    al = jnp.sum(coup * onehot[..., None, None], axis=-3)  # (..., B, B)
    levels = 2**config.n_bits - 1
    xs = []
    for c in range(config.bands):
        v = mu[..., c] + jnp.exp(ls[..., c]) * eps[..., c]
        for cp in range(c):
            v = v + al[..., c, cp] * xs[cp]
        if config.discrete:
            v = jnp.clip(jnp.round((v + 1.0) * (levels / 2.0)), 0.0, levels) * (2.0 / levels) - 1.0
        xs.append(v)
    return jnp.stack(xs, axis=-1)


def sample(key, params, config: PixelCNNConfig, n: int, y=None):
    """Draw ``n`` images autoregressively: one network pass per pixel, in raster order.

    A ``lax.fori_loop`` over the ``h * w`` pixels; at step ``i`` the network runs
    on the partly drawn images and pixel ``i`` (all its bands, in band order) is
    drawn from its conditional with the noise of :func:`sample_noise`. Cost:
    ``h * w`` forward passes on ``(n, h, w, bands)``.

    Args:
      key: PRNG key.
      params: PixelCNN parameters.
      config: the :class:`PixelCNNConfig` (static).
      n: number of images (static).
      y: ``(n,)`` labels for class-conditional models.

    Returns:
      ``(n, h, w, bands)`` float32 images.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if config.n_classes:
        check_input("x", jnp.zeros((n, config.height, config.width, config.bands)), config, y)
    elif y is not None:
        raise ValueError("y: labels given but config.n_classes == 0")
    return _sample(key, params, config, n, y)


def _sample(key, params, config, n, y):
    gumbel, eps = sample_noise(key, config, n)
    w = config.width

    def body(i, x):
        r, c = i // w, i % w
        out = apply_pixelcnn(params, config, x, y)
        o = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(out, r, 1, 1), c, 1, 2)
        g = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(gumbel, r, 1, 1), c, 1, 2)
        e = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(eps, r, 1, 1), c, 1, 2)
        px = draw_from_outputs(o, g, e, config)  # (n, 1, 1, B)
        return jax.lax.dynamic_update_slice(x, px, (0, r, c, 0))

    x0 = jnp.zeros((n, config.height, config.width, config.bands), jnp.float32)
    return jax.lax.fori_loop(0, config.height * config.width, body, x0)


_sample = jax.jit(_sample, static_argnums=(2, 3))
