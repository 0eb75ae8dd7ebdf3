"""Tests for galjax.io.fits: FITS/table round trips, atomic writes, cutouts."""

import os

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import Table
from astropy.wcs import WCS

from galjax.io import (
    cutout,
    read_fits,
    read_fits_stack,
    read_table,
    write_fits,
    write_table,
)


def _wcs(scale_deg=0.168 / 3600):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [4.0, 5.0]
    w.wcs.cdelt = [-scale_deg, scale_deg]
    return w


def _image(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------ FITS images


@pytest.mark.parametrize("bands", [1, 3])
def test_write_read_round_trip_keeps_header_and_wcs(tmp_path, bands):
    img = _image((6, 5, bands))
    header = fits.Header({"OBJECT": "blend", "EXPTIME": 1200.0})
    path = write_fits(tmp_path / "img.fits", img, header=header, wcs=_wcs())
    back = read_fits(path)
    np.testing.assert_array_equal(back.data, img)
    assert back.data.dtype == np.float32
    assert back.header["OBJECT"] == "blend" and back.header["EXPTIME"] == 1200.0
    sky0 = _wcs().pixel_to_world(2.0, 3.0)
    assert back.wcs.pixel_to_world(2.0, 3.0).separation(sky0).arcsec < 1e-6
    # On disk: numpy (bands, h, w), i.e. NAXIS1 = w; a single band is a plain 2-D image.
    on_disk = fits.getdata(path)
    assert on_disk.shape == ((6, 5) if bands == 1 else (bands, 6, 5))
    assert fits.getheader(path)["NAXIS1"] == 5


def test_stack_round_trip(tmp_path):
    stack = _image((4, 6, 5, 2))
    path = write_fits(tmp_path / "stack.fits", stack)
    assert fits.getdata(path).shape == (4, 2, 6, 5)
    np.testing.assert_array_equal(read_fits_stack(path).data, stack)
    with pytest.raises(ValueError, match="read_fits_stack"):
        read_fits(path)
    # A single image reads as a stack of one.
    write_fits(tmp_path / "one.fits", stack[0])
    assert read_fits_stack(tmp_path / "one.fits").data.shape == (1, 6, 5, 2)


def test_read_scaled_int_and_hdu_selection(tmp_path):
    values = np.arange(12, dtype=np.float64).reshape(3, 4) * 0.5 + 10
    scaled = fits.ImageHDU(values.copy(), name="SCI")
    scaled.scale("int16", bscale=0.5, bzero=10)
    table = fits.BinTableHDU(Table({"a": [1, 2]}), name="CAT")
    fits.HDUList([fits.PrimaryHDU(), table, scaled]).writeto(tmp_path / "multi.fits")
    # Default: first HDU with image data (the empty primary and the table are skipped).
    img = read_fits(tmp_path / "multi.fits")
    assert img.data.shape == (3, 4, 1) and img.data.dtype == np.float32
    np.testing.assert_allclose(img.data[..., 0], values)
    np.testing.assert_allclose(read_fits(tmp_path / "multi.fits", "SCI").data, img.data)
    np.testing.assert_allclose(read_fits(tmp_path / "multi.fits", 2).data, img.data)
    assert img.wcs is None
    with pytest.raises(ValueError, match="hdu"):
        read_fits(tmp_path / "multi.fits", 7)
    with pytest.raises(ValueError, match="hdu.*no image"):
        read_fits(tmp_path / "multi.fits", "CAT")
    # Writing that header back with float data must not re-apply BSCALE/BZERO.
    write_fits(tmp_path / "copy.fits", img.data, header=img.header)
    np.testing.assert_allclose(read_fits(tmp_path / "copy.fits").data, img.data)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_read_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.fits"
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        read_fits(missing)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"this is not a FITS file" * 200)
    with pytest.raises(ValueError, match="junk.fits"):
        read_fits(junk)
    # A valid header whose data unit is cut short.
    write_fits(tmp_path / "full.fits", _image((64, 64, 2)))
    raw = (tmp_path / "full.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(raw[: 2880 + 1000])
    with pytest.raises(ValueError, match="cut.fits"):
        read_fits(tmp_path / "cut.fits")


def test_write_extra_hdus_and_bad_input(tmp_path):
    extra = [Table({"x": [1.0, 2.0]}), fits.ImageHDU(np.ones((2, 2)), name="PSF")]
    path = write_fits(tmp_path / "e.fits", _image((4, 4, 1)), extra_hdus=extra)
    with fits.open(path) as hdul:
        assert len(hdul) == 3 and hdul["PSF"].data.shape == (2, 2)
    np.testing.assert_array_equal(read_table(path)["x"], [1.0, 2.0])
    with pytest.raises(TypeError, match="extra_hdus"):
        write_fits(tmp_path / "f.fits", _image((4, 4, 1)), extra_hdus=[np.ones(3)])
    with pytest.raises(ValueError, match="image"):
        write_fits(tmp_path / "f.fits", np.ones((4, 4)))
    with pytest.raises(TypeError, match="image"):
        write_fits(tmp_path / "f.fits", "pixels")
    with pytest.raises(TypeError, match="wcs"):
        write_fits(tmp_path / "f.fits", _image((4, 4, 1)), wcs="RA---TAN")
    with pytest.raises(FileNotFoundError, match="path"):
        write_fits(tmp_path / "nofolder" / "f.fits", _image((4, 4, 1)))


def test_atomic_write_leaves_no_temp_and_survives_failure(tmp_path, monkeypatch):
    path = tmp_path / "img.fits"
    first = _image((4, 4, 2), seed=1)
    write_fits(path, first)
    write_fits(path, _image((4, 4, 2), seed=2))
    assert os.listdir(tmp_path) == ["img.fits"]
    before = path.read_bytes()

    def broken_writeto(self, name, *args, **kwargs):
        with open(name, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken_writeto)
    with pytest.raises(OSError, match="disk full"):
        write_fits(path, _image((4, 4, 2), seed=3))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["img.fits"]
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="path"):
        write_fits(path, first, overwrite=False)


