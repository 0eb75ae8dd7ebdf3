"""VAE, flow prior and model directories."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.models import (
    FlowConfig,
    GalaxyModel,
    VAEConfig,
    decode,
    elbo,
    encode,
    init_flow,
    init_vae,
    kl_normal,
    load_model,
    log_prior,
    reconstruct,
    sample,
    sample_prior,
    save_model,
)
from galjax.models.vae import gaussian_loglik

TINY = VAEConfig(stamp_size=15, latent_dim=4, hidden=(16,), enc_channels=(4, 8),
                 dec_channels=(8, 4), dec_start=4)  # fmt: skip
TINY_MLP = VAEConfig(arch="mlp", stamp_size=15, latent_dim=3, hidden=(16, 16), likelihood="learned")
TINY_FLOW = FlowConfig(dim=4, n_layers=2, hidden=(8,))


@pytest.mark.parametrize("cfg", [TINY, TINY_MLP])
def test_shapes_under_jit_and_vmap(key, cfg):
    params = init_vae(key, cfg)
    x = jnp.ones((3, 15, 15, 1), jnp.float32)
    mu, log_sigma = jax.jit(lambda x: encode(params, cfg, x))(x)
    assert mu.shape == log_sigma.shape == (3, cfg.latent_dim)
    f_mu, f_log_sigma = decode(params, cfg, mu)
    assert f_mu.shape == (3, 15, 15, 1)
    assert (f_log_sigma is None) == (cfg.likelihood == "fixed")
    one = jax.vmap(lambda xi: encode(params, cfg, xi)[0])(x)
    np.testing.assert_allclose(one, mu, rtol=1e-5, atol=1e-6)
    assert sample(key, params, cfg, 5).shape == (5, 15, 15, 1)


@pytest.mark.parametrize(
    "strides, padding, lhs_dil, rhs_dil",
    [
        ((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),  # the decoder's last Conv ("SAME")
        ((1, 1), ((2, 1), (2, 1)), (2, 2), (1, 1)),  # its ConvTranspose layers
        ((2, 2), ((0, 1), (1, 0)), (1, 1), (1, 1)),  # strided, uneven padding
        ((1, 2), ((2, 2), (0, 1)), (1, 1), (2, 1)),  # kernel dilation
    ],
)
def test_canonical_conv_gradients_equal_lax(key, strides, padding, lhs_dil, rhs_dil):
    from jax import lax

    from galjax.models.vae import _conv

    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (2, 7, 6, 3))
    w = jax.random.normal(k2, (3, 3, 3, 5))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, lhs_dil, rhs_dil,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip

    ours = lambda x, w: _conv(x, w, strides, padding, lhs_dil, rhs_dil)
    y = ref(x, w)
    np.testing.assert_allclose(ours(x, w), y, rtol=1e-6, atol=1e-6)
    g = jax.random.normal(k3, y.shape)
    want = jax.vjp(ref, x, w)[1](g)
    got = jax.vjp(ours, x, w)[1](g)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Forward mode too (the Laplace approximation's Jacobian), with both tangents.
    tx, tw = jax.random.normal(k3, x.shape), jax.random.normal(k1, w.shape)
    np.testing.assert_allclose(jax.jvp(ours, (x, w), (tx, tw))[1],
                               jax.jvp(ref, (x, w), (tx, tw))[1], rtol=1e-5, atol=1e-5)  # fmt: skip


def test_decoder_equals_flax_conv_transpose(key):
    # The decoder's layers are Flax's ConvTranspose(3, stride 2, SAME) and Conv(3, SAME)
    # under the same names: shipped weights load and decode to the same images.
    import flax.linen as nn

    cfg = TINY

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, z):
            h = nn.leaky_relu(nn.Dense(cfg.hidden[0])(z))
            c0 = cfg.dec_channels[0]
            h = nn.leaky_relu(nn.Dense(cfg.dec_start**2 * c0)(h))
            h = h.reshape(-1, cfg.dec_start, cfg.dec_start, c0)
            for c in cfg.dec_channels:
                h = nn.leaky_relu(nn.ConvTranspose(c, (3, 3), strides=(2, 2), padding="SAME")(h))
            h = nn.Conv(cfg.bands, (3, 3), padding="SAME")(h)
            off = (h.shape[1] - cfg.stamp_size) // 2
            return h[:, off : off + cfg.stamp_size, off : off + cfg.stamp_size]

    params = init_vae(key, cfg)
    z = jax.random.normal(key, (3, cfg.latent_dim))
    ref = lambda z: Reference().apply({"params": params["decoder"]}, z) * cfg.scale
    ours = lambda z: decode(params, cfg, z)[0]
    np.testing.assert_allclose(ours(z), ref(z), rtol=1e-5, atol=1e-6)  # TINY: not positive
    loss = lambda f: jax.grad(lambda z: jnp.sum(jnp.sin(f(z))))(z)
    np.testing.assert_allclose(loss(ours), loss(ref), rtol=1e-4, atol=1e-5)


def test_decoder_gradient_inside_a_loop_matches_eager(key):
    # The MAP loop differentiates the decoder inside lax.while_loop.
    cfg = VAEConfig(stamp_size=15, latent_dim=4, hidden=(16,), dec_channels=(8, 4), dec_start=4)
    params = init_vae(key, cfg)
    g = jax.grad(lambda z: jnp.sum(jnp.sin(decode(params, cfg, z)[0])))
    z = jax.random.normal(key, (3, 4))
    looped = jax.jit(lambda z: jax.lax.fori_loop(0, 2, lambda i, z: z - 1e-3 * g(z), z))(z)
    eager = z - 1e-3 * g(z)
    np.testing.assert_allclose(looped, eager - 1e-3 * g(eager), rtol=1e-5, atol=1e-6)


def test_kl_closed_form_matches_monte_carlo(key):
    mu = jnp.array([0.3, -1.2], jnp.float32)
    log_sigma = jnp.array([-0.5, 0.2], jnp.float32)
    z = mu[None] + jnp.exp(log_sigma)[None] * jax.random.normal(key, (200000, 2))
    logq = jnp.sum(
        -0.5 * ((z - mu[None]) / jnp.exp(log_sigma)[None]) ** 2 - log_sigma[None], axis=-1
    )
    logp = jnp.sum(-0.5 * z**2, axis=-1)
    assert abs(float(jnp.mean(logq - logp)) - float(kl_normal(mu, log_sigma))) < 0.02


def test_gaussian_loglik_matches_scipy():
    from scipy.stats import norm

    x = np.linspace(-2, 2, 9, dtype=np.float32).reshape(3, 3, 1)
    m = np.full_like(x, 0.5)
    s = np.full_like(x, 1.7)
    ref = norm.logpdf(x, m, s).sum()
    assert abs(float(gaussian_loglik(x, m, sigma=s)) - ref) < 1e-4
    assert abs(float(gaussian_loglik(x, m, log_sigma=np.log(s))) - ref) < 1e-4


def test_elbo_needs_sigma_for_fixed_likelihood(key):
    params = init_vae(key, TINY)
    x = jnp.ones((2, 15, 15, 1))
    with pytest.raises(ValueError, match="sigma"):
        elbo(key, params, TINY, x)
    t = elbo(key, params, TINY, x, sigma=jnp.ones_like(x))
    np.testing.assert_allclose(t.elbo, t.loglik - t.kl, rtol=1e-6)


def test_elbo_mask_removes_pixels(key):
    params = init_vae(key, TINY_MLP)
    x = jax.random.normal(key, (2, 15, 15, 1))
    mask = jnp.ones_like(x).at[:, :, :5].set(0.0)
    a = elbo(key, params, TINY_MLP, x, mask=mask)
    # Changing masked pixels of the target leaves the likelihood unchanged.
    b = elbo(key, params, TINY_MLP, x, target=x.at[:, :, :5].add(100.0), mask=mask)
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-6)
    full = elbo(key, params, TINY_MLP, x)
    assert np.all(np.asarray(a.loglik) != np.asarray(full.loglik))


def test_explicit_psf_model_requires_and_uses_psf(key):
    cfg = VAEConfig(**{**TINY.to_dict(), "psf_explicit": True})
    params = init_vae(key, cfg)
    x = jax.random.normal(key, (2, 15, 15, 1))
    with pytest.raises(ValueError, match="psf"):
        reconstruct(params, cfg, x)
    delta = jnp.zeros((5, 5, 1)).at[2, 2, 0].set(1.0)
    np.testing.assert_allclose(
        reconstruct(params, cfg, x, psf=delta), decode(params, cfg, encode(params, cfg, x)[0])[0],
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


def test_vae_training_reduces_loss(key):
    import optax

    from galjax.train import init_state, make_train_step

    cfg = TINY
    yy, xx = jnp.mgrid[:15, :15].astype(jnp.float32)
    amp = jnp.linspace(5, 50, 32)[:, None, None]
    blob = jnp.exp(-((xx - 7) ** 2 + (yy - 7) ** 2) / 8.0)
    data = (amp * blob[None])[..., None].astype(jnp.float32)
    sigma = jnp.ones_like(data)

    def loss_fn(params, k, batch):
        return -jnp.mean(elbo(k, params, cfg, batch, sigma=sigma).elbo) / 225, {}

    tx = optax.adam(3e-3)
    state = init_state(init_vae(key, cfg), tx)
    step = jax.jit(make_train_step(loss_fn, tx))
    losses = []
    for i in range(150):
        state, m = step(jax.random.fold_in(key, i), state, data)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:5])


def test_flow_identity_at_init_and_normalised(key):
    params = init_flow(key, TINY_FLOW)
    z = jax.random.normal(key, (5, 4))
    ref = jnp.sum(-0.5 * z**2 - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
    np.testing.assert_allclose(log_prior(params, TINY_FLOW, z), ref, rtol=1e-5, atol=1e-5)
    # Perturbed flow still integrates to one: importance-sampling estimate of E_N[p/N] = 1.
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(key, a.shape, a.dtype), params)
    zs = 1.5 * jax.random.normal(key, (20000, 4))
    logq = jnp.sum(-0.5 * (zs / 1.5) ** 2 - jnp.log(1.5) - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
    ratio = jnp.exp(log_prior(params, TINY_FLOW, zs) - logq)
    assert abs(float(jnp.mean(ratio)) - 1.0) < 0.05


def test_flow_sample_and_grad(key):
    params = init_flow(key, TINY_FLOW)
    s = sample_prior(key, params, TINY_FLOW, 7)
    assert s.shape == (7, 4)
    g = jax.grad(lambda z: jnp.sum(log_prior(params, TINY_FLOW, z)))(s)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_model_directory_round_trip_and_version_check(tmp_path, key):
    model = GalaxyModel(TINY, init_vae(key, TINY), TINY_FLOW, init_flow(key, TINY_FLOW),
                        meta={"survey": {"name": "lsst_r"}})  # fmt: skip
    save_model(tmp_path / "m", model)
    back = load_model(tmp_path / "m")
    assert back.vae_config == TINY and back.flow_config == TINY_FLOW
    for a, b in zip(
        jax.tree.leaves(model.vae_params), jax.tree.leaves(back.vae_params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert back.init_params is None
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["format"] = 999
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "nothing")


def test_corrupt_weights_give_clear_error(tmp_path, key):
    save_model(tmp_path, GalaxyModel(TINY, init_vae(key, TINY)))
    (tmp_path / "vae.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="vae.msgpack"):
        load_model(tmp_path)


def test_bad_configs():
    with pytest.raises(ValueError, match="arch"):
        VAEConfig(arch="transformer")
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="stamp_size"):
        VAEConfig(stamp_size=99, dec_start=3)
    assert VAEConfig.from_dict(TINY.to_dict()) == TINY
    assert FlowConfig.from_dict(TINY_FLOW.to_dict()) == TINY_FLOW


def _edit_model_json(path, edit):
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: _edit_model_json(d, lambda m: m.pop("vae_config")), "no 'vae_config' entry"),
        (lambda d: _edit_model_json(d, lambda m: m["vae_config"].update(arch=3)), "'vae_config'"),
        (lambda d: _edit_model_json(d, lambda m: m.update(flow_config="x")), "'flow_config' is"),
        (lambda d: (d / "flow.msgpack").unlink(), "flow.msgpack is missing"),
        (lambda d: _edit_model_json(d, lambda m: m["flow_config"].update(dim=6)), "dim=6"),
        (
            lambda d: _edit_model_json(
                d, lambda m: (m["vae_config"].update(latent_dim=6), m["flow_config"].update(dim=6))
            ),
            r"'vae_config' \(latent_dim=6.*shape \(4, 16\) in the file, \(6, 16\)",
        ),
    ],
    ids=[
        "no-vae-config",
        "bad-vae-config",
        "bad-flow-config",
        "no-flow-file",
        "flow-dim",
        "latent-dim",
    ],  # fmt: skip
)
def test_model_folder_damage_is_named_at_load_time(tmp_path, key, damage, match):
    save_model(
        tmp_path, GalaxyModel(TINY, init_vae(key, TINY), TINY_FLOW, init_flow(key, TINY_FLOW))
    )
    damage(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_model(tmp_path)


def test_save_model_removes_stale_temporary_files(tmp_path, key):
    import os

    tmp_path.joinpath(".tmp-0123456789ab-vae.msgpack").write_bytes(b"partial")
    os.utime(tmp_path / ".tmp-0123456789ab-vae.msgpack", (0, 0))
    save_model(tmp_path, GalaxyModel(TINY, init_vae(key, TINY)))
    assert not list(tmp_path.glob(".tmp-*"))
