"""One-to-one matching of detected and reference positions (host numpy, outside ``jit``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Matches", "match_positions"]


class Matches(NamedTuple):
    """One-to-one matches between found and true positions (:func:`match_positions`).

    Attributes:
      found_index: ``(m,)`` int indices into the found list.
      true_index: ``(m,)`` int indices into the true list.
      distance: ``(m,)`` separations in pixels.
      completeness: ``m / n_true`` (fraction of true sources recovered).
      purity: ``m / n_found`` (fraction of detections that are real).
    """

    found_index: np.ndarray
    true_index: np.ndarray
    distance: np.ndarray
    completeness: float
    purity: float


def match_positions(found, true, radius: float = 2.0, found_mask=None) -> Matches:
    """Greedy one-to-one matching of two position lists within ``radius`` pixels.

    Pairs are taken in increasing order of distance; each source is used once.
    Host numpy, outside ``jit`` (the number of matches is data-dependent).

    Args:
      found: ``(n, 2)`` detected ``(x, y)``.
      true: ``(m, 2)`` reference ``(x, y)`` in the same pixel convention.
      radius: maximum separation in pixels.
      found_mask: optional ``(n,)`` bool; False entries (padding) are ignored.

    Returns:
      :class:`Matches` with indices into ``found`` and ``true``, distances,
      completeness ``n_match / m`` and purity ``n_match / n_valid_found``.

    >>> m = match_positions([[0.0, 0.0], [5.0, 5.0]], [[0.5, 0.0], [9.0, 9.0]])
    >>> m.true_index.tolist(), m.completeness, m.purity
    ([0], 0.5, 0.5)
    """
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(found), bool) if found_mask is None else np.asarray(found_mask, bool)
    if keep.shape != (len(found),):
        raise ValueError(f"found_mask: expected shape ({len(found)},), got {keep.shape}")
    fidx = np.nonzero(keep)[0]
    d = np.hypot(*(found[fidx, None, :] - true[None, :, :]).transpose(2, 0, 1))
    pairs = np.argwhere(d <= radius)
    order = np.argsort(d[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_f, used_t, fi, ti = set(), set(), [], []
    for a, b in pairs[order]:
        if a not in used_f and b not in used_t:
            used_f.add(a)
            used_t.add(b)
            fi.append(fidx[a])
            ti.append(b)
    fi, ti = np.asarray(fi, int), np.asarray(ti, int)
    dist = np.hypot(*(found[fi] - true[ti]).T) if len(fi) else np.zeros(0)
    n = len(fi)
    return Matches(
        fi,
        ti,
        dist,
        n / len(true) if len(true) else 0.0,
        n / len(fidx) if len(fidx) else 0.0,
    )
