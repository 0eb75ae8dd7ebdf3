"""Tests for galjax.image.transforms: values, invariants, jit/vmap/grad and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.image import transforms as T


def _image(shape=(6, 6, 2), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _blob(n, sigma, dx=0.0, dy=0.0):
    """Unit-flux Gaussian ``(n, n, 1)`` centred ``(dx, dy)`` from the geometric centre."""
    y, x = np.mgrid[:n, :n]
    c = (n - 1) / 2
    g = np.exp(-((x - c - dx) ** 2 + (y - c - dy) ** 2) / (2 * sigma**2))
    return jnp.asarray((g / g.sum())[..., None], jnp.float32)


def _centroid(img, scale=1.0):
    """``(x, y)`` flux centroid of ``(n, m, 1)`` relative to the geometric centre."""
    a = np.asarray(img[..., 0], np.float64)
    y, x = np.mgrid[: a.shape[0], : a.shape[1]]
    cx, cy = (a.shape[1] - 1) / 2, (a.shape[0] - 1) / 2
    return np.array([((x - cx) * a).sum(), ((y - cy) * a).sum()]) / a.sum() * scale


# ---------------------------------------------------------------- arcsinh stretch


@pytest.mark.parametrize("sigma", [0.5, np.array([0.3, 2.0], np.float32)])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_arcsinh_round_trip(sigma, scale):
    x = _image() * 10
    y = T.arcsinh_stretch(x, sigma, scale)
    expected = scale * np.arcsinh(np.asarray(x) / np.asarray(sigma))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(T.inverse_arcsinh_stretch(y, sigma, scale), x, rtol=1e-4, atol=1e-5)
    assert y.dtype == x.dtype


def test_arcsinh_jit_vmap_grad():
    x = _image((3, 4, 4, 2))
    f = jax.jit(T.arcsinh_stretch)
    np.testing.assert_allclose(f(x, 0.7), T.arcsinh_stretch(x, 0.7), rtol=1e-6)
    v = jax.vmap(T.arcsinh_stretch, in_axes=(0, None))(x, 0.7)
    np.testing.assert_allclose(v, T.arcsinh_stretch(x, 0.7), rtol=1e-6)
    # d/dx arcsinh(x / s) at 0 is 1 / s.
    g = jax.grad(lambda s: T.arcsinh_stretch(jnp.ones((1, 1, 1)), s).sum())(2.0)
    assert np.isclose(g, -0.5 / 2.0 / np.sqrt(1 + 0.25), rtol=1e-5)


def test_arcsinh_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        T.arcsinh_stretch(_image(), 0.0)
    with pytest.raises(ValueError, match="x"):
        T.arcsinh_stretch(jnp.ones((4, 4)), 1.0)
    with pytest.raises(TypeError, match="x"):
        T.arcsinh_stretch("image", 1.0)
    with pytest.raises(ValueError, match="sigma"):
        T.inverse_arcsinh_stretch(_image(), -1.0)


# --------------------------------------------------------------------- normalise


@pytest.mark.parametrize("method", ["max", "sum", "percentile", "std"])
@pytest.mark.parametrize("per_band", [False, True])
def test_normalise_undo(method, per_band):
    x = jnp.abs(_image((2, 5, 5, 3))) + 0.1
    y, scale = T.normalise(x, method, per_band=per_band)
    assert scale.shape == ((2, 1, 1, 3) if per_band else (2, 1, 1, 1))
    np.testing.assert_allclose(y * scale, x, rtol=1e-6)
    axes = (1, 2) if per_band else (1, 2, 3)
    if method == "max":
        np.testing.assert_allclose(jnp.max(y, axis=axes), 1.0, rtol=1e-6)
    if method == "sum":
        np.testing.assert_allclose(jnp.sum(y, axis=axes), 1.0, rtol=1e-5)


def test_normalise_blank_image_and_jit():
    y, scale = T.normalise(jnp.zeros((3, 3, 1)), "max")
    assert np.all(np.isfinite(y)) and float(scale.squeeze()) == 1.0
    f = jax.jit(functools.partial(T.normalise, method="percentile", q=90.0))
    x = jnp.abs(_image()) + 0.1
    np.testing.assert_allclose(f(x)[0], T.normalise(x, "percentile", q=90.0)[0], rtol=1e-6)
    v = jax.vmap(lambda a: T.normalise(a, "sum")[0])(x[None])
    np.testing.assert_allclose(v[0], T.normalise(x, "sum")[0], rtol=1e-6)


def test_normalise_bad_input():
    with pytest.raises(ValueError, match="method"):
        T.normalise(_image(), "median")
    with pytest.raises(ValueError, match="q"):
        T.normalise(_image(), "percentile", q=120.0)


# ----------------------------------------------------------- geometry transforms


@pytest.mark.parametrize("n,target", [(5, 3), (6, 3), (5, 4), (4, 7), (3, 8), (4, 4)])
def test_crop_or_pad_keeps_centre_pixel(n, target):
    x = np.zeros((n, n, 1), np.float32)
    x[n // 2, n // 2] = 1.0
    y = T.crop_or_pad(x, target, target)
    assert y.shape == (target, target, 1)
    assert float(y[target // 2, target // 2, 0]) == 1.0 and float(y.sum()) == 1.0


def test_crop_or_pad_batched_jit_vmap():
    x = _image((2, 7, 5, 3))
    y = T.crop_or_pad(x, 4, 8)
    assert y.shape == (2, 4, 8, 3)
    np.testing.assert_allclose(jax.jit(T.crop_or_pad, static_argnums=(1, 2))(x, 4, 8), y)
    np.testing.assert_allclose(jax.vmap(lambda a: T.crop_or_pad(a, 4, 8))(x), y)
    # Cropping back restores the original pixels.
    np.testing.assert_allclose(T.crop_or_pad(T.crop_or_pad(x, 9, 9), 7, 5), x)


def test_crop_or_pad_bad_input():
    with pytest.raises(ValueError, match="height"):
        T.crop_or_pad(_image(), 0, 3)
    with pytest.raises(TypeError, match="width"):
        T.crop_or_pad(_image(), 3, 2.5)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_rot90_matches_numpy(k):
    x = _image((2, 3, 4, 2))
    expected = np.rot90(np.asarray(x), k, axes=(1, 2))
    np.testing.assert_array_equal(T.rot90(x, k), expected)
    np.testing.assert_array_equal(jax.vmap(lambda a: T.rot90(a, k))(x), expected)


def test_flip_and_bad_input():
    x = _image((3, 4, 1))
    np.testing.assert_array_equal(T.flip(x, "x"), np.asarray(x)[:, ::-1])
    np.testing.assert_array_equal(T.flip(x, "y"), np.asarray(x)[::-1])
    np.testing.assert_array_equal(jax.jit(T.flip, static_argnums=1)(x, "x"), T.flip(x, "x"))
    with pytest.raises(ValueError, match="axis"):
        T.flip(x, 0)
    with pytest.raises(TypeError, match="k"):
        T.rot90(x, 1.0)


def _dihedral_set(img):
    img = np.asarray(img)
    out = []
    for m in (False, True):
        for r in range(4):
            a = np.rot90(img, r, axes=(0, 1))
            out.append(a[:, ::-1] if m else a)
    return out


def test_random_dihedral_draws_group_elements(key):
    x = jnp.broadcast_to(_image((4, 4, 2)), (32, 4, 4, 2))
    y = jax.jit(T.random_dihedral)(key, x)
    group = _dihedral_set(x[0])
    idx = [next(i for i, g in enumerate(group) if np.array_equal(g, yi)) for yi in np.asarray(y)]
    assert len(set(idx)) > 4  # independent draws per image
    # vmap over keys and images gives the same kind of result.
    keys = jax.random.split(key, 3)
    z = jax.vmap(T.random_dihedral)(keys, x[:3])
    assert all(any(np.array_equal(g, zi) for g in group) for zi in np.asarray(z))


def test_random_dihedral_bad_input(key):
    with pytest.raises(ValueError, match="x"):
        T.random_dihedral(key, jnp.ones((4, 5, 1)))


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotate_quarter_turns_match_rot90(n, k):
    x = _image((n, n, 2))
    np.testing.assert_allclose(T.rotate(x, k * np.pi / 2), T.rot90(x, k), atol=1e-5)


def test_rotate_conserves_flux_and_centroid():
    x = _blob(41, 3.0, dx=2.0, dy=0.0)
    angle = 0.7
    y = T.rotate(x, angle)
    assert abs(float(y.sum()) - 1.0) < 1e-3
    # rot90 sense: +x goes towards -y for a quarter turn.
    expected = np.array([2.0 * np.cos(angle), -2.0 * np.sin(angle)])
    np.testing.assert_allclose(_centroid(y), expected, atol=1e-2)


def test_rotate_jit_vmap_grad():
    x = _blob(15, 2.0, dx=1.0)
    angles = jnp.asarray([0.1, 0.5], x.dtype)
    f = jax.jit(T.rotate)
    np.testing.assert_allclose(f(x, angles[1]), T.rotate(x, angles[1]), atol=1e-6)
    v = jax.vmap(T.rotate, in_axes=(None, 0))(x, angles)
    np.testing.assert_allclose(v[0], T.rotate(x, angles[0]), atol=1e-6)
    g = jax.grad(lambda a: (T.rotate(x, a) * x).sum())(0.3)
    assert np.isfinite(g) and g < 0  # overlap with the original falls as the blob turns away
    with pytest.raises(ValueError, match="angle"):
        T.rotate(x, jnp.zeros(2))


# ----------------------------------------------------------------- perturbation


def test_perturb_pixels_rate_and_range(key):
    x = _image((40, 40, 2))
    np.testing.assert_array_equal(T.perturb_pixels(key, x, 0.0), x)
    y = T.perturb_pixels(key, x, 1.0, low=5.0, high=6.0)
    assert float(y.min()) >= 5.0 and float(y.max()) <= 6.0
    y = T.perturb_pixels(key, x, 0.2)
    changed = np.mean(np.asarray(y) != np.asarray(x))
    assert 0.15 < changed < 0.25
    assert float(y.min()) >= float(x.min()) and float(y.max()) <= float(x.max())


def test_perturb_pixels_jit_vmap(key):
    x = _image((3, 8, 8, 1))
    y = jax.jit(T.perturb_pixels)(key, x, 0.5)
    assert y.shape == x.shape and y.dtype == x.dtype
    keys = jax.random.split(key, 3)
    rates = jnp.asarray([0.0, 0.5, 1.0], x.dtype)
    z = jax.vmap(T.perturb_pixels)(keys, x, rates)
    np.testing.assert_array_equal(z[0], x[0])
    assert np.all(np.asarray(z[2]) != np.asarray(x[2]))


def test_perturb_pixels_bad_input(key):
    with pytest.raises(ValueError, match="rate"):
        T.perturb_pixels(key, _image(), 1.5)
    with pytest.raises(ValueError, match="rate"):
        T.perturb_pixels(key, _image(), jnp.ones(3) * 0.1)


# ---------------------------------------------------------------------- smearing


def test_gaussian_smear_identity_and_kernel():
    x = _image((7, 7, 2))
    np.testing.assert_array_equal(T.gaussian_smear(x, 0.0), x)
    delta = np.zeros((7, 7, 1), np.float32)
    delta[3, 3] = 1.0
    y = np.asarray(T.gaussian_smear(delta, 1.0, size=3))[..., 0]
    r = np.arange(3) - 1
    g = np.exp(-0.5 * r**2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    np.testing.assert_allclose(y[2:5, 2:5], kernel, rtol=1e-5)
    assert abs(y.sum() - 1.0) < 1e-6


def test_gaussian_smear_jit_vmap_grad():
    x = _image((2, 6, 6, 3))
    sig = jnp.asarray([0.0, 1.5], x.dtype)
    y = jax.vmap(T.gaussian_smear)(x, sig)
    np.testing.assert_allclose(y[0], x[0], atol=1e-6)
    f = jax.jit(T.gaussian_smear, static_argnums=2)
    np.testing.assert_allclose(f(x[1], sig[1], 3), y[1], atol=1e-6)
    g = jax.grad(lambda s: T.gaussian_smear(x, s).sum())(0.0)
    assert np.isfinite(g)


def test_gaussian_smear_bad_input():
    with pytest.raises(ValueError, match="size"):
        T.gaussian_smear(_image(), 1.0, size=4)
    with pytest.raises(ValueError, match="sigma"):
        T.gaussian_smear(_image(), -1.0)


# -------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    "in_scale,out_scale,out_n", [(0.03, 0.05, 29), (0.03, 0.02, 72), (0.168, 0.03, 160)]
)
@pytest.mark.parametrize("method", ["lanczos3", "linear"])
def test_resample_conserves_flux_and_centroid(in_scale, out_scale, out_n, method):
    x = _blob(48, 3.0, dx=1.3, dy=-0.7)
    y = T.resample(x, in_scale, out_scale, (out_n, out_n), method)
    assert y.shape == (out_n, out_n, 1)
    assert abs(float(y.sum()) - 1.0) < 1e-3
    np.testing.assert_allclose(
        _centroid(y, out_scale), np.array([1.3, -0.7]) * in_scale, atol=0.02 * out_scale
    )


@pytest.mark.parametrize(
    "out_scale,out_n,tol", [(0.02, 48, 1e-4), (0.03, 32, 1e-5), (0.05, 20, 1e-2)]
)
def test_resample_matches_galsim(out_scale, out_n, tol):
    galsim = pytest.importorskip("galsim")
    x = _blob(32, 3.0, dx=1.3, dy=-0.7)
    image = galsim.Image(np.asarray(x[..., 0], np.float64), scale=0.03)
    ref = (
        galsim.InterpolatedImage(image, x_interpolant="lanczos3")
        .drawImage(nx=out_n, ny=out_n, scale=out_scale, method="no_pixel")
        .array
    )
    y = np.asarray(T.resample(x, 0.03, out_scale, (out_n, out_n)))[..., 0]
    # Upsampling agrees to interpolation accuracy; downsampling differs by JAX's
    # antialiasing filter, which GalSim's point sampling does not apply.
    assert np.abs(y - ref).max() < tol * ref.max()


def test_resample_jit_vmap():
    x = jnp.stack([_blob(24, 2.0), _blob(24, 3.0, dx=1.0)])
    f = jax.jit(T.resample, static_argnums=(3,))
    y = f(x, 0.03, 0.04, (18, 18))
    np.testing.assert_allclose(y, T.resample(x, 0.03, 0.04, (18, 18)), atol=1e-6)
    scales = jnp.asarray([0.04, 0.05], x.dtype)
    v = jax.vmap(lambda a, s: T.resample(a, 0.03, s, (18, 18)))(x, scales)
    np.testing.assert_allclose(v[0], y[0], atol=1e-6)


def test_resample_bad_input():
    x = _blob(8, 1.0)
    with pytest.raises(ValueError, match="in_scale"):
        T.resample(x, 0.0, 0.03, (4, 4))
    with pytest.raises(ValueError, match="out_shape"):
        T.resample(x, 0.03, 0.03, (4,))
    with pytest.raises(ValueError, match="method"):
        T.resample(x, 0.03, 0.03, (4, 4), method="nearest")
