"""Tests of the radio-galaxy pipeline: data preparation (galjax.io.radio), histogram RMAE and
checkpoint selection (galjax.scores.histograms), the GAN training recipe on galjax.train.fit
(galjax.train.recipes.gan), k-fold, augmented training sets and best-matching pairs
(galjax.experiments.radio), the figures (galjax.plot.radio) and the ``gan`` CLI."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.experiments.radio import (
    augmentation_experiment,
    augmented_training_set,
    best_matching_pairs,
    kfold_indices,
    principal_axis_angle,
)
from galjax.io.radio import (
    augment_images,
    check_classes_present,
    check_gan_images,
    class_index,
    prepare_images,
)
from galjax.scores.histograms import (
    HistogramConfig,
    format_rmae_table,
    histogram_edges,
    image_histograms,
    rmae,
    rmae_table,
    select_best,
    write_rmae_table,
)


def _blobs(rng, n, size=16, sigma=(1.5, 3.0), amp=(0.3, 1.0)):
    """Elongated Gaussian sources at random angles, in [-1, 1] (a stand-in radio set)."""
    r, c = np.meshgrid(
        np.arange(size) - (size - 1) / 2, np.arange(size) - (size - 1) / 2, indexing="ij"
    )
    out = np.empty((n, size, size, 1), np.float32)
    for i in range(n):
        th = rng.uniform(0, np.pi)
        u = c * np.cos(th) + r * np.sin(th)
        v = -c * np.sin(th) + r * np.cos(th)
        s = rng.uniform(*sigma)
        a = rng.uniform(*amp)
        out[i, ..., 0] = 2 * a * np.exp(-0.5 * (u**2 / s**2 + v**2 / (s / 2.5) ** 2)) - 1
    return out


def test_rmae_identity_symmetry_range_and_errors():
    rng = np.random.default_rng(0)
    a, b = rng.random(12), rng.random(12)
    a[3] = b[3] = 0.0  # an empty bin is ignored
    assert rmae(a, a) == 0.0
    assert rmae(a, b) == pytest.approx(rmae(b, a))
    assert 0 < rmae(a, b) <= 2
    keep = (a + b) > 0
    assert rmae(a, b) == pytest.approx(np.mean(2 * np.abs(a - b)[keep] / (a + b)[keep]))
    assert rmae([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no non-empty bin"):
        rmae(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="equal length"):
        rmae(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        rmae([-1.0, 1.0], [1.0, 1.0])


def test_histograms_are_normalised_and_identical_sets_score_zero():
    x = _blobs(np.random.default_rng(1), 20)
    cfg = HistogramConfig(bins=10)
    edges = histogram_edges(x, cfg)
    h = image_histograms(x, edges, cfg.threshold)
    for part in h:
        assert part.shape == (10,) and part.sum() == pytest.approx(1.0)
    # A generator that fills the image is counted in the last bins, not dropped.
    full = image_histograms(np.ones_like(x), edges, cfg.threshold)
    assert full.n_above[-1] == pytest.approx(1.0) and full.total[-1] == pytest.approx(1.0)
    labels = np.arange(20) % 2
    table = rmae_table(x, labels, [(x, labels)], [100], ("A", "B"), cfg)
    np.testing.assert_allclose(table.rmae, 0.0)


def test_selection_picks_the_known_best_checkpoint():
    rng = np.random.default_rng(2)
    n = 60
    real = _blobs(rng, n)
    labels = np.arange(n) % 3
    # Three "checkpoints": too faint, a fresh draw of the real distribution, too extended.
    faint = _blobs(rng, n, amp=(0.05, 0.15))
    good = _blobs(rng, n)
    wide = _blobs(rng, n, sigma=(5.0, 8.0))
    fakes = [(faint, labels), (good, labels), (wide, labels)]
    table = rmae_table(real, labels, fakes, [10, 20, 30], ("A", "B", "C"))
    assert table.rmae.shape == (3, 3, 4)
    assert table.best.tolist() == [1, 1, 1]
    assert table.best_steps == {"A": 20, "B": 20, "C": 20}
    # Order of the checkpoints does not matter.
    rev = rmae_table(real, labels, fakes[::-1], [30, 20, 10], ("A", "B", "C"))
    assert rev.best_steps == table.best_steps
    assert "20" in format_rmae_table(table)
    assert select_best([[0.5, 0.2], [0.3, 0.4], [0.3, 0.9]]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="finite"):
        select_best([[np.nan, 0.1]])
    with pytest.raises(ValueError, match="no example"):
        rmae_table(real, labels, [(good, np.zeros(n, int))], [1], ("A", "B", "C"))


def test_write_rmae_table(tmp_path):
    x = _blobs(np.random.default_rng(3), 12)
    y = np.arange(12) % 2
    table = rmae_table(x, y, [(x[::-1], y), (x, y)], [5, 10], ("A", "B"))
    csv_path, json_path = write_rmae_table(tmp_path / "sub" / "rmae", table)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("step,class,rmae_intensity") and len(lines) == 1 + 2 * 2
    data = json.loads(json_path.read_text())
    assert data["best_step"] == {"A": 10, "B": 10}
    assert np.asarray(data["rmae"]).shape == (2, 2, 4)


@pytest.mark.parametrize("stratified", [False, True])
def test_kfold_disjoint_and_covering(stratified):
    n, k = 23, 5
    labels = np.arange(n) % 3 if stratified else None
    folds = kfold_indices(jax.random.key(0), n, k, labels)
    assert len(folds) == k
    held = [h for _, h in folds]
    allh = np.concatenate(held)
    assert sorted(allh.tolist()) == list(range(n))  # cover, no repeats -> disjoint
    for tr, h in folds:
        assert np.intersect1d(tr, h).size == 0 and tr.size + h.size == n
        assert abs(h.size - n / k) < 1 + 1e-9
        if stratified:  # every class in every held-out part
            assert set(labels[h].tolist()) == {0, 1, 2}
    other = kfold_indices(jax.random.key(1), n, k, labels)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    with pytest.raises(ValueError, match="k"):
        kfold_indices(jax.random.key(0), n, 1)
    with pytest.raises(ValueError, match="n"):
        kfold_indices(jax.random.key(0), 3, 5)


def test_empty_class_after_split_is_reported():
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        check_classes_present(np.array([0, 1, 1, 3]), 4, "fold 0 training labels")


def test_augmented_training_set_keeps_class_mix():
    x = np.zeros((6, 8, 8, 1), np.float32) - 1
    y = np.array([0, 0, 1, 2, 2, 2])
    sampler = lambda key, labels: np.full((labels.size, 8, 8, 1), 0.5, np.float32)
    xa, ya = augmented_training_set(jax.random.key(0), x, y, sampler, 3)
    assert xa.shape == (24, 8, 8, 1)
    np.testing.assert_array_equal(np.bincount(ya), 4 * np.bincount(y))
    assert np.all(xa[6:] == 0.5) and np.all(xa[:6] == -1)
    x0, y0 = augmented_training_set(jax.random.key(0), x, y, None, 0)
    assert x0.shape == x.shape
    with pytest.raises(ValueError, match="lam"):
        augmented_training_set(jax.random.key(0), x, y, sampler, -1)


def test_augmentation_experiment_learns_separable_classes():
    # Class 0 is empty sky, class 1 a source: every fold's classifier, trained on real
    # plus class-consistent generated images, must classify the test set perfectly.
    from galjax.models.classifier import FCNClassifier

    rng = np.random.default_rng(4)
    x = _blobs(rng, 24, size=8)
    y = np.arange(24) % 2
    x[y == 0] = -1.0
    template = x[1]
    calls = []

    def make_sampler(fold, train_idx):
        calls.append(fold)
        return lambda key, labels: np.where(labels[:, None, None, None] == 1, template, -1.0)

    res = augmentation_experiment(
        jax.random.key(0),
        x[:16],
        y[:16],
        x[16:],
        y[16:],
        make_sampler=make_sampler,
        models={"FCN": FCNClassifier(2, hidden=(8,))},
        lambdas=(0, 1),
        k=2,
        classifier_kwargs=dict(n_steps=30, batch_size=8, learning_rate=1e-2),
    )
    assert calls == [0, 1] and res["k"] == 2
    assert res["accuracy"]["FCN"] == {0: [1.0, 1.0], 1: [1.0, 1.0]}
    assert res["mean"]["FCN"] == {0: 1.0, 1: 1.0} and res["std"]["FCN"] == {0: 0.0, 1: 0.0}


def test_augmentation_experiment_scales_steps_with_the_ratio(monkeypatch):
    import functools

    import galjax.experiments.radio as radio
    from galjax.models.classifier import FCNClassifier

    seen = []
    real = radio.train_classifier

    @functools.wraps(real)
    def spy(key, model, images, labels, **kw):
        seen.append((images.shape[0], kw["n_steps"]))
        return real(key, model, images, labels, **kw)

    monkeypatch.setattr(radio, "train_classifier", spy)
    rng = np.random.default_rng(5)
    x = _blobs(rng, 16, size=8)
    y = np.arange(16) % 2
    kw = dict(
        make_sampler=lambda f, tr: lambda key, labels: x[: labels.size],
        models={"FCN": FCNClassifier(2, hidden=(4,))},
        lambdas=(0, 2),
        k=2,
        classifier_kwargs=dict(n_steps=3, batch_size=4),
    )
    res = augmentation_experiment(jax.random.key(0), x[:12], y[:12], x[12:], y[12:],
                                  scale_steps=True, **kw)  # fmt: skip
    # Two folds of 6 training images; lambda 2 triples the set and the steps.
    assert seen == [(6, 3), (18, 9)] * 2
    assert res["n_steps"] == {0: 3, 2: 9}
    seen.clear()
    res = augmentation_experiment(jax.random.key(0), x[:12], y[:12], x[12:], y[12:], **kw)
    assert seen == [(6, 3), (18, 3)] * 2 and res["n_steps"] == {0: 3, 2: 3}
    with pytest.raises(ValueError, match="lambdas"):
        augmentation_experiment(jax.random.key(0), x[:12], y[:12], x[12:], y[12:],
                                **{**kw, "lambdas": (0, -1)})  # fmt: skip


def test_prepare_and_check_images():
    u8 = np.zeros((3, 40, 40), np.uint8)
    u8[:, 18:22, 18:22] = 255
    x = prepare_images(u8, size=8, crop=32)
    assert x.shape == (3, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and -1.0 < x.max() <= 1.0
    # Antialiased resizing averages: the mean brightness of the crop is kept.
    np.testing.assert_allclose(((x + 1) / 2).mean(axis=(1, 2, 3)), 16 / 32**2, rtol=1e-4)
    np.testing.assert_allclose(prepare_images(u8.astype(np.float32)[..., None] / 255, 8, 32), x)
    with pytest.raises(TypeError, match="dtype"):
        prepare_images(u8.astype(np.int64), 8, 32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_images(np.full((1, 40, 40, 1), 3.0), 8, 32)
    with pytest.raises(ValueError, match="crop"):
        prepare_images(u8, 8, 64)
    with pytest.raises(ValueError, match="8x8"):
        check_gan_images("images", np.zeros((2, 16, 16, 1), np.float32), 8)
    with pytest.raises(TypeError, match="float"):
        check_gan_images("images", np.zeros((2, 8, 8, 1), np.uint8), 8)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        check_gan_images("images", np.full((2, 8, 8, 1), 2.0), 8)
    assert class_index("frii") == 1
    with pytest.raises(ValueError, match="unknown class 'FRIII'"):
        class_index("FRIII")


def test_augment_images_under_jit(key):
    x = jnp.asarray(_blobs(np.random.default_rng(5), 4))
    y = jax.jit(augment_images)(key, x)
    assert y.shape == x.shape
    assert float(y.min()) >= -1 - 1e-6 and float(y.max()) <= 1 + 1e-6
    assert not np.allclose(y, x)
    # Flux (above the -1 floor) is kept up to interpolation and the frame's edge.
    np.testing.assert_allclose((y + 1).sum(axis=(1, 2, 3)), (x + 1).sum(axis=(1, 2, 3)), rtol=0.1)


def test_best_matching_pairs_finds_rotated_copies():
    rng = np.random.default_rng(6)
    real = _blobs(rng, 10)
    fake = np.rot90(real[[7, 2, 4]], 1, axes=(1, 2)).copy()
    fake = np.concatenate([fake, -np.ones((2, 16, 16, 1), np.float32)])  # empty: ignored
    pairs = best_matching_pairs(real, fake, top=5, activity_threshold=0.01)
    assert len(pairs.distance) == 3
    assert dict(zip(pairs.fake_index.tolist(), pairs.real_index.tolist(), strict=True)) == {
        0: 7,
        1: 2,
        2: 4,
    }
    assert np.all(np.diff(pairs.distance) >= 0) and pairs.distance[0] < 1e-2
    assert abs(principal_axis_angle(real[:1])[0]) <= np.pi / 2
    with pytest.raises(ValueError, match="activity_threshold"):
        best_matching_pairs(real, fake[3:], activity_threshold=0.01)


def _fake_first_npz(path, n=16, size=40):
    rng = np.random.default_rng(7)
    x = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        c = rng.integers(14, 26, 2)
        x[i, c[0] - 3 : c[0] + 3, c[1] - 2 : c[1] + 2] = rng.integers(60, 255)
    np.savez(
        path,
        images=x,
        label=np.arange(n) % 4,
        split=np.array(["train"] * n),
        class_names=np.array(["FRI", "FRII", "Compact", "Bent"]),
    )


def test_gan_cli_train_select_sample(tmp_path, capsys):
    from galjax.cli.gan import register

    npz = tmp_path / "first.npz"
    _fake_first_npz(npz)
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command", required=True))
    run = tmp_path / "run"
    common = ["--data", str(npz), "--crop", "32"]

    def call(*argv):
        args = ap.parse_args(list(argv))
        return args.func(args)

    assert (
        call(
            "gan",
            "train",
            *common,
            "--out",
            str(run),
            "--size",
            "8",
            "--steps",
            "2",
            "--critic",
            "fcn",
            "--n-critic",
            "1",
            "--checkpoint-every",
            "1",
            "--batch-size",
            "4",
            "--gen-features",
            "4",
            "--critic-features",
            "4",
            "--latent-dim",
            "4",
            "--quiet",
        )
        == 0
    )
    assert sorted(p.name for p in run.glob("ckpt_*.msgpack")) == [
        "ckpt_0000001.msgpack",
        "ckpt_0000002.msgpack",
    ]
    assert json.loads((run / "history.json").read_text())["step"] == [2]
    assert call("gan", "select", *common, "--run", str(run), "--n-per-class", "8") == 0
    table = json.loads((run / "rmae_table.json").read_text())
    assert set(table["best_step"]) == {"FRI", "FRII", "Compact", "Bent"}
    assert (run / "rmae_table.csv").exists() and (run / "samples_selected.png").exists()
    assert call("gan", "sample", "--run", str(run), "--class", "Bent", "--n", "3") == 0
    assert np.load(run / "samples_Bent.npy").shape == (3, 8, 8, 1)
    with pytest.raises(SystemExit, match="unknown class"):
        call("gan", "sample", "--run", str(run), "--class", "Spiral")
    assert "selected steps" in capsys.readouterr().out


def test_load_real_first(data_dir):
    from galjax.io.radio import load_radio

    path = data_dir / "radio_first_fr_4class" / "first_fr_4class.npz"
    if not path.exists():
        pytest.skip("FIRST npz not present")
    d = load_radio(path, size=32, split="test")
    assert d.images.shape == (200, 32, 32, 1) and d.class_names == (
        "FRI",
        "FRII",
        "Compact",
        "Bent",
    )
    assert d.images.min() == -1.0 and d.images.max() <= 1.0
    check_classes_present(d.labels, 4, "test labels")
