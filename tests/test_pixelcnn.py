"""PixelCNN++: normalisation, causality, training, sampling order, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.models.pixelcnn import (
    PixelCNNConfig,
    apply_pixelcnn,
    bits_per_dim,
    check_input,
    draw_from_outputs,
    head_log_prob,
    init_pixelcnn,
    log1mexp,
    log_prob,
    log_prob_map,
    log_sum_exp,
    make_loss_fn,
    quantise,
    sample,
    sample_noise,
)
from galjax.train import TrainConfig
from galjax.train.recipes.pixelcnn import pixelcnn_optimizer, train_pixelcnn

TINY = PixelCNNConfig(height=8, width=8, bands=1, n_filters=8, n_resnet=1, n_scales=1, n_mix=3)


def _images(key, cfg, n):
    return quantise(
        jax.random.uniform(key, (n, cfg.height, cfg.width, cfg.bands)), 0.0, 1.0, cfg.n_bits
    )


@pytest.mark.parametrize("bands,n_bits", [(1, 8), (2, 4)])
def test_discretised_mixture_sums_to_one(key, bands, n_bits):
    """Sum over every value of a pixel (all band combinations) of p(x) = 1."""
    cfg = PixelCNNConfig(height=2, width=2, n_scales=1, bands=bands, n_mix=4, n_bits=n_bits)
    levels = 2**n_bits
    grid = 2.0 * jnp.arange(levels, dtype=jnp.float32) / (levels - 1) - 1.0
    vals = jnp.stack(jnp.meshgrid(*([grid] * bands), indexing="ij"), -1).reshape(-1, bands)
    # Random raw outputs with wide means and scales, including extreme ones.
    out = 3.0 * jax.random.normal(key, (5, cfg.n_outputs))
    out = out.at[0, cfg.n_mix : cfg.n_mix + cfg.n_mix * bands].set(40.0)  # means far right
    out = out.at[1, cfg.n_mix + cfg.n_mix * bands :].set(-20.0)  # log scales at the floor
    lp = jax.vmap(
        lambda o: head_log_prob(jnp.broadcast_to(o, (vals.shape[0], cfg.n_outputs)), vals, cfg)
    )(out)
    assert bool(jnp.all(jnp.isfinite(lp)))
    total = jax.scipy.special.logsumexp(lp, axis=-1)
    np.testing.assert_allclose(np.asarray(total), 0.0, atol=2e-4)


@pytest.mark.parametrize("head", ["gaussian", "logistic"])
def test_continuous_heads_match_scipy(key, head):
    from scipy import stats

    cfg = PixelCNNConfig(height=2, width=2, n_scales=1, head=head, n_mix=1)
    out = jnp.array([[0.0, 0.3, -0.5]], jnp.float32)  # logit, mean, log scale
    x = jnp.array([[0.1]], jnp.float32)
    dist = stats.norm if head == "gaussian" else stats.logistic
    want = dist.logpdf(0.1, loc=0.3, scale=math.exp(-0.5))
    np.testing.assert_allclose(float(head_log_prob(out, x, cfg)[0]), want, rtol=1e-5)


def test_log_sum_exp_and_log1mexp_are_safe():
    a = jnp.array([1000.0, 1000.0, -jnp.inf], jnp.float32)
    assert float(log_sum_exp(a)) == pytest.approx(1000.0 + math.log(2.0), rel=1e-6)
    assert float(log_sum_exp(jnp.array([-jnp.inf, -jnp.inf]))) == -math.inf
    g = jax.grad(lambda a: log_sum_exp(a))(jnp.array([-200.0, -200.0], jnp.float32))
    np.testing.assert_allclose(np.asarray(g), [0.5, 0.5], rtol=1e-6)
    d = jnp.array([1e-8, 0.5, 1.0, 40.0], jnp.float32)
    want = np.log(-np.expm1(-np.array([1e-8, 0.5, 1.0, 40.0], np.float64)))
    np.testing.assert_allclose(np.asarray(log1mexp(d)), want, rtol=1e-5, atol=1e-12)
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda d: jnp.sum(log1mexp(d)))(d))))


@pytest.mark.parametrize(
    "cfg",
    [
        PixelCNNConfig(height=8, width=8, bands=2, n_filters=4, n_scales=2, n_mix=2),
        PixelCNNConfig(
            height=4,
            width=4,
            bands=1,
            n_filters=4,
            n_scales=1,
            n_resnet=1,
            weight_norm=True,
            n_classes=3,
            n_mix=1,
            head="gaussian",
        ),  # fmt: skip
    ],
)
def test_causality_exact_zero_gradients(key, cfg):
    """d(outputs at pixel i) / d(x at pixel j) == 0 exactly for j >= i in raster order."""
    params = init_pixelcnn(key, cfg)
    x = jax.random.normal(jax.random.key(1), (1, cfg.height, cfg.width, cfg.bands))
    y = jnp.zeros((1,), jnp.int32) if cfg.n_classes else None
    # Project the outputs on two random directions (every output of a pixel enters
    # them with a non-zero weight) to keep the Jacobian small.
    v = jax.random.normal(jax.random.key(2), (cfg.n_outputs, 2))
    f = jax.jit(lambda x: apply_pixelcnn(params, cfg, x, y)[0] @ v)
    jac = jax.jacrev(f)(x)[:, :, :, 0]  # (h, w, 2, h, w, bands)
    dep = np.asarray(jnp.any(jac != 0, axis=(2, 5))).reshape(cfg.height * cfg.width, -1)
    i, j = np.meshgrid(np.arange(dep.shape[0]), np.arange(dep.shape[1]), indexing="ij")
    assert not dep[j >= i].any(), "an output depends on the current or a later pixel"
    # ... and the receptive field is not empty: pixel (r, c) sees its left and upper neighbours.
    w = cfg.width
    for r, c in [(1, 1), (3, 3), (cfg.height - 1, cfg.width - 1)]:
        assert dep[r * w + c, r * w + c - 1] and dep[r * w + c, (r - 1) * w + c]


def test_band_coupling_is_causal_within_a_pixel(key):
    """Band 0's conditional must not depend on band 1 of the same pixel."""
    cfg = PixelCNNConfig(height=2, width=2, n_scales=1, bands=2, n_mix=2)
    out = jax.random.normal(key, (cfg.n_outputs,))
    x = jnp.array([0.2, -0.4], jnp.float32)
    # With band 1 marginalised (its conditional integrates to 1 for any x_1), only
    # band 0 remains: compare the sum over band-1 values for two band-0 values.
    levels = 2**cfg.n_bits
    grid = 2.0 * jnp.arange(levels, dtype=jnp.float32) / (levels - 1) - 1.0
    del x

    def marginal(x0):
        vals = jnp.stack([jnp.full_like(grid, x0), grid], -1)
        return jax.scipy.special.logsumexp(
            head_log_prob(jnp.broadcast_to(out, (levels, cfg.n_outputs)), vals, cfg)
        )

    marg = jnp.stack([marginal(g) for g in grid[::17]])
    cfg1 = PixelCNNConfig(height=2, width=2, n_scales=1, bands=1, n_mix=2)
    k, b = cfg.n_mix, cfg.bands
    # The band-0 marginal is the one-band mixture with band 0's means and scales.
    out1 = jnp.concatenate([out[:k], out[k : k + k * b].reshape(k, b)[:, 0],
                            out[k + k * b : k + 2 * k * b].reshape(k, b)[:, 0]])  # fmt: skip
    want = head_log_prob(
        jnp.broadcast_to(out1, (marg.shape[0], cfg1.n_outputs)), grid[::17, None], cfg1
    )
    np.testing.assert_allclose(np.asarray(marg), np.asarray(want), atol=1e-4)


