"""The radio-galaxy WGAN pipeline of Rustige et al. (2023) on FIRST FRI/FRII/Compact/Bent.

Rustige, Kummer, Griese, Borras, Brueggen, Connor, Gaede, Kasieczka, Knopp &
Schleper (2023, RASTI 2, 264), "Morphological classification of radio galaxies
with wGAN-supported augmentation". The steps, each a function here:

- **Data** (:func:`prepare_images`, :func:`load_radio`, :func:`augment_images`):
  centre crop, resize, scale to [-1, 1]; random rotations and flips.
- **Training** (:func:`train_gan`): the conditional WGAN-GP of
  :mod:`galjax.models.gan`, with a checkpoint every ``N`` steps kept for selection.
- **Checkpoint selection** (:func:`image_histograms`, :func:`rmae`,
  :func:`rmae_table`, :func:`evaluate_checkpoints`, :func:`select_best`): per class
  three normalised histograms -- pixel intensities (pixels above a threshold),
  number of pixels above the threshold per image, summed intensity per image --
  compared with the real ones through the relative mean absolute error over the
  non-empty bins,

      RMAE(a, b) = mean_{i: a_i + b_i > 0} 2 |a_i - b_i| / (a_i + b_i),

  and per class the checkpoint with the lowest mean RMAE is kept.
- **Cross-validation and augmented classifiers** (:func:`kfold_indices`,
  :func:`augmented_training_set`, :func:`augmentation_experiment`): classifiers of
  :mod:`galjax.classify` trained on real plus ``lambda_gen`` times as many
  generated images, test accuracy as mean and spread over folds.
- **Best-matching pairs** (:func:`align_principal_axes`,
  :func:`best_matching_pairs`, :func:`plot_pairs`).
- **Smearing study** (:func:`smearing_study`): the histograms and RMAE as the
  Gaussian smearing ``sigma`` of the generator output changes.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.files import atomic_write
from .models.gan import GANConfig, GANState, generate, init_gan, make_gan_step
from .train.checkpoint import load_checkpoint_metadata, restore_checkpoint, save_checkpoint
from galjax.image.transforms import crop_or_pad, random_dihedral, rotate

__all__ = [
    "CLASS_NAMES",
    "RadioData",
    "class_index",
    "prepare_images",
    "load_radio",
    "check_gan_images",
    "augment_images",
    "HistogramConfig",
    "HistogramEdges",
    "Histograms",
    "histogram_edges",
    "image_histograms",
    "rmae",
    "histogram_rmae",
    "RMAETable",
    "class_rmae",
    "rmae_table",
    "select_best",
    "format_rmae_table",
    "write_rmae_table",
    "train_gan",
    "checkpoint_path",
    "list_checkpoints",
    "save_gan_checkpoint",
    "load_gan_checkpoint",
    "evaluate_checkpoints",
    "sample_classes",
    "kfold_indices",
    "check_classes_present",
    "augmented_training_set",
    "augmentation_experiment",
    "principal_axis_angle",
    "align_principal_axes",
    "Pairs",
    "best_matching_pairs",
    "plot_pairs",
    "plot_class_histograms",
    "smearing_study",
]

#: The FIRST classes of Griese et al. (2023), in label order.
CLASS_NAMES = ("FRI", "FRII", "Compact", "Bent")


# --------------------------------------------------------------------------- data


class RadioData(NamedTuple):
    """Prepared radio images.

    Attributes:
      images: float32 ``(n, size, size, 1)`` in [-1, 1] (-1 is empty sky).
      labels: int32 ``(n,)`` class indices into ``class_names``.
      split: str ``(n,)``: ``"train"``, ``"valid"`` or ``"test"``.
      class_names: class names in label order.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: tuple[str, ...]


def class_index(name: str, class_names: Sequence[str] = CLASS_NAMES) -> int:
    """Label of a class name (case-insensitive); ``ValueError`` listing the names otherwise.

    >>> class_index("bent")
    3
    """
    lower = [c.lower() for c in class_names]
    if not isinstance(name, str) or name.lower() not in lower:
        raise ValueError(f"class: unknown class {name!r}; expected one of {list(class_names)}")
    return lower.index(name.lower())


