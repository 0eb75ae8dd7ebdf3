"""Classifiers whose outputs are class posteriors, prior correction and binned-PDF regression.

A network trained with cross-entropy estimates the posterior ``P_T(c | x)`` under
the class mix ``P_T(c)`` of its *training* set (Bertin, seed 001; Saerens et al.
2002). When the class mix met in use, ``P(c)``, differs, Bayes' rule gives

    P(c | x) = P_T(c | x) P(c) / P_T(c) / sum_c' P_T(c' | x) P(c') / P_T(c')

(:func:`correct_priors`). :func:`resample_to_priors` builds a training set with
chosen priors by over/under-sampling.

Binned-PDF regression (photometric-redshift style, e.g. Pasquet et al. 2019): a
CNN with a softmax over ``n_bins`` bins of a continuous target gives a PDF; its
mean is the point estimate (:func:`pdf_point_estimate`), and
:func:`sigma_mad`, :func:`outlier_fraction` and :func:`pit_values` score it.

Architectures are Linen modules; training goes through :func:`galjax.train.fit`.

>>> import jax, jax.numpy as jnp
>>> p = jnp.array([[0.5, 0.5]])
>>> [round(float(v), 3) for v in correct_priors(p, jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1]))[0]]
[0.9, 0.1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.checks import as_float_array, check_image, check_probabilities, is_concrete
from galjax.train import TrainConfig, fit, init_state, make_eval_step, make_train_step

__all__ = [
    "CNNClassifier",
    "FCNClassifier",
    "BinnedPDFRegressor",
    "train_classifier",
    "train_pdf_regressor",
    "predict_proba",
    "predict_pdf",
    "accuracy",
    "class_priors",
    "correct_priors",
    "resample_to_priors",
    "bin_edges",
    "to_bins",
    "pdf_point_estimate",
    "pdf_cdf",
    "sample_pdf",
    "sigma_mad",
    "outlier_fraction",
    "pit_values",
]


# --------------------------------------------------------------------------- networks
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


# --------------------------------------------------------------------------- checks
def _check_labels(name: str, labels, n_classes: int | None = None, n: int | None = None):
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {lab.shape}")
    if n is not None and lab.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per example), got {lab.shape[0]}")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int32)
        else:
            raise TypeError(f"{name}: expected integer class indices, got dtype {lab.dtype}")
    if n_classes is not None and lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(
            f"{name}: expected class indices in [0, {n_classes}), got range "
            f"[{int(lab.min())}, {int(lab.max())}]"
        )
    return lab.astype(np.int32)


def _check_probs(name: str, probs, atol: float = 1e-3):
    p = as_float_array(name, probs)
    if p.ndim < 1 or p.shape[-1] < 2:
        raise ValueError(
            f"{name}: expected probabilities shaped (..., n_classes) with n_classes >= 2, "
            f"got shape {p.shape}"
        )
    check_probabilities(name, p)
    if is_concrete(p):
        a = np.asarray(p)
        s = a.sum(axis=-1)
        if s.size and np.max(np.abs(s - 1)) > atol:
            raise ValueError(
                f"{name}: expected each row to sum to 1, got sums in "
                f"[{float(s.min()):.6g}, {float(s.max()):.6g}]"
            )
    return p


def _check_priors(name: str, priors, n_classes: int | None = None, atol: float = 1e-4):
    p = as_float_array(name, priors)
    if p.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D vector of class priors, got shape {p.shape}")
    if n_classes is not None and p.shape[0] != n_classes:
        raise ValueError(f"{name}: expected {n_classes} priors (one per class), got {p.shape[0]}")
    if is_concrete(p):
        a = np.asarray(p)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: expected finite priors, found NaN/inf")
        if np.any(a <= 0):
            raise ValueError(
                f"{name}: expected strictly positive priors (a zero prior makes the class "
                f"impossible and the correction undefined), got {a.tolist()}"
            )
        if abs(float(a.sum()) - 1.0) > atol:
            raise ValueError(f"{name}: expected priors summing to 1, got sum {float(a.sum()):.6g}")
    return p


# --------------------------------------------------------------------------- training
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
    labels = _check_labels("labels", labels, n_out, images.shape[0])
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
        vl = _check_labels("valid[1]", valid[1], n_out, vi.shape[0])
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
        :class:`CNNClassifier` or :class:`FCNClassifier` (needs ``n_classes``).
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


def predict_proba(model: nn.Module, params, images, batch_size: int = 256):
    """Softmax class probabilities of a trained classifier (evaluation mode).

    Args:
      model: the Linen module used in training.
      params: its parameters (``variables["params"]``).
      images: ``(n, h, w, bands)``.
      batch_size: images per forward pass (memory bound only).

    Returns:
      ``(n, n_classes)`` float32 numpy array, rows summing to one.
    """
    images = check_image("images", images, min_ndim=4)
    if images.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    fn = jax.jit(lambda p, x: jax.nn.softmax(model.apply({"params": p}, x, train=False)))
    out = [
        np.asarray(fn(params, images[i : i + batch_size]))
        for i in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def accuracy(probs, labels) -> float:
    """Fraction of examples whose arg-max class equals the label.

    Args:
      probs: ``(n, n_classes)`` probabilities or logits.
      labels: ``(n,)`` integer classes.

    >>> accuracy([[0.9, 0.1], [0.3, 0.7]], [0, 0])
    0.5
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"probs: expected (n, n_classes), got shape {p.shape}")
    lab = _check_labels("labels", labels, p.shape[1], p.shape[0])
    return float(np.mean(np.argmax(p, axis=1) == lab))


