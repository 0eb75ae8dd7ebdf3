"""Tests for galjax.io.datasets on the real data in ../shared/data."""

import shutil

import numpy as np
import pytest
from astropy.io import fits

from galjax.image import transforms
from galjax.io import (
    load_cosmos,
    load_first,
    load_fits_folder,
    load_hsc_fits,
    load_hsc_npz,
    load_sep_field,
    write_fits,
)
from galjax.io.datasets import _crop_or_pad_np

# ----------------------------------------------------------------------- COSMOS


def test_load_cosmos_stacked(data_dir):
    s = load_cosmos(data_dir / "cosmos_hst_f814w_100", stamp_size=64)
    assert s.images.shape == (100, 64, 64, 1) and s.images.dtype == np.float32
    assert s.psfs.shape == (100, 65, 51, 1) and s.psfs.dtype == np.float32
    np.testing.assert_allclose(s.psfs.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    assert s.noise_variance.shape == (100,) and np.all(s.noise_variance > 0)
    assert s.pixel_scale == 0.03
    # Photometry table joined in the catalogue's own row order.
    assert list(s.catalog["IDENT"][:3]) == [0, 1, 2]
    assert {"ZPHOT", "flux_radius", "NOISE_VARIANCE"} <= set(s.catalog.colnames)
    assert 0.0 < np.min(s.catalog["ZPHOT"]) and np.max(s.catalog["ZPHOT"]) < 5.0


def test_load_cosmos_list_and_centring(data_dir):
    d = data_dir / "cosmos_hst_f814w_100"
    s = load_cosmos(d)
    assert len(s.images) == 100
    sizes = {im.shape[0] for im in s.images}
    assert min(sizes) == 16 and max(sizes) == 190
    with fits.open(d / "real_galaxy_images_extension.fits") as hdul:
        np.testing.assert_array_equal(s.images[4][..., 0], hdul[4].data.astype(np.float32))
    # The stacked stamps are centre crops/pads with transforms.crop_or_pad's centring.
    stacked = load_cosmos(d, stamp_size=33)
    for i in (0, 4, 17):
        np.testing.assert_array_equal(
            stacked.images[i], np.asarray(transforms.crop_or_pad(s.images[i], 33, 33))
        )


@pytest.mark.parametrize("shape", [(5, 4, 1), (8, 9, 2), (3, 3, 1)])
@pytest.mark.parametrize("target", [(4, 6), (7, 7)])
def test_numpy_crop_or_pad_matches_transforms(shape, target):
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(
        _crop_or_pad_np(a, *target), np.asarray(transforms.crop_or_pad(a, *target))
    )


def test_load_cosmos_errors(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="directory"):
        load_cosmos(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="stamp_size"):
        load_cosmos(data_dir / "cosmos_hst_f814w_100", stamp_size=0)
    with pytest.raises(ValueError, match="directory"):
        load_cosmos(tmp_path)  # no catalogue inside
    name = "real_galaxy_catalog_26_extension_example.fits"
    shutil.copy(data_dir / "cosmos_hst_f814w_100" / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="GAL_FILENAME"):
        load_cosmos(tmp_path)


# -------------------------------------------------------------------------- HSC


def test_load_hsc_npz_variance(data_dir):
    scene = load_hsc_npz(data_dir / "hsc_blends_scarlet" / "hsc_cosmos_35.npz")
    assert scene.images.shape == (58, 48, 5) and scene.images.dtype == np.float32
    assert scene.psfs.shape == (43, 43, 5)
    np.testing.assert_allclose(scene.psfs.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    assert scene.variance.shape == scene.images.shape and scene.variance_source == "variance"
    assert np.all(np.isfinite(scene.variance)) and np.all(scene.variance > 0)
    assert np.all(scene.mask == 1) and scene.mask_bits.shape == scene.images.shape
    assert scene.filters == ("g", "r", "i", "z", "y") and scene.pixel_scale == 0.168
    assert scene.positions.shape == (7, 2)
    # Catalogue (x, y): every source sits on a bright pixel at image[y, x].
    total = scene.images.sum(-1)
    x, y = scene.positions.astype(int).T
    assert np.all(total[y, x] > np.median(total))
    # Masking by HSC bits: 32 is set on many pixels of this file.
    masked = load_hsc_npz(data_dir / "hsc_blends_scarlet" / "hsc_cosmos_35.npz", bad_bits=32)
    bad = masked.mask == 0
    assert bad.any() and np.all(np.isinf(masked.variance[bad]))
    np.testing.assert_array_equal(masked.images, scene.images)  # pixels kept, weight 0


def test_load_hsc_npz_weights_and_peaks(data_dir):
    d = data_dir / "hsc_blends_scarlet"
    scene = load_hsc_npz(d / "hsc_cosmos_43158172147386355.npz")
    assert scene.variance_source == "weights"
    w = np.moveaxis(np.load(d / "hsc_cosmos_43158172147386355.npz")["weights"], 0, -1)
    zero = w == 0
    assert zero.sum() == 6690
    assert np.all(np.isinf(scene.variance[zero])) and np.all(scene.mask[zero] == 0)
    np.testing.assert_allclose(scene.variance[~zero], 1 / w[~zero], rtol=1e-6)
    # The peaks are stored (x, y) like the catalogue, not [y, x]: they coincide
    # with the sep catalogue of hsc_cosmos.npz, which holds the same pixels.
    reference = load_hsc_npz(d / "hsc_cosmos.npz")
    np.testing.assert_array_equal(
        np.load(d / "hsc_cosmos.npz")["images"],
        np.load(d / "hsc_cosmos_43158172147386355.npz")["images"],
    )
    assert scene.positions.shape == (8, 2)
    for x, y in reference.positions:
        dist = np.hypot(*(scene.positions - [x, y]).T)
        assert dist.min() < 1.5
    # ...and each is brighter at image[y, x] than at the swapped image[x, y].
    total = np.load(d / "hsc_cosmos.npz")["images"].sum(0)
    for x, y in scene.positions.astype(int):
        swapped = total[x, y] if x < total.shape[0] and y < total.shape[1] else -np.inf
        assert total[y, x] > swapped


def test_load_hsc_npz_estimated_variance_and_wcs(data_dir):
    scene = load_hsc_npz(data_dir / "hsc_blends_scarlet" / "hsc_lsbg.npz")
    assert scene.images.shape == (191, 191, 5) and scene.variance_source == "estimated"
    assert np.all(scene.variance > 0) and np.all(np.isfinite(scene.variance))
    assert scene.wcs is not None and scene.wcs.has_celestial
    assert scene.positions.shape == (0, 2)


def test_load_hsc_fits(data_dir):
    d = data_dir / "hsc_blends_scarlet"
    cube = d / "hsc_ra150.24071_dec2.06514.fits"
    psf = d / "psf_hsc_ra150.24071_dec2.06514.fits"
    scene = load_hsc_fits(cube, psf)
    assert scene.images.shape == (54, 54, 5) and scene.psfs.shape == (43, 43, 5)
    np.testing.assert_allclose(scene.psfs.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(scene.images[..., 0], fits.getdata(cube)[0].astype(np.float32))
    assert scene.wcs is not None and np.all(scene.variance > 0)
    with pytest.raises(ValueError, match="psf_path"):
        load_hsc_fits(cube, d / "hsc_hst_multires" / "PSF_HST.fits")


def test_load_hsc_npz_masks_nonfinite(tmp_path):
    images = np.ones((2, 4, 5), np.float32)
    images[1, 2, 3] = np.nan
    psfs = np.ones((2, 3, 3))
    np.savez(tmp_path / "s.npz", images=images, psfs=psfs, variance=np.full_like(images, 0.5))
    scene = load_hsc_npz(tmp_path / "s.npz")
    assert scene.images.shape == (4, 5, 2) and scene.filters == ("b0", "b1")
    assert scene.images[2, 3, 1] == 0 and scene.mask[2, 3, 1] == 0
    assert np.isinf(scene.variance[2, 3, 1]) and scene.mask.sum() == 4 * 5 * 2 - 1
    np.testing.assert_allclose(scene.psfs, 1 / 9)


def test_load_hsc_errors(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="none.npz"):
        load_hsc_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        load_hsc_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nopsf.npz", images=np.ones((5, 4, 4)))
    with pytest.raises(ValueError, match="psfs"):
        load_hsc_npz(tmp_path / "nopsf.npz")


# ------------------------------------------------------------------------ FIRST


def test_load_first(data_dir):
    first = load_first(data_dir / "radio_first_fr_4class" / "first_fr_4class.npz")
    assert first.images.shape == (2158, 300, 300) and first.images.dtype == np.uint8
    assert first.class_names == ("FRI", "FRII", "Compact", "Bent")
    names, counts = np.unique(first.split, return_counts=True)
    assert dict(zip(names, counts, strict=True)) == {"train": 1758, "valid": 200, "test": 200}
    assert set(np.unique(first.labels)) == {0, 1, 2, 3} and first.labels.dtype == np.int32
    assert first.ra.shape == first.dec.shape == (2158,)


def test_load_first_float_split(data_dir):
    valid = load_first(
        data_dir / "radio_first_fr_4class" / "first_fr_4class.npz", as_float=True, split="valid"
    )
    assert valid.images.shape == (200, 300, 300, 1) and valid.images.dtype == np.float32
    assert 0.0 <= valid.images.min() and valid.images.max() <= 1.0
    assert np.all(valid.split == "valid")
    np.testing.assert_array_equal(np.bincount(valid.labels), [50, 50, 50, 50])
    with pytest.raises(ValueError, match="split"):
        load_first(data_dir / "radio_first_fr_4class" / "first_fr_4class.npz", split="val")


# ------------------------------------------------------------------ FITS folder


def test_load_fits_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    for i, img in enumerate(images):
        write_fits(tmp_path / f"stamp_{i}.fits", img)
    stack = load_fits_folder(tmp_path)
    assert stack.names == ("stamp_0.fits", "stamp_1.fits", "stamp_2.fits")
    np.testing.assert_array_equal(stack.images, images)
    write_fits(tmp_path / "odd.fits", images[0, :5])
    with pytest.raises(ValueError, match="directory.*odd.fits"):
        load_fits_folder(tmp_path)
    assert load_fits_folder(tmp_path, "stamp_*.fits").images.shape == (3, 6, 6, 2)
    with pytest.raises(FileNotFoundError, match="pattern"):
        load_fits_folder(tmp_path, "*.fit")
    with pytest.raises(FileNotFoundError, match="directory"):
        load_fits_folder(tmp_path / "missing")


def test_load_fits_folder_real(data_dir):
    stack = load_fits_folder(data_dir / "hsc_blends_scarlet" / "hsc_hst_multires", "Cut_HSC*.fits")
    assert stack.images.shape == (2, 50, 50, 5)
    assert all(w is not None for w in stack.wcs)


# -------------------------------------------------------------------- sep field


def test_load_sep_field(data_dir):
    field = load_sep_field(data_dir / "field_eso_ntt_emmi_sep")
    for a in (field.image, field.background, field.rms):
        assert a.shape == (256, 256, 1) and a.dtype == np.float32
    assert np.all(field.rms > 0)
    cat = field.catalog
    assert len(cat) == 65
    np.testing.assert_allclose(cat["x"], cat["X_IMAGE"] - 1)
    np.testing.assert_allclose(cat["ywin"], cat["YWIN_IMAGE"] - 1)
    # 0-based positions of bright, unflagged objects land on significant pixels.
    signal = (field.image - field.background)[..., 0] / field.rms[..., 0]
    bright = cat[(cat["FLAGS"] == 0) & (cat["FLUX_AUTO"] > 10_000)]
    assert len(bright) > 3
    at = np.array([signal[round(row["y"]), round(row["x"])] for row in bright])
    assert np.all(at > 2) and np.median(at) > 10  # at (row=x, col=y) the median is ~0


def test_load_sep_field_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="image.fits"):
        load_sep_field(tmp_path)