def prepare_images(images, size: int = 64, crop: int = 128):
    """Centre-crop, resize and scale radio cutouts to [-1, 1].

    ``x = 2 * resize(crop(u)) - 1`` with ``u`` in [0, 1] (``uint8 / 255``); the
    resize is antialiased linear interpolation (:func:`jax.image.resize`), which
    averages over the larger output pixels when downsampling.

    Args:
      images: uint8 ``(n, h, w)`` or ``(n, h, w, 1)``, or float ``(n, h, w, 1)``
        in [0, 1] (as :func:`galjax.io.load_first` returns them).
      size: output side in pixels (64 default, 128 as in the paper).
      crop: side of the central crop, in input pixels, before resizing
        (``crop <= h, w``).

    Returns:
      float32 ``(n, size, size, 1)`` in [-1, 1].

    >>> prepare_images(np.zeros((2, 300, 300), np.uint8), size=32).shape
    (2, 32, 32, 1)
    """
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                "images: expected float values in [0, 1] (or uint8 0-255), got range "
                f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
            )
    else:
        raise TypeError(f"images: expected uint8 or float images, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] != 1:
        raise ValueError(f"images: expected shape (n, h, w) or (n, h, w, 1), got {arr.shape}")
    for name, v in (("size", size), ("crop", crop)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name}: expected an integer >= 2, got {v!r}")
    if crop > min(arr.shape[1:3]):
        raise ValueError(f"crop: {crop} exceeds the image size {arr.shape[1:3]}")
    out = []
    for start in range(0, arr.shape[0], 256):  # bounded memory for 2,000 x 300 x 300
        chunk = crop_or_pad(jnp.asarray(arr[start : start + 256]), crop, crop)
        chunk = jax.image.resize(chunk, (chunk.shape[0], size, size, 1), "linear", antialias=True)
        out.append(np.asarray(chunk))
    x = np.concatenate(out) if out else np.zeros((0, size, size, 1), np.float32)
    return np.clip(2 * x - 1, -1, 1).astype(np.float32)


def load_radio(path, size: int = 64, crop: int = 128, split: str | None = None) -> RadioData:
    """Load the FIRST set with :func:`galjax.io.load_first` and :func:`prepare_images` it.

    >>> data = load_radio("first_fr_4class.npz", size=64)  # doctest: +SKIP
    """
    from .io import load_first

    first = load_first(path, split=split)
    return RadioData(
        prepare_images(first.images, size, crop),
        first.labels.astype(np.int32),
        first.split,
        tuple(first.class_names),
    )


def check_gan_images(name: str, images, size: int | None = None, bands: int = 1) -> np.ndarray:
    """Check ``(n, size, size, bands)`` float images in [-1, 1]; return them as float32.

    Raises:
      TypeError: not a floating-point array.
      ValueError: wrong shape or size, values outside [-1, 1], NaN.
    """
    arr = np.asarray(images)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name}: expected float images in [-1, 1] (see prepare_images), got dtype {arr.dtype}"
        )
    want = f"(n, {size or 'size'}, {size or 'size'}, {bands})"
    if arr.ndim != 4 or arr.shape[-1] != bands or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if size is not None and arr.shape[1] != size:
        raise ValueError(f"{name}: expected images of size {size}x{size}, got {arr.shape[1:3]}")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < -1 - 1e-5 or arr.max() > 1 + 1e-5):
        raise ValueError(
            f"{name}: expected finite values in [-1, 1], got range "
            f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
        )
    return arr.astype(np.float32)


def augment_images(key, images, rotation: bool = True):
    """Random flips and rotations of ``(n, h, w, bands)`` images in [-1, 1].

    Each image gets one of the 8 symmetries of the square
    (:func:`galjax.image.transforms.random_dihedral`) and, with ``rotation``, a further
    uniform rotation in [0, pi/2) (bilinear, :func:`galjax.image.transforms.rotate`;
    the empty sky value -1 fills the corners). Works under ``jit``.

    >>> augment_images(jax.random.key(0), -jnp.ones((2, 8, 8, 1))).shape
    (2, 8, 8, 1)
    """
    k1, k2 = jax.random.split(key)
    x = random_dihedral(k1, images)
    if not rotation:
        return x
    angles = jax.random.uniform(k2, (x.shape[0],), x.dtype, 0.0, math.pi / 2)
    # rotate() fills with 0, so rotate the non-negative (x + 1) and shift back.
    return jax.vmap(rotate)(x + 1.0, angles) - 1.0


