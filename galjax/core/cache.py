"""The one caching policy of galjax: a bounded least-recently-used cache.

Compiled functions built per model or per static configuration (a ``jax.jit`` of
``model.apply``, a table computed once per profile family) are kept in an
``functools.lru_cache`` of at most :data:`CACHE_SIZE` entries, so a long session that
loops over many models keeps a bounded number of compilations alive.

>>> from galjax.core.cache import bounded_cache
>>> @bounded_cache
... def square_table(n: int):
...     return tuple(i * i for i in range(n))
>>> square_table(4), square_table.cache_info().hits
((0, 1, 4, 9), 0)
>>> square_table(4) is square_table(4)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = ["CACHE_SIZE", "bounded_cache"]

CACHE_SIZE = 32
"""Entries kept per cached function (least recently used dropped first)."""

F = TypeVar("F", bound=Callable)


def bounded_cache(fn: F | None = None, *, maxsize: int = CACHE_SIZE):
    """Decorate ``fn`` with an LRU cache of ``maxsize`` entries (arguments must be hashable).

    Use it bare (``@bounded_cache``) or with a size (``@bounded_cache(maxsize=1)``).
    """
    if maxsize < 1:
        raise ValueError(f"maxsize: expected a positive integer, got {maxsize}")
    if fn is None:
        return functools.partial(bounded_cache, maxsize=maxsize)
    return functools.lru_cache(maxsize=maxsize)(fn)
