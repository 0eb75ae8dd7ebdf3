"""Atomic msgpack checkpoints of any pytree (usually a :class:`TrainState`).

A checkpoint ``run/checkpoint.msgpack`` holds the state (``flax.serialization``
state dict) and its metadata in one msgpack file, so the two can never disagree;
``run/checkpoint.json`` is a human-readable copy of the metadata (step, config,
galjax version). Both are written to a temporary file in the same folder and
moved into place with ``os.replace``, so a crash mid-write leaves the previous
checkpoint intact; temporary files that a killed run left there are removed
(:func:`galjax.core.files.clean_stale_tmp`) by the next save.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.files import atomic_write, clean_stale_tmp

__all__ = ["save_checkpoint", "restore_checkpoint", "load_checkpoint_metadata", "to_host"]

_FORMAT = "galjax-checkpoint-1"


def _galjax_version() -> str:
    try:
        return importlib.metadata.version("galjax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json_default(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"metadata: value of type {type(obj).__name__} is not JSON-serialisable")


def to_host(tree):
    """Fetch every array leaf to a numpy array (replicated multi-host arrays too)."""

    def fetch(x):
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable:
                # A replicated global array: every process holds a full copy.
                x = x.addressable_data(0)
            return np.asarray(jax.device_get(x))
        return x

    return jax.tree.map(fetch, tree)


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(path, state, metadata: dict[str, Any] | None = None) -> Path:
    """Save ``state`` atomically to ``path`` (msgpack) plus a JSON sidecar.

    In a multi-host run only process 0 writes; the state must then be
    replicated (as :func:`galjax.train.fit` keeps it).

    Args:
      path: file to write, e.g. ``"run/checkpoint.msgpack"``; missing parent
        folders are created. The sidecar is ``path`` with suffix ``.json``.
      state: any pytree of arrays, usually a :class:`TrainState`.
      metadata: JSON-serialisable dict stored with the state (objects with a
        ``to_dict`` method such as :class:`TrainConfig` are converted). The
        keys ``step`` (from ``state.step`` when present), ``galjax_version`` and
        ``created`` (UTC, ISO 8601) are added.

    Returns:
      The path written.

    >>> import jax.numpy as jnp, optax, tempfile, os
    >>> from galjax.train import init_state
    >>> state = init_state({"w": jnp.ones(2)}, optax.sgd(0.1))
    >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "ckpt.msgpack"), state)
    >>> restore_checkpoint(path, state).params["w"].tolist()
    [1.0, 1.0]
    """
    path = Path(path)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata: expected a dict or None, got {type(metadata).__name__}")
    if jax.process_index() != 0:
        return path
    host_state = to_host(state)
    meta = {
        "galjax_version": _galjax_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **(metadata or {}),
    }
    if hasattr(host_state, "step"):
        meta["step"] = int(np.asarray(host_state.step))
    meta_json = json.dumps(meta, default=_json_default, indent=2, sort_keys=True)
    payload = flax.serialization.msgpack_serialize(
        {
            "format": _FORMAT,
            "metadata": meta_json,
            "state": flax.serialization.to_state_dict(host_state),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path.parent)  # left by a run killed mid-write
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))
    atomic_write(_sidecar_path(path), lambda tmp: tmp.write_text(meta_json + "\n"))
    return path


def _read_payload(path) -> tuple[Path, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: checkpoint {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        payload = flax.serialization.msgpack_restore(raw)
    except Exception as err:  # msgpack raises several unrelated types on bad input
        raise ValueError(
            f"path: checkpoint {str(path)!r} is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or "state" not in payload:
        raise ValueError(
            f"path: {str(path)!r} is not a galjax checkpoint (expected format {_FORMAT!r}); "
            "it may be corrupt or written by another tool"
        )
    return path, payload


def load_checkpoint_metadata(path) -> dict[str, Any]:
    """Return the metadata dict stored in a checkpoint (step, config, version, ...).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is truncated, corrupt or not a galjax checkpoint.
    """
    path, payload = _read_payload(path)
    try:
        return json.loads(payload["metadata"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"path: checkpoint {str(path)!r} has corrupt metadata") from err


def restore_checkpoint(path, target):
    """Load a checkpoint into the structure of ``target``.

    Args:
      path: file written by :func:`save_checkpoint`.
      target: a pytree with the same structure and leaf shapes as the saved one
        (e.g. a fresh ``init_state(...)``); leaves are cast to its dtypes.

    Returns:
      The restored pytree, leaves as JAX arrays.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is truncated or corrupt, or does not match ``target``.

    >>> import jax.numpy as jnp, tempfile, os
    >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "c.msgpack"), {"a": jnp.ones(2)})
    >>> restore_checkpoint(path, {"a": jnp.zeros(2)})["a"].tolist()
    [1.0, 1.0]
    """
    path, payload = _read_payload(path)
    try:
        restored = flax.serialization.from_state_dict(target, payload["state"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"path: checkpoint {str(path)!r} does not match the structure of target: {err}"
        ) from err
    want, got = jax.tree.structure(target), jax.tree.structure(restored)
    if want != got:
        raise ValueError(
            f"path: checkpoint {str(path)!r} does not match the structure of target: "
            f"expected {want}, found {got}"
        )

    def cast(t, r):
        t_shape, r_shape = np.shape(t), np.shape(r)
        if t_shape != r_shape:
            raise ValueError(
                f"path: checkpoint {str(path)!r} holds a leaf of shape {r_shape} where target "
                f"has shape {t_shape}"
            )
        dtype = getattr(t, "dtype", None)
        return jnp.asarray(r, dtype=dtype)

    return jax.tree.map(cast, target, restored)
