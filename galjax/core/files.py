"""Atomic file writes shared by FITS/table output and checkpoints, and the clean-up of
the temporary files that a killed writer leaves behind."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "clean_stale_tmp", "TMP_PREFIX"]

#: Prefix of the temporary files of :func:`atomic_write`.
TMP_PREFIX = ".tmp-"


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
    tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}-{path.name}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def clean_stale_tmp(folder, older_than_s: float = 60.0) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` left in ``folder`` by a killed
    process (``.tmp-*`` files last modified more than ``older_than_s`` seconds ago).

    A process killed between writing and renaming leaves its temporary file behind;
    writers call this when they start. Younger files are kept: they may belong to a
    writer still running. A missing folder is not an error.

    Returns:
      The paths removed.

    >>> import tempfile, os
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / ".tmp-0123-a.fits").write_bytes(b"x")
    >>> os.utime(d / ".tmp-0123-a.fits", (0, 0))
    >>> [p.name for p in clean_stale_tmp(d)]
    ['.tmp-0123-a.fits']
    """
    if not older_than_s >= 0:
        raise ValueError(f"older_than_s: expected a number >= 0, got {older_than_s!r}")
    folder = Path(folder)
    if not folder.is_dir():
        return []
    limit = time.time() - older_than_s
    removed = []
    for p in folder.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if p.is_file() and p.stat().st_mtime <= limit:
                p.unlink()
                removed.append(p)
    return removed
