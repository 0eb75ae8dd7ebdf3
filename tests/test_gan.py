"""Tests of galjax.models.gan: the conditional WGAN-GP losses, networks and training step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.models.gan import (
    GANConfig,
    critic_loss,
    critic_scores,
    generate,
    generator_forward,
    generator_loss,
    gradient_penalty,
    init_gan,
    make_gan_step,
    postprocess,
)

TINY = dict(
    image_size=8,
    gen_start=4,
    latent_dim=4,
    gen_features=4,
    critic_features=4,
    critic_hidden=(16, 8),
)


def test_gradient_penalty_matches_definition_on_toy_critic(key):
    k1, k2, k3 = jax.random.split(key, 3)
    real = jax.random.normal(k1, (3, 4, 4, 1))
    fake = jax.random.normal(k2, (3, 4, 4, 1))
    eps = jax.random.uniform(k3, (3,))
    w = jnp.linspace(-1.0, 1.0, 16).reshape(4, 4, 1)

    def d_one(x):  # a nonlinear toy critic on one image
        return jnp.sum(jnp.tanh(w * x) ** 2) + jnp.sum(w * x)

    critic = jax.vmap(d_one)
    got = jax.jit(gradient_penalty, static_argnums=0)(critic, real, fake, eps)
    # The definition, image by image: x^ = eps x + (1 - eps) x~, (||grad D(x^)|| - 1)^2.
    want = 0.0
    for i in range(3):
        x_hat = eps[i] * real[i] + (1 - eps[i]) * fake[i]
        g = jax.grad(d_one)(x_hat)
        want += (float(jnp.linalg.norm(g.ravel())) - 1.0) ** 2 / 3
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # A linear critic D(x) = <v, x> has gradient v everywhere: GP = (||v|| - 1)^2.
    v = 0.1 * jnp.arange(16.0).reshape(4, 4, 1)
    lin = gradient_penalty(lambda a: jnp.sum(v[None] * a, axis=(1, 2, 3)), real, fake, eps)
    np.testing.assert_allclose(float(lin), (float(jnp.linalg.norm(v)) - 1) ** 2, rtol=1e-5)


@pytest.mark.parametrize("critic", ["cnn", "fcn"])
def test_critic_loss_is_wasserstein_plus_weighted_penalty(key, critic):
    cfg = GANConfig(critic=critic, **TINY)
    s = init_gan(key, cfg)
    real = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1, maxval=1)
    fake = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1), minval=-1, maxval=1)
    y = jnp.array([0, 1, 2, 3])
    loss, aux = jax.jit(critic_loss, static_argnums=1)(
        jax.random.key(3), cfg, s.critic_params, real, fake, y
    )
    scores = jax.jit(lambda x, yy: critic_scores(cfg, s.critic_params, x, yy))
    d = lambda x: scores(x, y)
    w = jnp.mean(d(real)) - jnp.mean(d(fake))
    np.testing.assert_allclose(float(aux["wasserstein"]), float(w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), float(-w + 10.0 * aux["gp"]), rtol=1e-5, atol=1e-6)
    # The critic is conditioned on the class.
    assert not np.allclose(d(real), scores(real, (y + 1) % 4))


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_generator_output_changes_with_class(key, norm):
    cfg = GANConfig(gen_norm=norm, **TINY)
    s = init_gan(key, cfg)
    z = jnp.tile(jax.random.normal(jax.random.key(5), (1, cfg.latent_dim)), (4, 1))
    x, _ = generator_forward(cfg, s.gen_params, s.gen_stats, z, jnp.arange(4))
    assert x.shape == (4, 8, 8, 1) and x.dtype == jnp.float32
    assert float(jnp.min(x)) >= -1 and float(jnp.max(x)) <= 1
    diffs = [float(jnp.max(jnp.abs(x[i] - x[0]))) for i in range(1, 4)]
    assert min(diffs) > 1e-4  # same noise, different class -> different image
    g = generate(jax.random.key(6), cfg, s.gen_params, s.gen_stats, jnp.array([2, 2]))
    assert not np.allclose(g[0], g[1])  # different noise -> different image


def test_generator_loss_is_minus_mean_critic_score(key):
    cfg = GANConfig(gen_norm="layer", **TINY)
    s = init_gan(key, cfg)
    y = jnp.array([0, 3, 1])
    kz = jax.random.key(7)
    loss, _ = generator_loss(kz, cfg, s.gen_params, s.gen_stats, s.critic_params, y)
    z = jax.random.normal(kz, (3, cfg.latent_dim))
    fake, _ = generator_forward(cfg, s.gen_params, s.gen_stats, z, y, train=True)
    want = -jnp.mean(critic_scores(cfg, s.critic_params, fake, y))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_smearing_before_and_after_clip():
    raw = jnp.zeros((1, 8, 8, 1)).at[0, 4, 4, 0].set(5.0)
    base = dict(TINY, final_activation="linear")
    off = postprocess(raw, GANConfig(**base))
    np.testing.assert_allclose(off, jnp.clip(raw, -1, 1))
    before = postprocess(raw, GANConfig(**base, smear_sigma=1.0, smear_where="before_clip"))
    after = postprocess(raw, GANConfig(**base, smear_sigma=1.0, smear_where="after_clip"))
    for x in (before, after):
        assert float(x.min()) >= -1 and float(x.max()) <= 1
    # Smearing first spreads the bright pixel before it is clipped: more flux around it.
    assert float(before[0, 4, 5, 0]) > float(after[0, 4, 5, 0]) > 0
    assert float(after[0, 4, 4, 0]) < 1.0 and float(before[0, 4, 4, 0]) == 1.0
    # Empty sky (-1) stays empty, up to the image border (no zero-padding artefact).
    sky = postprocess(-jnp.ones((1, 8, 8, 1)), GANConfig(**base, smear_sigma=2.0))
    np.testing.assert_allclose(sky, -1.0, atol=1e-6)


@pytest.mark.parametrize("critic", ["cnn", "fcn"])
def test_one_training_step_under_jit(key, critic):
    n_critic = 2 if critic == "cnn" else 1
    cfg = GANConfig(
        critic=critic, n_critic=n_critic, smear_sigma=0.5 if critic == "cnn" else 0.0, **TINY
    )
    s0 = init_gan(key, cfg)
    step = jax.jit(make_gan_step(cfg))
    real = jax.random.uniform(jax.random.key(1), (n_critic, 4, 8, 8, 1), minval=-1, maxval=1)
    labels = jnp.array([[0, 1, 2, 3], [3, 2, 1, 0]])[:n_critic]
    s1, m = step(jax.random.key(2), s0, real, labels)
    assert int(s1.step) == 1
    assert set(m) == {"critic_loss", "wasserstein", "gp", "gen_loss"}
    assert all(np.isfinite(float(v)) for v in m.values())
    moved = lambda a, b: any(
        not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    assert moved(s0.critic_params, s1.critic_params) and moved(s0.gen_params, s1.gen_params)
    s2, _ = step(jax.random.key(3), s1, real, labels)
    assert int(s2.step) == 2
    with pytest.raises(ValueError, match="n_critic"):
        step(jax.random.key(2), s0, jnp.zeros((3, 4, 8, 8, 1)), jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="expected images"):
        step(jax.random.key(2), s0, jnp.zeros((n_critic, 4, 16, 16, 1)), labels)


def test_config_validation_and_round_trip():
    cfg = GANConfig(image_size=32, critic="fcn", critic_hidden=(8, 4), smear_sigma=1.5)
    assert GANConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.image_shape == (32, 32, 1)
    for bad, match in [
        (dict(image_size=48), "image_size"),
        (dict(critic="mlp"), "critic"),
        (dict(gen_norm="group"), "gen_norm"),
        (dict(smear_sigma=-1.0), "smear_sigma"),
        (dict(smear_where="inside"), "smear_where"),
        (dict(n_critic=0), "n_critic"),
    ]:
        with pytest.raises(ValueError, match=match):
            GANConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        GANConfig.from_dict({"image_size": 64, "colour": 1})
    with pytest.raises(TypeError, match="config"):
        init_gan(jax.random.key(0), {"image_size": 64})
    s = init_gan(jax.random.key(0), GANConfig(**TINY))
    with pytest.raises(ValueError, match="labels"):
        generate(jax.random.key(0), GANConfig(**TINY), s.gen_params, s.gen_stats, jnp.zeros(2))


def test_train_gan_keeps_checkpoints_and_resumes_exactly(tmp_path):
    # train_gan on galjax.train.fit: one checkpoint per interval, and a run continued
    # from a checkpoint's state ends bit for bit where the uninterrupted run ends.
    from galjax.train.recipes.gan import list_checkpoints, load_gan_checkpoint, train_gan

    cfg = GANConfig(critic="fcn", gen_norm="layer", n_critic=2, **TINY)
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(-0.7, 0.4, (12, 8, 8, 1)), -1, 1).astype(np.float32)
    y = np.arange(12) % 4
    kw = dict(batch_size=4, log_every=1, progress=False)
    state, hist, ckpts = train_gan(jax.random.key(3), cfg, x, y, n_steps=5, checkpoint_every=2,
                                   out_dir=tmp_path, **kw)  # fmt: skip
    assert [p.name for p in ckpts] == [f"ckpt_000000{i}.msgpack" for i in (2, 4, 5)]
    assert list_checkpoints(tmp_path) == ckpts and int(state.step) == 5
    assert hist["step"] == [1, 2, 3, 4, 5] and np.all(np.isfinite(hist["wasserstein"]))
    cfg2, mid, names = load_gan_checkpoint(ckpts[0])
    assert cfg2 == cfg and int(mid.step) == 2 and names == ("FRI", "FRII", "Compact", "Bent")
    resumed, hist2, _ = train_gan(jax.random.key(3), cfg, x, y, n_steps=5, state=mid, **kw)
    assert hist2["step"] == [3, 4, 5] and hist2["gen_loss"] == hist["gen_loss"][2:]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
