"""Tests for galjax.train: step kernels, TrainConfig, fit (resume, early stopping,
logging) and data-parallel sharding."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from galjax.train import (
    TrainConfig,
    TrainState,
    fit,
    init_state,
    load_checkpoint_metadata,
    make_eval_step,
    make_train_step,
    restore_checkpoint,
    save_checkpoint,
)

W_TRUE = np.array([1.0, -2.0, 0.5])


def _linear_data(n=64, seed=0):
    """Linear regression ``y = x @ W_TRUE + 0.3 + noise`` in the default float dtype."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = x @ W_TRUE + 0.3 + 0.01 * rng.normal(size=n)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _linear_loss(params, key, batch):
    del key
    pred = batch["x"] @ params["w"] + params["b"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def _linear_params():
    return {"w": jnp.zeros(3), "b": jnp.zeros(())}


def _linear_fit(batch_size=8, n_steps=30, eval_n=18):
    """Tiny fit used both here and in the 4-device subprocess."""
    tx = optax.adam(0.05)
    state = init_state(_linear_params(), tx, ema=True)
    step = make_train_step(_linear_loss, tx, ema_decay=0.9)
    config = TrainConfig(
        n_steps=n_steps, batch_size=batch_size, eval_every=10, log_every=5, ema_decay=0.9
    )
    return fit(
        jax.random.key(3),
        state,
        step,
        _linear_data(),
        config,
        eval_fn=make_eval_step(_linear_loss),
        eval_data=_linear_data(eval_n, seed=1),
        progress=False,
    )


# -- state and step kernels -------------------------------------------------------


def test_init_state():
    tx = optax.adam(1e-3)
    state = init_state(_linear_params(), tx)
    assert isinstance(state, TrainState)
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    assert state.ema_params is None and state.model_state is None
    with_ema = init_state(_linear_params(), tx, ema=True)
    np.testing.assert_array_equal(with_ema.ema_params["w"], with_ema.params["w"])
    with pytest.raises(TypeError, match="tx"):
        init_state(_linear_params(), "adam")


def test_train_step_is_one_sgd_update(key):
    lr = 0.1
    tx = optax.sgd(lr)
    state = init_state(_linear_params(), tx)
    batch = _linear_data(16)
    new, metrics = jax.jit(make_train_step(_linear_loss, tx))(key, state, batch)
    grads = jax.grad(lambda p: _linear_loss(p, key, batch)[0])(state.params)
    np.testing.assert_allclose(new.params["w"], -lr * grads["w"], rtol=1e-5)
    assert int(new.step) == 1
    assert set(metrics) == {"loss", "mae", "grad_norm"}
    np.testing.assert_allclose(
        metrics["loss"], _linear_loss(state.params, key, batch)[0], rtol=1e-6
    )
    expected_norm = np.sqrt(np.sum(np.asarray(grads["w"]) ** 2) + float(grads["b"]) ** 2)
    np.testing.assert_allclose(metrics["grad_norm"], expected_norm, rtol=1e-5)


def test_loss_falls_under_jit(key):
    tx = optax.adam(0.05)
    state = init_state(_linear_params(), tx)
    step = jax.jit(make_train_step(_linear_loss, tx))
    batch = _linear_data(32)
    losses = []
    for k in jax.random.split(key, 60):
        state, metrics = step(k, state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.05 * losses[0]


def test_ema_matches_recursion(key):
    # loss = c . p has the constant gradient c, so SGD gives p_t = p_0 - t lr c.
    c = jnp.array([1.0, -2.0])
    loss_fn = lambda p, k, b: (jnp.sum(c * p), {})
    lr, decay = 0.5, 0.8
    tx = optax.sgd(lr)
    state = init_state(jnp.ones(2), tx, ema=True)
    step = jax.jit(make_train_step(loss_fn, tx, ema_decay=decay))
    ema = np.ones(2)
    for t, k in enumerate(jax.random.split(key, 4), start=1):
        state, _ = step(k, state, None)
        params_t = 1.0 - t * lr * np.asarray(c)
        ema = decay * ema + (1 - decay) * params_t
        np.testing.assert_allclose(state.params, params_t, rtol=1e-6)
        np.testing.assert_allclose(state.ema_params, ema, rtol=1e-6)


def test_ema_errors(key):
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="ema_decay"):
        make_train_step(_linear_loss, tx, ema_decay=1.0)
    step = make_train_step(_linear_loss, tx, ema_decay=0.9)
    with pytest.raises(ValueError, match="ema=True"):
        step(key, init_state(_linear_params(), tx), _linear_data(8))


def test_loss_fn_must_return_aux(key):
    tx = optax.sgd(0.1)
    step = make_train_step(lambda p, k, b: jnp.sum(p["w"]), tx)
    with pytest.raises(TypeError, match="loss_fn"):
        step(key, init_state(_linear_params(), tx), None)


def test_model_state_is_threaded(key):
    def loss_fn(params, model_state, k, batch):
        loss = jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)
        return loss, ({}, {"count": model_state["count"] + 1})

    tx = optax.sgd(0.1)
    state = init_state(_linear_params(), tx, model_state={"count": jnp.zeros((), jnp.int32)})
    step = jax.jit(make_train_step(loss_fn, tx, has_model_state=True))
    for k in jax.random.split(key, 3):
        state, _ = step(k, state, _linear_data(8))
    assert int(state.model_state["count"]) == 3
    metrics = make_eval_step(loss_fn, has_model_state=True)(key, state, _linear_data(8))
    assert "loss" in metrics