# --------------------------------------------------------------------- histograms


@dataclasses.dataclass(frozen=True)
class HistogramConfig:
    """The three histograms of the checkpoint selection.

    Attributes:
      bins: bins per histogram.
      threshold: pixel value in [-1, 1) above which a pixel counts as source
        (-0.9 is 5 % of the peak brightness).
      margin: the count and sum histograms span ``[0, margin * max over the real
        images]``; generated values beyond land in the last bin.
    """

    bins: int = 20
    threshold: float = -0.9
    margin: float = 1.25

    def __post_init__(self):
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 1:
            raise ValueError(f"bins: expected a positive integer, got {self.bins!r}")
        if not -1 <= self.threshold < 1:
            raise ValueError(f"threshold: expected a value in [-1, 1), got {self.threshold!r}")
        if not self.margin >= 1:
            raise ValueError(f"margin: expected >= 1, got {self.margin!r}")


class HistogramEdges(NamedTuple):
    """Bin edges ``(bins + 1,)`` of the three histograms (fixed by the real images)."""

    intensity: np.ndarray
    n_above: np.ndarray
    total: np.ndarray


class Histograms(NamedTuple):
    """Normalised histograms ``(bins,)`` (each sums to 1, or is all 0 when empty).

    Attributes:
      intensity: values of the pixels above the threshold.
      n_above: number of pixels above the threshold per image.
      total: summed intensity ``sum (x + 1) / 2`` per image.
    """

    intensity: np.ndarray
    n_above: np.ndarray
    total: np.ndarray


def _per_image_stats(images, threshold: float):
    x = np.asarray(images, np.float32)
    above = x > threshold
    return above, above.sum(axis=(1, 2, 3)), ((x + 1) / 2).sum(axis=(1, 2, 3))


def histogram_edges(real_images, config: HistogramConfig = HistogramConfig()) -> HistogramEdges:
    """Bin edges shared by real and generated images of one class.

    Intensity bins span ``(threshold, 1]``; the count and sum bins ``[0, margin *
    max]`` over ``real_images`` (at least one pixel wide).
    """
    real = check_gan_images("real_images", real_images)
    if real.shape[0] == 0:
        raise ValueError("real_images: expected at least one image, got 0")
    _, n_above, total = _per_image_stats(real, config.threshold)
    b = config.bins + 1
    return HistogramEdges(
        np.linspace(config.threshold, 1.0, b),
        np.linspace(0.0, max(config.margin * float(n_above.max()), 1.0), b),
        np.linspace(0.0, max(config.margin * float(total.max()), 1.0), b),
    )


def _normalised_hist(values, edges):
    # Clip into the range so that values beyond the edges (e.g. a generator that
    # fills the whole image) are counted in the edge bins instead of vanishing.
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    s = counts.sum()
    return (counts / s if s > 0 else counts.astype(np.float64)).astype(np.float64)


def image_histograms(images, edges: HistogramEdges, threshold: float = -0.9) -> Histograms:
    """The three normalised histograms of a set of images.

    Args:
      images: ``(n, h, w, 1)`` in [-1, 1].
      edges: from :func:`histogram_edges` (of the real images of the class).
      threshold: source pixel threshold (as in ``edges``).

    Returns:
      :class:`Histograms`.
    """
    x = check_gan_images("images", images)
    above, n_above, total = _per_image_stats(x, threshold)
    return Histograms(
        _normalised_hist(x[above], edges.intensity),
        _normalised_hist(n_above, edges.n_above),
        _normalised_hist(total, edges.total),
    )


