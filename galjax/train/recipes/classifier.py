"""Training recipes of the classifiers and binned-PDF regressors, through :func:`galjax.train.fit`.

:func:`train_classifier` minimises the cross-entropy of a Linen classifier (e.g.
:class:`galjax.models.classifier.CNNClassifier`); :func:`train_pdf_regressor` the
cross-entropy over the bins of a continuous target
(:class:`galjax.models.classifier.BinnedPDFRegressor`). Both use ``clip(1) + adamw``
and share one driver around :func:`galjax.train.fit` (shuffled minibatches,
optional validation and early stopping, dropout and augmentation keys per step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.checks import as_float_array, check_image, check_labels
from galjax.scores.pdf import check_edges, to_bins
from galjax.train.config import TrainConfig
from galjax.train.loop import fit
from galjax.train.state import init_state, make_eval_step, make_train_step

__all__ = ["train_classifier", "train_pdf_regressor"]


def _default_tx(learning_rate: float, weight_decay: float):
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=weight_decay)
    )


def _fit_softmax(
    key,
    model: nn.Module,
    images,
    targets,
    loss_of_logits: Callable,
    *,
    n_steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    valid,
    augment,
    progress: bool,
    patience: int | None = None,
):
    """Shared driver: init ``model``, fit ``loss_of_logits(logits, targets)`` with galjax.train."""
    init_key, fit_key = jax.random.split(key)
    variables = model.init(init_key, jnp.asarray(images[:1]))
    params = variables["params"]
    tx = _default_tx(learning_rate, weight_decay)

    def loss_fn(params, key, batch, train=True):
        aug_key, drop_key = jax.random.split(key)
        x = batch["x"]
        if augment is not None and train:
            x = augment(aug_key, x)
        logits = model.apply({"params": params}, x, train=train, rngs={"dropout": drop_key})
        loss = loss_of_logits(logits, batch["y"])
        correct = jnp.argmax(logits, axis=-1) == batch["y"]
        return loss, {"accuracy": jnp.mean(correct.astype(jnp.float32))}

    step = make_train_step(loss_fn, tx)
    eval_fn = None
    eval_data = None
    if valid is not None:
        eval_fn = make_eval_step(lambda p, k, b: loss_fn(p, k, b, train=False))
        eval_data = {"x": jnp.asarray(valid[0]), "y": jnp.asarray(valid[1])}
    config = TrainConfig(
        n_steps=int(n_steps),
        batch_size=int(batch_size),
        eval_every=max(1, min(200, int(n_steps))),
        log_every=max(1, min(50, int(n_steps))),
        patience=patience,
    )
    data = {"x": jnp.asarray(images), "y": jnp.asarray(targets)}
    state, history = fit(
        fit_key,
        init_state(params, tx),
        step,
        data,
        config,
        eval_fn=eval_fn,
        eval_data=eval_data,
        progress=progress,
    )
    return state.params, history


def _check_training_inputs(model, images, labels, n_out, batch_size, valid):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a flax.linen Module, got {type(model).__name__}")
    images = np.asarray(check_image("images", images, min_ndim=4), np.float32)
    if images.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {images.shape}")
    labels = check_labels("labels", labels, n_out, images.shape[0])
    if images.shape[0] < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is larger than the number of images ({images.shape[0]})"
        )
    if valid is not None:
        if not (isinstance(valid, tuple | list) and len(valid) == 2):
            raise TypeError("valid: expected a tuple (images, labels)")
        vi = np.asarray(check_image("valid[0]", valid[0], min_ndim=4), np.float32)
        if vi.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"valid[0]: expected images shaped (m,) + {images.shape[1:]}, got {vi.shape}"
            )
        vl = check_labels("valid[1]", valid[1], n_out, vi.shape[0])
        valid = (vi, vl)
    return images, labels, valid


def train_classifier(
    key,
    model: nn.Module,
    images,
    labels,
    *,
    n_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    valid=None,
    augment: Callable | None = None,
    progress: bool = True,
    patience: int | None = None,
) -> tuple[Any, dict]:
    """Train a classifier on cross-entropy with :func:`galjax.train.fit`.

    Loss: ``-mean_i log softmax(f(x_i))[y_i]`` (optax
    ``softmax_cross_entropy_with_integer_labels``); optimiser ``clip(1) + adamw``.

    Args:
      key: PRNG key (split for init, shuffling, dropout and augmentation).
      model: a Linen module ``model(x, train) -> logits (n, n_classes)``, e.g.
        :class:`~galjax.models.classifier.CNNClassifier` or
        :class:`~galjax.models.classifier.FCNClassifier` (needs ``n_classes``).
      images: ``(n, h, w, bands)`` float32.
      labels: ``(n,)`` integer classes in ``[0, n_classes)``.
      n_steps, batch_size, learning_rate, weight_decay: optimisation settings.
      valid: optional ``(images, labels)``; evaluated every ``min(200, n_steps)``
        steps (loss and accuracy in ``history["eval"]``).
      augment: optional ``fn(key, batch_images) -> batch_images`` applied to each
        training batch (e.g. :func:`galjax.image.transforms.random_dihedral`).
      progress: show a progress bar.
      patience: early-stopping patience in evaluations (needs ``valid``).

    Returns:
      ``(params, history)``: the final parameters and ``fit``'s history.

    >>> import jax, jax.numpy as jnp
    >>> from galjax.models.classifier import FCNClassifier, predict_proba
    >>> from galjax.scores.classification import accuracy
    >>> x = jnp.concatenate([jnp.zeros((8, 4, 4, 1)), jnp.ones((8, 4, 4, 1))])
    >>> y = jnp.array([0] * 8 + [1] * 8)
    >>> m = FCNClassifier(2, hidden=(8,))
    >>> params, _ = train_classifier(jax.random.key(0), m, x, y, n_steps=100,
    ...                              batch_size=8, learning_rate=1e-2, progress=False)
    >>> accuracy(predict_proba(m, params, x), y)
    1.0
    """
    n_classes = getattr(model, "n_classes", None)
    images, labels, valid = _check_training_inputs(
        model, images, labels, n_classes, batch_size, valid
    )

    def ce(logits, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return _fit_softmax(
        key,
        model,
        images,
        labels,
        ce,
        n_steps=n_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        valid=valid,
        augment=augment,
        progress=progress,
        patience=patience,
    )


def train_pdf_regressor(
    key,
    model: nn.Module,
    images,
    values,
    edges,
    *,
    n_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    valid=None,
    augment: Callable | None = None,
    progress: bool = True,
    label_smoothing: float = 0.0,
) -> tuple[Any, dict]:
    """Train a binned-PDF regressor on cross-entropy over bins.

    The model is e.g. :class:`~galjax.models.classifier.BinnedPDFRegressor`. The
    continuous target is binned (:func:`galjax.scores.pdf.to_bins`); the loss is the
    cross-entropy of the softmax over bins, optionally smoothed by spreading
    ``label_smoothing`` of the mass uniformly over all bins.

    Args:
      key: PRNG key.
      model: Linen module with ``n_bins == len(edges) - 1`` outputs.
      images: ``(n, h, w, bands)``.
      values: ``(n,)`` continuous targets.
      edges: ``(n_bins + 1,)`` bin edges.
      valid: optional ``(images, values)``.
      other arguments: as :func:`train_classifier`.

    Returns:
      ``(params, history)``.
    """
    e = np.asarray(check_edges(edges))
    n_bins = e.size - 1
    if getattr(model, "n_bins", n_bins) != n_bins:
        raise ValueError(f"edges: model has {model.n_bins} bins, edges give {n_bins}")
    vals = np.asarray(as_float_array("values", values))
    if vals.ndim != 1:
        raise ValueError(f"values: expected a 1-D array of targets, got shape {vals.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
    bins = to_bins(vals, e)
    if valid is not None:
        valid = (valid[0], to_bins(np.asarray(valid[1], np.float32), e))
    images, bins, valid = _check_training_inputs(model, images, bins, n_bins, batch_size, valid)

    def ce(logits, y):
        target = jax.nn.one_hot(y, n_bins, dtype=logits.dtype)
        target = (1 - label_smoothing) * target + label_smoothing / n_bins
        return jnp.mean(optax.softmax_cross_entropy(logits, target))

    return _fit_softmax(
        key,
        model,
        images,
        bins,
        ce,
        n_steps=n_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        valid=valid,
        augment=augment,
        progress=progress,
    )