def test_read_real_hsc_cube(data_dir):
    path = data_dir / "hsc_blends_scarlet" / "hsc_ra150.24071_dec2.06514.fits"
    cube = read_fits(path)
    assert cube.data.shape == (54, 54, 5) and cube.data.dtype == np.float32
    np.testing.assert_array_equal(cube.data[..., 2], fits.getdata(path)[2])
    assert cube.wcs is not None and cube.wcs.naxis == 2
    scale = np.abs(cube.wcs.proj_plane_pixel_scales()[0].to_value(u.deg)) * 3600
    assert abs(scale - 0.168) < 1e-6


@pytest.mark.filterwarnings("ignore:The following header keyword is invalid")
def test_read_real_scaled_int16_field(data_dir):
    path = data_dir / "field_eso_ntt_emmi_sep" / "image.fits"
    with fits.open(path) as hdul:
        assert hdul[0].header["BITPIX"] == 16 and "BZERO" in hdul[0].header
        expected = hdul[0].data
    img = read_fits(path)
    assert img.data.shape == (256, 256, 1) and img.data.dtype == np.float32
    np.testing.assert_array_equal(img.data[..., 0], expected)
    assert img.wcs is None


# ----------------------------------------------------------------------- tables


@pytest.mark.parametrize("name", ["cat.ecsv", "cat.fits"])
def test_table_round_trip(tmp_path, name):
    t = Table({"x": [1.5, 2.5], "flux": [3.0, 4.0] * u.Jy, "id": [1, 2]})
    t.meta["survey"] = "HSC"
    path = write_table(tmp_path / name, t)
    back = read_table(path)
    np.testing.assert_array_equal(back["x"], t["x"])
    assert back["flux"].unit == u.Jy
    assert back.meta.get("survey", back.meta.get("SURVEY")) == "HSC"
    assert os.listdir(tmp_path) == [name]
    with pytest.raises(FileExistsError, match="path"):
        write_table(path, t, overwrite=False)


def test_table_from_columns_and_errors(tmp_path):
    path = write_table(tmp_path / "c.ecsv", {"a": [1, 2, 3]})
    assert list(read_table(path)["a"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="path"):
        write_table(tmp_path / "c.unknown", {"a": [1]})
    with pytest.raises(TypeError, match="table"):
        write_table(tmp_path / "d.ecsv", 3.0)
    with pytest.raises(FileNotFoundError, match="nothing.ecsv"):
        read_table(tmp_path / "nothing.ecsv")
    (tmp_path / "bad.fits").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="bad.fits"):
        read_table(tmp_path / "bad.fits")


# ---------------------------------------------------------------------- cutouts


def test_cutout_interior_matches_cutout2d():
    img = _image((20, 30, 3))
    c = cutout(img, (12, 7), (5, 7))
    assert c.data.shape == (5, 7, 3) and np.all(c.mask == 1)
    # x = column, y = row: rows 5..9, columns 9..15.
    np.testing.assert_array_equal(c.data, img[5:10, 9:16])
    for b in range(3):
        ref = Cutout2D(img[..., b], (12, 7), (5, 7))
        np.testing.assert_array_equal(c.data[..., b], ref.data)
    assert c.origin == (9, 5) and c.position == (3.0, 2.0)


def test_cutout_partial_fills_and_masks():
    img = np.ones((10, 10, 2), np.float32)
    c = cutout(img, (0, 0), 4)
    assert c.data.shape == (4, 4, 2)
    assert c.mask.sum() == 2 * 2 * 2
    np.testing.assert_array_equal(c.data, c.mask)
    assert c.origin == (-2, -2)


def test_cutout_with_wcs_and_skycoord():
    img = _image((20, 20, 2))
    wcs = _wcs()
    sky = wcs.pixel_to_world(11, 8)
    by_sky = cutout(img, sky, 5, wcs=wcs)
    by_pix = cutout(img, (11, 8), 5, wcs=wcs)
    np.testing.assert_array_equal(by_sky.data, by_pix.data)
    assert by_sky.wcs.pixel_to_world(*by_sky.position).separation(sky).arcsec < 1e-6
    by_angle = cutout(img, sky, 5 * 0.168 * u.arcsec, wcs=wcs)
    assert by_angle.data.shape == (5, 5, 2)


def test_cutout_bad_input():
    img = _image((10, 10, 1))
    with pytest.raises(ValueError, match="wcs"):
        cutout(img, _wcs().pixel_to_world(1, 1), 3)
    with pytest.raises(ValueError, match="position"):
        cutout(img, (100, 100), 3)
    with pytest.raises(ValueError, match="position"):
        cutout(img, (1, 2, 3), 3)
    with pytest.raises(ValueError, match="size"):
        cutout(img, (5, 5), 0)
    with pytest.raises(ValueError, match="image"):
        cutout(img[..., 0], (5, 5), 3)