def rmae(a, b) -> float:
    """Relative mean absolute error of two histograms over their non-empty bins.

    ``RMAE = mean_{i: a_i + b_i > 0} 2 |a_i - b_i| / (a_i + b_i)``, in [0, 2];
    0 for identical histograms, symmetric in ``a`` and ``b``.

    Raises:
      ValueError: shapes differ, negative or non-finite entries, or no bin is
        non-empty in either histogram.

    >>> rmae([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]), rmae([1.0, 0.0], [0.0, 1.0])
    (0.0, 2.0)
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"a, b: expected two 1-d histograms of equal length, got {a.shape}, {b.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or (a < 0).any() or (b < 0).any():
        raise ValueError("a, b: histograms must be finite and non-negative")
    s = a + b
    keep = s > 0
    if not keep.any():
        raise ValueError(
            "a, b: the histograms have no non-empty bin (no pixel above the threshold in "
            "either image set?); RMAE is undefined"
        )
    return float(np.mean(2 * np.abs(a[keep] - b[keep]) / s[keep]))


def histogram_rmae(real: Histograms, fake: Histograms) -> dict[str, float]:
    """RMAE of each of the three histograms and their mean."""
    out = {k: rmae(getattr(real, k), getattr(fake, k)) for k in Histograms._fields}
    out["mean"] = float(np.mean([out[k] for k in Histograms._fields]))
    return out


def _check_labels(name: str, labels, n: int, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: expected labels in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int32)


def class_rmae(
    real_images,
    real_labels,
    fake_images,
    fake_labels,
    n_classes: int,
    config: HistogramConfig = HistogramConfig(),
) -> np.ndarray:
    """RMAE per class and histogram between real and generated images.

    Returns:
      ``(n_classes, 4)``: intensity, n_above, total, mean.

    Raises:
      ValueError: a class has no real or no generated image.
    """
    real = check_gan_images("real_images", real_images)
    fake = check_gan_images("fake_images", fake_images, real.shape[1])
    yr = _check_labels("real_labels", real_labels, real.shape[0], n_classes)
    yf = _check_labels("fake_labels", fake_labels, fake.shape[0], n_classes)
    check_classes_present(yr, n_classes, "real_labels")
    check_classes_present(yf, n_classes, "fake_labels")
    out = np.zeros((n_classes, 4))
    for c in range(n_classes):
        edges = histogram_edges(real[yr == c], config)
        r = histogram_rmae(
            image_histograms(real[yr == c], edges, config.threshold),
            image_histograms(fake[yf == c], edges, config.threshold),
        )
        out[c] = [r["intensity"], r["n_above"], r["total"], r["mean"]]
    return out


class RMAETable(NamedTuple):
    """RMAE of every checkpoint and class.

    Attributes:
      steps: ``(n_ckpt,)`` training step of each checkpoint.
      class_names: ``n_classes`` names.
      rmae: ``(n_ckpt, n_classes, 4)``: intensity, n_above, total and mean RMAE.
      best: ``(n_classes,)`` index of the selected checkpoint per class.
    """

    steps: np.ndarray
    class_names: tuple[str, ...]
    rmae: np.ndarray
    best: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """``(n_ckpt, n_classes)`` mean RMAE."""
        return self.rmae[..., 3]

    @property
    def best_steps(self) -> dict[str, int]:
        """Selected step per class name."""
        return {c: int(self.steps[i]) for c, i in zip(self.class_names, self.best, strict=True)}


def select_best(mean_rmae) -> np.ndarray:
    """Index of the checkpoint with the lowest mean RMAE, per class.

    Args:
      mean_rmae: ``(n_ckpt, n_classes)``.

    Returns:
      ``(n_classes,)`` int indices (the earliest checkpoint on ties).

    >>> select_best([[0.5, 0.2], [0.3, 0.4]]).tolist()
    [1, 0]
    """
    m = np.asarray(mean_rmae, np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(
            f"mean_rmae: expected a non-empty (n_ckpt, n_classes) table, got {m.shape}"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("mean_rmae: expected finite values")
    return np.argmin(m, axis=0).astype(np.int64)


def rmae_table(
    real_images,
    real_labels,
    fakes: Sequence[tuple[Any, Any]],
    steps: Sequence[int],
    class_names: Sequence[str] = CLASS_NAMES,
    config: HistogramConfig = HistogramConfig(),
) -> RMAETable:
    """Score generated sets (one per checkpoint) and select the best per class.

    Args:
      real_images, real_labels: the real images ``(n, h, w, 1)`` and classes.
      fakes: per checkpoint ``(images, labels)`` generated by it.
      steps: the step of each checkpoint.
      class_names: names in label order.
      config: :class:`HistogramConfig`.

    Returns:
      :class:`RMAETable`.
    """
    if len(fakes) == 0 or len(fakes) != len(steps):
        raise ValueError(
            f"fakes, steps: expected equal non-zero lengths, got {len(fakes)}, {len(steps)}"
        )
    k = len(class_names)
    table = np.stack([class_rmae(real_images, real_labels, f, y, k, config) for f, y in fakes])
    return RMAETable(
        np.asarray(steps, np.int64), tuple(class_names), table, select_best(table[..., 3])
    )


_PARTS = ("intensity", "n_above", "total", "mean")


def format_rmae_table(table: RMAETable) -> str:
    """Plain-text table of mean RMAE per step and class; ``*`` marks the selected ones."""
    head = ["step"] + list(table.class_names)
    rows = []
    for i, s in enumerate(table.steps):
        cells = [str(int(s))]
        for c in range(len(table.class_names)):
            mark = "*" if table.best[c] == i else " "
            cells.append(f"{table.mean[i, c]:.3f}{mark}")
        rows.append(cells)
    widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
    fmt = lambda r: "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def write_rmae_table(stem, table: RMAETable) -> tuple[Path, Path]:
    """Write ``stem.csv`` (one row per step, class and histogram) and ``stem.json``, atomically.

    Returns:
      The two paths.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "class", *(f"rmae_{p}" for p in _PARTS), "selected"])
    for i, s in enumerate(table.steps):
        for c, name in enumerate(table.class_names):
            w.writerow(
                [int(s), name, *(f"{v:.6f}" for v in table.rmae[i, c]), int(table.best[c] == i)]
            )
    payload = {
        "steps": table.steps.tolist(),
        "class_names": list(table.class_names),
        "columns": list(_PARTS),
        "rmae": table.rmae.tolist(),
        "best_index": {c: int(i) for c, i in zip(table.class_names, table.best, strict=True)},
        "best_step": table.best_steps,
    }
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    atomic_write(csv_path, lambda t: t.write_text(buf.getvalue()))
    atomic_write(json_path, lambda t: t.write_text(json.dumps(payload, indent=2) + "\n"))
    return csv_path, json_path


