"""The finished chunks of a ``galjax deblend`` run on disk, for ``--resume``.

``OUT/chunks/chunk_XXXXXXXX.npz`` holds the :class:`~galjax.deblend.DeblendResult`
arrays of the fields of one chunk plus ``fields``, their global indices (the name
is the first of them); ``OUT/chunks/manifest.json`` identifies the run (a hash of the
inputs' contents and of the settings). Every file is written atomically. A new run
removes the chunks of an earlier one before writing its own; ``--resume`` reads the
chunks of a run with the same manifest back and deblends only the missing fields,
and refuses chunks of another run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from galjax.core.files import atomic_write, clean_stale_tmp

__all__ = ["ChunkStore", "file_digest", "run_manifest", "merge_chunks"]

_FORMAT = "galjax-deblend-chunks-1"


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_manifest(settings: dict, inputs: dict, n_fields: int, fmt: str = _FORMAT) -> dict:
    """The manifest of a run: its settings, the digests of its input files and a hash of
    both; ``n_fields`` counts its units of work (fields, or tiles), ``fmt`` names the layout."""
    body = {"settings": settings, "inputs": inputs, "n_fields": int(n_fields)}
    text = json.dumps(body, sort_keys=True, default=str)
    return {"format": fmt, "hash": hashlib.sha256(text.encode()).hexdigest(), **body}


def _differences(old: dict, new: dict) -> list[str]:
    keys = []
    for part in ("settings", "inputs"):
        a, b = old.get(part) or {}, new.get(part) or {}
        keys += [f"{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if old.get("n_fields") != new.get("n_fields"):
        keys.append("number of fields")
    return keys


class ChunkStore:
    """Chunk files of one run in ``out/chunks``.

    Nothing is created until the first chunk is saved (:meth:`save`): inputs that
    fail their checks leave no folder behind.
    """

    def __init__(self, out, manifest: dict, resume: bool):
        self.out = Path(out)
        self.dir = self.out / "chunks"
        self.manifest = manifest
        self.resume = resume
        self._started = False
        self._broken: list[Path] = []

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def _chunk_files(self) -> list[Path]:
        return sorted(self.dir.glob("chunk_*.npz")) if self.dir.is_dir() else []

    def finished(self, fields: tuple[str, ...]) -> list[tuple[np.ndarray, dict]]:
        """``[(indices, arrays)]`` of the chunks finished by an earlier run (``--resume``).

        Raises ``ValueError`` (naming ``--resume``) when the chunks come from a run
        with other inputs or settings. Unreadable chunk files are skipped (their
        fields are deblended again) with a note on stderr.
        """
        if not self.resume:
            return []
        files = self._chunk_files()
        if not self.manifest_path.is_file():
            if files:
                raise ValueError(
                    f"--resume: {self.dir} holds chunks but no manifest.json (another galjax "
                    "version?); run without --resume to start over"
                )
            return []
        try:
            old = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"--resume: {self.manifest_path} is corrupt ({err})") from err
        if not isinstance(old, dict) or old.get("hash") != self.manifest["hash"]:
            diff = _differences(old, self.manifest) if isinstance(old, dict) else []
            raise ValueError(
                f"--resume: the chunks in {self.dir} come from a run with other inputs or "
                f"settings (differing: {', '.join(diff) or 'format'}); run without --resume "
                "to start over"
            )
        n = self.manifest["n_fields"]
        parts = []
        for path in files:
            try:
                with np.load(path) as z:
                    arrays = {k: z[k] for k in z.files}
                idx = np.asarray(arrays.pop("fields"), np.int64)
                if set(arrays) != set(fields) or any(len(a) != len(idx) for a in arrays.values()):
                    raise ValueError("unexpected contents")
                if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
                    raise ValueError("field indices out of range")
            except Exception as err:  # zip/pickle/format errors of a damaged file
                print(
                    f"galjax deblend: warning: {path} is unreadable ({err}); its fields are "
                    "deblended again",
                    file=sys.stderr,
                )
                self._broken.append(path)
                continue
            parts.append((idx, arrays))
        return parts

    def _begin(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, self.dir):
            clean_stale_tmp(folder)  # left by a killed run
        stale = self._broken if self.resume else self._chunk_files()
        for path in stale:  # chunks of an earlier run never mix with this one
            path.unlink(missing_ok=True)
        text = json.dumps(self.manifest, indent=1, sort_keys=True, default=str)
        atomic_write(self.manifest_path, lambda tmp: tmp.write_text(text + "\n"))
        self._started = True

    def start(self) -> None:
        """Create the folders, remove stale chunks and write the manifest (once)."""
        if not self._started:
            self._begin()

    def save(self, indices, arrays: dict) -> Path:
        """Write the chunk holding the fields ``indices`` (global) atomically."""
        self.start()
        indices = np.asarray(indices, np.int64)
        path = self.dir / f"chunk_{int(indices[0]):08d}.npz"

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, fields=indices, **arrays)

        return atomic_write(path, write)


def merge_chunks(parts, n: int) -> dict:
    """Arrays of ``n`` fields from ``[(indices, arrays)]`` parts covering every field."""
    covered = np.zeros(n, bool)
    out = {}
    for idx, arrays in parts:
        for k, a in arrays.items():
            if k not in out:
                out[k] = np.zeros((n, *a.shape[1:]), a.dtype)
            out[k][idx] = a
        covered[idx] = True
    if not covered.all():
        raise RuntimeError(f"{int((~covered).sum())} field(s) missing after the merge")
    return out
