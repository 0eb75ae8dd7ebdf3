"""PixelCNN++: an autoregressive image likelihood with exact ``log p(x)``.

Salimans, Karpathy, Chen & Kingma (2017, ICLR, "PixelCNN++"): the image
likelihood factorises in raster order (rows top to bottom, pixels left to right,
bands in order within a pixel),

    log p(x) = sum_i log p(x_i | x_<i),

and a two-stream U-Net of shifted convolutions computes the parameters of every
conditional in one pass. The "down" stream ``u`` sees only the rows above a
pixel, the "down-right" stream ``ul`` sees the rows above plus the pixels to
the left in the same row; gated residual blocks with concat-ELU, stride-2
shifted convolutions down and shifted transposed convolutions back up, with
skip connections between the passes. Within a pixel the bands are coupled
linearly: ``mu_c <- mu_c + sum_{c' < c} alpha_{cc'} x_{c'}`` (the paper's RGB
trick, for any number of bands).

Heads (``PixelCNNConfig.head``):

- ``"logistic_mixture"``: the discretised logistic mixture of PixelCNN++ for
  quantised data with ``2**n_bits`` levels on ``[-1, 1]`` (e.g. 8-bit radio or
  quantised optical images; :func:`quantise` maps real images onto that grid).
  ``log p`` is then a log-probability of discrete values.
- ``"gaussian"`` / ``"logistic"``: a continuous per-pixel density (a mixture of
  ``n_mix`` components; ``n_mix=1`` is the per-pixel Gaussian of Zanisi et al.'s
  code) for float images such as arcsinh-scaled stamps. ``log p`` is then a
  log-density (it can be positive).

The Linen module :class:`PixelCNN` holds only the architecture; the likelihood
(:func:`log_prob`, :func:`log_prob_map`, :func:`bits_per_dim`), the loss
(:func:`make_loss_fn`) and autoregressive sampling (:func:`sample`, a
``lax.fori_loop`` over pixels) are pure functions of ``params``. As in the rest
of ``galjax.models``, they take ``(params, config, x)``.

>>> import jax
>>> cfg = PixelCNNConfig(height=8, width=8, n_filters=8, n_scales=2, n_mix=2)
>>> params = init_pixelcnn(jax.random.key(0), cfg)
>>> x = quantise(jax.random.uniform(jax.random.key(1), (2, 8, 8, 1)), 0.0, 1.0, cfg.n_bits)
>>> log_prob(params, cfg, x).shape
(2,)
"""

from galjax.models.pixelcnn import likelihood, network, sampling
from galjax.models.pixelcnn.likelihood import (
    bits_per_dim,
    head_log_prob,
    log1mexp,
    log_prob,
    log_prob_map,
    log_sum_exp,
    make_loss_fn,
    split_outputs,
)
from galjax.models.pixelcnn.network import (
    HEADS,
    PixelCNN,
    PixelCNNConfig,
    apply_pixelcnn,
    check_input,
    init_pixelcnn,
    quantise,
)
from galjax.models.pixelcnn.sampling import draw_from_outputs, sample, sample_noise

__all__ = [
    "likelihood",
    "network",
    "sampling",
    "HEADS",
    "PixelCNNConfig",
    "PixelCNN",
    "init_pixelcnn",
    "apply_pixelcnn",
    "check_input",
    "quantise",
    "log_sum_exp",
    "log1mexp",
    "split_outputs",
    "head_log_prob",
    "log_prob_map",
    "log_prob",
    "bits_per_dim",
    "make_loss_fn",
    "sample",
    "sample_noise",
    "draw_from_outputs",
]