# ----------------------------------------------------------------------- training


def checkpoint_path(run_dir, step: int) -> Path:
    """``run_dir/ckpt_{step:07d}.msgpack``."""
    return Path(run_dir) / f"ckpt_{int(step):07d}.msgpack"


def list_checkpoints(run_dir) -> list[Path]:
    """The checkpoints of a run, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir: folder {str(run_dir)!r} does not exist")
    return sorted(run_dir.glob("ckpt_*.msgpack"))


def save_gan_checkpoint(
    path, state: GANState, config: GANConfig, class_names: Sequence[str] = CLASS_NAMES
) -> Path:
    """Save a GAN state with its config and class names (atomic, see :func:`save_checkpoint`)."""
    meta = {"gan_config": config.to_dict(), "class_names": list(class_names), "kind": "galjax-gan"}
    return save_checkpoint(path, state, meta)


def load_gan_checkpoint(path) -> tuple[GANConfig, GANState, tuple[str, ...]]:
    """Load ``(config, state, class_names)`` written by :func:`save_gan_checkpoint`."""
    meta = load_checkpoint_metadata(path)
    if "gan_config" not in meta:
        raise ValueError(f"path: {str(path)!r} is a checkpoint but not of a galjax GAN")
    config = GANConfig.from_dict(meta["gan_config"])
    state = restore_checkpoint(path, init_gan(jax.random.key(0), config))
    return config, state, tuple(meta.get("class_names", CLASS_NAMES))


def train_gan(
    key,
    config: GANConfig,
    images,
    labels,
    *,
    n_steps: int,
    batch_size: int = 32,
    checkpoint_every: int | None = None,
    out_dir=None,
    augment: bool = True,
    class_names: Sequence[str] = CLASS_NAMES,
    state: GANState | None = None,
    log_every: int = 25,
    progress: bool = True,
):
    """Train the conditional WGAN-GP, keeping a checkpoint every ``checkpoint_every`` steps.

    Each step draws ``n_critic`` batches uniformly from ``images`` (augmented with
    :func:`augment_images` when ``augment``) inside one jitted call.

    Args:
      key: PRNG key.
      config: :class:`galjax.models.gan.GANConfig`.
      images: ``(n, size, size, 1)`` float32 in [-1, 1], ``size = config.image_size``.
      labels: ``(n,)`` int classes in ``[0, config.n_classes)``; every class present.
      n_steps: generator updates to reach (counted from ``state.step``).
      batch_size: images per critic batch.
      checkpoint_every: save ``out_dir/ckpt_{step}.msgpack`` every this many steps
        (and at the end); all are kept for :func:`evaluate_checkpoints`.
      out_dir: run folder (needed for checkpoints); ``history.json`` is written there.
      augment: random flips and rotations.
      class_names: stored in the checkpoints.
      state: continue from this state instead of a fresh :func:`init_gan`.
      log_every: record the metrics every this many steps.
      progress: tqdm progress bar.

    Returns:
      ``(state, history, checkpoints)``: final :class:`GANState`; dict with lists
      ``step``, ``critic_loss``, ``wasserstein``, ``gp``, ``gen_loss``,
      ``seconds``; list of checkpoint paths.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, GANConfig):
        raise TypeError(f"config: expected a GANConfig, got {type(config).__name__}")
    x = check_gan_images("images", images, config.image_size, config.bands)
    y = _check_labels("labels", labels, x.shape[0], config.n_classes)
    check_classes_present(y, config.n_classes, "labels")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps!r}")
    if batch_size < 1 or batch_size > x.shape[0]:
        raise ValueError(f"batch_size: expected 1..{x.shape[0]}, got {batch_size}")
    if checkpoint_every is not None and (checkpoint_every < 1 or out_dir is None):
        raise ValueError("checkpoint_every: expected a positive integer together with out_dir")
    if len(class_names) != config.n_classes:
        raise ValueError(f"class_names: expected {config.n_classes} names, got {len(class_names)}")
    k_init, k_train = jax.random.split(key)
    state = init_gan(k_init, config) if state is None else state
    step_fn = make_gan_step(config)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    shape = (config.n_critic, batch_size)

    @jax.jit
    def train_iter(k, st):
        k_idx, k_aug, k_step = jax.random.split(k, 3)
        idx = jax.random.randint(k_idx, (shape[0] * shape[1],), 0, xs.shape[0])
        batch = xs[idx]
        if augment:
            batch = augment_images(k_aug, batch)
        batch = batch.reshape(shape + batch.shape[1:])
        return step_fn(k_step, st, batch, ys[idx].reshape(shape))

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history: dict[str, list] = {
        k: [] for k in ("step", "critic_loss", "wasserstein", "gp", "gen_loss", "seconds")
    }
    ckpts: list[Path] = []
    start = int(state.step)
    t0 = time.perf_counter()
    bar = tqdm(range(start, n_steps), desc="gan", disable=not progress, initial=0)
    for t in bar:
        state, m = train_iter(jax.random.fold_in(k_train, t), state)
        done = t + 1
        if done % log_every == 0 or done == n_steps:
            m = {k: float(v) for k, v in m.items()}
            if not all(math.isfinite(v) for v in m.values()):
                raise FloatingPointError(f"GAN training diverged at step {done}: {m}")
            history["step"].append(done)
            for k in ("critic_loss", "wasserstein", "gp", "gen_loss"):
                history[k].append(m[k])
            history["seconds"].append(time.perf_counter() - t0)
            bar.set_postfix(W=f"{m['wasserstein']:.3f}", gp=f"{m['gp']:.3f}")
        if checkpoint_every is not None and (done % checkpoint_every == 0 or done == n_steps):
            ckpts.append(
                save_gan_checkpoint(checkpoint_path(out, done), state, config, class_names)
            )
    if out is not None:
        text = json.dumps({"config": config.to_dict(), **history}, indent=1) + "\n"
        atomic_write(out / "history.json", lambda p: p.write_text(text))
    return state, history, ckpts