def test_eval_step_uses_ema_when_asked(key):
    tx = optax.sgd(0.1)
    state = init_state(_linear_params(), tx, ema=True)
    state = state._replace(ema_params={"w": jnp.asarray(W_TRUE), "b": jnp.asarray(0.3)})
    batch = _linear_data(16)
    raw = jax.jit(make_eval_step(_linear_loss))(key, state, batch)
    ema = jax.jit(make_eval_step(_linear_loss, use_ema=True))(key, state, batch)
    assert float(ema["loss"]) < 1e-3 < float(raw["loss"])


# -- TrainConfig --------------------------------------------------------------------


def test_config_round_trip():
    cfg = TrainConfig(n_steps=5, batch_size=4, patience=3, ema_decay=0.99)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"n_step": 3})


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_steps": 0}, "n_steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"log_every": -1}, "log_every"),
        ({"min_delta": -0.1}, "min_delta"),
    ],
)
def test_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kwargs)


# -- fit ----------------------------------------------------------------------------


def test_fit_recovers_linear_model(tmp_path):
    state, history = _linear_fit(n_steps=150)
    np.testing.assert_allclose(state.params["w"], W_TRUE, atol=0.05)
    assert history["train"][-1]["loss"] < 0.01 * history["train"][0]["loss"]
    assert [r["step"] for r in history["eval"]] == list(range(10, 151, 10))
    assert history["best_step"] is not None and not history["stopped_early"]


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))[..., 0]


def test_fit_flax_mlp_with_sampler(key):
    """A 2-layer flax MLP trained on batches from a simulator callable."""
    model = _MLP()
    params = model.init(key, jnp.zeros((1, 2), jnp.float32))["params"]

    def simulate(k):
        x = jax.random.uniform(k, (32, 2), jnp.float32, -1.0, 1.0)
        return {"x": x, "y": jnp.sin(2 * x[:, 0]) * x[:, 1]}

    def loss_fn(p, k, batch):
        return jnp.mean((model.apply({"params": p}, batch["x"]) - batch["y"]) ** 2), {}

    tx = optax.adam(1e-2)
    config = TrainConfig(n_steps=200, batch_size=32, log_every=20, eval_every=100)
    state, history = fit(
        jax.random.key(1),
        init_state(params, tx),
        make_train_step(loss_fn, tx),
        simulate,
        config,
        eval_fn=make_eval_step(loss_fn),
        eval_data=simulate,
        progress=True,
    )
    losses = [r["loss"] for r in history["train"]]
    assert losses[-1] < 0.3 * losses[0]
    assert int(state.step) == 200 and len(history["eval"]) == 2


