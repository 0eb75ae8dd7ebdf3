"""The base layer: boundary checks, atomic files, the caching policy, the optax loop and
chunked evaluation. Imports nothing else from galjax."""

from galjax.core import cache, checks, chunks, files, optim
from galjax.core.cache import bounded_cache
from galjax.core.chunks import chunked_map, pad_chunk
from galjax.core.files import atomic_write
from galjax.core.optim import MinimiseInfo, minimise

__all__ = [
    "cache", "checks", "chunks", "files", "optim",
    "bounded_cache", "chunked_map", "pad_chunk", "atomic_write", "MinimiseInfo", "minimise",
]  # fmt: skip
