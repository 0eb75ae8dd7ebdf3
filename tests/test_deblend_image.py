"""Deblending a survey image (galjax.deblend.survey, galjax.deblend.tiles): tiles and
their ownership, the catalogue against the simulated truth, tiling invariance, units,
NDData/CCDData input, WCS/RA-Dec/units in the outputs, PSF checks."""

import warnings

import jax
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.wcs import WCS

from galjax.deblend import DeblendConfig
from galjax.deblend.catalog import write_images
from galjax.deblend.inputs import prepare_psf
from galjax.deblend.survey import DetectionConfig, deblend_image
from galjax.deblend.tiles import canvas_size, owned, parse_shard, plan_tiles, share
from galjax.detect import match_positions
from galjax.io import open_survey_image
from galjax.models import default_model_dir, load_model
from galjax.sim import LSST_R, simulate_mosaic

CFG = DeblendConfig(n_steps=60)
SHAPE = (150, 170)


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_dir("lsst_r"))


@pytest.fixture(scope="module")
def mosaic():
    return simulate_mosaic(jax.random.key(3), LSST_R, shape=SHAPE, n_galaxies=14, progress=False)


def _match(true, found, radius):
    """For each true position, the index of its match in ``found`` (-1: none)."""
    m = match_positions(found, true, radius=radius)
    idx = np.full(len(true), -1)
    idx[m.true_index] = m.found_index
    return idx


