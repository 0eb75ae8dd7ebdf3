"""The radio-galaxy study of Rustige et al. (2023): checkpoint scoring, augmented
classifiers over k folds, best-matching pairs and the smearing study.

Rustige, Kummer, Griese, Borras, Brueggen, Connor, Gaede, Kasieczka, Knopp &
Schleper (2023, RASTI 2, 264), "Morphological classification of radio galaxies with
wGAN-supported augmentation". The pipeline, each step a function:

- **Data** (:mod:`galjax.io.radio`): crop, resize, scale to [-1, 1]; flips and rotations.
- **Training** (:func:`galjax.train.recipes.gan.train_gan`): the conditional WGAN-GP
  of :mod:`galjax.models.gan`, a checkpoint every ``N`` steps kept for selection.
- **Checkpoint selection** (:func:`evaluate_checkpoints`, with the histogram RMAE of
  :mod:`galjax.scores.histograms`): per class the checkpoint whose generated images
  have the lowest mean RMAE against the real ones.
- **Cross-validation and augmented classifiers** (:func:`kfold_indices`,
  :func:`augmented_training_set`, :func:`augmentation_experiment`): classifiers of
  :mod:`galjax.models.classifier` trained on real plus ``lambda_gen`` times as many
  generated images, test accuracy as mean and spread over folds.
- **Best-matching pairs** (:func:`align_principal_axes`, :func:`best_matching_pairs`;
  figure :func:`galjax.plot.radio.plot_pairs`).
- **Smearing study** (:func:`smearing_study`): the histograms and RMAE as the
  Gaussian smearing ``sigma`` of the generator output changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import check_labels
from galjax.image.transforms import rotate
from galjax.io.radio import CLASS_NAMES, check_classes_present, check_gan_images
from galjax.models.classifier import predict_proba
from galjax.models.gan import GANConfig, GANState, generate
from galjax.scores.classification import accuracy
from galjax.scores.histograms import (
    HistogramConfig,
    RMAETable,
    class_rmae,
    histogram_edges,
    image_histograms,
    rmae_table,
)
from galjax.train.recipes.classifier import train_classifier
from galjax.train.recipes.gan import load_gan_checkpoint

__all__ = [
    "sample_classes",
    "evaluate_checkpoints",
    "kfold_indices",
    "augmented_training_set",
    "augmentation_experiment",
    "principal_axis_angle",
    "align_principal_axes",
    "Pairs",
    "best_matching_pairs",
    "smearing_study",
]


def sample_classes(
    key, generators: Mapping[int, tuple[GANConfig, GANState]], labels, batch_size: int = 256
) -> np.ndarray:
    """Generate one image per label, each class with its own generator.

    Args:
      key: PRNG key.
      generators: class index -> ``(config, state)`` (e.g. the class's selected
        checkpoint from :func:`galjax.train.recipes.gan.load_gan_checkpoint`).
      labels: ``(n,)`` int classes.
      batch_size: images per generator call.

    Returns:
      float32 ``(n, size, size, bands)`` in [-1, 1].
    """
    y = np.asarray(labels)
    missing = sorted(set(np.unique(y).tolist()) - set(generators))
    if missing:
        raise ValueError(f"labels: no generator for class(es) {missing}")
    if not generators:
        raise ValueError("generators: expected at least one generator")
    cfg0 = next(iter(generators.values()))[0]
    out = np.zeros((y.shape[0],) + cfg0.image_shape, np.float32)
    for c, (cfg, st) in generators.items():
        where = np.nonzero(y == c)[0]
        for j, s in enumerate(range(0, where.size, batch_size)):
            sel = where[s : s + batch_size]
            k = jax.random.fold_in(jax.random.fold_in(key, int(c)), j)
            out[sel] = np.asarray(
                _generate(k, cfg, st.gen_params, st.gen_stats, jnp.asarray(y[sel], jnp.int32))
            )
    return out


# GANConfig is a frozen (hashable) dataclass, so it can be a static argument.
_generate = jax.jit(generate, static_argnums=1)


def _balanced_labels(n_per_class: int, n_classes: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes, dtype=np.int32), n_per_class)


def evaluate_checkpoints(
    key,
    checkpoints: Sequence,
    real_images,
    real_labels,
    *,
    n_per_class: int = 200,
    config: HistogramConfig = HistogramConfig(),
    progress: bool = False,
) -> RMAETable:
    """Generate ``n_per_class`` images per class with each checkpoint and build the RMAE table.

    The same noise (``key``) is used for every checkpoint, so the table
    compares the checkpoints and not noise draws.
    """
    from tqdm.auto import tqdm

    if len(checkpoints) == 0:
        raise ValueError("checkpoints: expected at least one checkpoint")
    fakes, steps, names = [], [], None
    for p in tqdm(checkpoints, desc="checkpoints", disable=not progress):
        cfg, st, names = load_gan_checkpoint(p)
        y = _balanced_labels(n_per_class, cfg.n_classes)
        fakes.append((sample_classes(key, dict.fromkeys(range(cfg.n_classes), (cfg, st)), y), y))
        steps.append(int(st.step))
    return rmae_table(real_images, real_labels, fakes, steps, names, config)


# --------------------------------------------------------------- cross-validation


def kfold_indices(key, n: int, k: int = 5, labels=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random k-fold split of ``n`` examples (stratified by class when ``labels`` given).

    The held-out parts are disjoint and together cover ``0..n-1``; each fold's
    training part is the complement of its held-out part.

    Args:
      key: PRNG key for the shuffle.
      n: number of examples.
      k: number of folds (``2 <= k <= n``).
      labels: optional ``(n,)`` int classes; each class is dealt evenly over folds.

    Returns:
      ``k`` pairs ``(train_idx, held_out_idx)`` of sorted int64 arrays.

    >>> folds = kfold_indices(jax.random.key(0), 10, 5)
    >>> sorted(np.concatenate([h for _, h in folds]).tolist()) == list(range(10))
    True
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k: expected an integer >= 2, got {k!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < k:
        raise ValueError(f"n: expected an integer >= k = {k}, got {n!r}")
    perm = np.asarray(jax.random.permutation(key, n))
    fold_of = np.empty(n, np.int64)
    if labels is None:
        fold_of[perm] = np.arange(n) % k
    else:
        y = check_labels("labels", labels, n=n)
        offset = 0
        for c in np.unique(y):
            members = perm[y[perm] == c]
            fold_of[members] = (np.arange(members.size) + offset) % k
            offset += members.size  # continue dealing where the last class stopped
    idx = np.arange(n)
    return [(idx[fold_of != f], idx[fold_of == f]) for f in range(k)]


def augmented_training_set(key, images, labels, sampler: Callable | None, lam: int):
    """Real images plus ``lam`` generated ones per real image, with the same class mix.

    Args:
      key: PRNG key passed to ``sampler``.
      images: ``(n, h, w, 1)`` real images.
      labels: ``(n,)`` int classes.
      sampler: ``sampler(key, labels) -> images`` (e.g. a partial of
        :func:`sample_classes`); unused when ``lam == 0``.
      lam: ``lambda_gen``, a non-negative integer.

    Returns:
      ``(images (n (1 + lam), ...), labels)``.
    """
    if isinstance(lam, bool) or not isinstance(lam, int) or lam < 0:
        raise ValueError(f"lam: expected a non-negative integer, got {lam!r}")
    x = np.asarray(images, np.float32)
    y = check_labels("labels", labels, n=x.shape[0])
    if lam == 0:
        return x, y
    if sampler is None:
        raise ValueError("sampler: needed when lam > 0")
    gen_y = np.tile(y, lam)
    gen_x = np.asarray(sampler(key, gen_y), np.float32)
    if gen_x.shape != (gen_y.size,) + x.shape[1:]:
        raise ValueError(
            f"sampler: expected images {(gen_y.size,) + x.shape[1:]}, got {gen_x.shape}"
        )
    return np.concatenate([x, gen_x]), np.concatenate([y, gen_y])


def augmentation_experiment(
    key,
    images,
    labels,
    test_images,
    test_labels,
    *,
    make_sampler: Callable,
    models: Mapping[str, Any],
    lambdas: Sequence[int] = (0, 1, 2, 3, 5),
    k: int = 5,
    classifier_kwargs: Mapping[str, Any] | None = None,
    folds: Sequence | None = None,
    unit_range: bool = True,
    scale_steps: bool = False,
    progress: bool = False,
) -> dict:
    """Test accuracy of classifiers trained on real + generated images, over k folds.

    For fold ``f`` the classifier (and, through ``make_sampler``, the generator)
    sees only the fold's training part; accuracy is measured on the fixed test set.
    With ``unit_range`` the classifiers see ``(x + 1) / 2`` in [0, 1] (empty sky
    0): fed the [-1, 1] images, whose thousands of constant -1 sky pixels dominate
    its first layer, an FCN stays at the majority class.

    Args:
      key: PRNG key.
      images, labels: the training pool ``(n, h, w, 1)``, ``(n,)``.
      test_images, test_labels: the fixed test set.
      make_sampler: ``make_sampler(fold, train_idx) -> sampler(key, labels) -> images``.
      models: name -> Linen classifier from :mod:`galjax.models.classifier` (e.g.
        ``{"FCN": FCNClassifier(4), "CNN": CNNClassifier(4)}``).
      lambdas: the ``lambda_gen`` ratios.
      k: number of folds (ignored when ``folds`` is given).
      classifier_kwargs: passed to :func:`galjax.train.recipes.classifier.train_classifier`.
      folds: precomputed ``(train_idx, held_out_idx)`` pairs (default
        :func:`kfold_indices` stratified by class).
      unit_range: feed the classifiers ``(x + 1) / 2``.
      scale_steps: train the ``lambda_gen = lam`` classifiers for
        ``n_steps * (1 + lam)`` steps (``n_steps`` from ``classifier_kwargs``), i.e.
        the same number of epochs for every ratio. With a fixed step count (the
        default) a larger ratio means fewer passes over the real images: at
        ``lam = 5`` one batch in six is real.
      progress: print one line per run.

    Returns:
      dict: ``accuracy[model][lambda]`` list over folds, ``mean`` and ``std``
      (population std over folds) per model and lambda, ``lambdas``, ``k`` and
      ``n_steps[lambda]`` (the classifier steps of each ratio).
    """
    x = check_gan_images("images", images)
    y = check_labels("labels", labels, n=x.shape[0])
    xt = check_gan_images("test_images", test_images, x.shape[1])
    yt = check_labels("test_labels", test_labels, n=xt.shape[0])
    n_classes = int(max(y.max(), yt.max())) + 1
    kw = {"progress": False, **(classifier_kwargs or {})}
    if any(isinstance(lam, bool) or not isinstance(lam, int) or lam < 0 for lam in lambdas):
        raise ValueError(f"lambdas: expected non-negative integers, got {list(lambdas)!r}")
    default_steps = inspect.signature(train_classifier).parameters["n_steps"].default
    base_steps = int(kw.pop("n_steps", default_steps))
    n_steps = {lam: base_steps * (1 + lam) if scale_steps else base_steps for lam in lambdas}
    to_input = (lambda a: jnp.asarray((a + 1) / 2)) if unit_range else jnp.asarray
    k_fold, k_run = jax.random.split(key)
    folds = list(folds) if folds is not None else kfold_indices(k_fold, x.shape[0], k, y)
    acc: dict[str, dict[int, list[float]]] = {m: {lam: [] for lam in lambdas} for m in models}
    for f, (tr, _) in enumerate(folds):
        check_classes_present(y[tr], n_classes, f"fold {f} training labels")
        sampler = make_sampler(f, tr) if any(lam > 0 for lam in lambdas) else None
        for lam in lambdas:
            kf = jax.random.fold_in(jax.random.fold_in(k_run, f), lam)
            xa, ya = augmented_training_set(jax.random.fold_in(kf, 0), x[tr], y[tr], sampler, lam)
            for j, (name, model) in enumerate(models.items()):
                params, _ = train_classifier(
                    jax.random.fold_in(kf, j + 1), model, to_input(xa), jnp.asarray(ya),
                    n_steps=n_steps[lam], **kw,
                )  # fmt: skip
                a = accuracy(predict_proba(model, params, to_input(xt)), yt)
                acc[name][lam].append(float(a))
                if progress:
                    print(f"fold {f} lambda_gen {lam} {name}: test accuracy {a:.3f}", flush=True)
    return {
        "lambdas": list(lambdas),
        "k": len(folds),
        "n_steps": n_steps,
        "accuracy": acc,
        "mean": {m: {lam: float(np.mean(v)) for lam, v in d.items()} for m, d in acc.items()},
        "std": {m: {lam: float(np.std(v)) for lam, v in d.items()} for m, d in acc.items()},
    }


# ----------------------------------------------------------- best-matching pairs


def principal_axis_angle(images) -> np.ndarray:
    """Angle (radians) of each image's major axis from the column (x) axis, towards rows.

    From the intensity-weighted second moments of ``w = (x + 1) / 2`` about the
    centroid: ``theta = 0.5 atan2(2 m_rc, m_cc - m_rr)``. Images with no flux
    get 0.

    Args:
      images: ``(n, h, w, 1)`` in [-1, 1].

    Returns:
      ``(n,)`` float64 angles in (-pi/2, pi/2].
    """
    x = check_gan_images("images", images)
    w = ((x[..., 0] + 1) / 2).astype(np.float64)
    h, wd = w.shape[1:]
    rr, cc = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(wd, dtype=np.float64), indexing="ij"
    )
    tot = w.sum(axis=(1, 2))
    safe = np.where(tot > 0, tot, 1.0)
    mr = (w * rr).sum(axis=(1, 2)) / safe
    mc = (w * cc).sum(axis=(1, 2)) / safe
    dr = rr[None] - mr[:, None, None]
    dc = cc[None] - mc[:, None, None]
    m_rr = (w * dr**2).sum(axis=(1, 2)) / safe
    m_cc = (w * dc**2).sum(axis=(1, 2)) / safe
    m_rc = (w * dr * dc).sum(axis=(1, 2)) / safe
    return np.where(tot > 0, 0.5 * np.arctan2(2 * m_rc, m_cc - m_rr), 0.0)


def align_principal_axes(images) -> np.ndarray:
    """Rotate each image about its centre so that its major axis lies along the columns (x).

    Returns:
      float32 images, same shape, in [-1, 1] (the corners filled with -1).
    """
    x = check_gan_images("images", images)
    theta = principal_axis_angle(x)
    # rotate() turns by +angle in the rot90 sense (row 0 at the top, counter-clockwise
    # on screen), which takes an axis at angle theta (towards rows) to theta - angle.
    out = jax.vmap(rotate)(jnp.asarray(x) + 1.0, jnp.asarray(theta, jnp.float32)) - 1.0
    return np.clip(np.asarray(out), -1, 1).astype(np.float32)


class Pairs(NamedTuple):
    """Closest generated/real pairs, best first.

    Attributes:
      fake_index, real_index: ``(m,)`` indices into the given arrays.
      distance: ``(m,)`` mean squared pixel difference after alignment.
    """

    fake_index: np.ndarray
    real_index: np.ndarray
    distance: np.ndarray


def _activity(x, pixel_threshold):
    return (x > pixel_threshold).mean(axis=(1, 2, 3))


def best_matching_pairs(
    real,
    fake,
    *,
    top: int = 5,
    activity_threshold: float = 0.005,
    pixel_threshold: float = -0.9,
    align: bool = True,
) -> Pairs:
    """The ``top`` generated images closest to a real image, after PCA alignment.

    Every image is rotated so that its principal axis is horizontal
    (:func:`align_principal_axes`); images whose fraction of pixels above
    ``pixel_threshold`` is below ``activity_threshold`` (near-empty) are ignored.
    Each generated image is paired with its nearest real image under the mean
    squared pixel difference, and the ``top`` closest pairs are returned (each
    generated image once).

    Raises:
      ValueError: no real or no generated image passes the activity threshold.
    """
    r = check_gan_images("real", real)
    f = check_gan_images("fake", fake, r.shape[1])
    if align:
        r, f = align_principal_axes(r), align_principal_axes(f)
    ri = np.nonzero(_activity(r, pixel_threshold) >= activity_threshold)[0]
    fi = np.nonzero(_activity(f, pixel_threshold) >= activity_threshold)[0]
    if ri.size == 0 or fi.size == 0:
        raise ValueError(
            f"activity_threshold: no {'real' if ri.size == 0 else 'generated'} image has at "
            f"least {activity_threshold:.3g} of its pixels above {pixel_threshold}"
        )
    rv = r[ri].reshape(ri.size, -1).astype(np.float64)
    fv = f[fi].reshape(fi.size, -1).astype(np.float64)
    d = ((fv**2).sum(1)[:, None] + (rv**2).sum(1)[None, :] - 2 * fv @ rv.T) / rv.shape[1]
    nearest = np.argmin(d, axis=1)
    dist = np.maximum(d[np.arange(fi.size), nearest], 0.0)
    order = np.argsort(dist, kind="stable")[:top]
    return Pairs(fi[order], ri[nearest[order]], dist[order])


# ----------------------------------------------------------------- smearing study


def smearing_study(
    key,
    config: GANConfig,
    state: GANState,
    real_images,
    real_labels,
    *,
    sigmas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
    n_per_class: int = 200,
    where: str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    hist_config: HistogramConfig = HistogramConfig(),
) -> dict:
    """RMAE and histograms of one generator's output as the smearing ``sigma`` varies.

    The same noise is used for every ``sigma``, so only the smearing changes.

    Returns:
      dict with ``sigmas``, ``where``, ``class_names``, ``rmae`` (per sigma a
      ``(n_classes, 4)`` list: intensity, n_above, total, mean) and
      ``histograms`` (per sigma and class the generated
      :class:`~galjax.scores.histograms.Histograms` as lists, plus ``"real"`` per
      class and the ``edges``).
    """
    real = check_gan_images("real_images", real_images, config.image_size)
    yr = check_labels("real_labels", real_labels, config.n_classes, real.shape[0])
    check_classes_present(yr, config.n_classes, "real_labels")
    where = config.smear_where if where is None else where
    y = _balanced_labels(n_per_class, config.n_classes)
    edges = [histogram_edges(real[yr == c], hist_config) for c in range(config.n_classes)]
    out: dict[str, Any] = {
        "sigmas": [float(s) for s in sigmas],
        "where": where,
        "class_names": list(class_names),
        "rmae": [],
        "histograms": {},
    }
    out["histograms"]["real"] = [
        image_histograms(real[yr == c], edges[c], hist_config.threshold)._asdict()
        for c in range(config.n_classes)
    ]
    out["histograms"]["edges"] = [e._asdict() for e in edges]
    for s in sigmas:
        cfg = config.replace(smear_sigma=float(s), smear_where=where)
        fake = sample_classes(key, dict.fromkeys(range(config.n_classes), (cfg, state)), y)
        out["rmae"].append(class_rmae(real, yr, fake, y, config.n_classes, hist_config).tolist())
        out["histograms"][float(s)] = [
            image_histograms(fake[y == c], edges[c], hist_config.threshold)._asdict()
            for c in range(config.n_classes)
        ]
    return out
