"""PixelCNN++ likelihood: output heads, ``log p(x)`` per pixel and per image, the loss.

``log p(x) = sum_i log p(x_i | x_<i)`` in raster order (rows top to bottom, pixels
left to right, bands in order within a pixel); each conditional is a mixture of
``n_mix`` components (discretised logistic, Gaussian or logistic) whose means are
coupled linearly across the bands of a pixel (Salimans et al. 2017, eq. 3 and sec. 2.2).
All functions are pure functions of ``params`` (or of the raw outputs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from galjax.models.pixelcnn.network import PixelCNNConfig, apply_pixelcnn, check_input
from galjax.scores.metrics import bits_per_dim as _bits_per_dim

__all__ = [
    "log_sum_exp",
    "log1mexp",
    "split_outputs",
    "head_log_prob",
    "log_prob_map",
    "log_prob",
    "bits_per_dim",
    "make_loss_fn",
]


# -- numerics -----------------------------------------------------------------------


def log_sum_exp(a, axis: int = -1):
    """``log sum_k exp(a_k)`` computed as ``m + log sum_k exp(a_k - m)``, ``m = max_k a_k``.

    Without the shift, ``exp`` overflows to inf for ``a > 88`` in float32 (mixture
    logits late in training) and underflows to 0 for ``a < -103`` (every
    component's log density of an unlikely pixel), giving ``log 0 = -inf`` and NaN
    gradients. ``m`` is held constant for the gradient (it cancels exactly), and
    an all ``-inf`` slice returns ``-inf`` instead of NaN.

    >>> float(log_sum_exp(jnp.array([1000.0, 1000.0])))  # naive: inf
    1000.6931762695312
    """
    a = jnp.asarray(a)
    m = jax.lax.stop_gradient(jnp.max(a, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    return jnp.squeeze(m, axis) + jnp.log(jnp.sum(jnp.exp(a - m), axis=axis))


def log1mexp(d):
    """``log(1 - exp(-d))`` for ``d > 0``, accurate everywhere (Maechler 2012).

    For small ``d`` (a wide logistic, bin probability ~ d / 4), ``1 - exp(-d)``
    cancels catastrophically (``d = 1e-8`` gives exactly 0 in float32 and log 0 =
    -inf): use ``log(-expm1(-d))``. For large ``d`` (a narrow logistic),
    ``exp(-d)`` underflows harmlessly but ``-expm1(-d)`` rounds to 1 too early: use
    ``log1p(-exp(-d))``. The switch at ``ln 2`` keeps both branches accurate.

    >>> round(float(log1mexp(jnp.float32(1e-8))), 4)  # naive log(1 - exp(-1e-8)) = -inf
    -18.4207
    """
    d = jnp.asarray(d)
    # Safe arguments in both branches so that neither produces NaN gradients.
    small = d <= math.log(2.0)
    d_small = jnp.where(small, d, jnp.ones_like(d))
    d_large = jnp.where(small, jnp.ones_like(d), d)
    return jnp.where(small, jnp.log(-jnp.expm1(-d_small)), jnp.log1p(-jnp.exp(-d_large)))


# -- heads ---------------------------------------------------------------------------


def split_outputs(out, config: PixelCNNConfig):
    """Raw outputs ``(..., n_outputs)`` -> log mixture weights ``(..., K)``, means,
    log scales ``(..., K, B)`` and the coupling matrices ``(..., K, B, B)``
    (strictly lower triangular, entries ``tanh`` of the raw coefficients)."""
    k, b, nc = config.n_mix, config.bands, config.n_coeffs
    lead = out.shape[:-1]
    log_pi = jax.nn.log_softmax(out[..., :k], axis=-1)
    means = out[..., k : k + k * b].reshape(lead + (k, b))
    log_s = out[..., k + k * b : k + 2 * k * b].reshape(lead + (k, b))
    log_s = jnp.maximum(log_s, config.min_log_scale)
    coup = jnp.zeros(lead + (k, b, b), out.dtype)
    if nc:
        raw = jnp.tanh(out[..., k + 2 * k * b :].reshape(lead + (k, nc)))
        rows, cols = np.tril_indices(b, -1)
        coup = coup.at[..., rows, cols].set(raw)
    return log_pi, means, log_s, coup


def _component_log_prob(x, means, log_s, config: PixelCNNConfig):
    """Per component and band log p of ``x (..., 1, B)`` given its (coupled) means."""
    inv_s = jnp.exp(-log_s)
    centred = x - means
    if config.head == "gaussian":
        z = centred * inv_s
        return -0.5 * z * z - log_s - 0.5 * math.log(2.0 * math.pi)
    if config.head == "logistic":
        z = centred * inv_s
        return -z - 2.0 * jax.nn.softplus(-z) - log_s
    # Discretised logistic: P(x) = sigma(a) - sigma(b) with a, b = (x - mu +- 1/L) / s
    # (L = 2**n_bits - 1 intervals on [-1, 1]; the edges take the whole tails).
    half = 1.0 / (2**config.n_bits - 1)
    a = inv_s * (centred + half)
    b = inv_s * (centred - half)
    # sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(-(a - b))), exactly; in logs it
    # needs no subtraction of nearly equal CDFs (the paper's code instead falls back
    # to a midpoint density when the difference underflows below 1e-5). a - b is
    # 2 inv_s / L computed directly, so it has no cancellation either.
    mid = jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + log1mexp(2.0 * half * inv_s)
    lo_edge = x < -1.0 + 0.5 * half
    hi_edge = x > 1.0 - 0.5 * half
    return jnp.where(
        lo_edge, jax.nn.log_sigmoid(a), jnp.where(hi_edge, jax.nn.log_sigmoid(-b), mid)
    )


def head_log_prob(out, x, config: PixelCNNConfig):
    """Per-pixel ``log p(x_i | x_<i)`` (bands summed) from raw outputs.

    ``log p(x_pixel) = log sum_k pi_k prod_c p(x_c; mu_kc + sum_{c'<c} alpha_kcc' x_c', s_kc)``.

    Args:
      out: ``(..., h, w, n_outputs)`` network outputs.
      x: ``(..., h, w, bands)`` the images the outputs were computed from.
      config: the :class:`PixelCNNConfig`.

    Returns:
      ``(..., h, w)`` log-probabilities (discrete head) or log-densities (continuous).
    """
    log_pi, means, log_s, coup = split_outputs(out, config)
    xk = x[..., None, :]  # (..., h, w, 1, B): the same pixel for every component
    means = means + jnp.sum(coup * xk[..., None, :], axis=-1)
    lp = jnp.sum(_component_log_prob(xk, means, log_s, config), axis=-1)  # (..., K)
    return log_sum_exp(log_pi + lp, axis=-1)


# -- likelihood ------------------------------------------------------------------------


def log_prob_map(params, config: PixelCNNConfig, x, y=None, key=None):
    """Per-pixel log-likelihood map ``log p(x_i | x_<i)`` (summed over bands).

    Args:
      params: PixelCNN parameters.
      config: the :class:`PixelCNNConfig`.
      x: ``(n, h, w, bands)`` or ``(h, w, bands)`` images (discrete head: on the
        ``quantise`` grid in [-1, 1]).
      y: ``(n,)`` integer labels for class-conditional models.
      key: dropout key (training mode); None for evaluation.

    Returns:
      ``(n, h, w)`` (or ``(h, w)``) in nats; the sum over pixels is :func:`log_prob`.
    """
    single = jnp.ndim(x) == 3
    x = check_input("x", x, config, y)
    if single and y is not None:
        y = jnp.reshape(y, (1,))
    lp = _log_prob_map(params, config, x, y, key)
    return lp[0] if single else lp


@functools.partial(jax.jit, static_argnums=1)
def _log_prob_map(params, config, x, y, key):
    # Compiled once per shape: eager Flax would dispatch (and compile) every op.
    return head_log_prob(apply_pixelcnn(params, config, x, y, key), x, config)


def log_prob(params, config: PixelCNNConfig, x, y=None, key=None):
    """Log-likelihood per image ``log p(x) = sum_i log p(x_i | x_<i)`` in nats, shape ``(n,)``."""
    return jnp.sum(log_prob_map(params, config, x, y, key), axis=(-2, -1))


def bits_per_dim(params, config: PixelCNNConfig, x, y=None):
    """``-log p(x) / (h w bands ln 2)`` per image (:func:`galjax.scores.metrics.bits_per_dim`).

    For the discrete head this is the usual bits/dim of 8-bit data (2.92 for
    PixelCNN++ on CIFAR-10). For a continuous head it is the log-density of the
    scaled data in bits (it can be negative); add ``log2(bin width)`` per dimension
    to compare with a discrete model.
    """
    return _bits_per_dim(-log_prob(params, config, x, y), config.n_dims)


def make_loss_fn(config: PixelCNNConfig, labelled: bool = False, train: bool = True) -> Callable:
    """Loss for :func:`galjax.train.make_train_step`: mean bits/dim over the batch.

    ``loss = -mean_n log p(x_n) / (h w bands ln 2)``.

    Args:
      config: the :class:`PixelCNNConfig`.
      labelled: batches are ``{"x": images, "y": labels}`` instead of images
        ``(n, h, w, bands)``.
      train: use ``key`` for dropout (when ``config.dropout > 0``); pass
        ``train=False`` for the evaluation loss of ``make_eval_step``.

    Returns:
      ``loss_fn(params, key, batch) -> (bits_per_dim, {"bits_per_dim": ...})``.
    """

    def loss_fn(params, key, batch):
        x, y = (batch["x"], batch["y"]) if labelled else (batch, None)
        drop_key = key if (train and config.dropout > 0) else None
        out = apply_pixelcnn(params, config, x, y, drop_key)
        lp = jnp.sum(head_log_prob(out, x, config), axis=(-2, -1))
        bpd = -jnp.mean(lp) / (config.n_dims * math.log(2.0))
        return bpd, {"bits_per_dim": bpd}

    return loss_fn