def test_log_prob_jit_vmap_and_single_image(key):
    params = init_pixelcnn(key, TINY)
    x = _images(jax.random.key(2), TINY, 8)
    lp = log_prob(params, TINY, x)  # jitted inside
    assert lp.shape == (8,)
    one = jax.vmap(lambda xi: log_prob(params, TINY, xi))(x)
    np.testing.assert_allclose(one, lp, rtol=1e-5)
    m = log_prob_map(params, TINY, x[0])
    assert m.shape == (8, 8)
    np.testing.assert_allclose(float(jnp.sum(m)), float(lp[0]), rtol=1e-5)
    bpd = bits_per_dim(params, TINY, x)
    np.testing.assert_allclose(bpd, -lp / (64 * math.log(2.0)), rtol=1e-5)
    # An untrained model is close to uniform over 256 levels: about 8 bits/dim.
    assert 6.0 < float(jnp.mean(bpd)) < 11.0


def test_bits_per_dim_falls_on_tiny_dataset(key):
    # Smooth images near 0.3 with small noise: far from the uniform initial model.
    noise = 0.03 * jax.random.normal(jax.random.key(3), (8, 8, 8, 1))
    x = quantise(0.3 + noise, -1.0, 1.0)
    tc = TrainConfig(n_steps=40, batch_size=8, ema_decay=0.9, log_every=10)
    state, hist = train_pixelcnn(key, TINY, x, tc, lr=2e-2)
    first, last = hist["train"][0]["bits_per_dim"], hist["train"][-1]["bits_per_dim"]
    assert last < first - 1.0, (first, last)
    # The Polyak average has learnt too (evaluated on the same images).
    before = float(jnp.mean(bits_per_dim(init_pixelcnn(jax.random.split(key)[0], TINY), TINY, x)))
    after = float(jnp.mean(bits_per_dim(state.ema_params, TINY, x)))
    assert after < before - 1.0, (before, after)