def test_fit_writes_json_lines_and_checkpoints(tmp_path):
    tx = optax.adam(0.05)
    config = TrainConfig(n_steps=12, batch_size=8, log_every=4, eval_every=6, checkpoint_every=5)
    state, history = fit(
        jax.random.key(0),
        init_state(_linear_params(), tx),
        make_train_step(_linear_loss, tx),
        _linear_data(),
        config,
        eval_fn=make_eval_step(_linear_loss),
        eval_data=_linear_data(20, 1),
        workdir=tmp_path,
        progress=False,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["split"]) for r in records if r["split"] == "train"]
    assert train == [(4, "train"), (8, "train"), (12, "train")]
    assert [r["step"] for r in records if r["split"] == "eval"] == [6, 12]
    assert all({"loss", "mae", "elapsed_s"} <= set(r) for r in records)
    assert [r for r in records if r["split"] == "train"] == history["train"]
    assert [r for r in records if r["split"] == "eval"] == history["eval"]
    meta = load_checkpoint_metadata(tmp_path / "checkpoint.msgpack")
    assert meta["step"] == 12 and TrainConfig.from_dict(meta["config"]) == config
    sidecar = json.loads((tmp_path / "checkpoint.json").read_text())
    assert sidecar["step"] == 12 and "galjax_version" in sidecar
    best = load_checkpoint_metadata(tmp_path / "best.msgpack")
    assert best["step"] == history["best_step"]


def test_fit_resume_is_exact(tmp_path):
    """20 steps straight == 10 steps, checkpoint, fresh call restoring it, 10 more."""
    tx = optax.adam(0.05)
    step = make_train_step(_linear_loss, tx, ema_decay=0.9)
    fresh = lambda: init_state(_linear_params(), tx, ema=True)
    data = _linear_data(40)  # 5 batches per epoch: the resume crosses epochs
    cfg = TrainConfig(n_steps=20, batch_size=8, log_every=5, eval_every=5, ema_decay=0.9)
    ev = {"eval_fn": make_eval_step(_linear_loss), "eval_data": _linear_data(16, 1)}
    straight, hist_straight = fit(jax.random.key(7), fresh(), step, data, cfg, **ev, progress=False)

    half = TrainConfig.from_dict({**cfg.to_dict(), "n_steps": 10})
    first, _ = fit(
        jax.random.key(7), fresh(), step, data, half, **ev, workdir=tmp_path, progress=False
    )
    assert int(first.step) == 10
    resumed, hist = fit(
        jax.random.key(7), fresh(), step, data, cfg, **ev, workdir=tmp_path, progress=False
    )
    assert int(resumed.step) == 20
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=0)
    assert [r["step"] for r in hist["train"]] == [5, 10, 15, 20]
    losses = [r["loss"] for r in hist["train"]]
    np.testing.assert_allclose(losses, [r["loss"] for r in hist_straight["train"]], rtol=1e-6)

    # Continuing from the returned state (no files) is exact too.
    cont, _ = fit(jax.random.key(7), first, step, data, cfg, **ev, progress=False)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(cont), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=0)