# --------------------------------------------------------------------------- priors
def class_priors(labels, n_classes: int):
    """Empirical class frequencies ``P(c) = #{y = c} / n`` as a ``(n_classes,)`` array.

    >>> class_priors([0, 0, 1, 2], 3).tolist()
    [0.5, 0.25, 0.25]
    """
    lab = _check_labels("labels", labels, n_classes)
    if lab.size == 0:
        raise ValueError("labels: expected at least one label")
    return np.bincount(lab, minlength=n_classes).astype(np.float32) / np.float32(lab.size)


def correct_priors(probs, train_priors, true_priors):
    """Correct posteriors for a change of class priors (Saerens et al. 2002).

    ``P(c|x) = P_T(c|x) w_c / sum_c' P_T(c'|x) w_c'`` with ``w_c = P(c) / P_T(c)``.
    Computed in log space (``log p + log w``, then a softmax) so that tiny
    posteriors do not underflow to 0/0.

    Args:
      probs: ``(..., n_classes)`` posteriors under the training priors, rows
        summing to one.
      train_priors: ``(n_classes,)`` training priors ``P_T(c)``, positive, sum 1.
      true_priors: ``(n_classes,)`` target priors ``P(c)``, positive, sum 1.

    Returns:
      ``(..., n_classes)`` corrected posteriors. Works under ``jit``/``vmap``.

    >>> import jax.numpy as jnp
    >>> correct_priors(jnp.array([[0.8, 0.2]]), jnp.array([0.5, 0.5]),
    ...                jnp.array([0.2, 0.8])).round(3).tolist()
    [[0.5, 0.5]]
    """
    p = _check_probs("probs", probs)
    n = p.shape[-1]
    pt = _check_priors("train_priors", train_priors, n).astype(p.dtype)
    pc = _check_priors("true_priors", true_priors, n).astype(p.dtype)
    return _correct_priors(p, pt, pc)


@jax.jit
def _correct_priors(p, pt, pc):
    # log(0) = -inf is fine: the class keeps probability 0 after the softmax.
    logw = jnp.log(pc) - jnp.log(pt)
    return jax.nn.softmax(jnp.log(p) + jnp.broadcast_to(logw, p.shape), axis=-1)


