"""Tests for galjax.scores.calibration and galjax.plot_calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.plot.calibration import pit_figure, reliability_diagram, roc_curves
from galjax.scores.calibration import (
    expected_calibration_error,
    pit_histogram,
    pit_uniformity,
    reliability_curve,
    roc_per_class,
    threshold_at_fpr,
)
from galjax.scores.classification import correct_priors


def test_ece_zero_for_exactly_calibrated_predictor():
    # in every bin the observed frequency equals the predicted probability exactly
    p = jnp.array([0.2] * 10 + [0.5] * 4 + [0.9] * 10)
    y = jnp.array([1] * 2 + [0] * 8 + [1, 0, 1, 0] + [1] * 9 + [0])
    assert float(expected_calibration_error(p, y, n_bins=10)) == pytest.approx(0.0, abs=1e-6)
    rc = reliability_curve(p, y, n_bins=10)
    ok = np.asarray(rc.weight) > 0
    np.testing.assert_allclose(rc.frequency[ok], rc.confidence[ok], atol=1e-6)
    assert float(jnp.sum(rc.weight)) == 24


def test_ece_small_for_sampled_calibrated_predictor_and_large_for_overconfident(key):
    k1, k2 = jax.random.split(key)
    p = jax.random.uniform(k1, (20000,))
    y = jax.random.bernoulli(k2, p).astype(jnp.int32)
    assert float(expected_calibration_error(p, y, 10)) < 0.02
    over = jnp.clip((p - 0.5) * 3 + 0.5, 0, 1)  # sharpened probabilities
    assert float(expected_calibration_error(over, y, 10)) > 0.1


def test_multiclass_top_label_and_prior_correction_restores_calibration(key):
    # Gaussian classes; posteriors computed under wrong priors are miscalibrated at the
    # true mix; correct_priors makes them calibrated again.
    k1, k2 = jax.random.split(key)
    mu = jnp.array([-1.5, 0.0, 1.5])
    true = jnp.array([0.7, 0.2, 0.1])
    train = jnp.array([1 / 3, 1 / 3, 1 / 3])
    c = jax.random.categorical(k1, jnp.log(true), shape=(30000,))
    x = mu[c] + jax.random.normal(k2, c.shape)
    loglik = -0.5 * (x[:, None] - mu[None, :]) ** 2
    post_train = jax.nn.softmax(loglik + jnp.log(train)[None, :], axis=-1)
    ece_before = float(expected_calibration_error(post_train, c))
    ece_after = float(expected_calibration_error(correct_priors(post_train, train, true), c))
    assert ece_after < 0.02 < ece_before


def test_weights_equal_repetition():
    p = jnp.array([0.3, 0.6, 0.8])
    y = jnp.array([0, 1, 1])
    w = jnp.array([2.0, 1.0, 3.0])
    rep_p = jnp.repeat(p, jnp.array([2, 1, 3]))
    rep_y = jnp.repeat(y, jnp.array([2, 1, 3]))
    np.testing.assert_allclose(
        expected_calibration_error(p, y, 5, weights=w),
        expected_calibration_error(rep_p, rep_y, 5),
        rtol=1e-6,
    )


def test_reliability_jit():
    p = jnp.array([0.1, 0.4, 0.7])
    y = jnp.array([0, 1, 1])
    f = jax.jit(lambda p, y: expected_calibration_error(p, y, 4))
    np.testing.assert_allclose(f(p, y), expected_calibration_error(p, y, 4))


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (jnp.array([0.1, 1.2]), jnp.array([0, 1]), r"probs.*\[0, 1\]"),
        (jnp.array([0.1, 0.2]), jnp.array([0, 1, 1]), "labels"),
        (jnp.array([[0.5, 0.5]]), jnp.array([3]), "labels.*class indices"),
        (jnp.array([0.1, 0.2]), jnp.array([0, 2]), "labels.*0/1"),
    ],
)
def test_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels)


def test_roc_per_class_and_threshold(key):
    k1, k2 = jax.random.split(key)
    y = np.asarray(jax.random.randint(k1, (400,), 0, 3))
    logits = 2.0 * jax.nn.one_hot(y, 3) + jax.random.normal(k2, (400, 3))
    probs = np.asarray(jax.nn.softmax(logits))
    rocs = roc_per_class(probs, y, ["a", "b", "c"])
    assert list(rocs) == ["a", "b", "c"]
    for r in rocs.values():
        assert 0.8 < r["auc"] <= 1.0
    scores, lab = probs[:, 0], (y == 0).astype(int)
    thr, f, t = threshold_at_fpr(scores, lab, 0.05)
    neg = scores[lab == 0]
    assert f <= 0.05 and np.mean(neg >= thr) == pytest.approx(f)
    assert np.mean(scores[lab == 1] >= thr) == pytest.approx(t)
    # a slightly lower threshold exceeds the target FPR (the threshold is the loosest allowed)
    lower = np.max(scores[scores < thr])
    assert np.mean(neg >= lower) > 0.05 or np.mean(scores[lab == 1] >= lower) == t
    with pytest.raises(ValueError, match="fpr"):
        threshold_at_fpr(scores, lab, 1.5)
    with pytest.raises(ValueError, match="class_names"):
        roc_per_class(probs, y, ["a"])


def test_pit_helpers(key):
    u = np.asarray(jax.random.uniform(key, (5000,)))
    dens, edges = pit_histogram(u, 10)
    assert edges.shape == (11,) and np.mean(dens) == pytest.approx(1.0)
    res = pit_uniformity(u)
    assert res["ks_pvalue"] > 0.01 and res["chi2_pvalue"] > 0.01
    bad = pit_uniformity(u**2)
    assert bad["ks_pvalue"] < 1e-6 and bad["ks_statistic"] > 0.2
    with pytest.raises(ValueError, match="pit"):
        pit_histogram(np.array([0.5, 1.5]))


def test_figures(tmp_path, key):
    p = jax.random.uniform(key, (200,))
    y = (p > 0.5).astype(jnp.int32)
    fig = reliability_diagram(
        {"a": reliability_curve(p, y), "b": reliability_curve(p, 1 - y)}, path=tmp_path / "rel.png"
    )
    assert len(fig.axes) == 2 and (tmp_path / "rel.png").is_file()
    probs = np.stack([1 - np.asarray(p), np.asarray(p)], 1)
    fig = roc_curves(roc_per_class(probs, np.asarray(y)), path=tmp_path / "roc.png")
    assert len(fig.axes[0].lines) == 3
    fig = pit_figure(np.asarray(p), path=tmp_path / "pit.png")
    assert (tmp_path / "pit.png").is_file()