@pytest.mark.parametrize("bands,head", [(1, "logistic_mixture"), (2, "gaussian")])
def test_sampling_respects_the_ordering(key, bands, head):
    """Each drawn pixel is what its conditional, computed from the final image, gives.

    The sampler draws pixel i after pixels < i are final; the network's output at
    i depends only on those, so re-running the network on the finished sample and
    drawing every pixel with the same noise must reproduce the sample exactly.
    """
    scales = 2 if bands == 1 else 1
    cfg = PixelCNNConfig(
        height=4, width=4, bands=bands, n_filters=4, n_scales=scales, n_mix=2, head=head
    )
    params = init_pixelcnn(key, cfg)
    k = jax.random.key(7)
    x = sample(k, params, cfg, 3)
    assert x.shape == (3, 4, 4, bands)
    gumbel, eps = sample_noise(k, cfg, 3)
    redrawn = draw_from_outputs(apply_pixelcnn(params, cfg, x), gumbel, eps, cfg)
    np.testing.assert_allclose(np.asarray(redrawn), np.asarray(x), atol=1e-5)
    if cfg.discrete:
        check_input("x", x, cfg)  # samples lie on the grid in [-1, 1]
    # A sample drawn in the wrong order (all pixels from the blank image) differs.
    blank = draw_from_outputs(apply_pixelcnn(params, cfg, jnp.zeros_like(x)), gumbel, eps, cfg)
    assert not np.allclose(np.asarray(blank), np.asarray(x))


def test_class_conditioning_changes_the_likelihood(key):
    cfg = PixelCNNConfig(height=4, width=4, n_filters=4, n_scales=1, n_classes=2, n_mix=1)
    params = init_pixelcnn(key, cfg)
    # Give the class embedding weight so that the labels matter.
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.5 if any("cond" in str(k) for k in p) else v, params
    )
    x = _images(jax.random.key(1), cfg, 2)
    a = log_prob(params, cfg, x, jnp.array([0, 0]))
    b = log_prob(params, cfg, x, jnp.array([1, 1]))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="y:"):
        log_prob(params, cfg, x)
    with pytest.raises(ValueError, match="y:"):
        log_prob(params, cfg, x, jnp.array([0, 5]))


def test_bad_input_messages(key):
    params = init_pixelcnn(key, TINY)
    x = _images(key, TINY, 2)
    with pytest.raises(ValueError, match=r"x: .*band"):
        log_prob(params, TINY, jnp.concatenate([x, x], -1))
    with pytest.raises(ValueError, match=r"x: .*\[-1, 1\]"):
        log_prob(params, TINY, x * 2.0)
    with pytest.raises(ValueError, match=r"x: .*quantised"):
        log_prob(params, TINY, x * 0.999)
    with pytest.raises(ValueError, match=r"x: .*NaN"):
        log_prob(params, TINY, x.at[0, 0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"x: .*shape"):
        log_prob(params, TINY, x[:, :4])
    with pytest.raises(ValueError, match="head"):
        PixelCNNConfig(head="softmax")
    with pytest.raises(ValueError, match="height, width"):
        PixelCNNConfig(height=30, n_scales=3)
    with pytest.raises(ValueError, match="data"):
        train_pixelcnn(key, TINY, x * 3.0, TrainConfig(n_steps=1, batch_size=2, ema_decay=0.9))
    with pytest.raises(ValueError, match="ema_decay"):
        train_pixelcnn(key, TINY, x, TrainConfig(n_steps=1, batch_size=2))
    with pytest.raises(ValueError, match="n:"):
        sample(key, params, TINY, 0)
    with pytest.raises(ValueError, match="lr_decay"):
        pixelcnn_optimizer(1e-3, 10, lr_decay=2.0)
    # The continuous head accepts any finite real values.
    gcfg = PixelCNNConfig(height=4, width=4, n_filters=4, n_scales=1, head="gaussian", n_mix=1)
    gp = init_pixelcnn(key, gcfg)
    assert bool(jnp.all(jnp.isfinite(log_prob(gp, gcfg, 5.0 * x[:, :4, :4] + 0.123))))


def test_config_round_trip_and_loss_fn(key):
    cfg = PixelCNNConfig(height=4, width=4, n_filters=4, n_scales=1, dropout=0.5)
    assert PixelCNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        PixelCNNConfig.from_dict({"filters": 3})
    params = init_pixelcnn(key, cfg)
    x = _images(key, cfg, 2)
    loss_train = jax.jit(make_loss_fn(cfg))
    loss_eval = jax.jit(make_loss_fn(cfg, train=False))
    a, _ = loss_train(params, jax.random.key(1), x)
    b, _ = loss_train(params, jax.random.key(2), x)
    c, _ = loss_eval(params, jax.random.key(1), x)
    d, _ = loss_eval(params, jax.random.key(2), x)
    assert float(a) != float(b)  # dropout active in training
    assert float(c) == float(d)
    np.testing.assert_allclose(float(c), float(jnp.mean(bits_per_dim(params, cfg, x))), rtol=1e-5)