def sample_classes(
    key, generators: Mapping[int, tuple[GANConfig, GANState]], labels, batch_size: int = 256
) -> np.ndarray:
    """Generate one image per label, each class with its own generator.

    Args:
      key: PRNG key.
      generators: class index -> ``(config, state)`` (e.g. the class's selected
        checkpoint from :func:`load_gan_checkpoint`).
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


def check_classes_present(labels, n_classes: int, what: str = "labels") -> None:
    """Raise a ``ValueError`` naming the classes with no example in ``labels``."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=n_classes)[:n_classes]
    empty = np.nonzero(counts == 0)[0]
    if empty.size:
        raise ValueError(
            f"{what}: class(es) {empty.tolist()} have no example (counts {counts.tolist()}); "
            "use fewer folds or a larger data set"
        )


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
        y = _check_labels("labels", labels, n)
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
    y = _check_labels("labels", labels, x.shape[0])
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
      models: name -> Linen classifier from :mod:`galjax.classify` (e.g.
        ``{"FCN": FCNClassifier(4), "CNN": CNNClassifier(4)}``).
      lambdas: the ``lambda_gen`` ratios.
      k: number of folds (ignored when ``folds`` is given).
      classifier_kwargs: passed to :func:`galjax.classify.train_classifier`.
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
    from .classify import accuracy, predict_proba, train_classifier

    x = check_gan_images("images", images)
    y = _check_labels("labels", labels, x.shape[0])
    xt = check_gan_images("test_images", test_images, x.shape[1])
    yt = _check_labels("test_labels", test_labels, xt.shape[0])
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


