"""Tests of galjax.detect.sources: sep background, detection, blends and their boxes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from galjax.detect import match_positions
from galjax.detect.sources import (
    DEFAULT_KERNEL,
    DetectedSources,
    blend_boxes,
    detect_sources,
    group_blends,
    sky_background,
)
from galjax.image.background import Background

SKY, NOISE, SIGMA = 100.0, 2.0, 1.8  # flat sky, noise rms, Gaussian galaxy sigma (px)


def _scene(positions, fluxes, shape=(128, 160), sigma=SIGMA, seed=0):
    """Gaussian galaxies of total flux ``fluxes`` at ``(x, y)`` on a flat noisy sky."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, SKY)
    for (x, y), f in zip(positions, fluxes, strict=True):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        img += f / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    return img + np.random.default_rng(seed).normal(0.0, NOISE, shape)


POSITIONS = np.array([[20.3, 30.7], [90.0, 25.2], [130.6, 100.1], [45.5, 95.4]])
FLUXES = np.array([800.0, 1500.0, 3000.0, 1000.0])
SMALL = np.array([[12.0, 12.0], [50.0, 14.0], [15.0, 50.0], [48.0, 48.0]])  # in 64 x 64


def _nearest(src, positions):
    """Index of the detection nearest each position and its distance (px)."""
    d = np.hypot(src.x[None, :] - positions[:, 0:1], src.y[None, :] - positions[:, 1:2])
    return d.argmin(axis=1), d.min(axis=1)


def test_isolated_galaxies_found_with_position_flux_and_background():
    img = _scene(POSITIONS, FLUXES)
    src = detect_sources(img)
    assert isinstance(src, DetectedSources)
    assert len(src.x) == len(POSITIONS)
    idx, dist = _nearest(src, POSITIONS)
    assert np.all(dist < 1.0), dist
    # Isophotal flux at 1.5 sigma holds most of a bright Gaussian's light.
    np.testing.assert_allclose(src.flux[idx], FLUXES, rtol=0.15)
    bkg = src.background
    assert bkg.level.shape == img.shape and bkg.level.dtype == np.float32
    assert abs(float(np.median(bkg.level)) - SKY) < 0.1 * NOISE
    assert abs(float(np.median(bkg.rms)) / NOISE - 1.0) < 0.05
    # Segmentation: id k is source k - 1, and holds its centre pixel.
    assert src.segmentation.dtype == np.int32 and src.segmentation.shape == img.shape
    np.testing.assert_array_equal(src.segment, np.arange(1, len(src.x) + 1))
    cy, cx = np.round(src.y).astype(int), np.round(src.x).astype(int)
    np.testing.assert_array_equal(src.segmentation[cy, cx], src.segment)
    np.testing.assert_array_equal(np.bincount(src.segmentation.ravel())[1:], src.npix)
    for arr in (src.x, src.flux, src.a, src.b, src.theta, src.peak):
        assert arr.dtype == np.float64 and arr.shape == (len(src.x),)
    assert np.all(src.a >= src.b) and np.all(src.b > 0)


def test_sky_background_matches_flat_sky_and_accepts_big_endian():
    img = np.random.default_rng(3).normal(SKY, NOISE, (96, 80))
    bkg = sky_background(img, box=32)
    assert bkg.level.shape == (96, 80) and bkg.rms.dtype == np.float32
    assert abs(float(bkg.level.mean()) - SKY) < 0.1 * NOISE
    assert abs(float(bkg.rms.mean()) / NOISE - 1.0) < 0.05
    swapped = img.astype(">f8")  # FITS byte order
    np.testing.assert_array_equal(sky_background(swapped, box=32).level, bkg.level)
    masked = sky_background(img, box=32, mask=np.ones(img.shape, bool))
    np.testing.assert_array_equal(masked.level, bkg.level)


def test_detection_is_the_same_for_big_endian_and_int_input():
    img = _scene(POSITIONS, FLUXES)
    ref = detect_sources(img)
    for other in (img.astype(">f8"), img.astype(">f4")):
        src = detect_sources(other)
        np.testing.assert_allclose(src.x, ref.x, atol=1e-3)
    assert len(detect_sources(np.round(img).astype(np.int32)).x) == len(POSITIONS)


