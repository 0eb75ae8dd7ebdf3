"""Likelihood ratios of two PixelCNN++ models, per image and per pixel.

Raw likelihoods of deep generative models are dominated by global properties:
size, brightness, background and overall complexity (Nalisnick et al. 2019;
Ren et al. 2019). A ratio with a second model that shares those properties
cancels them:

- **Archetype likelihood ratio** (Zanisi et al. 2021): the second PixelCNN is trained
  on smooth Sersic archetypes of the galaxies (:func:`galjax.fit.fit_sersic`,
  :func:`galjax.fit.render_archetypes`, :func:`galjax.sim.add_background`); the ratio
  measures ``log p(details | global)``.
- **Background model ratio** (Ren et al. 2019): the second model is trained on
  inputs with a fraction ``mu`` of pixels replaced by uniform noise
  (:func:`perturbed_sampler`).

``LLR(x) = log p(x; theta_a) - log p(x; theta_b)`` per image (:func:`llr`) or per
pixel (:func:`llr_map`), in nats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from galjax.core.checks import check_image
from galjax.core.chunks import chunked_map
from galjax.image.transforms import perturb_pixels
from galjax.models.pixelcnn import PixelCNNConfig, check_input, log_prob_map, quantise

__all__ = ["llr", "llr_map", "perturbed_sampler"]


def llr(
    params_a, config_a: PixelCNNConfig, params_b, config_b: PixelCNNConfig, x, batch_size: int = 256
):
    """Likelihood ratio per image ``log p(x; theta_a) - log p(x; theta_b)`` in nats.

    ``theta_a``: the model of the data; ``theta_b``: the archetype (Zanisi et al. 2021)
    or background (Ren et al. 2019) model. The sum over pixels of :func:`llr_map`.

    Args:
      params_a, config_a: parameters and :class:`~galjax.models.pixelcnn.PixelCNNConfig`
        of model ``a``.
      params_b, config_b: the same for model ``b`` (same image shape).
      x: ``(n, h, w, bands)`` or ``(h, w, bands)`` images valid for both configs
        (:func:`~galjax.models.pixelcnn.check_input`).
      batch_size: images per compiled call (default 256; bounds memory).

    Returns:
      ``(n,)`` (or a scalar for one image), larger where model ``a`` fits better.

    Example (skipped in the doctests: compiling a PixelCNN takes half a minute on a CPU):

    >>> import jax
    >>> from galjax.models.pixelcnn import PixelCNNConfig, init_pixelcnn, quantise
    >>> cfg = PixelCNNConfig(height=4, width=4, n_filters=4, n_scales=1, n_mix=1)
    >>> p = init_pixelcnn(jax.random.key(0), cfg)  # doctest: +SKIP
    >>> x = quantise(jax.random.uniform(jax.random.key(1), (3, 4, 4, 1)), 0, 1)  # doctest: +SKIP
    >>> llr(p, cfg, p, cfg, x).tolist()  # a model against itself  # doctest: +SKIP
    [0.0, 0.0, 0.0]
    """
    return jnp.sum(llr_map(params_a, config_a, params_b, config_b, x, batch_size), axis=(-2, -1))


def llr_map(params_a, config_a, params_b, config_b, x, batch_size: int = 256):
    """Per-pixel likelihood ratio ``log p(x_i | x_<i; a) - log p(x_i | x_<i; b)`` in nats.

    Each map is :func:`~galjax.models.pixelcnn.log_prob_map` (bands summed), evaluated
    in chunks of ``batch_size`` images padded to one compiled shape
    (:func:`galjax.core.chunks.chunked_map`). Arguments as in :func:`llr`.

    Returns:
      ``(n, h, w)`` (or ``(h, w)`` for one image); draw it with
      :func:`galjax.plot.ood.llr_figure`.
    """
    la = _batched_map(params_a, config_a, x, batch_size)
    lb = _batched_map(params_b, config_b, x, batch_size)
    return la - lb


@functools.partial(jax.jit, static_argnums=1)
def _map_jit(params, config, x):
    return log_prob_map(params, config, x)


def _batched_map(params, config, x, batch_size):
    single = jnp.ndim(x) == 3
    x = check_input("x", x, config)  # shape, bands, NaN, range and grid, once
    if single:
        return _batched_map(params, config, x, batch_size)[0]
    # One compiled shape: the last chunk is padded to batch_size images.
    out = chunked_map(lambda xb: _map_jit(params, config, xb), x, chunk_size=batch_size)
    return jnp.asarray(out)


def perturbed_sampler(
    x, batch_size: int, rate: float, low: float = -1.0, high: float = 1.0, n_bits=None
):
    """Batch sampler of perturbed inputs for Ren et al.'s background model.

    Each call draws ``batch_size`` random images of ``x`` and replaces each pixel
    with probability ``rate`` (the mutation rate mu; Ren et al. use 0.1-0.3) by a
    value uniform in ``[low, high]`` (:func:`galjax.image.transforms.perturb_pixels`);
    with ``n_bits`` the result is re-quantised onto the discrete head's grid.

    Args:
      x: ``(n, h, w, bands)`` training images.
      batch_size: images per batch.
      rate: mutation rate in [0, 1].
      low, high: range of the replacement values (the head's range by default).
      n_bits: bit depth to re-quantise to (discrete head), or None.

    Returns:
      ``sample_batch(key) -> (batch_size, h, w, bands)``, usable as ``data`` of
      :func:`galjax.train.fit` / :func:`galjax.train.recipes.pixelcnn.train_pixelcnn`.
    """
    x = check_image("x", x)
    if x.ndim != 4:
        raise ValueError(f"x: expected (n, h, w, bands), got shape {x.shape}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate: expected a mutation rate in [0, 1], got {rate!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")

    @jax.jit
    def sample_batch(key):
        k_idx, k_pert = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, x.shape[0])
        out = perturb_pixels(k_pert, x[idx], rate, low, high)
        if n_bits is not None:
            out = quantise(out, -1.0, 1.0, n_bits)
        return out

    return sample_batch
