"""Tests for galjax.train.checkpoint: round trip, sidecar, atomic writes, bad files."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import galjax.train.checkpoint as ckpt_mod
from galjax.train import (
    TrainConfig,
    init_state,
    load_checkpoint_metadata,
    restore_checkpoint,
    save_checkpoint,
)


def _state(key, scale=1.0):
    params = nn.Dense(3).init(key, jnp.zeros((1, 2), jnp.float32))["params"]
    params = jax.tree.map(lambda p: p + scale, params)
    return init_state(params, optax.adam(1e-3), ema=True, model_state={"n": jnp.arange(2)})


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_sidecar(tmp_path, key):
    state = _state(key)._replace(step=jnp.asarray(17, jnp.int32))
    cfg = TrainConfig(n_steps=100, batch_size=4)
    path = save_checkpoint(tmp_path / "sub" / "ckpt.msgpack", state, {"config": cfg, "note": "x"})
    restored = restore_checkpoint(path, _state(jax.random.key(9), scale=0.0))
    _assert_trees_equal(state, restored)
    assert isinstance(restored.params["kernel"], jax.Array)
    sidecar = json.loads((tmp_path / "sub" / "ckpt.json").read_text())
    assert sidecar["step"] == 17 and sidecar["note"] == "x"
    assert TrainConfig.from_dict(sidecar["config"]) == cfg
    assert isinstance(sidecar["galjax_version"], str)
    assert load_checkpoint_metadata(path) == sidecar


def test_plain_pytree_and_none_leaves(tmp_path):
    tree = {"a": jnp.ones((2, 3)), "b": [jnp.zeros(()), None]}
    path = save_checkpoint(tmp_path / "t.msgpack", tree)
    _assert_trees_equal(tree, restore_checkpoint(path, tree))
    assert "step" not in load_checkpoint_metadata(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.msgpack"):
        restore_checkpoint(tmp_path / "nope.msgpack", {"a": jnp.ones(2)})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_file_names_path(tmp_path, key, damage):
    path = save_checkpoint(tmp_path / "c.msgpack", _state(key))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\xc1\xff not msgpack")
    else:  # valid msgpack, not a galjax checkpoint
        path.write_bytes(ckpt_mod.flax.serialization.msgpack_serialize({"a": np.ones(2)}))
    with pytest.raises(ValueError, match="c.msgpack"):
        restore_checkpoint(path, _state(key))


def test_structure_and_shape_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "m.msgpack", {"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="structure"):
        restore_checkpoint(path, {"b": jnp.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        restore_checkpoint(path, {"a": jnp.ones(4)})


def test_failed_write_keeps_previous_checkpoint(tmp_path, key, monkeypatch):
    path = save_checkpoint(tmp_path / "a.msgpack", _state(key), {"run": 1})
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(key, scale=5.0), {"run": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint_metadata(path)["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.msgpack"]  # no temp files


def test_bad_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(tmp_path / "x.msgpack", {"a": jnp.ones(1)}, metadata=["not", "a", "dict"])
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(tmp_path / "x.msgpack", {"a": jnp.ones(1)}, metadata={"f": object()})
    assert not (tmp_path / "x.msgpack").exists()


def test_temporary_files_of_a_killed_run_are_removed_on_the_next_save(tmp_path, key):
    import os

    from galjax.core.files import clean_stale_tmp

    old = tmp_path / ".tmp-0123456789ab-checkpoint.msgpack"  # a run killed mid-write
    young = tmp_path / ".tmp-ba9876543210-best.msgpack"  # a write still running
    old.write_bytes(b"partial")
    young.write_bytes(b"partial")
    os.utime(old, (0, 0))
    save_checkpoint(tmp_path / "checkpoint.msgpack", _state(key))
    assert not old.exists() and young.exists()
    assert clean_stale_tmp(tmp_path, older_than_s=0) == [young]
    assert clean_stale_tmp(tmp_path / "missing") == []
    with pytest.raises(ValueError, match="older_than_s"):
        clean_stale_tmp(tmp_path, older_than_s=float("nan"))
