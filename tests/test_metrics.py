"""Tests for galjax.scores.metrics against hand-computed numpy references."""

import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.scores.metrics import (
    auc,
    auroc,
    bits_per_dim,
    chi2_per_pixel,
    elliptical_aperture_flux,
    mse,
    relative_flux_error,
    roc_curve,
)
from galjax.scores.metrics import ssim as ssim_fn


def _images(seed=0, shape=(2, 16, 16, 2)):
    """Two related float images in [0, 1] (numpy rng: no compilation in the tests)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=shape)
    y = np.clip(x + 0.1 * rng.normal(size=shape), 0.0, 1.0)
    return jnp.asarray(x), jnp.asarray(y)


# -- mse ----------------------------------------------------------------------------


def test_mse_values_mask_jit_vmap():
    x, y = _images()
    ref = np.mean((np.asarray(x) - np.asarray(y)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(mse(x, y), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(mse)(x, y), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(mse)(x, y), ref, rtol=1e-5)
    mask = np.zeros((16, 16, 1))
    mask[:8] = 1
    sub = np.mean(((np.asarray(x) - np.asarray(y)) ** 2)[:, :8], axis=(1, 2, 3))
    np.testing.assert_allclose(mse(x, y, mask), sub, rtol=1e-5)


def test_mse_bad_input():
    with pytest.raises(ValueError, match="pred, true"):
        mse(jnp.ones((4, 4, 1)), jnp.ones((4, 5, 1)))
    with pytest.raises(ValueError, match="pred"):
        mse(jnp.ones((4, 4)), jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="mask"):
        mse(jnp.ones((4, 4, 1)), jnp.ones((4, 4, 1)), mask=jnp.ones((3, 1)))


# -- ssim ---------------------------------------------------------------------------


def _ssim_reference(x, y, data_range, win=11, sigma=1.5, k1=0.01, k2=0.03):
    """Literal Wang et al. (2004): loop over every window fully inside the image."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    w2 = np.outer(g, g)
    w2 /= w2.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    h, w, bands = x.shape
    out = np.zeros(bands)
    for b in range(bands):
        vals = []
        for i, j in itertools.product(range(h - win + 1), range(w - win + 1)):
            px, py = x[i : i + win, j : j + win, b], y[i : i + win, j : j + win, b]
            mx, my = np.sum(w2 * px), np.sum(w2 * py)
            vx = np.sum(w2 * (px - mx) ** 2)
            vy = np.sum(w2 * (py - my) ** 2)
            cxy = np.sum(w2 * (px - mx) * (py - my))
            vals.append(
                (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
        out[b] = np.mean(vals)
    return out


def test_ssim_matches_reference():
    x, y = _images(1, (2, 14, 15, 2))
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ref = np.stack([_ssim_reference(xn[i], yn[i], 1.0) for i in range(2)])
    np.testing.assert_allclose(ssim_fn(x, y, 1.0, per_band=True), ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(ssim_fn(x, y, 1.0), ref.mean(-1), rtol=2e-5, atol=2e-6)
    # Stable far from zero (sky level 1e4) in float32: the covariance sums are centred.
    ref_off = _ssim_reference(xn[0] + 1e4, yn[0] + 1e4, 1.0)
    got = ssim_fn(
        jnp.asarray(x[0] + 1e4, jnp.float32),
        jnp.asarray(y[0] + 1e4, jnp.float32),
        1.0,
        per_band=True,
    )
    np.testing.assert_allclose(got, ref_off, atol=2e-3)


def test_ssim_against_skimage():
    skm = pytest.importorskip("skimage.metrics")
    x, y = _images(2, (1, 20, 20, 1))
    ref = skm.structural_similarity(
        np.asarray(x[0, ..., 0], np.float64),
        np.asarray(y[0, ..., 0], np.float64),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    np.testing.assert_allclose(ssim_fn(x, y, 1.0)[0], ref, rtol=1e-4)


def test_ssim_properties_jit_vmap():
    x, y = _images()
    np.testing.assert_allclose(ssim_fn(x, x, 1.0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ssim_fn(x, y, 1.0), ssim_fn(y, x, 1.0), rtol=1e-6)
    s = ssim_fn(x, y, 1.0)
    assert s.shape == (2,) and np.all(s < 1) and np.all(s > -1)
    np.testing.assert_allclose(jax.jit(ssim_fn)(x, y, 1.0), s, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda a, b: ssim_fn(a, b, 1.0))(x, y), s, rtol=1e-6)
    noisier = jnp.clip(y + 0.2 * _images(3)[0] - 0.1, 0, 1)
    assert np.all(ssim_fn(x, noisier, 1.0) < s)
    g = jax.grad(lambda a: ssim_fn(a, x[0], 1.0))(y[0])
    assert np.all(np.isfinite(g))


def test_ssim_bad_input():
    with pytest.raises(ValueError, match="window_size"):
        ssim_fn(jnp.ones((8, 8, 1)), jnp.ones((8, 8, 1)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        ssim_fn(jnp.ones((12, 12, 1)), jnp.ones((12, 12, 1)), 0.0)


# -- flux, bits/dim -------------------------------------------------------------------


def test_relative_flux_error():
    true = jnp.ones((2, 4, 4, 2))
    pred = true * jnp.broadcast_to(jnp.asarray([1.1, 0.5]), true.shape)
    np.testing.assert_allclose(relative_flux_error(pred, true), [[0.1, -0.5]] * 2, rtol=1e-5)
    np.testing.assert_allclose(
        jax.jit(relative_flux_error)(pred, true), [[0.1, -0.5]] * 2, rtol=1e-5
    )
    with pytest.raises(ValueError, match="true"):
        relative_flux_error(pred, jnp.zeros((2, 4, 4, 2)))


def test_bits_per_dim():
    nll = jnp.asarray([math.log(2) * 100, 2 * math.log(2) * 100])
    np.testing.assert_allclose(bits_per_dim(nll, 100), [1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(bits_per_dim, static_argnums=1)(nll, 100), [1, 2], rtol=1e-6)
    with pytest.raises(ValueError, match="n_dims"):
        bits_per_dim(nll, 0)


# -- ROC / AUC ------------------------------------------------------------------------


def _pairwise_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return np.mean((diff > 0) + 0.5 * (diff == 0))


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_pairwise(ties):
    rng = np.random.default_rng(4)
    labels = (rng.uniform(size=200) < 0.4).astype(int)
    scores = rng.normal(size=200) + labels
    if ties:
        scores = np.round(scores)  # few distinct values: many ties across classes
    ref = _pairwise_auc(scores, labels)
    np.testing.assert_allclose(auc(scores, labels), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(auc)(scores, labels), ref, rtol=1e-5)


def test_auc_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    labels = np.arange(50) % 3 == 0
    scores = np.random.default_rng(5).normal(size=50) + labels
    np.testing.assert_allclose(auc(scores, labels), skm.roc_auc_score(labels, scores), rtol=1e-5)


def test_roc_curve_shape_and_endpoints():
    scores = jnp.asarray([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = jnp.asarray([0, 0, 1, 1, 1])
    fpr, tpr, thr = roc_curve(scores, labels)
    assert fpr.shape == tpr.shape == thr.shape == (6,)
    assert float(fpr[0]) == 0 and float(tpr[0]) == 0 and float(fpr[-1]) == 1 == float(tpr[-1])
    assert np.all(np.diff(np.asarray(fpr)) >= 0) and np.all(np.diff(np.asarray(tpr)) >= 0)
    assert np.isinf(thr[0]) and np.all(np.diff(np.asarray(thr)) <= 0)
    # the tie at 0.4 (one positive, one negative) is one diagonal step
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])


def test_auc_vmap_and_perfect():
    labels = jnp.asarray([0, 0, 1, 1])
    scores = jnp.asarray([[0.1, 0.2, 0.8, 0.9], [0.9, 0.8, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(jax.vmap(auc, (0, None))(scores, labels), [1.0, 0.0, 0.5])


def test_roc_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        auc(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="labels"):
        auc(jnp.ones(3), jnp.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match="scores, labels"):
        roc_curve(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="scores"):
        auc(jnp.asarray([0.0, jnp.nan]), jnp.asarray([0, 1]))


def test_auroc_two_samples_matches_pairwise_and_auc():
    assert auroc([0.0, 0.1, 0.2], [1.0, 2.0]) == 1.0  # out-of-distribution = positives
    assert auroc([1.0, 2.0], [0.0, 0.1, 0.2]) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 5)), np.round(rng.normal(0.7, 1.0, size=30))  # ties, any shape
    scores = np.r_[a.ravel(), b].astype(np.float32)
    labels = np.r_[np.zeros(40), np.ones(30)].astype(np.int32)
    got = auroc(a, b)
    assert isinstance(got, float)
    assert got == pytest.approx(_pairwise_auc(scores, labels), rel=1e-6)
    assert got == float(auc(scores, labels))  # one ROC implementation
    with pytest.raises(ValueError, match="scores_out"):
        auroc([0.0], [np.nan])
    with pytest.raises(ValueError, match="non-empty"):
        auroc([], [1.0])


# -- chi2 -------------------------------------------------------------------------------


def test_chi2_per_pixel():
    rng = np.random.default_rng(6)
    sigma = jnp.asarray(0.5 + rng.uniform(size=(8, 8, 2)))
    r = sigma[None] * jnp.asarray(rng.normal(size=(3, 8, 8, 2)))
    ref = np.mean((np.asarray(r) / np.asarray(sigma)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(chi2_per_pixel(r, sigma), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(chi2_per_pixel)(r, sigma), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(chi2_per_pixel, (0, None))(r, sigma), ref, rtol=1e-5)
    np.testing.assert_allclose(chi2_per_pixel(2 * jnp.ones((4, 4, 1)), 2.0), 1.0)


def test_chi2_masks_bad_pixels():
    r = np.ones((4, 4, 1))
    sigma = np.ones((4, 4, 1))
    mask = np.ones((4, 4, 1))
    r[0, 0, 0], sigma[0, 0, 0], mask[0, 0, 0] = 100.0, 0.0, 0.0  # masked, sigma 0 allowed
    np.testing.assert_allclose(chi2_per_pixel(r, sigma, mask), 1.0)
    np.testing.assert_allclose(jax.jit(chi2_per_pixel)(r, sigma, mask), 1.0)
    r[1, 1, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="residual"):
        np.testing.assert_allclose(chi2_per_pixel(r, sigma, mask), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        chi2_per_pixel(np.ones((4, 4, 1)), sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(chi2_per_pixel(np.ones((4, 4, 1)), 1.0, np.zeros((4, 4, 1))))


# -- elliptical apertures -----------------------------------------------------------


def test_elliptical_aperture_flux_area_rotation_and_vmap():
    ones = jnp.ones((81, 81, 2))
    # A constant image gives the ellipse's area, pi a b, for any angle and centre.
    for a, b, t, x, y in ((20.0, 20.0, 0.0, 40.0, 40.0), (25.0, 8.0, 0.6, 39.3, 41.7)):
        f = elliptical_aperture_flux(ones, x, y, a, b, t, subsample=7)
        np.testing.assert_allclose(f, math.pi * a * b, rtol=5e-3)
    # A point source is inside along the major axis and outside across it.
    img = np.zeros((41, 41, 1), np.float32)
    img[20, 30] = 1.0  # (x, y) = (30, 20): 10 px along +x from the centre
    along = elliptical_aperture_flux(img, 20.0, 20.0, 12.0, 4.0, 0.0)
    across = elliptical_aperture_flux(img, 20.0, 20.0, 12.0, 4.0, math.pi / 2)
    assert float(along[0]) == 1.0 and float(across[0]) == 0.0
    # Pixels on the boundary count by the fraction of sub-pixel centres inside.
    half = elliptical_aperture_flux(img, 30.5, 20.0, 0.5, 10.0, 0.0, subsample=4)
    np.testing.assert_allclose(half, 0.5)
    batch = jax.vmap(lambda im, x: elliptical_aperture_flux(im, x, 20.0, 12.0, 4.0, 0.0))(
        jnp.stack([img, img]), jnp.array([20.0, 5.0])
    )
    np.testing.assert_allclose(batch[:, 0], [1.0, 0.0])


def test_elliptical_aperture_flux_bad_input():
    with pytest.raises(ValueError, match="image"):
        elliptical_aperture_flux(jnp.ones((2, 8, 8, 1)), 4.0, 4.0, 2.0, 2.0, 0.0)
    with pytest.raises(ValueError, match="b"):
        elliptical_aperture_flux(jnp.ones((8, 8, 1)), 4.0, 4.0, 2.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="subsample"):
        elliptical_aperture_flux(jnp.ones((8, 8, 1)), 4.0, 4.0, 2.0, 2.0, 0.0, subsample=0)
