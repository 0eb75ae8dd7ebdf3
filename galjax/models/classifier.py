"""Image classifiers whose softmax outputs are class posteriors, and binned-PDF regressors.

Linen modules hold the architectures only: :class:`CNNClassifier` and
:class:`FCNClassifier` return class logits, :class:`BinnedPDFRegressor` logits over
``n_bins`` bins of a continuous target (photometric-redshift style, e.g. Pasquet et
al. 2019), whose softmax is a binned PDF. :func:`predict_proba` / :func:`predict_pdf`
evaluate a trained model in chunks. Training:
:func:`galjax.train.recipes.classifier.train_classifier` and
:func:`~galjax.train.recipes.classifier.train_pdf_regressor`; scores of the outputs:
:mod:`galjax.scores.classification` and :mod:`galjax.scores.pdf`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from galjax.core.cache import bounded_cache
from galjax.core.checks import check_image
from galjax.core.chunks import chunked_map

__all__ = [
    "CNNClassifier",
    "FCNClassifier",
    "BinnedPDFRegressor",
    "predict_proba",
    "predict_pdf",
]


class CNNClassifier(nn.Module):
    """Convolutional classifier returning logits.

    Per level in ``features``: 3x3 convolution + ReLU + 2x2 max-pool; then a
    dense layer of ``dense`` units + ReLU, dropout and the ``n_classes`` logits.

    Attributes:
      n_classes: number of classes.
      features: convolution channels per level.
      dense: width of the hidden dense layer.
      dropout: dropout rate before the logits (active when ``train=True``; give a
        ``"dropout"`` rng to ``apply``).

    ``__call__(x, train=False)``: ``x (n, h, w, bands)`` float32 -> logits
    ``(n, n_classes)``.

    >>> import jax, jax.numpy as jnp
    >>> m = CNNClassifier(3, features=(4,), dense=8)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    >>> m.apply(v, jnp.zeros((2, 8, 8, 1))).shape
    (2, 3)
    """

    n_classes: int
    features: tuple[int, ...] = (16, 32, 64)
    dense: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(nn.Dense(self.dense)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.n_classes)(x)


class FCNClassifier(nn.Module):
    """Fully connected classifier on the flattened image, returning logits.

    Attributes:
      n_classes: number of classes.
      hidden: widths of the hidden ReLU layers.
      dropout: dropout rate after each hidden layer (when ``train=True``).

    ``__call__(x, train=False)``: ``x (n, h, w, bands)`` -> logits ``(n, n_classes)``.

    >>> import jax, jax.numpy as jnp
    >>> m = FCNClassifier(2, hidden=(8,))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    >>> m.apply(v, jnp.zeros((3, 4, 4, 1))).shape
    (3, 2)
    """

    n_classes: int
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[:-3] + (-1,))
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.n_classes)(x)


class BinnedPDFRegressor(nn.Module):
    """CNN whose output is a softmax over ``n_bins`` bins of a continuous target.

    Same trunk as :class:`CNNClassifier`; the logits are over bins, so
    ``softmax(logits)`` is the binned PDF (probability per bin, summing to one).

    Attributes:
      n_bins: number of bins of the target.
      features, dense, dropout: as in :class:`CNNClassifier`.

    >>> import jax, jax.numpy as jnp
    >>> m = BinnedPDFRegressor(10, features=(4,), dense=8)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    >>> m.apply(v, jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
    """

    n_bins: int
    features: tuple[int, ...] = (16, 32, 64)
    dense: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        return CNNClassifier(self.n_bins, self.features, self.dense, self.dropout)(x, train)


def predict_proba(model: nn.Module, params, images, batch_size: int = 256):
    """Softmax class probabilities of a trained classifier (evaluation mode).

    Args:
      model: the Linen module used in training.
      params: its parameters (``variables["params"]``).
      images: ``(n, h, w, bands)``.
      batch_size: images per forward pass (memory bound only).

    Returns:
      ``(n, n_classes)`` float32 numpy array, rows summing to one.

    >>> import jax, jax.numpy as jnp
    >>> m = FCNClassifier(3, hidden=(4,))
    >>> params = m.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
    >>> p = predict_proba(m, params, jnp.zeros((5, 4, 4, 1)), batch_size=2)
    >>> p.shape, bool(abs(p.sum(axis=1) - 1).max() < 1e-6)
    ((5, 3), True)
    """
    images = check_image("images", images, min_ndim=4)
    if images.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    fn = _softmax_apply(model)
    # pad=False: the last, shorter chunk is evaluated as it is (no padded rows).
    out = chunked_map(lambda x: fn(params, x), images, chunk_size=batch_size, pad=False)
    return np.asarray(out).astype(np.float32)


@bounded_cache
def _softmax_apply(model: nn.Module):
    """The jitted ``(params, x) -> softmax(model(x, train=False))``, once per (hashable) model."""
    return jax.jit(lambda p, x: jax.nn.softmax(model.apply({"params": p}, x, train=False)))


def predict_pdf(model: nn.Module, params, images, batch_size: int = 256):
    """Binned PDFs ``(n, n_bins)`` of a trained :class:`BinnedPDFRegressor` (alias of
    :func:`predict_proba`)."""
    return predict_proba(model, params, images, batch_size)