def test_overlapping_pair_is_one_blend_and_distant_galaxy_its_own():
    pos = np.array([[40.0, 40.0], [47.0, 42.0], [120.0, 90.0]])
    img = _scene(pos, [2000.0, 1500.0, 1500.0])
    src = detect_sources(img)
    assert len(src.x) == 3
    idx, dist = _nearest(src, pos)
    assert np.all(dist < 1.0), dist
    blend, n_blends = group_blends(src.segmentation)
    assert n_blends == 2 and blend.dtype == np.int32
    assert blend[idx[0]] == blend[idx[1]] != blend[idx[2]]
    assert src.flags[idx[0]] & 1 and src.flags[idx[1]] & 1  # sep.OBJ_MERGED: deblended
    boxes = blend_boxes(src.segmentation, blend, img.shape, margin=4)
    assert boxes.shape == (2, 4)
    _assert_boxes_hold_segments(src.segmentation, blend, boxes, margin=4)


def _assert_boxes_hold_segments(seg, blend, boxes, margin):
    h, w = seg.shape
    for k in range(1, seg.max() + 1):
        y0, y1, x0, x1 = boxes[blend[k - 1]]
        ys, xs = np.nonzero(seg == k)
        assert y0 <= max(ys.min() - margin, 0) and y1 >= min(ys.max() + 1 + margin, h)
        assert x0 <= max(xs.min() - margin, 0) and x1 >= min(xs.max() + 1 + margin, w)
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w


def test_big_smooth_galaxy_is_one_source_with_default_contrast():
    yy, xx = np.mgrid[:160, :160]
    r = np.hypot(xx - 80.3, (yy - 75.6) / 0.6)
    img = SKY + 80.0 * np.exp(-r / 9.0) + np.random.default_rng(5).normal(0, NOISE, (160, 160))
    src = detect_sources(img, background=Background(SKY, NOISE))
    assert len(src.x) == 1
    assert abs(src.x[0] - 80.3) < 1.0 and abs(src.y[0] - 75.6) < 1.0
    assert src.npix[0] > 1000


def test_border_drops_and_renumbers_sources():
    img = _scene(POSITIONS, FLUXES)
    every = detect_sources(img)
    src = detect_sources(img, border=25)  # drops (20.3, 30.7)
    assert len(src.x) == len(every.x) - 1 and np.all(src.x >= 25)
    assert set(np.unique(src.segmentation)) == set(range(len(src.x) + 1))
    cy, cx = np.round(src.y).astype(int), np.round(src.x).astype(int)
    np.testing.assert_array_equal(src.segmentation[cy, cx], src.segment)


def test_nan_pixels_are_masked_with_a_warning():
    img = _scene(POSITIONS, FLUXES)
    img[5:8, 100:104] = np.nan
    with pytest.warns(RuntimeWarning, match="image: 12 non-finite"):
        src = detect_sources(img)
    assert len(src.x) == len(POSITIONS)
    assert np.all(src.segmentation[5:8, 100:104] == 0)


def test_mask_hides_a_source():
    img = _scene(POSITIONS, FLUXES)
    weights = np.ones(img.shape)
    weights[20:42, 10:32] = 0.0  # the first galaxy
    src = detect_sources(img, mask=weights)
    assert len(src.x) == len(POSITIONS) - 1
    assert np.all(np.hypot(src.x - 20.3, src.y - 30.7) > 5)


def test_empty_images_return_no_source():
    flat = np.full((64, 64), 10.0)
    src = detect_sources(flat, rms=1.0)
    assert len(src.x) == 0 and src.x.shape == (0,) and src.flags.dtype == np.int32
    assert not src.segmentation.any()
    with pytest.warns(RuntimeWarning, match="rms <= 0"):  # no noise estimate anywhere
        assert len(detect_sources(np.zeros((32, 32))).x) == 0
    assert group_blends(src.segmentation) == (pytest.approx(np.zeros(0)), 0)
    assert blend_boxes(src.segmentation, np.zeros(0, int)).shape == (0, 4)