def plot_pairs(real, fake, pairs: Pairs, path=None, title: str = "", align: bool = True):
    """Figure: generated images (top row) above their closest real images (bottom row)."""
    from .plot import image_grid

    r = check_gan_images("real", real)
    f = check_gan_images("fake", fake, r.shape[1])
    if align:
        r, f = align_principal_axes(r), align_principal_axes(f)
    m = len(pairs.distance)
    if m == 0:
        raise ValueError("pairs: expected at least one pair")
    panels = np.concatenate([f[pairs.fake_index], r[pairs.real_index]]) + 1.0
    titles = [f"{title} gen d={d:.2g}" for d in pairs.distance] + [f"{title} real"] * m
    return image_grid(panels, ncols=m, titles=titles, path=path, percentile=100.0)


def plot_class_histograms(
    real_images,
    real_labels,
    fake_images,
    fake_labels,
    class_names: Sequence[str] = CLASS_NAMES,
    config: HistogramConfig = HistogramConfig(),
    path=None,
):
    """Figure: the three normalised histograms, real against generated, one row per class.

    Returns:
      The ``matplotlib.figure.Figure`` (saved to ``path`` when given).
    """
    from matplotlib.figure import Figure

    real = check_gan_images("real_images", real_images)
    fake = check_gan_images("fake_images", fake_images, real.shape[1])
    k = len(class_names)
    yr = _check_labels("real_labels", real_labels, real.shape[0], k)
    yf = _check_labels("fake_labels", fake_labels, fake.shape[0], k)
    check_classes_present(yr, k, "real_labels")
    check_classes_present(yf, k, "fake_labels")
    fig = Figure(figsize=(10, 2.2 * k), layout="constrained")
    axes = fig.subplots(k, 3, squeeze=False)
    titles = ("pixel intensity (> threshold)", "pixels above threshold", "summed intensity")
    for c in range(k):
        edges = histogram_edges(real[yr == c], config)
        hr = image_histograms(real[yr == c], edges, config.threshold)
        hf = image_histograms(fake[yf == c], edges, config.threshold)
        r = histogram_rmae(hr, hf)
        for j, part in enumerate(Histograms._fields):
            ax = axes[c, j]
            e = getattr(edges, part)
            ax.stairs(getattr(hr, part), e, label="real")
            ax.stairs(getattr(hf, part), e, label="generated")
            ax.set_title(f"{class_names[c]}: {titles[j]}, RMAE {r[part]:.2f}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


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
      ``histograms`` (per sigma and class the generated :class:`Histograms` as
      lists, plus ``"real"`` per class and the ``edges``).
    """
    real = check_gan_images("real_images", real_images, config.image_size)
    yr = _check_labels("real_labels", real_labels, real.shape[0], config.n_classes)
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