def test_fit_resume_false_starts_over(tmp_path):
    tx = optax.sgd(0.05)
    step = make_train_step(_linear_loss, tx)
    cfg = TrainConfig(n_steps=4, batch_size=8, log_every=2)
    fit(
        jax.random.key(0),
        init_state(_linear_params(), tx),
        step,
        _linear_data(),
        cfg,
        workdir=tmp_path,
        progress=False,
    )
    state, hist = fit(
        jax.random.key(0),
        init_state(_linear_params(), tx),
        step,
        _linear_data(),
        cfg,
        workdir=tmp_path,
        resume=False,
        progress=False,
    )
    assert int(state.step) == 4
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_early_stopping(tmp_path):
    """The eval loss rises after the first evaluation: stop after `patience` more."""
    tx = optax.sgd(0.01)
    eval_fn = lambda k, s, b: {"loss": s.step.astype(jnp.float32)}
    cfg = TrainConfig(n_steps=50, batch_size=8, eval_every=2, log_every=3, patience=2)
    state, hist = fit(
        jax.random.key(0),
        init_state(_linear_params(), tx),
        make_train_step(_linear_loss, tx),
        _linear_data(),
        cfg,
        eval_fn=eval_fn,
        eval_data=_linear_data(8),
        workdir=tmp_path,
        progress=False,
    )
    assert hist["stopped_early"] and int(state.step) == 6
    assert hist["best_step"] == 2 and hist["best_loss"] == 2.0
    assert [r["step"] for r in hist["eval"]] == [2, 4, 6]
    assert hist["train"][-1]["step"] == 6  # the partial logging window is flushed
    assert load_checkpoint_metadata(tmp_path / "best.msgpack")["step"] == 2
    assert load_checkpoint_metadata(tmp_path / "checkpoint.msgpack")["step"] == 6
    best = restore_checkpoint(tmp_path / "best.msgpack", state)
    assert int(best.step) == 2
    # Resuming a run that stopped early does not train further.
    again, hist2 = fit(
        jax.random.key(0),
        init_state(_linear_params(), tx),
        make_train_step(_linear_loss, tx),
        _linear_data(),
        cfg,
        eval_fn=eval_fn,
        eval_data=_linear_data(8),
        workdir=tmp_path,
        progress=False,
    )
    assert int(again.step) == 6 and hist2["stopped_early"]
    assert [r["step"] for r in hist2["eval"]] == [2, 4, 6]


def test_fit_raises_on_nan_loss(tmp_path):
    tx = optax.sgd(0.1)
    loss_fn = lambda p, k, b: (jnp.sum(p["w"]) * jnp.nan, {})
    cfg = TrainConfig(n_steps=4, batch_size=8, log_every=2, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="step 2"):
        fit(
            jax.random.key(0),
            init_state(_linear_params(), tx),
            make_train_step(loss_fn, tx),
            _linear_data(),
            cfg,
            workdir=tmp_path,
            progress=False,
        )
    # The step-1 checkpoint exists; the NaN state at step 2 was not saved.
    assert load_checkpoint_metadata(tmp_path / "checkpoint.msgpack")["step"] == 1


@pytest.mark.parametrize(
    "change, err, match",
    [
        ({"key": 0}, TypeError, "key"),
        ({"state": {"w": 0}}, TypeError, "state"),
        ({"config": {"n_steps": 3}}, TypeError, "config"),
        ({"data": {"x": np.ones((4, 3)), "y": np.ones(4)}}, ValueError, "fewer than one batch"),
        ({"data": {"x": np.ones((16, 3)), "y": np.ones(9)}}, ValueError, "disagree"),
        ({"eval_fn": lambda k, s, b: {}}, ValueError, "eval_data"),
        ({"config": TrainConfig(n_steps=3, batch_size=8, ema_decay=0.9)}, ValueError, "ema"),
    ],
)
def test_fit_bad_input(change, err, match):
    tx = optax.sgd(0.1)
    args = {
        "key": jax.random.key(0),
        "state": init_state(_linear_params(), tx),
        "train_step": make_train_step(_linear_loss, tx),
        "data": _linear_data(),
        "config": TrainConfig(n_steps=3, batch_size=8),
        "progress": False,
    }
    args.update(change)
    with pytest.raises(err, match=match):
        fit(**args)


def test_checkpoint_of_fit_state_restores(tmp_path):
    state, _ = _linear_fit(n_steps=5)
    path = save_checkpoint(tmp_path / "s.msgpack", state)
    restored = restore_checkpoint(path, init_state(_linear_params(), optax.adam(0.05), ema=True))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- data parallelism ---------------------------------------------------------------