def resample_to_priors(key, labels, priors, n: int | None = None):
    """Indices of a training set re-drawn to chosen class priors (over/under-sampling).

    Class ``c`` receives ``round(n * priors[c])`` examples (rounding fixed so the
    total is ``n``): drawn without replacement when the class has enough
    examples (under-sampling), otherwise every example once plus extra draws
    with replacement (over-sampling). The result is shuffled.

    Args:
      key: PRNG key.
      labels: ``(m,)`` integer classes in ``[0, len(priors))``; every class with
        a positive prior must occur.
      priors: ``(n_classes,)`` target priors, positive, summing to one.
      n: size of the new set (default ``m``).

    Returns:
      ``(n,)`` int32 numpy indices into ``labels``.

    >>> import jax
    >>> idx = resample_to_priors(jax.random.key(0), [0, 0, 0, 1], [0.5, 0.5], n=6)
    >>> sorted([0, 0, 0, 1][i] for i in idx)
    [0, 0, 0, 1, 1, 1]
    """
    pri = np.asarray(_check_priors("priors", priors), np.float64)
    k = pri.shape[0]
    lab = _check_labels("labels", labels, k)
    n = lab.size if n is None else n
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    counts = np.bincount(lab, minlength=k)
    missing = [c for c in range(k) if counts[c] == 0]
    if missing:
        raise ValueError(
            f"labels: class(es) {missing} have no examples, cannot resample to positive priors"
        )
    want = np.floor(n * pri).astype(int)
    # largest-remainder rounding so that sum(want) == n
    rest = n - want.sum()
    want[np.argsort(-(n * pri - want), kind="stable")[:rest]] += 1
    keys = jax.random.split(key, k + 1)
    out = []
    for c in range(k):
        members = np.flatnonzero(lab == c)
        kc = keys[c]
        if want[c] <= members.size:
            pick = np.asarray(jax.random.choice(kc, members.size, (int(want[c]),), replace=False))
            out.append(members[pick])
        else:
            extra = np.asarray(
                jax.random.choice(kc, members.size, (int(want[c] - members.size),), replace=True)
            )
            out.append(np.concatenate([members, members[extra]]))
    idx = np.concatenate(out)
    perm = np.asarray(jax.random.permutation(keys[k], idx.size))
    return idx[perm].astype(np.int32)