def test_sep_limits_raise_naming_the_option():
    img = _scene(POSITIONS, FLUXES)
    with pytest.raises(ValueError, match="pixstack: more than 20 pixels"):
        detect_sources(img, pixstack=20)
    # The pair deblends into 2 sub-objects; a limit of 1 is hit.
    pair = _scene([[40.0, 40.0], [47.0, 42.0]], [2000.0, 1500.0])
    with pytest.raises(ValueError, match="sub_object_limit"):
        detect_sources(pair, sub_object_limit=1)
    assert len(detect_sources(img).x) == len(POSITIONS)  # global limits restored


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image": np.zeros((4, 8, 8))}, "image: expected a 2-D"),
        ({"image": np.zeros(16)}, "image: expected a 2-D"),
        ({"rms": np.ones((10, 10))}, "rms: expected a scalar or the image's shape"),
        ({"variance": np.ones((64, 32))}, "variance: expected a scalar or the image's shape"),
        ({"variance": -np.ones((64, 64))}, "variance: expected values >= 0"),
        ({"rms": 0.0}, "rms: expected values > 0"),
        ({"rms": 1.0, "variance": 1.0}, "variance: give rms or variance"),
        ({"mask": np.ones((32, 64))}, "mask: expected weights"),
        ({"background": Background(np.zeros((8, 8)), 1.0)}, "background: expected a scalar"),
        ({"threshold": 0.0}, "threshold: expected a finite number > 0"),
        ({"threshold": -1.5}, "threshold: expected a finite number > 0"),
        ({"threshold": float("nan")}, "threshold: expected a finite number > 0"),
        ({"min_area": 0}, "min_area: expected an int >= 1"),
        ({"min_area": 2.5}, "min_area: expected an int >= 1"),
        ({"deblend_contrast": 1.5}, "deblend_contrast: expected a number in"),
        ({"deblend_levels": 0}, "deblend_levels: expected an int >= 1"),
        ({"border": -1}, "border: expected an int >= 0"),
        ({"filter_kernel": np.ones(3)}, "filter_kernel: expected a finite 2-D"),
        ({"filter_type": "gauss"}, "filter_type: expected one of"),
        ({"max_sources": 2}, "max_sources: found 4 sources, more than max_sources=2"),
        ({"pixstack": 0}, "pixstack: expected an int >= 1"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, match):
    kwargs = dict(kwargs)
    img = kwargs.pop("image", _scene(SMALL, FLUXES, shape=(64, 64)))
    with pytest.raises(ValueError, match=match):
        detect_sources(img, **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sky_background(np.zeros((2, 8, 8))), "image: expected a 2-D"),
        (lambda: sky_background(np.ones((8, 8)), box=0), "box: expected an int >= 1"),
        (lambda: sky_background(np.ones((8, 8)), filter_size=2), "filter_size: expected an odd"),
        (lambda: sky_background(np.full((8, 8), np.nan)), "image: no usable pixel"),
        (lambda: group_blends(np.zeros((2, 4, 4), int)), "segmentation: expected a 2-D"),
        (lambda: group_blends(np.zeros((4, 4))), "segmentation: expected integer"),
        (lambda: group_blends(np.zeros((4, 4), int), gap=-1), "gap: expected an int >= 0"),
        (lambda: blend_boxes(np.ones((4, 4), int), [0], (5, 4)), "shape: expected"),
        (lambda: blend_boxes(np.full((4, 4), 2), [0]), "blend_id: expected 2 entries"),
        (lambda: blend_boxes(np.ones((4, 4), int), [0], margin=-2), "margin: expected"),
        (lambda: blend_boxes(np.ones((4, 4), int), [0], min_size=0), "min_size: expected"),
    ],
)
def test_bad_input_of_the_other_functions(call, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=match):
            call()


def test_max_sources_at_the_count_passes():
    img = _scene(POSITIONS, FLUXES)
    assert len(detect_sources(img, max_sources=len(POSITIONS)).x) == len(POSITIONS)


def test_group_blends_gap_and_order():
    seg = np.zeros((20, 40), np.int32)
    seg[2:5, 30:33] = 1  # first source far right
    seg[2:5, 2:5] = 2
    seg[2:5, 8:10] = 3  # 3 sky columns from 2
    seg[12:15, 2:5] = 4  # 7 sky rows below 2
    assert group_blends(seg, gap=0) == (pytest.approx([0, 1, 2, 3]), 4)
    blend, n = group_blends(seg, gap=2)  # <= 4 sky pixels between footprints
    assert n == 3 and blend.tolist() == [0, 1, 1, 2]
    blend, n = group_blends(seg, gap=4)
    assert n == 2 and blend.tolist() == [0, 1, 1, 1]
    seg[seg == 3] = 0  # a source id without pixels: a blend of its own
    blend, n = group_blends(seg, gap=2)
    assert n == 4 and blend.tolist() == [0, 1, 2, 3]


