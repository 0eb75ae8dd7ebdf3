"""Histogram RMAE of generated against real images, and per-class checkpoint selection.

The checkpoint selection of Rustige et al. (2023, RASTI 2, 264): per class three
normalised histograms -- pixel intensities (pixels above a threshold), number of
pixels above the threshold per image, summed intensity per image -- compared with
the real ones through the relative mean absolute error over the non-empty bins,

    RMAE(a, b) = mean_{i: a_i + b_i > 0} 2 |a_i - b_i| / (a_i + b_i),

and per class the checkpoint with the lowest mean RMAE is kept (:func:`rmae_table`,
:func:`select_best`). Images are ``(n, h, w, 1)`` in [-1, 1] as
:func:`galjax.io.radio.prepare_images` makes them.

>>> rmae([0.5, 0.5, 0.0], [0.5, 0.5, 0.0])
0.0
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from galjax.core.checks import check_labels
from galjax.core.files import atomic_write
from galjax.io.radio import CLASS_NAMES, check_classes_present, check_gan_images

__all__ = [
    "HistogramConfig",
    "HistogramEdges",
    "Histograms",
    "histogram_edges",
    "image_histograms",
    "rmae",
    "histogram_rmae",
    "class_rmae",
    "RMAETable",
    "select_best",
    "rmae_table",
    "format_rmae_table",
    "write_rmae_table",
]


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
    yr = check_labels("real_labels", real_labels, n_classes, real.shape[0])
    yf = check_labels("fake_labels", fake_labels, n_classes, fake.shape[0])
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
