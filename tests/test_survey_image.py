"""galjax.io.survey: survey images read by windows, their noise, masks, WCS and
zeropoints; pixel -> sky; output mosaics written tile by tile."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS
from astropy.wcs.wcsapi import SlicedLowLevelWCS

from galjax.io import (
    SurveyImage,
    create_fits_image,
    open_fits_image,
    open_survey_image,
    pixel_to_sky,
    sky_header,
)

H, W = 64, 80
WINDOW = (5, 37, 11, 60)  # y0, y1, x0, x1


def _wcs(scale_arcsec=0.2) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [W / 2, H / 2]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return wcs


def _image(bands=1, seed=0) -> np.ndarray:
    """``(H, W, bands)`` float32 in galjax order."""
    return np.random.default_rng(seed).normal(size=(H, W, bands)).astype(np.float32)


def _write(path, data, **cards):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


def _cube(img):  # galjax (h, w, bands) -> FITS order (bands, h, w)
    return np.moveaxis(img, -1, 0)


def _slice(a, window=WINDOW):
    y0, y1, x0, x1 = window
    return a[y0:y1, x0:x1]


def test_single_fits_with_wcs_unit_zeropoint(tmp_path):
    img = _image()
    img[10, 20, 0] = np.nan
    header = _wcs().to_header()
    header.update(BUNIT="nJy", MAGZERO=31.4, ZP=20.0, FILTER="HSC-R")
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(img[..., 0], header=header).writeto(path)
    s = open_survey_image(path)
    assert (s.shape, s.bands, s.band_names, s.unit) == ((H, W), 1, ("HSC-R",), "nJy")
    assert s.zeropoint == (31.4,)  # MAGZERO comes before ZP
    assert s.noise == "none" and s.pixel_scale == pytest.approx(0.2)
    assert s.wcs is not None and s.wcs.naxis == 2
    win = s.read(*WINDOW)
    assert win.ivar is None and win.data.dtype == np.float32 and win.good.dtype == bool
    np.testing.assert_array_equal(win.data, _slice(img))
    whole = s.read(0, H, 0, W)
    assert np.isnan(whole.data[10, 20, 0]) and not whole.good[10, 20, 0]
    assert whole.good.sum() == H * W - 1
    hdr = sky_header(s)
    assert hdr["BUNIT"] == "nJy" and hdr["CTYPE1"] == "RA---TAN" and hdr["MAGZERO"] == 31.4


def test_cube_in_an_extension(tmp_path):
    img = _image(3)
    cube = fits.ImageHDU(_cube(img), name="SCI")
    for k, band in enumerate("gri", 1):
        cube.header[f"FILTER{k}"] = band
    cube.header.update(_wcs().to_header())
    cube.header["CTYPE3"] = "WAVE"
    path = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), cube]).writeto(path)
    for how in ({}, {"hdu": "SCI"}, {"hdu": 1}):
        s = open_survey_image(path, **how)
        assert s.bands == 3 and s.band_names == ("g", "r", "i") and s.wcs.naxis == 2
        np.testing.assert_array_equal(s.read(*WINDOW).data, _slice(img))
    assert open_survey_image(str(path) + "[SCI]").bands == 3
    with pytest.raises(ValueError, match="^image: .* no HDU 'NOPE'"):
        open_survey_image(path, hdu="NOPE")
    with pytest.raises(ValueError, match="^image: .* no HDU 5"):
        open_survey_image(path, hdu=5)
    with pytest.raises(ValueError, match="^image: .* no HDU with image data"):
        open_survey_image(_write(tmp_path / "empty_primary.fits", None))


def test_leading_unit_axes_are_dropped(tmp_path):
    img = _image()
    path = _write(tmp_path / "radio.fits", img[..., 0][None, None])
    s = open_survey_image(path)
    assert (s.shape, s.bands) == ((H, W), 1)
    np.testing.assert_array_equal(s.read(*WINDOW).data, _slice(img))


def test_per_band_files(tmp_path):
    img = _image(2)
    paths = []
    for k, (band, zp) in enumerate((("g", 27.0), ("r", 28.5))):
        header = _wcs().to_header() if k == 0 else fits.Header()
        header.update(MAGZP=zp, FILTER=band, BUNIT="adu")
        paths.append(tmp_path / f"{band}.fits")
        fits.PrimaryHDU(img[..., k], header=header).writeto(paths[-1])
    s = open_survey_image(paths)
    assert s.bands == 2 and s.band_names == ("g", "r") and s.zeropoint == (27.0, 28.5)
    assert s.unit == "adu" and s.wcs is not None
    np.testing.assert_array_equal(s.read(*WINDOW).data, _slice(img))
    # a band without zeropoint: none is claimed for any band
    paths.append(_write(tmp_path / "i.fits", img[..., 0]))
    assert open_survey_image(paths).zeropoint is None


def test_arrays(tmp_path):
    img = _image(2)
    s = open_survey_image(img)
    assert s.bands == 2 and s.band_names == ("band0", "band1")
    assert s.wcs is None and s.unit is None and s.zeropoint is None and s.pixel_scale is None
    np.testing.assert_array_equal(s.read(*WINDOW).data, _slice(img))
    two_d = open_survey_image(img[..., 1].astype(np.int16), band_names=["r"])
    assert two_d.band_names == ("r",)
    assert two_d.read(*WINDOW).data.dtype == np.float32
    expected = _slice(img[..., 1]).astype(np.int16)
    np.testing.assert_array_equal(two_d.read(*WINDOW).data[..., 0], expected)
    np.save(tmp_path / "big.npy", img)  # a memory map is sliced like any array
    mm = np.load(tmp_path / "big.npy", mmap_mode="r")
    np.testing.assert_array_equal(open_survey_image(mm).read(*WINDOW).data, _slice(img))


def test_pickles_small_for_other_processes(tmp_path):
    path = _write(tmp_path / "img.fits", np.zeros((512, 512), np.float32))
    s = open_survey_image(path, sigma=2.0, zeropoint=27.0)
    blob = pickle.dumps(s)
    assert len(blob) < 10_000  # file names, not pixels
    again = pickle.loads(blob)
    assert isinstance(again, SurveyImage) and again == s
    assert float(again.read(0, 2, 0, 2).ivar[0, 0, 0]) == 0.25


@pytest.mark.parametrize("kind", ["stddev", "variance", "ivar"])
@pytest.mark.parametrize("cls", [NDData, CCDData])
def test_nddata_uncertainty_and_mask(kind, cls):
    rng = np.random.default_rng(1)
    data = _cube(_image(2))  # astropy order (bands, h, w)
    sig = rng.uniform(0.5, 2.0, data.shape)
    unc = {
        "stddev": StdDevUncertainty(sig),
        "variance": VarianceUncertainty(sig**2),
        "ivar": InverseVariance(sig**-2),
    }[kind]
    bad = np.zeros(data.shape, bool)
    bad[1, 10, 20] = True
    nd = cls(data, uncertainty=unc, mask=bad, unit="electron/s", wcs=_wcs(), meta={"zp": 25.0})
    s = open_survey_image(nd)
    assert s.bands == 2 and s.unit == "electron / s" and s.zeropoint == (25.0, 25.0)
    assert s.noise == ("weight" if kind == "ivar" else "variance") and s.wcs is not None
    win = s.read(0, H, 0, W)
    np.testing.assert_array_equal(win.data, np.moveaxis(data, 0, -1))
    expected = np.moveaxis(sig**-2, 0, -1)
    expected[10, 20, 1] = 0.0
    np.testing.assert_allclose(win.ivar, expected, rtol=1e-12)
    assert not win.good[10, 20, 1] and win.good[10, 20, 0] and win.good.sum() == 2 * H * W - 1
    with pytest.raises(ValueError, match="^uncertainty: .*give one noise"):
        open_survey_image(nd, sigma=1.0)


def test_nddata_uncertainty_units_and_unknown():
    data = np.ones((H, W), np.float32)
    nd = NDData(data, unit="Jy", uncertainty=StdDevUncertainty(np.full((H, W), 2.0), unit="mJy"))
    assert open_survey_image(nd).read(0, 1, 0, 1).ivar[0, 0, 0] == pytest.approx(0.25e6)
    with pytest.raises(ValueError, match="^uncertainty: "):
        open_survey_image(NDData(data, uncertainty=UnknownUncertainty(data)))
    plain = open_survey_image(NDData(data, meta={"BUNIT": "ADU", "FILTER": "V"}), weight=data)
    assert plain.unit == "ADU" and plain.band_names == ("V",) and plain.noise == "weight"


def test_noise_kinds(tmp_path):
    img = _image(2)
    var = np.random.default_rng(2).uniform(0.5, 2.0, img.shape)
    var[3, 4, 0], var[5, 6, 1], var[7, 8, 0] = 0.0, -1.0, np.nan
    unusable = ~(np.isfinite(var) & (var > 0))
    with np.errstate(divide="ignore"):
        inverse = 1.0 / var
    expected = np.where(unusable, 0.0, inverse)
    for s in (
        open_survey_image(img, variance=var),
        open_survey_image(img, weight=np.where(unusable, var, inverse)),
        open_survey_image(img, variance=_write(tmp_path / "var.fits", _cube(var))),
    ):
        win = s.read(0, H, 0, W)
        assert win.ivar.dtype == np.float64
        np.testing.assert_allclose(win.ivar, expected, rtol=1e-6)
        np.testing.assert_array_equal(win.good, ~unusable)
        np.testing.assert_allclose(s.read(*WINDOW).ivar, _slice(expected), rtol=1e-6)
    weights = [_write(tmp_path / f"w{k}.fits", inverse[..., k]) for k in range(2)]
    per_band = open_survey_image(img, weight=weights).read(0, H, 0, W)
    np.testing.assert_array_equal(per_band.good, ~unusable)
    scalar = open_survey_image(img, sigma=0.5).read(*WINDOW)
    assert np.all(scalar.ivar == 4.0) and scalar.ivar.shape == _slice(img).shape
    bands = open_survey_image(img, sigma=[1.0, 2.0]).read(*WINDOW)
    assert np.all(bands.ivar[..., 0] == 1.0) and np.all(bands.ivar[..., 1] == 0.25)
    img[1, 2, 1] = np.inf  # unusable data: no weight either
    win = open_survey_image(img, sigma=1.0).read(0, H, 0, W)
    assert win.ivar[1, 2, 1] == 0.0 and not win.good[1, 2, 1] and win.ivar[1, 2, 0] == 1.0


def test_mask_nonzero_is_bad(tmp_path):
    img = _image(2)
    mask2d = np.zeros((H, W), np.int16)
    mask2d[4, 5] = 1
    mask2d[6, 7] = 1024  # any bit set
    s = open_survey_image(img, mask=_write(tmp_path / "mask.fits", mask2d), sigma=1.0)
    win = s.read(0, H, 0, W)
    for y, x in ((4, 5), (6, 7)):
        assert not win.good[y, x].any() and np.all(win.ivar[y, x] == 0.0)
    assert win.good.sum() == 2 * (H * W - 2)
    mask3d = np.zeros(img.shape, bool)
    mask3d[8, 9, 1] = True
    win = open_survey_image(img, mask=mask3d).read(8, 10, 9, 11)
    assert win.ivar is None and win.good[0, 0].tolist() == [True, False]
    assert win.good.sum() == 7


def test_zeropoints(tmp_path):
    data = np.zeros((H, W), np.float32)
    hsc = open_survey_image(_write(tmp_path / "hsc.fits", data, FLUXMAG0=63095734448.0194))
    assert hsc.zeropoint == (pytest.approx(27.0),)
    assert open_survey_image(tmp_path / "hsc.fits", zeropoint=30).zeropoint == (30.0,)
    assert open_survey_image(np.zeros((4, 4, 2)), zeropoint=[1, 2]).zeropoint == (1.0, 2.0)
    for key in ("MAGZP", "MAGZPT", "ZEROPT", "ZP", "PHOTZP"):
        path = _write(tmp_path / f"{key}.fits", data, **{key: 26.5})
        assert open_survey_image(path).zeropoint == (26.5,)
    bad = _write(tmp_path / "bad_zp.fits", data, FLUXMAG0=-1.0)
    with pytest.raises(ValueError, match="^zeropoint: header key FLUXMAG0"):
        open_survey_image(bad)
    assert open_survey_image(bad, zeropoint=27.0).zeropoint == (27.0,)  # override wins
    for value in (np.nan, [27.0], [27.0, np.inf]):
        with pytest.raises(ValueError, match="^zeropoint: "):
            open_survey_image(np.zeros((4, 4, 2)), zeropoint=value)


def _errors(tmp_path):
    """``(exception, message pattern, arguments)`` of each bad input."""
    img = _image(2)
    good = _write(tmp_path / "good.fits", img[..., 0])
    other = _write(tmp_path / "other.fits", np.zeros((H + 1, W), np.float32))
    text = tmp_path / "text.fits"
    text.write_text("not a FITS file" * 300)
    raw = good.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[: len(raw) - 2880 * 3])
    four_d = _write(tmp_path / "4d.fits", np.zeros((2, 2, 4, 4), np.float32))
    sliced = NDData(img[..., 0], wcs=SlicedLowLevelWCS(_wcs(), Ellipsis))
    unreadable = "^image: .* is not a readable FITS file"
    return [
        (FileNotFoundError, "^image: no such file", dict(image=tmp_path / "nope.fits")),
        (ValueError, unreadable, dict(image=text)),
        (ValueError, unreadable + r" \(truncated\)", dict(image=cut)),
        (ValueError, r"^image: HDU 0 .* shape \(2, 2, 4, 4\)", dict(image=four_d)),
        (ValueError, r"^image\[1\]: shape \(65, 80\) differs", dict(image=[good, other])),
        (FileNotFoundError, r"^image\[1\]: no such file", dict(image=[good, "x.fits"])),
        (ValueError, "^image: expected a file", dict(image=[])),
        (ValueError, "^image: empty image", dict(image=np.zeros((0, 5)))),
        (ValueError, r"^image: expected shape \(h, w\)", dict(image=np.zeros(5))),
        (ValueError, "^image: expected a real numeric", dict(image=np.array([["a"]]))),
        (ValueError, "^image: NDData data has shape", dict(image=NDData(np.zeros(5)))),
        (
            ValueError,
            r"^variance: shape \(65, 80, 1\) differs from the image's .* = \(64, 80, 2\)",
            dict(image=img, variance=other),
        ),
        (ValueError, r"^weight: shape \(64, 80, 1\) differs", dict(image=img, weight=img[..., 0])),
        (ValueError, r"^mask: shape \(64, 81, 1\)", dict(image=img, mask=np.zeros((H, W + 1)))),
        (FileNotFoundError, "^mask: no such file", dict(image=img, mask=tmp_path / "m.fits")),
        (
            ValueError,
            "^variance, weight, sigma: .*variance and sigma",
            dict(image=img, variance=img, sigma=1),
        ),
        (ValueError, "^sigma: ", dict(image=img, sigma=0.0)),
        (ValueError, "^sigma: ", dict(image=img, sigma=np.nan)),
        (ValueError, "^sigma: ", dict(image=img, sigma=[1.0, 2.0, 3.0])),
        (ValueError, "^band_names: ", dict(image=img, band_names=["g"])),
        (ValueError, "^wcs: expected an astropy WCS", dict(image=sliced)),
    ]


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_errors_name_the_argument(tmp_path):
    for exc, message, kwargs in _errors(tmp_path):
        with pytest.raises(exc, match=message):
            open_survey_image(**kwargs)


def test_window_errors():
    s = open_survey_image(np.zeros((H, W)))
    for bounds in ((0, 0, 0, 5), (3, 2, 0, 5), (0, H + 1, 0, 5), (-1, 4, 0, 5), (0, 4, 5, W + 1)):
        with pytest.raises(ValueError, match="^window: .*outside the 64x80 image"):
            s.read(*bounds)
    for bounds in ((0.0, 4, 0, 5), (0, True, 0, 5)):
        with pytest.raises(ValueError, match="^window: expected integer"):
            s.read(*bounds)
    assert s.read(np.int64(0), H, 0, W).data.shape == (H, W, 1)


def test_scaled_integer_and_compressed(tmp_path):
    counts = np.random.default_rng(3).integers(-30000, 30000, (2, H, W))
    values = (counts * 0.5 + 100.0).astype(np.float32)  # exact in int16 with BSCALE/BZERO
    hdu = fits.PrimaryHDU(values.copy())
    hdu.scale("int16", bscale=0.5, bzero=100.0)
    hdu.writeto(tmp_path / "scaled.fits")
    assert fits.getheader(tmp_path / "scaled.fits")["BITPIX"] == 16
    s = open_survey_image(tmp_path / "scaled.fits")
    np.testing.assert_array_equal(s.read(*WINDOW).data, _slice(np.moveaxis(values, 0, -1)))
    img = _image(2)
    packed = tmp_path / "packed.fits"
    hdu = fits.CompImageHDU(_cube(img), compression_type="GZIP_1", quantize_level=0.0)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(packed)
    np.testing.assert_array_equal(open_survey_image(packed).read(*WINDOW).data, _slice(img))


def test_windows_of_a_large_file_load_only_the_window(tmp_path):
    n = 4096  # 64 MB of float32 on disk, a sparse file
    path = create_fits_image(tmp_path / "big.fits", (n, n))
    var = create_fits_image(tmp_path / "var.fits", (n, n))
    with open_fits_image(var) as out:
        out[1000:1512, 2000:2512] = 4.0
    s = open_survey_image(path, variance=var, mask=np.zeros((n, n), np.uint8))
    tracemalloc.start()
    try:
        win = s.read(1000, 1512, 2000, 2512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.all(win.ivar == 0.25) and win.good.all() and win.data.shape == (512, 512, 1)
    assert peak < 16e6, f"reading a 512x512 window allocated {peak / 1e6:.0f} MB"


def test_pixel_to_sky_matches_astropy():
    wcs = _wcs()
    x, y = np.meshgrid(np.arange(0, W, 7.5), np.arange(0, H, 5.0))
    ra, dec = pixel_to_sky(wcs, x, y)
    sky = wcs.pixel_to_world(x, y)
    assert ra.dtype == np.float64 and ra.shape == x.shape
    np.testing.assert_allclose(ra, sky.ra.deg, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dec, sky.dec.deg, rtol=0, atol=1e-12)
    # pixel (0, 0) is the centre of the first pixel: FITS pixel (1, 1)
    ra0, dec0 = wcs.all_pix2world([[1.0, 1.0]], 1)[0]
    np.testing.assert_allclose(pixel_to_sky(wcs, 0, 0), (ra0, dec0), rtol=0, atol=1e-12)
    swapped = WCS(naxis=2)  # latitude first: still (ra, dec) out
    swapped.wcs.ctype = ["DEC--TAN", "RA---TAN"]
    swapped.wcs.crval = [2.2, 150.1]
    swapped.wcs.cdelt = [1e-4, 1e-4]
    swapped.wcs.crpix = [1.0, 1.0]  # FITS pixel 1 = galjax pixel 0
    ra_s, dec_s = pixel_to_sky(swapped, 0.0, 0.0)
    assert float(ra_s) == pytest.approx(150.1) and float(dec_s) == pytest.approx(2.2)
    with pytest.raises(ValueError, match="^wcs: "):
        pixel_to_sky(None, 0.0, 0.0)


@pytest.mark.parametrize("bands", [1, 2])
def test_create_and_open_fits_image_roundtrip(tmp_path, bands):
    src = open_survey_image(np.zeros((H, W, bands)), zeropoint=27.0)
    header = sky_header(src)
    header.update(_wcs().to_header())
    header["BUNIT"] = "nJy"
    header["NAXIS3"] = 99  # structural cards of the given header are ignored
    path = create_fits_image(tmp_path / "model.fits", (H, W, bands), header)
    assert path.stat().st_size % 2880 == 0
    with fits.open(path) as hdul:
        assert hdul[0].data.shape == ((bands, H, W) if bands > 1 else (H, W))
        assert hdul[0].header["BITPIX"] == -32 and hdul[0].header["BUNIT"] == "nJy"
        assert not hdul[0].data.any()
    tile = _image(bands)[:20, :30]
    with open_fits_image(path) as out:
        assert out.shape == ((bands, H, W) if bands > 1 else (H, W))
        if bands > 1:
            out[:, 10:30, 40:70] = np.moveaxis(tile, -1, 0)
        else:
            out[10:30, 40:70] = tile[..., 0]
    size = path.stat().st_size
    back = open_survey_image(path)
    assert path.stat().st_size == size and back.bands == bands and back.unit == "nJy"
    assert back.wcs is not None and back.zeropoint == (27.0,) * bands
    np.testing.assert_array_equal(back.read(10, 30, 40, 70).data, tile)
    assert not back.read(0, 10, 0, W).data.any()


def test_create_fits_image_errors(tmp_path):
    with pytest.raises(ValueError, match="^shape_hwb: "):
        create_fits_image(tmp_path / "a.fits", (0, 5))
    with pytest.raises(ValueError, match="^dtype: "):
        create_fits_image(tmp_path / "a.fits", (4, 5), dtype=np.complex64)
    with pytest.raises(FileNotFoundError, match="^path: "), open_fits_image(tmp_path / "x.fits"):
        pass
    path = create_fits_image(tmp_path / "i.fits", (4, 5, 2), dtype=np.int16)
    data = fits.getdata(path)
    assert data.shape == (2, 4, 5) and data.dtype.kind == "i" and data.dtype.itemsize == 2


@pytest.mark.filterwarnings("ignore:The following header keyword is invalid")
def test_eso_field_with_rms_map(data_dir):
    folder = data_dir / "field_eso_ntt_emmi_sep"
    if not (folder / "image.fits").is_file() or not (folder / "rms.fits").is_file():
        pytest.skip("ESO field not in the shared data")
    image = fits.getdata(folder / "image.fits").astype(np.float32)
    rms = fits.getdata(folder / "rms.fits").astype(np.float64)
    s = open_survey_image(folder / "image.fits", variance=rms**2)
    assert s.shape == (256, 256) and s.bands == 1 and s.noise == "variance"
    assert s.wcs is None and s.unit is None and s.pixel_scale is None  # blank CTYPE, BUNIT
    win = s.read(100, 164, 30, 158)
    np.testing.assert_allclose(win.data[..., 0], image[100:164, 30:158], rtol=1e-6)
    np.testing.assert_allclose(win.ivar[..., 0], 1.0 / rms[100:164, 30:158] ** 2, rtol=1e-6)
    assert win.good.all()
    with pytest.raises(ValueError, match="^wcs: "):
        pixel_to_sky(s.wcs, 0.0, 0.0)
