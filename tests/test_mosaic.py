"""galjax.sim.mosaic: large simulated survey images with their truth, and their files.

Every simulation with galaxies here renders in one compiled shape (32 stamps of a
light two-band survey), so the file compiles the renderer once.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from galjax.io import read_fits
from galjax.sim import (
    DEFAULT_DENSITY,
    LSST_R,
    Mosaic,
    RenderConfig,
    Survey,
    mosaic_count,
    noise_variance,
    simulate_mosaic,
    write_mosaic,
)

# Two bands (a cube on disk; reference band 1), small stamps, smooth symmetric galaxies
# (centroid = centre) and a light render: a quick compilation.
TWO = Survey(
    name="mosaic_test",
    bands=("g", "r"),
    psf_fwhm=(0.8, 0.7),
    sky_sigma=(1.0, 2.0),
    zeropoint=(30.9, 31.0),
    psf_size=21,
    stamp_size=25,
    detail=False,
    n_clumps=1,
    render=RenderConfig(refine_levels=2),
)
SHAPE = (128, 160)  # not square: x (columns) and y (rows) cannot be swapped unnoticed
N = 30  # all fit in one batch of the next power of two, 32


@pytest.fixture(scope="module")
def mosaic():
    return simulate_mosaic(jax.random.key(1), TWO, SHAPE, n_galaxies=N, progress=False)


@pytest.fixture(scope="module")
def sparse():
    # 512^2 at 0.2"/px is 2.91 arcmin^2: 8 per arcmin^2 gives 23 galaxies, mostly isolated.
    return simulate_mosaic(jax.random.key(2), TWO, (512, 512), density=8.0, progress=False)


def test_shapes_dtypes_and_truth_columns(mosaic):
    h, w = SHAPE
    for a in (mosaic.image, mosaic.variance, mosaic.noiseless):
        assert isinstance(a, np.ndarray) and a.shape == (h, w, 2) and a.dtype == np.float32
        assert np.all(np.isfinite(a))
    t = mosaic.truth
    assert t["id"].tolist() == list(range(N))
    for k in ("x", "y", "hlr", "a", "b", "theta", "snr"):
        assert t[k].shape == (N,), k
    for k in ("flux", "flux_model", "mag", "snr_bands"):
        assert t[k].shape == (N, 2), k
    assert np.all(t["hlr"] > 0) and np.all(t["a"] >= t["b"]) and np.all(t["b"] > 0)
    # snr is the reference band's (band 1 of two), as simulate_field reports it
    np.testing.assert_array_equal(t["snr"], t["snr_bands"][:, 1])


def test_positions_inside_and_spread(mosaic):
    h, w = SHAPE
    x, y = mosaic.truth["x"], mosaic.truth["y"]
    assert np.all((x >= -0.5) & (x < w - 0.5)) and np.all((y >= -0.5) & (y < h - 0.5))
    assert x.max() > h  # x runs over the 160 columns, not the 128 rows
    # sub-pixel positions, not snapped to pixel centres
    assert np.abs(x - np.round(x)).max() > 0.1


def test_truth_flux_sums_to_the_noiseless_image(mosaic):
    t = mosaic.truth
    np.testing.assert_allclose(t["flux"].sum(0), mosaic.noiseless.sum((0, 1)), rtol=1e-4)
    # in-image flux never exceeds the model total by more than the stamp's ringing
    assert np.all(t["flux"] <= 1.01 * t["flux_model"])
    np.testing.assert_allclose(t["mag"], np.array(TWO.zeropoint) - 2.5 * np.log10(t["flux"]))


def test_isolated_galaxies_flux_centroid_and_snr(sparse):
    t = sparse.truth
    assert len(t["x"]) == mosaic_count(TWO, (512, 512), 8.0) == 23
    s = TWO.stamp_size
    c = (s - 1) // 2
    x0 = np.rint(t["x"]).astype(int) - c
    y0 = np.rint(t["y"]).astype(int) - c
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + s <= 512) & (y0 + s <= 512)
    apart = np.ones(len(x0), bool)
    for i in range(len(x0)):
        d = np.maximum(np.abs(x0 - x0[i]), np.abs(y0 - y0[i]))
        apart[i] = np.all((d >= s) | (np.arange(len(x0)) == i))
    iso = np.flatnonzero(inside & apart)
    assert len(iso) >= 8
    yy, xx = np.mgrid[0:s, 0:s]
    sky = np.asarray(TWO.sky_sigma, np.float32)
    for i in iso:
        box = sparse.noiseless[y0[i] : y0[i] + s, x0[i] : x0[i] + s]
        np.testing.assert_allclose(box.sum((0, 1)), t["flux"][i], rtol=1e-4)
        # the whole stamp is inside: the model flux less what the 25-pixel stamp cuts
        assert np.all(t["flux"][i] > 0.8 * t["flux_model"][i])
        assert np.all(t["flux"][i] <= 1.01 * t["flux_model"][i])
        light = box.sum(-1)
        cx = (light * xx).sum() / light.sum() + x0[i]
        cy = (light * yy).sum() / light.sum() + y0[i]
        assert abs(cx - t["x"][i]) < 0.15 and abs(cy - t["y"][i]) < 0.15, (i, cx, cy)
        var = np.asarray(noise_variance(box, sky, TWO.gain))
        snr = np.sqrt((box**2 / var).sum((0, 1)))
        np.testing.assert_allclose(t["snr_bands"][i], snr, rtol=1e-4)


def test_edge_galaxies_count_only_what_falls_inside(sparse):
    t = sparse.truth
    c = (TWO.stamp_size - 1) // 2
    x, y = np.rint(t["x"]), np.rint(t["y"])
    near = (np.minimum(x, y) < c - 4) | (np.maximum(x, y) > 511 - c + 4)
    # with 23 galaxies some lie within 8 px of an edge; their stamps are cut
    if near.any():
        assert np.all(t["flux"][near, 1] < t["flux_model"][near, 1])


def test_noise_follows_the_variance(mosaic):
    sky = np.asarray(TWO.sky_sigma, np.float32)
    expect = sky**2 + np.maximum(mosaic.noiseless, 0) / np.float32(TWO.gain)
    np.testing.assert_allclose(mosaic.variance, expect, rtol=1e-6)
    z = (mosaic.image - mosaic.noiseless) / np.sqrt(mosaic.variance)
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03


def test_reproducible_and_key_dependent(mosaic):
    again = simulate_mosaic(jax.random.key(1), TWO, SHAPE, n_galaxies=N, batch=64, progress=True)
    for a, b in zip(again[:3], mosaic[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    for k, v in mosaic.truth.items():
        np.testing.assert_array_equal(again.truth[k], v, err_msg=k)
    other = simulate_mosaic(jax.random.key(3), TWO, SHAPE, n_galaxies=N, progress=False)
    assert not np.allclose(other.truth["x"], mosaic.truth["x"])


def test_several_batches_pad_the_last():
    # 40 galaxies in batches of 32: a full batch and a padded one, same compiled shape
    m = simulate_mosaic(jax.random.key(4), TWO, (96, 96), n_galaxies=40, batch=32, progress=False)
    assert m.truth["flux"].shape == (40, 2) and np.all(m.truth["flux"][:, 1] > 0)
    np.testing.assert_allclose(m.truth["flux"].sum(0), m.noiseless.sum((0, 1)), rtol=1e-4)
    # the padded copies of galaxy 32 were not added: each galaxy is in the image once
    assert len(np.unique(m.truth["flux"][:, 1])) == 40


def test_no_galaxies_is_pure_noise():
    m = simulate_mosaic(jax.random.key(0), LSST_R, (64, 48), n_galaxies=0, progress=False)
    assert m.image.shape == (64, 48, 1) and not m.noiseless.any()
    assert m.truth["x"].shape == (0,) and m.truth["flux"].shape == (0, 1)
    np.testing.assert_allclose(m.variance, 1.0)
    assert 0.8 < float(m.image.std()) < 1.2


def test_density_gives_the_expected_count():
    h, w = 4096, 4096
    area = h * w * (0.2 / 60) ** 2
    assert mosaic_count(LSST_R, (h, w), DEFAULT_DENSITY) == round(25 * area) == 4660
    assert mosaic_count(LSST_R, (h, w), 0.0) == 0
    assert mosaic_count(TWO, (300, 300), 10.0) == round(10 * 300 * 300 * (0.2 / 60) ** 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"shape": (0, 5)}, "shape"),
        ({"shape": (5,)}, "shape"),
        ({"shape": "ab"}, "shape"),
        ({"shape": (2.5, 3)}, "shape"),
        ({"shape": (True, 4)}, "shape"),
        ({"n_galaxies": -1}, "n_galaxies"),
        ({"n_galaxies": 2.5}, "n_galaxies"),
        ({"n_galaxies": 3, "density": 1.0}, "n_galaxies"),
        ({"density": -1.0}, "density"),
        ({"density": math.nan}, "density"),
        ({"density": math.inf}, "density"),
        ({"density": "many"}, "density"),
        ({"batch": 0}, "batch"),
        ({"batch": 1.5}, "batch"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, name):
    kwargs = {"shape": (16, 16), **kwargs}
    with pytest.raises(ValueError, match=f"^{name}:"):
        simulate_mosaic(jax.random.key(0), LSST_R, progress=False, **kwargs)


def test_survey_must_be_a_survey():
    with pytest.raises(TypeError, match="^survey:"):
        simulate_mosaic(jax.random.key(0), "lsst_r", (16, 16), n_galaxies=0)


def test_write_mosaic_cube_round_trip(mosaic, tmp_path):
    h, w = SHAPE
    paths = write_mosaic(tmp_path / "out", mosaic, TWO, ra=150.1, dec=2.2)
    assert set(paths) == {"image", "variance", "psf", "truth"}
    assert all(p.is_file() for p in paths.values())
    assert not list((tmp_path / "out").glob(".tmp-*"))
    with fits.open(paths["image"]) as hdul:
        hdr, data = hdul[0].header, hdul[0].data
    assert data.shape == (2, h, w)  # FITS convention: (bands, h, w)
    np.testing.assert_array_equal(data, np.moveaxis(mosaic.image, -1, 0))
    assert hdr["BUNIT"] == "adu" and hdr["MAGZERO"] == 30.9 and hdr["FILTER"] == "g"
    assert hdr["FILTER2"] == "r" and hdr["MAGZP2"] == 31.0 and hdr["GAIN"] == TWO.gain
    wcs = WCS(hdr).celestial
    assert wcs.wcs.ctype[0] == "RA---TAN" and wcs.wcs.ctype[1] == "DEC--TAN"
    np.testing.assert_allclose(wcs.proj_plane_pixel_scales()[0].to_value("arcsec"), 0.2)
    centre = wcs.pixel_to_world((w - 1) / 2, (h - 1) / 2)
    assert abs(centre.ra.deg - 150.1) < 1e-9 and abs(centre.dec.deg - 2.2) < 1e-9
    # east is left: x increasing lowers RA
    assert wcs.pixel_to_world(w - 1, 0).ra.deg < wcs.pixel_to_world(0, 0).ra.deg
    # galjax's reader gets the image back in (h, w, bands) with its WCS
    back = read_fits(paths["image"])
    np.testing.assert_array_equal(back.data, mosaic.image)
    assert back.wcs is not None
    var = read_fits(paths["variance"])
    np.testing.assert_array_equal(var.data, mosaic.variance)
    assert var.header["BUNIT"] == "adu2"
    psf = fits.getdata(paths["psf"])
    assert psf.shape == (2, 21, 21)
    np.testing.assert_allclose(psf.sum((1, 2)), 1.0, rtol=1e-5)

    t = Table.read(paths["truth"])
    assert len(t) == N and str(t["ra"].unit) == "deg" and str(t["flux_g"].unit) == "adu"
    np.testing.assert_array_equal(t["x"], mosaic.truth["x"])
    np.testing.assert_array_equal(t["flux_r"], mosaic.truth["flux"][:, 1])
    np.testing.assert_array_equal(t["snr"], mosaic.truth["snr"])
    sky = wcs.pixel_to_world(t["x"], t["y"])
    np.testing.assert_allclose(t["ra"], sky.ra.deg, atol=1e-10)
    np.testing.assert_allclose(t["dec"], sky.dec.deg, atol=1e-10)
    assert t.meta["survey"]["name"] == "mosaic_test" and t.meta["shape"] == [h, w]


def test_write_mosaic_single_band_is_2d(tmp_path):
    m = simulate_mosaic(jax.random.key(0), LSST_R, (40, 50), n_galaxies=0, progress=False)
    paths = write_mosaic(tmp_path, m, LSST_R)
    with fits.open(paths["image"]) as hdul:
        assert hdul[0].data.shape == (40, 50) and hdul[0].header["FILTER"] == "r"
        assert hdul[0].header["MAGZERO"] == 31.0 and "FILTER2" not in hdul[0].header
    assert fits.getdata(paths["psf"]).shape == (41, 41)
    t = Table.read(paths["truth"])
    assert len(t) == 0 and "flux_r" in t.colnames and "ra" in t.colnames


@pytest.mark.parametrize(
    "kwargs, err, name",
    [
        ({"ra": math.nan}, ValueError, "ra"),
        ({"dec": 91.0}, ValueError, "dec"),
        ({"survey": TWO}, ValueError, "mosaic"),
        ({"survey": "lsst_r"}, TypeError, "survey"),
        ({"mosaic": (1, 2, 3, 4)}, TypeError, "mosaic"),
    ],
)
def test_write_mosaic_errors(kwargs, err, name, tmp_path):
    m = simulate_mosaic(jax.random.key(0), LSST_R, (8, 8), n_galaxies=0, progress=False)
    args = {"mosaic": m, "survey": LSST_R, **kwargs}
    with pytest.raises(err, match=f"^{name}:"):
        write_mosaic(tmp_path, **args)
    assert not list(tmp_path.iterdir())  # nothing written
    assert isinstance(m, Mosaic)
