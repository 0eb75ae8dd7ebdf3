"""Atomic file writes shared by FITS/table output and checkpoints."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, fsync it, then move it over.

    A crash or exception leaves the previous file intact and no temporary file
    behind. The temporary name ends with the destination's name, so libraries that
    pick a format from the extension (astropy) behave as for the final path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: folder {str(path.parent)!r} does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"path: {str(path)!r} exists and overwrite=False")
    tmp = path.parent / f".tmp-{secrets.token_hex(6)}-{path.name}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
