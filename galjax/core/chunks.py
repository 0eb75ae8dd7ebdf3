"""Chunked evaluation over a leading axis with one compiled shape.

Batch work (many fields, images or tiles) is cut into chunks of ``chunk_size`` along
axis 0. The last, shorter chunk is padded by repeating its first row, so a jitted
``fn`` compiles once; the padded rows are dropped from the output.

>>> import jax, jax.numpy as jnp
>>> from galjax.core.chunks import chunked_map
>>> out = chunked_map(jax.jit(lambda x: 2 * x), jnp.arange(5.0), chunk_size=2)
>>> out.tolist()
[0.0, 2.0, 4.0, 6.0, 8.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["chunk_starts", "chunked_map", "pad_chunk"]


def chunk_starts(n: int, chunk_size: int) -> list[int]:
    """First indices of the chunks of ``range(n)``: ``[0, chunk_size, 2 chunk_size, ...]``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    return list(range(0, n, chunk_size))


def pad_chunk(arrays: Sequence[Any], size: int) -> list[Any]:
    """Pad every array of ``arrays`` along axis 0 to ``size`` rows by repeating row 0.

    Arrays already ``size`` long are returned as they are (no copy).
    """
    out = []
    for a in arrays:
        m = a.shape[0]
        if m > size:
            raise ValueError(f"arrays: a chunk of {m} rows is longer than size={size}")
        if m < size:
            xp = np if isinstance(a, np.ndarray) else jax.numpy
            a = xp.concatenate([a, xp.repeat(a[:1], size - m, axis=0)])
        out.append(a)
    return out


def chunked_map(
    fn: Callable[..., Any],
    *arrays,
    chunk_size: int,
    pad: bool = True,
    progress: bool = False,
    desc: str | None = None,
) -> Any:
    """``fn(*chunk)`` over chunks of axis 0 of ``arrays``, outputs concatenated on axis 0.

    Args:
      fn: maps arrays with a leading axis of length ``chunk_size`` to a pytree of arrays
        with the same leading axis (typically a jitted, vmapped kernel).
      *arrays: arrays sharing the length ``n`` of axis 0.
      chunk_size: rows per call (memory bound; one compiled shape).
      pad: pad the last chunk to ``chunk_size`` (one compilation); False passes it short.
        A single chunk shorter than ``chunk_size`` is never padded.
      progress: show a tqdm bar over chunks, titled ``desc``.

    Returns:
      The pytree of ``fn``'s outputs as numpy arrays of length ``n`` on axis 0.
    """
    if not arrays:
        raise ValueError("arrays: expected at least one array")
    n = arrays[0].shape[0]
    for i, a in enumerate(arrays):
        if a.shape[0] != n:
            raise ValueError(f"arrays[{i}]: expected {n} rows on axis 0, got {a.shape[0]}")
    if n == 0:
        raise ValueError("arrays: expected at least one row, got 0")
    starts = chunk_starts(n, chunk_size)
    from tqdm.auto import tqdm

    outs = []
    for s in tqdm(starts, desc=desc, disable=not progress):
        batch = [a[s : s + chunk_size] for a in arrays]
        m = batch[0].shape[0]
        if pad and m < chunk_size and n > chunk_size:
            batch = pad_chunk(batch, chunk_size)
        outs.append(jax.tree.map(lambda x, m=m: np.asarray(x)[:m], fn(*batch)))
    if len(outs) == 1:
        return outs[0]
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)
