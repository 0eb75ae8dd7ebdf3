"""Tests of the contaminant masks: injection (galjax.sim.contaminants), the network and its
storage (galjax.models.masknet), training (galjax.train.recipes.masknet), tiled inference and
bit masks (galjax.detect.masks), per-class AUC and the ``mask`` CLI."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits

from galjax.detect.masks import mask_bits, predict_mask
from galjax.image.background import estimate_background
from galjax.models.masknet import (
    MaskNet,
    load_mask_model,
    receptive_radius,
    save_mask_model,
    stretch_for_mask,
)
from galjax.scores.classification import per_class_auc
from galjax.sim.contaminants import MASK_CLASSES, InjectionConfig, inject_contaminants
from galjax.train.recipes.masknet import make_injection_sampler, train_mask_net

NO_STAR = InjectionConfig(
    p_cosmic=1.0,
    p_hot=1.0,
    p_hot_column=1.0,
    p_bad=1.0,
    p_bad_column=1.0,
    p_trail=1.0,
    n_stars=0,
)
ONLY = dict(n_cosmic=0, n_hot=0, n_hot_columns=0, n_bad=0, n_bad_columns=0, n_trails=0, n_stars=0)


def _base(key, h=32, w=32, bg=100.0, sigma=5.0):
    return bg + sigma * jax.random.normal(key, (h, w, 1))


@pytest.fixture(scope="module")
def batch():
    """Four 32x32 images with every contaminant but stars (one compiled vmapped call)."""
    key = jax.random.key(1)
    base = _base(key)
    keys = jax.random.split(key, 4)
    imgs, labs = jax.jit(jax.vmap(lambda k: inject_contaminants(k, base, 5.0, 100.0, NO_STAR)))(
        keys
    )
    return base, keys, imgs, labs


def test_injected_contaminants_land_where_labels_say(batch):
    base, keys, imgs, labs = batch
    img, lab = inject_contaminants(keys[0], base, 5.0, 100.0, NO_STAR)
    assert img.shape == base.shape and lab.shape == (32, 32, len(MASK_CLASSES))
    # jit/vmap agree with the single call
    np.testing.assert_allclose(imgs[0], img, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(labs[0], lab)
    lab = np.asarray(lab)
    diff = np.abs(np.asarray(img - base))[..., 0]
    changed = diff > 1e-3
    # every changed pixel is labelled, except trail wings below 1 sigma (by design)
    unlabelled = changed & ~(lab.max(-1) > 0)
    assert np.all(diff[unlabelled] <= 5.0 + 1e-3)
    # every labelled cosmic-ray / hot / bad pixel differs from the base
    for c in (0, 1, 2):
        assert lab[..., c].sum() > 0, MASK_CLASSES[c]
        assert np.all(changed[lab[..., c] > 0]), MASK_CLASSES[c]
    assert lab[..., 3].sum() > 0 and lab[..., 4].sum() == 0
    # dead pixels are far below the background and carry no other label
    assert np.all(np.asarray(img)[..., 0][lab[..., 2] > 0] < 100.0 - 5 * 5.0 + 1e-3)
    assert np.all(lab[lab[..., 2] > 0][:, [0, 1, 3, 4]] == 0)


def test_saturated_star(key):
    cfg = InjectionConfig(**ONLY | {"n_stars": 1}, p_star=1.0)
    base = _base(key)
    img, lab = inject_contaminants(jax.random.key(5), base, 5.0, 100.0, cfg)
    sat = np.asarray(lab[..., 4]) > 0
    assert sat.sum() > 0 and np.asarray(lab).sum() == sat.sum()
    vals = np.asarray(img)[..., 0]
    assert np.ptp(vals[sat]) < 1e-3 * vals[sat].max()  # one plateau
    assert np.all(vals[~sat] < vals[sat].max())  # nothing else reaches it


def test_no_injection_is_identity(key):
    base = _base(key)
    img, lab = inject_contaminants(key, base, 5.0, 100.0, InjectionConfig(**ONLY))
    np.testing.assert_allclose(img, base)
    assert float(lab.sum()) == 0


def test_injection_sampler(key):
    cfg = InjectionConfig(**ONLY | {"n_hot": 2}, p_hot=1.0)
    bases = np.asarray(_base(key, 20, 24))[None]
    sample = make_injection_sampler(bases, [100.0], [5.0], 16, 3, cfg)
    b = sample(key)
    assert b["x"].shape == (3, 16, 16, 1) and b["y"].shape == (3, 16, 16, 5)
    y = np.asarray(b["y"])
    assert 3 <= y[..., 1].sum() <= 6 and y.sum() == y[..., 1].sum()
    # the input is the arcsinh stretch: hot pixels (>= 5 sigma) stand out
    assert np.all(np.asarray(b["x"])[..., 0][y[..., 1] > 0] > np.arcsinh(4.0))
    with pytest.raises(ValueError, match="tile"):
        make_injection_sampler(bases, [100.0], [5.0], 32, 3, cfg)


def test_injection_bad_input(key):
    with pytest.raises(ValueError, match="single-band"):
        inject_contaminants(key, jnp.zeros((8, 8, 2)), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        inject_contaminants(key, jnp.zeros((8, 8, 1)), -1.0)
    with pytest.raises(ValueError, match="p_trail"):
        InjectionConfig(p_trail=2.0)
    with pytest.raises(ValueError, match="cosmic_length"):
        InjectionConfig(cosmic_length=(3.0, 1.0))
    with pytest.raises(ValueError, match="unknown"):
        InjectionConfig.from_dict({"n_comets": 1})


def test_tiled_inference_equals_whole_image_away_from_edges(key):
    net = MaskNet(features=4, dilations=(1, 3, 1))
    params = net.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    image = np.asarray(_base(key, 70, 53))
    bg, sig = estimate_background(image, method="global")
    whole = np.asarray(
        jax.nn.sigmoid(net.apply({"params": params}, stretch_for_mask(image, bg, sig)[None]))[0]
    )
    m = receptive_radius(net)
    assert m == 5
    tiled = predict_mask(net, params, image, tile=20, batch_size=16)
    assert tiled.shape == (70, 53, 5)
    np.testing.assert_allclose(tiled[m:-m, m:-m], whole[m:-m, m:-m], rtol=1e-5, atol=1e-6)
    # a tile with too small a margin differs somewhere
    loose = predict_mask(net, params, image, tile=20, margin=1)
    assert np.max(np.abs(loose[m:-m, m:-m] - whole[m:-m, m:-m])) > 1e-6


def test_predict_mask_bad_input():
    net = MaskNet(features=2, dilations=(1,))
    params = None  # the checks run before the network is used
    with pytest.raises(ValueError, match="smaller than one tile"):
        predict_mask(net, params, np.zeros((10, 30, 1)), tile=16)
    with pytest.raises(ValueError, match="tile"):
        predict_mask(net, params, np.zeros((30, 30, 1)), tile=2)
    with pytest.raises(ValueError, match="band"):
        predict_mask(net, params, np.zeros((30, 30, 2)), tile=16)


def test_mask_bits():
    p = np.zeros((2, 3, 5), np.float32)
    p[0, 0] = [0.9, 0.0, 0.9, 0.0, 0.0]
    p[1, 2] = [0.0, 0.6, 0.0, 0.0, 0.95]
    bits = np.asarray(mask_bits(p, [0.5, 0.5, 0.95, 0.5, 0.9]))
    assert bits.dtype == np.int32
    assert bits[0, 0] == 1 and bits[1, 2] == 2 + 16 and bits.sum() == 19
    assert int(mask_bits(p, 0.5)[0, 0]) == 5
    with pytest.raises(ValueError, match="probs"):
        mask_bits(p + 1.0)
    with pytest.raises(ValueError, match="thresholds"):
        mask_bits(p, [0.5, 0.5])


def test_training_learns_and_storage_round_trip(batch, tmp_path):
    _, _, imgs, labs = batch
    data = {"x": stretch_for_mask(imgs, 100.0, 5.0), "y": labs}
    net = MaskNet(features=4, dilations=(1,))
    params, hist = train_mask_net(
        jax.random.key(0),
        net,
        lambda k: data,
        n_steps=80,
        learning_rate=3e-2,
        pos_weight=[5.0] * 5,
        progress=False,
    )
    # Training lowers the loss and beats chance on every injected class; dead pixels
    # (5-200 sigma below the sky) are separable. How well a short run does per class is
    # a benchmark number (benchmarks/README.md, "Contaminant masks"), not a test.
    assert hist["train"][-1]["loss"] < hist["train"][0]["loss"]
    probs = np.asarray(jax.nn.sigmoid(net.apply({"params": params}, data["x"])))
    aucs = per_class_auc(probs, labs)
    assert aucs["bad"] > 0.95
    assert all(aucs[c] > 0.5 for c in ("cosmic_ray", "hot", "bad", "trail"))
    assert np.isnan(aucs["saturated"])  # no star injected
    save_mask_model(tmp_path, net, params, [0.5] * 5, {"note": "test"})
    net2, params2, cfg2 = load_mask_model(tmp_path)
    assert net2 == net and cfg2["thresholds"] == [0.5] * 5
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    with pytest.raises(FileNotFoundError, match="mask model"):
        load_mask_model(tmp_path / "nothing")


def test_cli_mask(key, tmp_path):
    from galjax.cli.mask import register
    from galjax.io import write_fits

    net = MaskNet(features=4, dilations=(1, 2))
    params = net.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    save_mask_model(tmp_path / "model", net, params, [0.5] * 5)
    image = np.array(_base(key, 50, 45))
    image[10, 10, 0] = 1e5
    write_fits(tmp_path / "img.fits", image)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "mask",
            str(tmp_path / "img.fits"),
            "--out",
            str(tmp_path / "m.fits"),
            "--model",
            str(tmp_path / "model"),
            "--threshold",
            "0.0",
            "--probs",
            str(tmp_path / "p.fits"),
        ]
    )
    assert args.func(args) == 0
    with fits.open(tmp_path / "m.fits") as hdul:
        data = hdul[0].data
        assert data.shape == (50, 45) and data.dtype.kind == "i"
        assert np.all(data == 31)  # threshold 0: every bit set
        assert hdul[0].header["MASKB0"] == "cosmic_ray"
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul[0].data.shape == (5, 50, 45)
    bad = parser.parse_args(
        [
            "mask",
            str(tmp_path / "missing.fits"),
            "--out",
            str(tmp_path / "x.fits"),
            "--model",
            str(tmp_path / "model"),
        ]
    )
    assert bad.func(bad) != 0
