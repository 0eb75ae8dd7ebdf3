"""Tiles of a survey image: the grid, each tile's share of the sources, the blends' canvases.

A survey image of any size is processed tile by tile. Tile ``k`` owns a *core*
rectangle; the cores tile the image without overlap. It reads its core grown by
``overlap`` pixels on each side (clipped to the image), detects and groups the
sources there, and keeps the blends whose reference point (the flux-weighted
centroid of their sources) lies in its core, so that each blend is solved by
exactly one tile. A kept blend whose footprints reach the edge of the read window
(where that edge is not the image's) is flagged ``truncated``: raise ``overlap``.

Blends are cut out on square canvases whose sides come from a short ladder
(:data:`CANVAS_SIZES`), so that the whole image compiles the solver a handful of
times whatever its size.

Host-side planning in plain Python and numpy (not traced). Boxes are
``(y0, y1, x0, x1)`` integer pixels with ``y1``/``x1`` exclusive, the
slice ``image[y0:y1, x0:x1]``; positions are ``(x, y)`` 0-based pixels with pixel
centres at integers.

>>> [t.core for t in plan_tiles((100, 250), tile=128, overlap=16)]
[(0, 100, 0, 128), (0, 100, 128, 250)]
>>> plan_tiles((100, 250), tile=128, overlap=16)[1].read
(0, 100, 112, 250)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "CANVAS_SIZES",
    "Tile",
    "plan_tiles",
    "share",
    "owned",
    "canvas_size",
    "parse_shard",
]

#: Canvas sides (pixels) of the blends' cutouts; larger blends use multiples of 512.
CANVAS_SIZES = (64, 96, 128, 192, 256, 384, 512)


class Tile(NamedTuple):
    """One tile of an image.

    Attributes:
      index: position in :func:`plan_tiles`'s list, row-major.
      core: ``(y0, y1, x0, x1)`` the pixels the tile owns.
      read: ``(y0, y1, x0, x1)`` the pixels it reads: the core grown by the overlap.
    """

    index: int
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]


def _positive_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    return int(value)


def plan_tiles(shape, tile: int = 1024, overlap: int = 128) -> list[Tile]:
    """Cut an ``(h, w)`` image into tiles of at most ``tile x tile`` owned pixels.

    Args:
      shape: ``(h, w)`` (further axes ignored), each >= 1.
      tile: core side in pixels, int >= 16, default 1024.
      overlap: pixels read beyond the core on each side, int >= 0, default 128;
        blends up to about ``overlap`` pixels across are solved whole.

    Returns:
      Row-major list of :class:`Tile`; ``ceil(h / tile) * ceil(w / tile)`` tiles.
    """
    if len(tuple(shape)) < 2:
        raise ValueError(f"shape: expected (h, w), got {shape!r}")
    h, w = (_positive_int("shape", int(s), 1) for s in tuple(shape)[:2])
    tile = _positive_int("tile", tile, 16)
    overlap = _positive_int("overlap", overlap, 0)
    out = []
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            read = (
                max(y0 - overlap, 0),
                min(y1 + overlap, h),
                max(x0 - overlap, 0),
                min(x1 + overlap, w),
            )
            out.append(Tile(len(out), (y0, y1, x0, x1), read))
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``.

    >>> parse_shard("1/4")
    (1, 4)
    """
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard: expected i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard: expected i/N with 0 <= i < N, got {text!r}")
    return i, n


def share(tiles: list[Tile], index: int, count: int) -> list[Tile]:
    """The tiles of worker ``index`` of ``count`` (a shard, a process): every ``count``-th.

    >>> [t.index for t in share(plan_tiles((64, 64), tile=16), 1, 3)]
    [1, 4, 7, 10, 13]
    """
    count = _positive_int("count", count, 1)
    if not 0 <= index < count:
        raise ValueError(f"index: expected 0 <= index < {count}, got {index!r}")
    return list(tiles[index::count])


def owned(tile: Tile, x, y) -> np.ndarray:
    """True where the pixel holding ``(x, y)`` (global pixels) lies in the tile's core.

    >>> t = plan_tiles((64, 64), tile=32)[0]
    >>> owned(t, np.array([31.4, 31.6]), np.array([3.0, 3.0])).tolist()
    [True, False]
    """
    y0, y1, x0, x1 = tile.core
    ix, iy = np.floor(np.asarray(x) + 0.5), np.floor(np.asarray(y) + 0.5)
    return (ix >= x0) & (ix < x1) & (iy >= y0) & (iy < y1)


def canvas_size(h: int, w: int) -> int:
    """The smallest :data:`CANVAS_SIZES` side (or multiple of 512) holding ``h x w``.

    >>> canvas_size(45, 50), canvas_size(100, 20), canvas_size(700, 10)
    (64, 128, 1024)
    """
    need = max(int(h), int(w), 1)
    for s in CANVAS_SIZES:
        if need <= s:
            return s
    return 512 * math.ceil(need / 512)
