"""Tests for galjax.image.background: the mesh, border and global sky estimators."""

import jax.numpy as jnp
import numpy as np
import pytest

from galjax.image.background import BACKGROUND_METHODS, Background, estimate_background


def _ramp(h=96, w=128, slope=(0.05, -0.03), level=20.0):
    """A linear sky ``level + sx x + sy y``, ``(h, w, 1)`` float32."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return (level + slope[0] * x + slope[1] * y)[..., None].astype(np.float32)


def test_mesh_recovers_a_linear_sky_exactly():
    # In each mesh the pixels of a ramp are symmetric about the mesh centre, so the
    # clipped mode is the centre value; a natural cubic spline through linear node
    # values is the line itself: the map must be the ramp everywhere.
    sky = _ramp()
    bkg = estimate_background(sky, box=32, filter_size=1)
    assert isinstance(bkg, Background)
    assert bkg.level.shape == bkg.rms.shape == sky.shape
    assert bkg.level.dtype == np.float32
    np.testing.assert_allclose(bkg.level, sky, atol=2e-3)


def test_mesh_noise_level_mask_and_batch():
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 5.0, (2, 128, 128, 2)).astype(np.float32)
    img[1] += 50.0
    bkg = estimate_background(img)  # defaults: box 64, filter 3, sigma 3
    np.testing.assert_allclose(bkg.level.mean(axis=(1, 2)), [[100, 100], [150, 150]], atol=0.5)
    np.testing.assert_allclose(bkg.rms.mean(axis=(1, 2)), 5.0, rtol=0.05)
    # A bright masked block (and NaN pixels) must not move the estimate.
    bright = img[0].copy()
    bright[10:60, 10:60] = 1e4
    bright[70:80, 70:80] = np.nan
    mask = np.ones_like(bright)
    mask[10:60, 10:60] = 0
    masked = estimate_background(bright, mask=mask)
    unmasked = estimate_background(bright)
    assert abs(float(masked.level[30, 30, 0]) - 100.0) < 1.0
    assert float(unmasked.level[30, 30, 0]) > 1000.0  # the block dominates its mesh


def test_border_ignores_the_central_galaxy():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, (3, 32, 32, 2)) * np.array([1.0, 2.0])
    x += np.array([5.0, -3.0])
    x[:, 8:24, 8:24] += 1e3  # a bright source well inside the border frame
    level, rms = estimate_background(jnp.asarray(x, jnp.float32), "border", border=4)
    assert level.shape == rms.shape == (3, 1, 1, 2)
    np.testing.assert_allclose(np.asarray(level)[:, 0, 0], [[5.0, -3.0]] * 3, atol=0.3)
    np.testing.assert_allclose(np.asarray(rms)[:, 0, 0], [[1.0, 2.0]] * 3, rtol=0.2)
    flat = estimate_background(jnp.ones((1, 16, 16, 1)), "border")
    assert float(flat.rms[0, 0, 0, 0]) == pytest.approx(1e-12)  # floored, not 0


def test_global_median_and_mad():
    a = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan]).reshape(2, 3, 1)
    level, rms = estimate_background(a, method="global")
    assert isinstance(level, float) and isinstance(rms, float)
    assert level == 3.0  # median of the finite pixels
    assert rms == pytest.approx(1.4826 * 1.0)  # MAD of [2, 1, 0, 1, 97] is 1
    assert estimate_background(np.full((4, 4, 1), 7.0), "global") == (7.0, 1.0)  # constant
    with pytest.raises(ValueError, match="no finite"):
        estimate_background(np.full((4, 4, 1), np.nan), "global")


def test_bad_arguments():
    img = np.zeros((16, 16, 1))
    assert BACKGROUND_METHODS == ("mesh", "border", "global")
    with pytest.raises(ValueError, match="method"):
        estimate_background(img, "median")
    with pytest.raises(ValueError, match="border: not an option of method='mesh'"):
        estimate_background(img, border=3)
    with pytest.raises(ValueError, match="box, mask: not an option of method='global'"):
        estimate_background(img, "global", box=8, mask=img)
    with pytest.raises(ValueError, match="box"):
        estimate_background(img, box=1)
    with pytest.raises(ValueError, match="filter_size"):
        estimate_background(img, box=8, filter_size=2)
    with pytest.raises(ValueError, match="sigma"):
        estimate_background(img, box=8, sigma=0.0)
    with pytest.raises(ValueError, match="images"):
        estimate_background(img, "border")  # needs a batch (n, h, w, bands)
    with pytest.raises(ValueError, match="border"):
        estimate_background(img[None], "border", border=8)
    with pytest.raises(ValueError, match="image"):
        estimate_background(np.zeros((16, 16)), "global")
