"""Tests of the classifiers (galjax.models.classifier, galjax.train.recipes.classifier), prior
correction and resampling (galjax.scores.classification) and binned PDFs (galjax.scores.pdf)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from galjax.image.transforms import random_dihedral
from galjax.models.classifier import (
    BinnedPDFRegressor,
    CNNClassifier,
    FCNClassifier,
    predict_pdf,
    predict_proba,
)
from galjax.scores.classification import accuracy, class_priors, correct_priors, resample_to_priors
from galjax.scores.pdf import (
    bin_edges,
    outlier_fraction,
    pdf_cdf,
    pdf_point_estimate,
    pit_values,
    sample_pdf,
    sigma_mad,
    to_bins,
)
from galjax.train.recipes.classifier import train_classifier, train_pdf_regressor


def _toy(key, n=64, size=8):
    """Class 1 images are bright, class 0 dark (separable)."""
    k1, k2 = jax.random.split(key)
    y = np.asarray(jax.random.bernoulli(k1, 0.5, (n,))).astype(np.int32)
    x = np.asarray(jax.random.normal(k2, (n, size, size, 1))) * 0.3
    x = x + y[:, None, None, None].astype(np.float32)
    return x.astype(np.float32), y


@pytest.mark.parametrize(
    "model",
    [
        CNNClassifier(2, features=(4,), dense=8, dropout=0.2),
        FCNClassifier(2, hidden=(8,), dropout=0.2),
    ],
)
def test_train_classifier_learns_separable_toy(key, model):
    x, y = _toy(key)
    params, hist = train_classifier(
        key,
        model,
        x,
        y,
        n_steps=60,
        batch_size=16,
        learning_rate=1e-2,
        valid=(x[:16], y[:16]) if isinstance(model, FCNClassifier) else None,
        augment=random_dihedral,
        progress=False,
    )
    probs = predict_proba(model, params, x, batch_size=20)
    assert probs.shape == (64, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert accuracy(probs, y) > 0.95
    if isinstance(model, FCNClassifier):
        assert hist["eval"] and "accuracy" in hist["eval"][-1]


def test_classifier_shapes_and_dropout_rng(key):
    m = CNNClassifier(3, features=(4,), dense=8, dropout=0.5)
    v = m.init(key, jnp.zeros((1, 8, 8, 2)))
    out_eval = m.apply(v, jnp.ones((5, 8, 8, 2)))
    out_train = m.apply(v, jnp.ones((5, 8, 8, 2)), train=True, rngs={"dropout": key})
    assert out_eval.shape == out_train.shape == (5, 3)
    assert not np.allclose(out_eval, out_train)


def test_train_classifier_bad_labels(key):
    x, y = _toy(key, n=16)
    m = FCNClassifier(2, hidden=(4,))
    with pytest.raises(ValueError, match="labels"):
        train_classifier(key, m, x, y[:10], n_steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(key, m, x, y + 2, n_steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_classifier(key, m, x, y, n_steps=1, batch_size=64, progress=False)


def test_accuracy():
    assert accuracy(np.eye(3), [0, 1, 2]) == 1.0
    assert accuracy(np.eye(3), [1, 1, 1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="labels"):
        accuracy(np.eye(3), [0, 1])


# ----------------------------------------------------------------- prior correction
def test_correct_priors_identity_when_priors_match(key):
    p = jax.nn.softmax(jax.random.normal(key, (50, 4)))
    pri = jnp.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(correct_priors(p, pri, pri), p, rtol=1e-5, atol=1e-7)


def test_correct_priors_maps_known_posteriors_exactly(key):
    # Generative model: x | c ~ N(mu_c, 1). Posterior under priors pi is
    # pi_c N(x; mu_c) / sum; correcting the pi_T-posterior must give the pi-posterior.
    mu = jnp.array([-1.0, 0.0, 2.0])
    x = jax.random.normal(key, (100,)) * 2
    loglik = -0.5 * (x[:, None] - mu[None, :]) ** 2
    pt = jnp.array([0.6, 0.3, 0.1])
    pc = jnp.array([0.1, 0.2, 0.7])
    post_t = jax.nn.softmax(loglik + jnp.log(pt)[None, :], axis=-1)
    post = jax.nn.softmax(loglik + jnp.log(pc)[None, :], axis=-1)
    np.testing.assert_allclose(correct_priors(post_t, pt, pc), post, rtol=1e-4, atol=1e-6)
    # and back again
    np.testing.assert_allclose(correct_priors(post, pc, pt), post_t, rtol=1e-4, atol=1e-6)


def test_correct_priors_jit_vmap(key):
    p = jax.nn.softmax(jax.random.normal(key, (3, 5, 2)))
    pt, pc = jnp.array([0.5, 0.5]), jnp.array([0.8, 0.2])
    ref = correct_priors(p, pt, pc)
    np.testing.assert_allclose(jax.jit(correct_priors)(p, pt, pc), ref, rtol=1e-6)
    out = jax.vmap(correct_priors, in_axes=(0, None, None))(p, pt, pc)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize(
    "train, true, match",
    [
        ([0.5, 0.6], [0.5, 0.5], "train_priors.*sum"),
        ([0.5, 0.5], [1.0, 0.0], "true_priors.*positive"),
        ([0.5, 0.5, 0.0], [0.5, 0.5], "train_priors.*2 priors"),
    ],
)
def test_correct_priors_bad_priors(train, true, match):
    with pytest.raises(ValueError, match=match):
        correct_priors(jnp.array([[0.5, 0.5]]), jnp.array(train), jnp.array(true))


def test_correct_priors_bad_probs():
    pri = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match=r"probs.*\[0, 1\]"):
        correct_priors(jnp.array([[1.5, -0.5]]), pri, pri)
    with pytest.raises(ValueError, match="probs.*sum to 1"):
        correct_priors(jnp.array([[0.5, 0.2]]), pri, pri)


def test_resample_to_priors(key):
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = resample_to_priors(key, labels, [0.2, 0.3, 0.5], n=200)
    assert idx.shape == (200,) and idx.dtype == np.int32
    counts = np.bincount(labels[idx], minlength=3)
    np.testing.assert_array_equal(counts, [40, 60, 100])
    # under-sampled class: distinct members; over-sampled: every member present
    assert len(set(idx[labels[idx] == 0].tolist())) == 40
    assert set(idx[labels[idx] == 1].tolist()) == set(range(90, 99))
    np.testing.assert_allclose(class_priors(labels[idx], 3), [0.2, 0.3, 0.5])


def test_resample_to_priors_bad_input(key):
    with pytest.raises(ValueError, match="labels.*no examples"):
        resample_to_priors(key, [0, 0, 1], [0.3, 0.3, 0.4])
    with pytest.raises(ValueError, match="priors"):
        resample_to_priors(key, [0, 1], [0.3, 0.3])
    with pytest.raises(ValueError, match="labels"):
        resample_to_priors(key, [0, 5], [0.5, 0.5])


# ----------------------------------------------------------------- binned PDFs
def test_bins_and_point_estimate():
    e = bin_edges(0.0, 4.0, 4)
    np.testing.assert_array_equal(to_bins([0.0, 0.99, 1.0, 3.99, 4.0, -1.0], e), [0, 0, 1, 3, 3, 0])
    pdf = jnp.array([[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(pdf_point_estimate(pdf, e), [1.5, 2.0])
    np.testing.assert_allclose(pdf_cdf(pdf, e, jnp.array([1.5, 1.0])), [0.5, 0.25])
    with pytest.raises(ValueError, match="pdf.*bins"):
        pdf_point_estimate(jnp.ones((1, 3)) / 3, e)


def test_sigma_mad_and_outliers(key):
    dz = jax.random.normal(key, (20000,)) * 0.05
    assert float(sigma_mad(dz, jnp.zeros_like(dz))) == pytest.approx(0.05, rel=0.03)
    truth = jnp.ones(4)
    assert float(sigma_mad(truth + 0.2, truth)) == 0.0
    pred = jnp.array([1.0, 1.5, 1.1, 2.0])
    assert float(outlier_fraction(pred, truth)) == 0.5
    assert float(outlier_fraction(pred, truth, relative=True)) == 0.5  # 0.25 and 0.5 > 0.15
    with pytest.raises(ValueError, match="pred, truth"):
        sigma_mad(jnp.ones(3), jnp.ones(4))


def test_pit_of_samples_from_predicted_pdfs_is_uniform(key):
    # random binned PDFs; truths drawn from them; PIT must be U(0, 1)
    k1, k2 = jax.random.split(key)
    e = bin_edges(0.0, 2.0, 20)
    pdf = jax.nn.softmax(3 * jax.random.normal(k1, (4000, 20)), axis=-1)
    truth = sample_pdf(k2, pdf, e)
    pit = np.asarray(pit_values(pdf, e, truth))
    assert pit.min() >= 0 and pit.max() <= 1
    assert stats.kstest(pit, "uniform").pvalue > 0.01
    # wrong (shifted) PDFs give non-uniform PIT
    pit_bad = np.asarray(pit_values(jnp.roll(pdf, 3, axis=-1), e, truth))
    assert stats.kstest(pit_bad, "uniform").pvalue < 1e-6


def test_train_pdf_regressor(key):
    # target = image brightness; the regressor must put its PDF near the truth
    k1, k2 = jax.random.split(key)
    z = np.asarray(jax.random.uniform(k1, (96,), minval=0.0, maxval=1.0))
    x = z[:, None, None, None] + 0.05 * np.asarray(jax.random.normal(k2, (96, 8, 8, 1)))
    x = x.astype(np.float32)
    e = bin_edges(0.0, 1.0, 8)
    m = BinnedPDFRegressor(8, features=(4,), dense=16)
    params, _ = train_pdf_regressor(
        key,
        m,
        x,
        z,
        e,
        n_steps=150,
        batch_size=32,
        learning_rate=1e-2,
        label_smoothing=0.05,
        progress=False,
    )
    pdf = predict_pdf(m, params, x)
    zhat = pdf_point_estimate(pdf, e)
    assert float(jnp.mean(jnp.abs(zhat - z))) < 0.12
    with pytest.raises(ValueError, match="bins"):
        train_pdf_regressor(key, m, x, z, bin_edges(0.0, 1.0, 4), n_steps=1, progress=False)