def test_blend_boxes_margin_min_size_and_clipping():
    seg = np.zeros((30, 40), np.int32)
    seg[1:4, 2:6] = 1
    seg[20:26, 30:39] = 2
    boxes = blend_boxes(seg, np.array([0, 1]), seg.shape, margin=3)
    assert boxes.tolist() == [[0, 7, 0, 9], [17, 29, 27, 40]]
    _assert_boxes_hold_segments(seg, np.array([0, 1]), boxes, margin=3)
    sized = blend_boxes(seg, np.array([0, 1]), (30, 40, 3), margin=0, min_size=(12, 16))
    assert np.all(sized[:, 1] - sized[:, 0] >= 12) and np.all(sized[:, 3] - sized[:, 2] >= 16)
    _assert_boxes_hold_segments(seg, np.array([0, 1]), sized, margin=0)
    assert blend_boxes(seg, np.array([0, 1]), min_size=100).tolist() == [[0, 30, 0, 40]] * 2
    # Both sources in one blend: one box around both.
    assert blend_boxes(seg, np.array([0, 0]), margin=0).tolist() == [[1, 26, 2, 39]]


def test_eso_field_matches_sextractor_catalogue(data_dir):
    from galjax.io.datasets import load_sep_field

    folder = data_dir / "field_eso_ntt_emmi_sep"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ESO-LOG header cards
        field = load_sep_field(folder)
    image, back, rms = field.image[..., 0], field.background[..., 0], field.rms[..., 0]
    true = np.stack([field.catalog["x"], field.catalog["y"]], axis=-1)
    conv = np.loadtxt(folder / "default.conv", skiprows=1)
    np.testing.assert_array_equal(conv, DEFAULT_KERNEL)
    # default.sex: DETECT_THRESH 1.5, DETECT_MINAREA 5, default.conv, DEBLEND_MINCONT 1.
    src = detect_sources(
        image,
        background=Background(back, rms),
        threshold=1.5,
        min_area=5,
        filter_kernel=conv,
        deblend_contrast=1.0,
    )
    m = match_positions(np.stack([src.x, src.y], axis=-1), true, 2.0)
    print(
        f"\nESO field (SExtractor maps, default.sex): {len(src.x)} found, "
        f"{len(true)} in catalogue, completeness {m.completeness:.3f}, purity {m.purity:.3f}, "
        f"median offset {np.median(m.distance):.2e} px"
    )
    assert m.completeness >= 0.9 and m.purity >= 0.9
    # sep's own background equals SExtractor's maps; with the global rms (SExtractor's
    # threshold without a weight map) the catalogue is reproduced object for object.
    bkg = sky_background(image)
    np.testing.assert_allclose(bkg.level, back, atol=1e-3 * float(rms.mean()))
    np.testing.assert_allclose(bkg.rms, rms, rtol=1e-3)
    exact = detect_sources(image, rms=float(np.median(rms)), deblend_contrast=1.0)
    m = match_positions(np.stack([exact.x, exact.y], axis=-1), true, 2.0)
    print(
        f"ESO field (sep background, global rms): {len(exact.x)} found, "
        f"completeness {m.completeness:.3f}, purity {m.purity:.3f}"
    )
    assert m.completeness >= 0.95 and m.purity >= 0.95
    blend, n_blends = group_blends(src.segmentation)
    assert 0 < n_blends <= len(src.x)
    boxes = blend_boxes(src.segmentation, blend, image.shape)
    _assert_boxes_hold_segments(src.segmentation, blend, boxes, margin=4)


def test_variance_is_rms_squared_and_zero_variance_masks():
    img = _scene(POSITIONS, FLUXES)
    bkg = Background(SKY, NOISE)
    by_rms = detect_sources(img, rms=np.full(img.shape, NOISE), background=bkg)
    var = np.full(img.shape, NOISE**2)
    by_var = detect_sources(img, variance=var, background=bkg)
    np.testing.assert_allclose(by_var.x, by_rms.x)
    np.testing.assert_allclose(by_var.background.rms, NOISE)
    var[20:42, 10:32] = 0.0  # no information: the first galaxy is masked
    src = detect_sources(img, variance=var, background=bkg)
    assert len(src.x) == len(POSITIONS) - 1 and not src.segmentation[20:42, 10:32].any()
