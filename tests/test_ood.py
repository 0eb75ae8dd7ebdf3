"""OOD tools: Sersic archetype fits and their background, likelihood ratios, complexity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.fit import FitConfig, SersicFit, fit_sersic, render_archetypes
from galjax.image.background import estimate_background
from galjax.models.pixelcnn import PixelCNNConfig, init_pixelcnn, log_prob, log_prob_map, quantise
from galjax.ood import (
    complexity_score,
    compressed_bits,
    llr,
    llr_map,
    perturbed_sampler,
)
from galjax.plot.ood import llr_figure
from galjax.sim import add_background, moffat_psf

TINY = PixelCNNConfig(height=8, width=8, n_filters=4, n_scales=1, n_mix=2)


def _truth(n=6):
    return SersicFit(
        flux=jnp.array([[2000.0], [3000.0], [1500.0], [2500.0], [4000.0], [1800.0]])[:n],
        hlr=jnp.array([2.0, 3.0, 2.5, 3.5, 1.8, 2.8])[:n],
        n=jnp.array([1.0, 2.0, 0.8, 1.5, 3.0, 1.2])[:n],
        e1=jnp.array([0.1, -0.2, 0.0, 0.25, -0.1, 0.15])[:n],
        e2=jnp.array([0.0, 0.1, -0.2, 0.05, 0.2, -0.15])[:n],
        x=jnp.array([11.5, 12.2, 11.8, 11.0, 12.4, 11.6])[:n],
        y=jnp.array([11.5, 11.3, 12.1, 12.0, 11.7, 11.2])[:n],
        chi2=None,
        flux_residual=None,
    )


def test_archetype_fits_recover_known_sersic_parameters(key):
    true = _truth()
    psf = moffat_psf(2.0, 2.5, 11, oversample=1)
    clean = render_archetypes(true, 24, 24, psf)
    assert clean.shape == (6, 24, 24, 1)
    # A seventh galaxy with detail the Sersic cannot describe (a bright clump).
    blob = clean[:1] + jnp.zeros((1, 24, 24, 1)).at[0, 6, 16, 0].set(300.0)
    noisy = add_background(key, jnp.concatenate([clean, blob]), 1.0)
    fit = fit_sersic(noisy, jnp.ones((7, 1, 1, 1)), psf, FitConfig(n_steps=300))
    worse = fit.chi2[6]
    fit = jax.tree.map(lambda a: a[:6], fit)
    np.testing.assert_allclose(fit.flux[:, 0], true.flux[:, 0], rtol=0.05)
    np.testing.assert_allclose(fit.hlr, true.hlr, rtol=0.08)
    np.testing.assert_allclose(fit.n, true.n, atol=0.35)
    np.testing.assert_allclose(fit.e1, true.e1, atol=0.03)
    np.testing.assert_allclose(fit.e2, true.e2, atol=0.03)
    np.testing.assert_allclose(fit.x, true.x, atol=0.05)
    np.testing.assert_allclose(fit.y, true.y, atol=0.05)
    # Fit quality: pure noise residuals, reduced chi^2 ~ 1.
    assert np.all(np.abs(np.asarray(fit.chi2) - 1.0) < 0.2)
    assert np.all(np.abs(np.asarray(fit.flux_residual)) < 0.03)
    # ... which fits visibly worse.
    assert float(worse) > 1.5


def test_background_helpers(key):
    img = jnp.zeros((3, 20, 20, 2))
    noisy = add_background(key, img, jnp.array([1.0, 2.0, 0.5])[:, None, None, None], 5.0)
    level, sigma = estimate_background(noisy, "border", border=4)
    assert level.shape == sigma.shape == (3, 1, 1, 2)
    np.testing.assert_allclose(np.asarray(level), 5.0, atol=0.4)
    np.testing.assert_allclose(
        np.asarray(sigma)[:, 0, 0, :], [[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]], rtol=0.2
    )
    with pytest.raises(ValueError, match="border"):
        estimate_background(noisy, "border", border=10)
    with pytest.raises(ValueError, match="sigma"):
        add_background(key, img, -1.0)


@pytest.fixture(scope="module")
def two_models():
    return init_pixelcnn(jax.random.key(10), TINY), init_pixelcnn(jax.random.key(11), TINY)


def test_llr_per_image_and_per_pixel(two_models):
    pa, pb = two_models
    x = quantise(jax.random.uniform(jax.random.key(3), (5, 8, 8, 1)), 0.0, 1.0)
    m = llr_map(pa, TINY, pb, TINY, x, batch_size=5)
    assert m.shape == (5, 8, 8)
    want = log_prob_map(pa, TINY, x) - log_prob_map(pb, TINY, x)
    np.testing.assert_allclose(np.asarray(m), np.asarray(want), rtol=1e-5, atol=1e-4)
    r = llr(pa, TINY, pb, TINY, x, batch_size=5)
    np.testing.assert_allclose(
        np.asarray(r),
        np.asarray(log_prob(pa, TINY, x) - log_prob(pb, TINY, x)),
        rtol=1e-5,
        atol=1e-3,
    )
    np.testing.assert_allclose(np.asarray(llr(pa, TINY, pa, TINY, x)), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="x: .*band"):
        llr(pa, TINY, pb, TINY, jnp.concatenate([x, x], -1))
    with pytest.raises(ValueError, match="x: .*NaN"):
        llr(pa, TINY, pb, TINY, x.at[0, 0, 0, 0].set(jnp.nan))


def test_perturbed_sampler(key):
    x = quantise(jnp.full((4, 8, 8, 1), 0.5), 0.0, 1.0)
    same = perturbed_sampler(x, 3, 0.0, n_bits=8)(key)
    assert same.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x[:3]))
    out = perturbed_sampler(x, 64, 0.3, n_bits=8)(key)
    changed = float(jnp.mean(out != x[:1]))
    assert 0.25 < changed < 0.35
    k = (np.asarray(out) + 1.0) * 127.5
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)  # back on the 8-bit grid
    with pytest.raises(ValueError, match="rate"):
        perturbed_sampler(x, 3, 1.5)


@pytest.mark.parametrize("compressor", ["zlib", "bz2", "lzma"])
def test_compressed_bits_orders_complexity(key, compressor):
    flat = jnp.zeros((1, 16, 16, 1))
    noise = jax.random.uniform(key, (1, 16, 16, 1), minval=-1.0, maxval=1.0)
    bits = compressed_bits(jnp.concatenate([flat, noise]), compressor=compressor)
    assert bits.shape == (2,)
    assert bits[0] < 0.5 * bits[1]
    assert bits[1] > 0.8 * 16 * 16 * 8  # uniform noise is incompressible
    s = complexity_score(np.array([-100.0, -200.0]), bits)
    np.testing.assert_allclose(s, np.array([100.0, 200.0]) / np.log(2.0) - bits)


def test_compressed_bits_bad_input():
    with pytest.raises(ValueError, match="compressor"):
        compressed_bits(jnp.zeros((1, 4, 4, 1)), compressor="png")
    with pytest.raises(ValueError, match="images"):
        compressed_bits(jnp.full((1, 4, 4, 1), jnp.nan))
    with pytest.raises(ValueError, match="complexity|log_p"):
        complexity_score(np.zeros(2), np.zeros(3))


def test_fit_sersic_bad_input():
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match="images: .*NaN"):
        fit_sersic(x.at[0, 0, 0, 0].set(jnp.nan), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        fit_sersic(x, 0.0)
    with pytest.raises(ValueError, match="images"):
        fit_sersic(x[0], 1.0)
    with pytest.raises(ValueError, match="sigma"):
        fit_sersic(x, jnp.ones((3, 1, 1, 1)))
    with pytest.raises(ValueError, match="psf"):
        fit_sersic(x, 1.0, psf=jnp.ones((5, 5, 2)))


def test_llr_figure(tmp_path):
    rng = np.random.default_rng(1)
    fig = llr_figure(rng.normal(size=(8, 8, 1)), rng.normal(size=(8, 8)), rng.normal(size=(8, 8)),
                     path=tmp_path / "llr.png")  # fmt: skip
    assert (tmp_path / "llr.png").stat().st_size > 0
    assert len(fig.axes) == 8  # four panels and their colour bars
    with pytest.raises(ValueError, match="logp_a"):
        llr_figure(np.zeros((8, 8, 1)), np.zeros((4, 4)), np.zeros((8, 8)))