def _wcs(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


@pytest.fixture(scope="module")
def one_tile(model, mosaic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return deblend_image(
            model, mosaic.image, variance=mosaic.variance, config=CFG, progress=False
        )


@pytest.fixture(scope="module")
def many_tiles(model, mosaic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return deblend_image(
            model,
            mosaic.image,
            variance=mosaic.variance,
            config=CFG,
            tile=64,
            overlap=64,
            progress=False,
        )


@pytest.mark.parametrize(
    "shape,tile,overlap", [((100, 250), 64, 16), ((17, 33), 16, 0), ((300, 300), 128, 200)]
)
def test_tiles_partition_the_image(shape, tile, overlap):
    count = np.zeros(shape, int)
    for t in plan_tiles(shape, tile, overlap):
        y0, y1, x0, x1 = t.core
        count[y0:y1, x0:x1] += 1
        ry0, ry1, rx0, rx1 = t.read
        assert ry0 <= y0 and y1 <= ry1 and rx0 <= x0 and x1 <= rx1
        assert ry0 == max(y0 - overlap, 0) and rx1 == min(x1 + overlap, shape[1])
    assert (count == 1).all()


def test_every_position_has_one_owner():
    tiles = plan_tiles((90, 70), 32, 8)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.49, 69.49, 500), rng.uniform(-0.49, 89.49, 500)
    n_owners = sum(owned(t, x, y).astype(int) for t in tiles)
    assert (n_owners == 1).all()


def test_shares_cover_every_tile_once():
    tiles = plan_tiles((200, 200), 32)
    got = sorted(t.index for i in range(3) for t in share(tiles, i, 3))
    assert got == list(range(len(tiles)))


@pytest.mark.parametrize("bad", ["1", "2/2", "-1/3", "a/b", "0/0"])
def test_bad_shard(bad):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(bad)


def test_bad_tiles_and_canvas():
    with pytest.raises(ValueError, match="tile"):
        plan_tiles((64, 64), tile=8)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles((64, 64), overlap=-1)
    assert canvas_size(64, 65) == 96
    with pytest.raises(ValueError, match="threshold"):
        DetectionConfig(threshold=0.0)
    with pytest.raises(ValueError, match="min_area"):
        DetectionConfig(min_area=0)


def test_catalogue_against_truth(one_tile, mosaic):
    t = one_tile
    for col in (
        "id",
        "x",
        "y",
        "flux_r",
        "flux_err_r",
        "blend",
        "blend_size",
        "chi2",
        "chi2_footprint",
        "status",
        "flags",
        "truncated",
    ):
        assert col in t.colnames
    assert "ra" not in t.colnames  # an array without WCS
    truth = mosaic.truth
    bright = truth["snr"] >= 20
    pos_true = np.stack([truth["x"], truth["y"]], -1)
    pos_det = np.stack([np.asarray(t["x"]), np.asarray(t["y"])], -1)
    idx = _match(pos_true, pos_det, 3.0)
    found = idx >= 0
    assert found[bright].mean() >= 0.9
    f_true = truth["flux"][found & bright, 0]
    f_est = np.asarray(t["flux_r"])[idx[found & bright]]
    assert np.median(np.abs(f_est / f_true - 1)) < 0.15
    assert np.isfinite(np.asarray(t["flux_err_r"])).all()
    assert not t["truncated"].any()


def test_tiling_does_not_change_the_catalogue(one_tile, many_tiles):
    a, b = one_tile, many_tiles
    assert len(np.unique(b["tile"])) > 1
    pa = np.stack([np.asarray(a["x"]), np.asarray(a["y"])], -1)
    pb = np.stack([np.asarray(b["x"]), np.asarray(b["y"])], -1)
    idx = _match(pa, pb, 0.5)
    assert (idx >= 0).mean() >= 0.9  # backgrounds are estimated per tile: near-equal detections
    fa = np.asarray(a["flux_r"])[idx >= 0]
    fb = np.asarray(b["flux_r"])[idx[idx >= 0]]
    bright = fa > 20 * np.asarray(a["flux_err_r"])[idx >= 0]
    assert np.median(np.abs(fb[bright] / fa[bright] - 1)) < 0.02


def test_units_do_not_matter(model, mosaic, one_tile):
    s = 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = deblend_image(
            model, mosaic.image * s, variance=mosaic.variance * s**2, config=CFG, progress=False
        )
    assert len(t) == len(one_tile)
    np.testing.assert_allclose(np.asarray(t["x"]), np.asarray(one_tile["x"]), atol=1e-3)
    f0 = np.asarray(one_tile["flux_r"])
    np.testing.assert_allclose(
        np.asarray(t["flux_r"]) / s, f0, rtol=5e-3, atol=1e-3 * np.abs(f0).max()
    )


def test_nddata_with_wcs_and_unit(model, mosaic, tmp_path):
    sub = (slice(0, 96), slice(0, 110))
    data = mosaic.image[sub][..., 0]
    nd = CCDData(
        data,
        unit=u.nJy,
        wcs=_wcs(data.shape),
        uncertainty=StdDevUncertainty(np.sqrt(mosaic.variance[sub][..., 0])),
        meta={"MAGZERO": 31.4},
    )
    t = deblend_image(model, nd, config=CFG, progress=False)
    assert len(t) > 0
    assert t["ra"].unit == u.deg and t["flux_r"].unit == u.nJy
    ra, dec = _wcs(data.shape).pixel_to_world_values(np.asarray(t["x"]), np.asarray(t["y"]))
    np.testing.assert_allclose(np.asarray(t["ra"]), ra)
    np.testing.assert_allclose(np.asarray(t["dec"]), dec)
    f = np.asarray(t["flux_r"])
    ok = f > 0
    np.testing.assert_allclose(np.asarray(t["mag_r"])[ok], 31.4 - 2.5 * np.log10(f[ok]))
    # the same pixels as a plain NDData with a boolean mask over half of a source
    mask = np.zeros(data.shape, bool)
    mask[:, :10] = True
    t2 = deblend_image(
        model,
        NDData(
            data, mask=mask, uncertainty=StdDevUncertainty(np.sqrt(mosaic.variance[sub][..., 0]))
        ),
        config=CFG,
        progress=False,
    )
    assert (np.asarray(t2["x"]) >= 9.5).all()  # nothing detected in the masked columns
    # model and residual mosaics with the WCS and BUNIT
    im = open_survey_image(nd)
    write_images(im, t.meta["tiles"], tmp_path / "m.fits", tmp_path / "r.fits")
    for name in ("m.fits", "r.fits"):
        hdr = fits.getheader(tmp_path / name)
        assert hdr["BUNIT"] == "nJy" and hdr["CTYPE1"].startswith("RA")
    m = fits.getdata(tmp_path / "m.fits")
    (r,) = t.meta["tiles"]
    for b, ((y0, y1, x0, x1), img) in enumerate(zip(r.boxes, r.models, strict=True)):
        flux = r.sources["flux"][r.sources["blend"] == b].sum()
        assert img.sum() <= flux * (1 + 1e-4)  # light beyond the image edge is not drawn
        inside = y0 > 0 and x0 > 0 and y1 < data.shape[0] and x1 < data.shape[1]
        if inside:
            np.testing.assert_allclose(img.sum(), flux, rtol=1e-3)
    np.testing.assert_allclose(m.sum(), sum(img.sum() for img in r.models), rtol=1e-4)


def test_no_wcs_warns_once(model, mosaic):
    with pytest.warns(UserWarning, match="no WCS") as rec:
        deblend_image(
            model,
            mosaic.image[:64, :64],
            sigma=float(np.sqrt(mosaic.variance.min())),
            config=DeblendConfig(n_steps=5),
            progress=False,
        )
    assert sum("no WCS" in str(w.message) for w in rec) == 1


def test_psf_checks(model):
    hsc = load_model(default_model_dir("hsc"))
    with pytest.raises(ValueError, match="psf"):
        prepare_psf(hsc, None, 5)
    with pytest.raises(ValueError, match="psf"):
        prepare_psf(hsc, np.ones((4, 4, 5)), 5)
    p = prepare_psf(hsc, 3.0 * np.asarray(LSST_R.pixel_psf())[..., :1], 5)
    np.testing.assert_allclose(p.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    assert prepare_psf(model, np.asarray(LSST_R.pixel_psf()), 1) is None  # baked in: no warning
    from galjax.sim.psf import moffat_psf

    wide = np.asarray(moffat_psf(2.0 / 0.2, 2.5, size=41))
    with pytest.warns(UserWarning, match="half-maximum"):
        prepare_psf(model, wide, 1)


def test_bands_must_match(model, mosaic):
    with pytest.raises(ValueError, match="band"):
        deblend_image(
            model, np.repeat(mosaic.image[:64, :64], 2, axis=-1), sigma=1.0, progress=False
        )


def test_psf_mismatch_flags_images_sharper_than_the_psf(model):
    from galjax.deblend.survey import psf_mismatch

    snr = np.full(20, 100.0)
    msg = psf_mismatch(model, None, np.full(20, 0.6), snr)
    assert msg is not None and msg.startswith("image:") and "built-in PSF" in msg
    assert psf_mismatch(model, None, np.full(20, 2.5), snr) is None  # stars as wide as the PSF
    assert psf_mismatch(model, None, np.full(3, 0.6), snr[:3]) is None  # too few bright sources
    assert psf_mismatch(model, None, np.full(20, 0.6), np.full(20, 5.0)) is None  # all faint