_SHARDED_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    assert jax.device_count() == 4, jax.devices()
    sys.path.insert(0, sys.argv[1])
    import test_train as t
    from jax.sharding import PartitionSpec as P
    from galjax.train import data_mesh, replicate, shard_batch

    mesh = data_mesh()
    x = shard_batch(np.ones((8, 3), np.float32), mesh)
    assert x.sharding.spec == P("data"), x.sharding
    assert sorted(s.data.shape for s in x.addressable_shards) == [(2, 3)] * 4
    assert replicate(np.ones(3), mesh).sharding.is_fully_replicated
    try:
        t._linear_fit(batch_size=6)
    except ValueError as err:
        assert "divisible" in str(err), err
    else:
        raise AssertionError("batch_size=6 on 4 devices was accepted")
    state, hist = t._linear_fit(batch_size=8)
    assert len(state.params["w"].sharding.device_set) == 4
    np.savez(sys.argv[2], w=np.asarray(state.params["w"]), b=np.asarray(state.params["b"]),
             ema=np.asarray(state.ema_params["w"]),
             eval=np.array([r["loss"] for r in hist["eval"]]))
    """
)


def test_sharded_fit_matches_single_device(tmp_path):
    """4 forced host devices: same parameters and eval losses as one device."""
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(tests_dir.parent), env.get("PYTHONPATH", "")])
    out = tmp_path / "sharded.npz"
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tests_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = np.load(out)
    with jax.default_device(jax.devices("cpu")[0]):  # same backend as the subprocess
        state, hist = _linear_fit(batch_size=8)
    np.testing.assert_allclose(sharded["w"], np.asarray(state.params["w"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded["b"], np.asarray(state.params["b"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        sharded["ema"], np.asarray(state.ema_params["w"]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(sharded["eval"], [r["loss"] for r in hist["eval"]], rtol=1e-5)


def test_explicit_psf_vae_loss_convolves_with_the_pixel_level_psf():
    """The explicit-PSF loss scores f_mu * survey.pixel_psf(), the PSF at the stamps' sampling."""
    import dataclasses

    from galjax.models.vae import VAEConfig, elbo, init_vae
    from galjax.sim import LSST_R, noise_variance
    from galjax.train.recipes import vae_loss

    cfg = VAEConfig(stamp_size=15, latent_dim=3, hidden=(8,), enc_channels=(4,),
                    dec_channels=(4, 4), dec_start=4, psf_explicit=True)  # fmt: skip
    survey = dataclasses.replace(LSST_R, psf_size=9)
    params = init_vae(jax.random.key(0), cfg)
    clean = 5.0 * jnp.ones((2, 15, 15, 1))
    key = jax.random.key(1)
    loss, _ = vae_loss(cfg, survey)(params, key, {"image": clean})
    k_noise, k_z = jax.random.split(key)
    sigma = jnp.sqrt(noise_variance(clean, jnp.asarray(survey.sky_sigma), survey.gain))
    noisy = clean + sigma * jax.random.normal(k_noise, clean.shape, clean.dtype)
    t = elbo(k_z, params, cfg, noisy, target=clean, sigma=sigma, psf=survey.pixel_psf())
    np.testing.assert_allclose(loss, -jnp.mean(t.elbo) / (15 * 15), rtol=1e-5)


def test_encode_dataset_means_and_posterior_draws(key):
    from galjax.models import VAEConfig, encode, init_vae
    from galjax.train.recipes import encode_dataset

    cfg = VAEConfig(stamp_size=15, latent_dim=3, hidden=(8,), enc_channels=(4,),
                    dec_channels=(4, 4), dec_start=4, scale=1.0)  # fmt: skip
    params = init_vae(key, cfg)
    x = jax.random.normal(key, (10, 15, 15, 1))
    mu, log_sigma = encode(params, cfg, x)
    means = encode_dataset(params, cfg, x, chunk=4)  # chunks of 4, last one short
    np.testing.assert_allclose(means, mu, rtol=1e-5, atol=1e-6)
    z = encode_dataset(params, cfg, x, chunk=4, key=jax.random.key(1), n_samples=2000)
    assert z.shape == (20000, 3)
    # Draw j of image i sits at row j * n + i; per image, mean g_mu and spread g_sigma.
    per = z.reshape(2000, 10, 3)
    np.testing.assert_allclose(per.mean(0), mu, atol=0.1)
    np.testing.assert_allclose(per.std(0), np.exp(log_sigma), rtol=0.1)
    with pytest.raises(ValueError, match="n_samples"):
        encode_dataset(params, cfg, x, n_samples=3)