# --------------------------------------------------------------------------- binned PDFs
def bin_edges(lo: float, hi: float, n_bins: int):
    """``(n_bins + 1,)`` float32 edges of equal bins over ``[lo, hi]``.

    >>> bin_edges(0.0, 1.0, 4).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"lo, hi: expected finite lo < hi, got {lo}, {hi}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 2:
        raise ValueError(f"n_bins: expected an integer >= 2, got {n_bins!r}")
    return np.linspace(lo, hi, n_bins + 1).astype(np.float32)


def _check_edges(edges):
    e = as_float_array("edges", edges)
    if e.ndim != 1 or e.shape[0] < 3:
        raise ValueError(f"edges: expected a 1-D array of >= 3 bin edges, got shape {e.shape}")
    if is_concrete(e) and not np.all(np.diff(np.asarray(e)) > 0):
        raise ValueError("edges: expected strictly increasing bin edges")
    return e


def to_bins(values, edges):
    """Bin index of each value (values outside ``[edges[0], edges[-1]]`` are clipped).

    >>> to_bins([0.1, 0.6, 2.0], [0.0, 0.5, 1.0]).tolist()
    [0, 1, 1]
    """
    e = np.asarray(_check_edges(edges))
    v = np.asarray(values, dtype=e.dtype)
    return np.clip(np.searchsorted(e, v, side="right") - 1, 0, e.size - 2).astype(np.int32)


def _check_pdf(name, pdf, edges):
    e = _check_edges(edges)
    p = _check_probs(name, pdf)
    if p.shape[-1] != e.shape[0] - 1:
        raise ValueError(
            f"{name}: expected {e.shape[0] - 1} bins (len(edges) - 1) on the last axis, "
            f"got shape {p.shape}"
        )
    return p, e.astype(p.dtype)


def pdf_point_estimate(pdf, edges):
    """Mean of a binned PDF, ``z_hat = sum_b p_b (e_b + e_{b+1}) / 2``.

    Args:
      pdf: ``(..., n_bins)`` probabilities per bin (rows sum to one).
      edges: ``(n_bins + 1,)`` bin edges.

    Returns:
      ``(...)`` point estimates.

    >>> pdf_point_estimate([[0.5, 0.5, 0.0]], [0.0, 1.0, 2.0, 3.0]).tolist()
    [1.0]
    """
    p, e = _check_pdf("pdf", pdf, edges)
    centres = (e[1:] + e[:-1]) / 2
    return jnp.sum(p * jnp.broadcast_to(centres, p.shape), axis=-1)


def pdf_cdf(pdf, edges, values):
    """CDF of a binned PDF (uniform density inside each bin) at ``values``.

    ``F(z) = sum_{b < k} p_b + p_k (z - e_k) / (e_{k+1} - e_k)`` for ``z`` in bin
    ``k``; 0 below ``edges[0]`` and 1 above ``edges[-1]``.

    Args:
      pdf: ``(..., n_bins)``.
      edges: ``(n_bins + 1,)``.
      values: ``(...)`` broadcastable against ``pdf.shape[:-1]``.

    Returns:
      ``(...)`` values in ``[0, 1]``.
    """
    p, e = _check_pdf("pdf", pdf, edges)
    z = as_float_array("values", values).astype(p.dtype)
    return _pdf_cdf(p, e, z)


@jax.jit
def _pdf_cdf(p, e, z):
    z = jnp.broadcast_to(z, p.shape[:-1])
    cum = jnp.cumsum(p, axis=-1)
    cum0 = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum], axis=-1)  # (..., n_bins + 1)
    k = jnp.clip(jnp.searchsorted(e, z, side="right") - 1, 0, e.shape[0] - 2)
    frac = jnp.clip((z - e[k]) / (e[k + 1] - e[k]), 0.0, 1.0)
    below = jnp.take_along_axis(cum0, k[..., None], axis=-1)[..., 0]
    pk = jnp.take_along_axis(p, k[..., None], axis=-1)[..., 0]
    return jnp.clip(below + pk * frac, 0.0, 1.0)


def pit_values(pdf, edges, truth):
    """Probability integral transform ``PIT_i = F_i(z_i)`` of the true values.

    For calibrated PDFs the PIT values are uniform on ``[0, 1]``; a U-shaped
    histogram means over-confident (too narrow) PDFs, a hump under-confident.

    Args:
      pdf: ``(n, n_bins)`` binned PDFs.
      edges: ``(n_bins + 1,)``.
      truth: ``(n,)`` true values.

    Returns:
      ``(n,)`` PIT values in ``[0, 1]``.
    """
    p, _ = _check_pdf("pdf", pdf, edges)
    t = as_float_array("truth", truth)
    if t.shape != p.shape[:-1]:
        raise ValueError(f"truth: expected shape {p.shape[:-1]} (one per PDF), got {t.shape}")
    return pdf_cdf(p, edges, t)


def sample_pdf(key, pdf, edges):
    """Draw one value from each binned PDF (bin by its probability, uniform inside it).

    Args:
      key: PRNG key.
      pdf: ``(n, n_bins)``.
      edges: ``(n_bins + 1,)``.

    Returns:
      ``(n,)`` samples.
    """
    p, e = _check_pdf("pdf", pdf, edges)
    k1, k2 = jax.random.split(key)
    # log(0) = -inf gives zero-probability bins zero chance of being drawn.
    b = jax.random.categorical(k1, jnp.log(p), axis=-1)
    u = jax.random.uniform(k2, b.shape, p.dtype)
    return e[b] + u * (e[b + 1] - e[b])


def _dz(pred, truth, relative: bool):
    pred = as_float_array("pred", pred)
    truth = as_float_array("truth", truth).astype(pred.dtype)
    if pred.shape != truth.shape or pred.ndim != 1 or pred.shape[0] == 0:
        raise ValueError(
            f"pred, truth: expected two non-empty 1-D arrays of equal length, got shapes "
            f"{pred.shape} and {truth.shape}"
        )
    dz = pred - truth
    return dz / (1 + truth) if relative else dz


def sigma_mad(pred, truth, relative: bool = False):
    """Robust scatter ``sigma_MAD = 1.4826 median|dz - median(dz)|``.

    ``dz = pred - truth``, or ``(pred - truth) / (1 + truth)`` with
    ``relative=True`` (the photometric-redshift convention).

    >>> round(float(sigma_mad([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])), 4)
    1.4826
    """
    dz = _dz(pred, truth, relative)
    return 1.4826 * jnp.median(jnp.abs(dz - jnp.median(dz)))


def outlier_fraction(pred, truth, threshold: float = 0.15, relative: bool = False):
    """Fraction of catastrophic outliers, ``mean(|dz| > threshold)``.

    >>> float(outlier_fraction([0.0, 0.1, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]))
    0.25
    """
    if not threshold > 0:
        raise ValueError(f"threshold: expected a positive value, got {threshold}")
    dz = _dz(pred, truth, relative)
    return jnp.mean((jnp.abs(dz) > threshold).astype(dz.dtype))


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
    """Train a binned-PDF regressor (:class:`BinnedPDFRegressor`) on cross-entropy over bins.

    The continuous target is binned (:func:`to_bins`); the loss is the
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
    e = np.asarray(_check_edges(edges))
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


def predict_pdf(model: nn.Module, params, images, batch_size: int = 256):
    """Binned PDFs ``(n, n_bins)`` of a trained :class:`BinnedPDFRegressor` (alias of
    :func:`predict_proba`)."""
    return predict_proba(model, params, images, batch_size)
