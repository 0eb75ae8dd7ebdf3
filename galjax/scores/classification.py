"""Scores of classifier outputs: accuracy, class priors and their correction, per-class AUC.

A network trained with cross-entropy estimates the posterior ``P_T(c | x)`` under
the class mix ``P_T(c)`` of its *training* set (Bertin, seed 001; Saerens et al.
2002). When the class mix met in use, ``P(c)``, differs, Bayes' rule gives

    P(c | x) = P_T(c | x) P(c) / P_T(c) / sum_c' P_T(c' | x) P(c') / P_T(c')

(:func:`correct_priors`). :func:`resample_to_priors` builds a training set with
chosen priors by over/under-sampling. :func:`per_class_auc` scores per-pixel
(or per-example) multi-label probabilities class by class.

>>> import jax.numpy as jnp
>>> p = jnp.array([[0.5, 0.5]])
>>> [round(float(v), 3) for v in correct_priors(p, jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1]))[0]]
[0.9, 0.1]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import as_float_array, check_labels, check_probabilities, is_concrete
from galjax.scores.metrics import auc
from galjax.sim.contaminants import MASK_CLASSES

__all__ = [
    "check_probability_rows",
    "accuracy",
    "class_priors",
    "correct_priors",
    "resample_to_priors",
    "per_class_auc",
]


def check_probability_rows(name: str, probs, atol: float = 1e-3):
    """Check class probabilities ``(..., n_classes)`` whose rows sum to one; return them as float.

    Args:
      name: argument name used in messages.
      probs: ``(..., n_classes)`` with ``n_classes >= 2``, values in ``[0, 1]``.
      atol: tolerance on the row sums (values are checked only when concrete, not
        under ``jit``).

    Raises:
      ValueError: wrong shape, values outside ``[0, 1]``, or a row sum off by more
        than ``atol``.
    """
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
    lab = check_labels("labels", labels, p.shape[1], p.shape[0])
    return float(np.mean(np.argmax(p, axis=1) == lab))


# --------------------------------------------------------------------------- priors
def class_priors(labels, n_classes: int):
    """Empirical class frequencies ``P(c) = #{y = c} / n`` as a ``(n_classes,)`` array.

    >>> class_priors([0, 0, 1, 2], 3).tolist()
    [0.5, 0.25, 0.25]
    """
    lab = check_labels("labels", labels, n_classes)
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
    p = check_probability_rows("probs", probs)
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
    lab = check_labels("labels", labels, k)
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


def per_class_auc(probs, labels, class_names=MASK_CLASSES):
    """ROC AUC of every class over all pixels (:func:`galjax.scores.metrics.auc`).

    Args:
      probs: ``(..., n_classes)`` per-pixel probabilities.
      labels: same shape, 0/1.
      class_names: names used as keys (default the contaminant classes
        :data:`galjax.sim.contaminants.MASK_CLASSES`).

    Returns:
      dict ``name -> AUC`` (NaN for a class with no positive or no negative pixel).
    """
    p = np.asarray(as_float_array("probs", probs))
    y = np.asarray(labels)
    if p.shape != y.shape or p.ndim < 1:
        raise ValueError(
            f"probs, labels: expected equal shapes (..., n_classes), got {p.shape} and {y.shape}"
        )
    if len(class_names) != p.shape[-1]:
        raise ValueError(f"class_names: expected {p.shape[-1]} names, got {len(class_names)}")
    p, y = p.reshape(-1, p.shape[-1]), y.reshape(-1, y.shape[-1]) > 0.5
    out = {}
    for c, name in enumerate(class_names):
        n_pos = int(y[:, c].sum())
        out[str(name)] = float("nan") if n_pos in (0, y.shape[0]) else float(auc(p[:, c], y[:, c]))
    return out
