"""Tests for galjax.sim: profiles, PSFs, rendering, noise, surveys and blended fields.

Agreement with GalSim lives in ``test_sim_galsim.py``; here are the invariants
(normalisation, flux conservation, centring, round trips), ``jit``/``vmap``/``grad``
behaviour, gradients against finite differences and the boundary checks. Stamps
are tiny and rendering configs cheap wherever accuracy is not the point.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from jax.scipy.special import gammainc

from galjax.sim import (
    HSC,
    LSST,
    LSST_R,
    SERSIC_N_RANGE,
    SURVEYS,
    GalaxyParams,
    RenderConfig,
    Survey,
    add_noise,
    convolve_fft,
    e_from_q_beta,
    elliptical_radius2,
    galaxy_sb,
    gaussian_psf,
    gaussian_sb,
    moffat_psf,
    moffat_sb,
    noise_variance,
    pixelate,
    place_stamp,
    q_beta_from_e,
    render_galaxy,
    render_sersic,
    sample_galaxy,
    sample_positions,
    sersic_bn,
    sersic_sb,
    simulate_fields,
    smooth_twin,
    validate_galaxy_params,
)

F32 = jnp.float32
#: Cheap rendering where accuracy is not the point.
CHEAP = RenderConfig(oversample=1, refine_levels=1, pad=4)
#: Small single- and multi-band surveys (PSFs, boundary checks and the field simulator).
TINY_R = dataclasses.replace(
    LSST_R, render=RenderConfig(oversample=1, refine_levels=1, pad=4), field_size=32, stamp_size=21,
    psf_size=11,
)  # fmt: skip
TINY_LSST = dataclasses.replace(
    LSST, render=RenderConfig(oversample=1, refine_levels=1, pad=4), field_size=32, stamp_size=21,
    psf_size=11,
)  # fmt: skip


def _rng(seed=0):
    return np.random.default_rng(seed)


def _centroid(img):
    """``(x, y)`` flux centroid of an ``(h, w)`` image in pixel coordinates."""
    a = np.asarray(img, np.float64)
    y, x = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(x * a).sum(), (y * a).sum()]) / a.sum()


def _fwhm(img, s=1):
    """FWHM in pixels along the central row of a centred ``(n, n)`` image sampled every 1/s px."""
    row = np.asarray(img, np.float64)[img.shape[0] // 2]
    c = row.size // 2
    half = row[c] / 2
    i = c + int(np.argmax(row[c:] < half))
    right = i - 1 + (row[i - 1] - half) / (row[i - 1] - row[i])
    return 2 * (right - c) / s


def _galaxy(clump_frac=0.2, arm_amp=0.6, x=20.3, y=19.8):
    """A hand-built bulge + disk galaxy with clumps and arms (one band)."""
    p = GalaxyParams.sersic(100.0, 3.0, 1.0, 0.15, -0.1, x, y, n_clumps=3)
    return p._replace(
        bulge_frac=jnp.array([0.2], F32),
        clump_frac=jnp.array([clump_frac], F32),
        bulge_hlr=jnp.asarray(1.2, F32),
        bulge_n=jnp.asarray(2.5, F32),
        clump_uv=jnp.array([[0.8, 0.3], [-0.5, 1.0], [0.2, -1.2]], F32),
        clump_sigma=jnp.array([0.8, 1.0, 0.6], F32),
        clump_weight=jnp.array([0.5, 0.3, 0.2], F32),
        arm_amp=jnp.asarray(arm_amp, F32),
    )


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


# ----------------------------------------------------------------------- profiles


def test_sersic_bn_solves_half_light_equation():
    n = jnp.linspace(*SERSIC_N_RANGE, 40, dtype=F32)
    b = sersic_bn(n)
    assert b.shape == n.shape
    np.testing.assert_allclose(gammainc(2.0 * n, b), 0.5, atol=5e-6)


@pytest.mark.parametrize("n, expected", [(0.5, np.log(2.0)), (1.0, 1.678347), (4.0, 7.669249)])
def test_sersic_bn_known_values(n, expected):
    assert float(sersic_bn(n)) == pytest.approx(expected, rel=2e-6)


def test_sersic_bn_gradient_float64():
    with jax.enable_x64(True):
        n = jnp.linspace(*SERSIC_N_RANGE, 12, dtype=jnp.float64)
        grad = jax.vmap(jax.grad(sersic_bn))(n)
        h = 1e-5
        fd = (sersic_bn(n + h) - sersic_bn(n - h)) / (2 * h)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(grad, fd, rtol=1e-7)
        np.testing.assert_allclose(gammainc(2.0 * n, sersic_bn(n)), 0.5, atol=1e-13)


@pytest.mark.parametrize("n", [0.5, 1.0, 4.0])
def test_sersic_sb_normalised_radially(n):
    # The shear is area preserving, so the radial integral gives the total flux.
    hlr, flux = 2.0, 3.0
    r = np.geomspace(1e-7, 1e5, 20001) * hlr
    sb = np.asarray(sersic_sb(jnp.asarray(r, F32), 0.0, flux, hlr, n), np.float64)
    total = np.trapezoid(2 * np.pi * r * sb, r)
    assert total == pytest.approx(flux, rel=1e-3)


def test_sersic_sb_elliptical_normalised_on_grid():
    t = jnp.arange(-40.0, 40.0, 0.1, dtype=F32) + 0.05
    xx, yy = jnp.meshgrid(t, t)
    sb = sersic_sb(xx, yy, 2.0, 2.5, 1.0, 0.3, -0.2)
    assert float(jnp.sum(sb)) * 0.01 == pytest.approx(2.0, rel=1e-3)
    # Half the light within the half-light ellipse.
    r2 = elliptical_radius2(xx, yy, 0.3, -0.2)
    inner = jnp.sum(jnp.where(r2 < 2.5**2, sb, 0.0)) * 0.01
    assert float(inner) == pytest.approx(1.0, rel=5e-3)


def test_gaussian_sb_normalised():
    t = jnp.arange(-15.0, 15.0, 0.05, dtype=F32) + 0.025
    xx, yy = jnp.meshgrid(t, t)
    sb = gaussian_sb(xx, yy, 5.0, 1.5, 0.3, -0.2)
    assert float(jnp.sum(sb)) * 0.05**2 == pytest.approx(5.0, rel=1e-4)


def test_e_q_beta_round_trip():
    rng = _rng()
    q = jnp.asarray(rng.uniform(0.1, 0.95, 50), F32)
    beta = jnp.asarray(rng.uniform(-np.pi / 2 + 0.01, np.pi / 2 - 0.01, 50), F32)
    e1, e2 = e_from_q_beta(q, beta)
    assert np.all(np.hypot(e1, e2) < 1)
    q2, beta2 = q_beta_from_e(e1, e2)
    np.testing.assert_allclose(q2, q, atol=1e-5)
    np.testing.assert_allclose(beta2, beta, atol=1e-5)
    e1b, e2b = jax.jit(e_from_q_beta)(q2, beta2)
    np.testing.assert_allclose(e1b, e1, atol=1e-5)
    np.testing.assert_allclose(e2b, e2, atol=1e-5)


def test_elliptical_radius2_circular():
    rng = _rng(1)
    dx, dy = (jnp.asarray(rng.normal(size=20), F32) for _ in range(2))
    np.testing.assert_allclose(elliptical_radius2(dx, dy, 0.0, 0.0), dx**2 + dy**2, rtol=1e-6)


@pytest.mark.parametrize("q, beta", [(0.5, 0.3), (0.2, -1.0), (0.9, 1.2)])
def test_elliptical_radius2_is_area_preserving_shear(q, beta):
    e1, e2 = e_from_q_beta(q, beta)
    # r^2 = d^T M d with M = S^-T S^-1, read off from three offsets.
    dx, dy = jnp.array([1.0, 0.0, 1.0], F32), jnp.array([0.0, 1.0, 1.0], F32)
    r2 = np.asarray(elliptical_radius2(dx, dy, e1, e2), np.float64)
    off = 0.5 * (r2[2] - r2[0] - r2[1])
    m = np.array([[r2[0], off], [off, r2[1]]], np.float64)
    assert np.linalg.det(m) == pytest.approx(1.0, rel=1e-5)  # det S = 1
    w, v = np.linalg.eigh(m)
    np.testing.assert_allclose(w, [q, 1 / q], rtol=1e-5)  # axis ratio q
    major = v[:, 0]  # smallest curvature: major axis, at angle beta
    assert abs(major @ [np.cos(beta), np.sin(beta)]) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------- pixelate


def _sersic_fn(n, x0, y0, hlr=1.5, e1=0.1, e2=0.2):
    return lambda x, y: sersic_sb(x - x0, y - y0, 1.0, hlr, n, e1, e2)


@pytest.mark.parametrize("n", [0.5, 1.0, 4.0])
def test_pixelate_conserves_flux(n):
    size, hlr = 151, 1.5
    centre = jnp.array([75.2, 74.9], F32)
    img = pixelate(_sersic_fn(n, 75.2, 74.9, hlr), size, size, centre)
    assert img.shape == (size, size)
    # Light beyond the inscribed circle (upper bound of what the stamp misses).
    b = sersic_bn(n)
    lost = 1.0 - float(gammainc(2.0 * n, b * (75.5 / hlr) ** (1.0 / n)))
    assert abs(float(img.sum()) - (1.0 - lost)) < 1e-3


def test_pixelate_refinement_improves_cusp():
    fn = _sersic_fn(4.0, 20.2, 19.9, hlr=1.0, e1=0.0, e2=0.0)
    c = jnp.array([20.2, 19.9], F32)
    # Light within the inscribed and circumscribed circles brackets the stamp's share.
    lo, hi = (float(gammainc(8.0, sersic_bn(4.0) * r**0.25)) for r in (20.5, 20.5 * 2**0.5))
    exact = 0.5 * (lo + hi)
    err0 = abs(float(pixelate(fn, 41, 41, c, oversample=1, refine_levels=0).sum()) - exact)
    err5 = abs(float(pixelate(fn, 41, 41, c, oversample=1, refine_levels=5).sum()) - exact)
    assert err5 < 0.05 * err0


def test_pixelate_band_axes():
    fluxes = jnp.array([1.0, 2.0, 0.5], F32)
    single = _sersic_fn(2.0, 7.3, 8.1)
    multi = lambda x, y: single(x, y)[..., None] * fluxes.reshape(1, 1, 3)
    c = jnp.array([7.3, 8.1], F32)
    img = pixelate(multi, 16, 15, c, oversample=3, refine_levels=2)
    ref = pixelate(single, 16, 15, c, oversample=3, refine_levels=2)
    assert img.shape == (16, 15, 3)
    np.testing.assert_allclose(img, ref[..., None] * fluxes.reshape(1, 1, 3), rtol=1e-5, atol=1e-8)
    sub = pixelate(multi, 16, 15, c, oversample=3, refine_levels=2, reduce=False)
    assert sub.shape == (48, 45, 3)


@pytest.mark.parametrize("centre", [(0.0, 0.0), (14.6, -0.4), (-3.0, 20.0), (40.0, 40.0)])
def test_pixelate_centre_near_or_outside_edge(centre):
    fn = _sersic_fn(4.0, *centre)
    img = pixelate(fn, 15, 15, jnp.asarray(centre, F32), oversample=3, refine_levels=3)
    assert img.shape == (15, 15)
    assert np.all(np.isfinite(img))
    assert np.all(np.asarray(img) >= 0)


# --------------------------------------------------------------------------- PSFs


_PSFS = {
    "moffat": lambda **k: moffat_psf(3.0, 2.5, **k),
    "gaussian": lambda **k: gaussian_psf(3.0, **k),
}


@pytest.mark.parametrize("kind", sorted(_PSFS))
@pytest.mark.parametrize("size, oversample", [(11, 1), (9, 3)])
def test_psf_unit_sum_and_centred(kind, size, oversample):
    psf = _PSFS[kind](size=size, oversample=oversample)
    n = size * oversample
    assert psf.shape == (n, n, 1)
    np.testing.assert_allclose(psf.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(_centroid(psf[..., 0]), [(n - 1) / 2] * 2, atol=1e-4)
    assert int(np.argmax(psf[..., 0])) == (n * n - 1) // 2  # peak on the central sample


def test_elliptical_moffat_psf_centred():
    psf = moffat_psf(3.0, 3.0, size=15, e1=0.2, e2=-0.1)
    np.testing.assert_allclose(psf.sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(_centroid(psf[..., 0]), [7.0, 7.0], atol=1e-4)


@pytest.mark.parametrize("size, oversample", [(10, 1), (11, 2)])
def test_psf_requires_odd_sizes(size, oversample):
    with pytest.raises(ValueError, match="odd"):
        moffat_psf(3.0, size=size, oversample=oversample)
    with pytest.raises(ValueError, match="odd"):
        gaussian_psf(3.0, size=size, oversample=oversample)


def test_psf_fwhm():
    # The analytic profile is at half maximum at r = FWHM / 2.
    for beta in (2.5, 4.0):
        ratio = moffat_sb(2.0, 0.0, 4.0, beta) / moffat_sb(0.0, 0.0, 4.0, beta)
        assert float(ratio) == pytest.approx(0.5, rel=1e-5)
    # Finely sampled effective PSFs: the pixel box adds ~1/12 px^2 of variance.
    g = gaussian_psf(4.0, size=15, oversample=5)[..., 0]
    assert _fwhm(g, 5) == pytest.approx(np.sqrt(16.0 + 8 * np.log(2.0) / 12), rel=2e-3)
    m = moffat_psf(10.0, 2.5, size=31, oversample=3)[..., 0]
    assert _fwhm(m, 3) == pytest.approx(10.0, rel=1e-2)


def test_psf_multi_band():
    fwhm = jnp.array([2.0, 3.0, 4.0], F32)
    psf = moffat_psf(fwhm, jnp.array([2.5, 3.0, 3.5], F32), size=11, oversample=3)
    assert psf.shape == (33, 33, 3)
    np.testing.assert_allclose(psf.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    peaks = np.asarray(psf[16, 16])
    assert peaks[0] > peaks[1] > peaks[2]
    single = moffat_psf(3.0, 3.0, size=11, oversample=3)
    np.testing.assert_allclose(psf[..., 1:2], single, rtol=1e-5, atol=1e-9)
    g = gaussian_psf(fwhm, size=9)
    assert g.shape == (9, 9, 3)
    np.testing.assert_allclose(g.sum(axis=(0, 1)), 1.0, rtol=1e-5)


# -------------------------------------------------------------------- convolution


@pytest.mark.parametrize("kshape", [(5, 5), (3, 7), (1, 1), (9, 3)])
def test_convolve_fft_matches_scipy(kshape):
    rng = _rng(2)
    image = rng.normal(size=(12, 10, 2)).astype(np.float32)
    kernel = rng.normal(size=kshape + (2,)).astype(np.float32)
    out = jax.jit(convolve_fft)(jnp.asarray(image), jnp.asarray(kernel))
    assert out.shape == image.shape and out.dtype == jnp.float32
    for b in range(2):
        ref = scipy.signal.convolve(
            image[..., b].astype(np.float64), kernel[..., b].astype(np.float64), mode="same"
        )
        np.testing.assert_allclose(out[..., b], ref, atol=1e-4)


def test_convolve_fft_batched():
    rng = _rng(3)
    images = jnp.asarray(rng.normal(size=(3, 11, 9, 2)), F32)
    kernels = jnp.asarray(rng.normal(size=(3, 5, 3, 2)), F32)
    out = convolve_fft(images, kernels[0])
    assert out.shape == images.shape
    for i in range(3):
        np.testing.assert_allclose(out[i], convolve_fft(images[i], kernels[0]), atol=1e-5)
    # Per-image kernels, and vmap gives the same as batching.
    out2 = convolve_fft(images, kernels)
    np.testing.assert_allclose(out2, jax.vmap(convolve_fft)(images, kernels), atol=1e-5)
    np.testing.assert_allclose(out2[1], convolve_fft(images[1], kernels[1]), atol=1e-5)


@pytest.mark.parametrize("dx, dy", [(2, -1), (-3, 0), (0, 4)])
def test_convolve_fft_integer_shift_is_roll(dx, dy):
    rng = _rng(4)
    image = jnp.asarray(rng.normal(size=(20, 18, 2)), F32)
    kernel = jnp.asarray(rng.normal(size=(5, 5, 2)), F32)
    plain = convolve_fft(image, kernel)
    shifted = convolve_fft(image, kernel, shift=[dx, dy])  # a list of ints is accepted
    rolled = jnp.roll(plain, (dy, dx), axis=(0, 1))
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(shifted[inner], rolled[inner], atol=1e-4)


def test_convolve_fft_fractional_shift_moves_centroid():
    y, x = np.mgrid[:33, :33]
    blob = np.exp(-((x - 16.0) ** 2 + (y - 16.0) ** 2) / (2 * 2.0**2))[..., None]
    image = jnp.asarray(blob / blob.sum(), F32)
    psf = gaussian_psf(3.0, size=11)
    shift = jnp.array([0.3, -0.45], F32)
    out = convolve_fft(image, psf, shift=shift)
    base = convolve_fft(image, psf)
    np.testing.assert_allclose(float(out.sum()), 1.0, atol=1e-4)
    np.testing.assert_allclose(
        _centroid(out[..., 0]) - _centroid(base[..., 0]), np.asarray(shift), atol=1e-3
    )
    # Batched shifts (..., 2).
    shifts = jnp.array([[0.3, -0.45], [-1.2, 0.7]], F32)
    many = convolve_fft(jnp.stack([image, image]), psf, shift=shifts)
    np.testing.assert_allclose(many[0], out, atol=1e-5)
    np.testing.assert_allclose(
        _centroid(many[1, ..., 0]) - _centroid(base[..., 0]), np.asarray(shifts[1]), atol=1e-3
    )


# ---------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def galaxy_renders():
    """A galaxy with clumps and arms, its smooth twin, arms only and neither: one vmap."""
    p = _galaxy()
    params = _stack(
        [p, smooth_twin(p), _galaxy(clump_frac=0.0), _galaxy(clump_frac=0.0, arm_amp=0.0)]
    )
    images = jax.jit(jax.vmap(lambda q: render_galaxy(q, 41, 41, config=CHEAP)))(params)
    return params, images


def test_render_galaxy_vmap_equals_loop(galaxy_renders):
    params, batch = galaxy_renders
    assert batch.shape == (4, 41, 41, 1)
    one = jax.jit(lambda q: render_galaxy(q, 41, 41, config=CHEAP))
    for i in (0, 2):
        single = one(jax.tree.map(lambda a, i=i: a[i], params))
        np.testing.assert_allclose(batch[i], single, rtol=1e-4, atol=1e-6 * float(single.max()))
    # All the light of the no-PSF galaxy falls in the stamp.
    np.testing.assert_allclose(batch.sum(axis=(1, 2, 3)), 100.0, rtol=2e-3)


def test_smooth_twin_keeps_flux_and_removes_detail(galaxy_renders):
    params, (img, smooth, arms, plain) = galaxy_renders
    p, twin = (jax.tree.map(lambda a, i=i: a[i], params) for i in (0, 1))
    assert float(twin.clump_frac[0]) == 0.0 and float(twin.arm_amp) == 0.0
    for name in ("flux", "bulge_frac", "disk_hlr", "disk_e1", "bulge_n", "x", "y"):
        np.testing.assert_array_equal(getattr(twin, name), getattr(p, name))
    assert float(smooth.sum()) == pytest.approx(float(img.sum()), rel=1e-3)
    assert float(jnp.abs(img - smooth).max()) > 0.05 * float(smooth.max())
    # Arms alone redistribute light without changing the flux.
    assert float(arms.sum()) == pytest.approx(float(plain.sum()), rel=1e-3)
    assert float(jnp.abs(arms - plain).max()) > 0.02 * float(plain.max())


_W = jnp.asarray(1.0 + 0.5 * _rng(5).uniform(size=(15, 15, 1)), F32)
_GRAD_PSF = moffat_psf(2.5, 2.5, size=7)


def _sersic_loss(theta):
    """Weighted pixel sum of a 15 x 15 Sersic stamp; ``theta = (flux, hlr, n, e1, x, y)``."""
    flux, hlr, n, e1, x, y = theta
    img = render_sersic(
        flux, hlr, n, e1, 0.1, x, y, height=15, width=15, psf=_GRAD_PSF, config=CHEAP
    )
    return jnp.sum(img * _W)


def test_render_sersic_gradient_matches_finite_differences():
    theta = jnp.array([2.0, 2.2, 1.7, 0.2, 7.2, 6.8], F32)
    h = np.array([0.1, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2], np.float32)
    steps = jnp.asarray(np.diag(h), F32)
    # A centre on a pixel centre samples r = 0, where r^(1/n) has an infinite slope.
    centred = jnp.array([[2.0, 2.2, 0.5, 0.2, 7.0, 7.0], [2.0, 2.2, 4.0, 0.2, 7.0, 7.0]], F32)
    batch = jnp.concatenate([theta[None], theta[None] + steps, theta[None] - steps, centred])
    # One compiled call gives the gradient and the finite-difference points.
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(_sersic_loss)))(batch)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    fd = (values[1:7] - values[7:13]) / (2 * jnp.asarray(h))
    # float32 in both modes (the pixel grid is float32), hence a few percent.
    np.testing.assert_allclose(grads[0], fd, rtol=3e-2, atol=1e-3 * float(jnp.abs(grads[0]).max()))
    assert np.all(np.asarray(grads[0]) != 0)


def test_galaxy_sb_gradients_finite_at_centre():
    # At r = 0 the arms' 1/r, log r and the Sersic r^(1/n) would give NaN gradients
    # without the floors in the profiles.
    p = _galaxy()._replace(bulge_n=jnp.asarray(4.0, F32))
    zero = jnp.zeros((1, 1), F32)

    def centre_sb(params, dx, dy):
        return jnp.sum(galaxy_sb(params)(dx, dy))

    grads = jax.jit(jax.grad(centre_sb, argnums=(0, 1, 2)))(p, zero, zero)
    for name, g in zip(p._fields, grads[0], strict=True):
        assert np.all(np.isfinite(g)), name
    assert np.all(np.isfinite(grads[1])) and np.all(np.isfinite(grads[2]))
    assert float(jnp.abs(grads[0].disk_hlr)) > 0


def test_pixel_psf_and_oversampled_paths_agree():
    # The pixel-PSF path is a pixel-level approximation (the galaxy is integrated over
    # pixels and the PSF holds the pixel response as well): ~1e-2 of the peak.
    cfg = RenderConfig(oversample=3, refine_levels=1, pad=6)
    kw = dict(height=21, width=21, config=cfg)
    args = (1.0, 4.0, 1.0, 0.2, 0.1, 10.3, 9.6)
    fine = render_sersic(*args, psf=moffat_psf(5.0, size=13, oversample=3), psf_oversample=3, **kw)
    coarse = render_sersic(*args, psf=moffat_psf(5.0, size=13), psf_oversample=1, **kw)
    assert fine.shape == coarse.shape == (21, 21, 1)
    assert float(jnp.abs(fine - coarse).max()) < 1e-2 * float(fine.max())
    assert float(fine.sum()) == pytest.approx(float(coarse.sum()), rel=1e-2)


def test_bad_psf_oversample_raises():
    with pytest.raises(ValueError, match="psf_oversample"):
        render_sersic(
            1.0, 2.0, 1.0, height=9, width=9, psf=moffat_psf(2.0, size=5, oversample=5),
            psf_oversample=5, config=RenderConfig(oversample=3, refine_levels=1),
        )  # fmt: skip


@pytest.mark.parametrize("oversample, pad", [(2, 8), (0, 8), (3, -1)])
def test_render_config_checks(oversample, pad):
    with pytest.raises(ValueError, match="oversample" if pad >= 0 else "pad"):
        RenderConfig(oversample=oversample, pad=pad)


def test_render_config_round_trip():
    cfg = RenderConfig(oversample=5, refine_levels=3, pad=2)
    assert RenderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("disk_n", 7.0, r"disk_n \(Sersic n\)"),
        ("bulge_n", 0.2, r"bulge_n \(Sersic n\)"),
        ("disk_hlr", 0.0, "disk_hlr:"),
        ("bulge_hlr", -1.0, "bulge_hlr:"),
        ("flux", np.array([np.nan], np.float32), "flux:"),
        ("flux", np.array([-1.0], np.float32), "flux:"),
        ("disk_e1", 1.0, "disk_e1/e2"),
        ("bulge_e2", -0.995, "bulge_e1/e2"),
        ("x", np.inf, "x:"),
        ("clump_frac", np.array([1.2], np.float32), "clump_frac:"),
    ],
)
def test_validate_galaxy_params_names_field(field, value, match):
    p = GalaxyParams.sersic(1.0, 2.0, 1.0)
    validate_galaxy_params(p)
    bad = p._replace(**{field: jnp.asarray(value, F32)})
    with pytest.raises(ValueError, match=r"^params\." + match):
        validate_galaxy_params(bad)


def test_validate_galaxy_params_fractions_sum():
    p = GalaxyParams.sersic(1.0, 2.0, 1.0)
    frac = jnp.array([0.6], F32)
    validate_galaxy_params(p._replace(bulge_frac=frac, clump_frac=frac * 0.5))
    with pytest.raises(ValueError, match=r"^params\.bulge_frac \+ clump_frac"):
        validate_galaxy_params(p._replace(bulge_frac=frac, clump_frac=frac))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0.2), r"^n \(Sersic index\)"),
        (dict(n=6.5), r"^n \(Sersic index\)"),
        (dict(hlr=0.0), "^hlr:"),
        (dict(hlr=-2.0), "^hlr:"),
        (dict(flux=float("nan")), "^flux:"),
        (dict(e1=1.0), r"^\|e\|:"),
        (dict(e1=0.8, e2=0.8), r"^\|e\|:"),
        (dict(x=float("inf")), "^x:"),
        (dict(y=float("nan")), "^y:"),
    ],
)
def test_render_sersic_bad_values(kwargs, match):
    args = dict(flux=1.0, hlr=2.0, n=1.0, e1=0.0, e2=0.0, x=4.0, y=4.0) | kwargs
    with pytest.raises(ValueError, match=match):
        render_sersic(**args, height=9, width=9, config=CHEAP)


# -------------------------------------------------------------------------- noise


def test_add_noise_sky_only(key):
    image = jnp.zeros((128, 128, 2), F32)
    sky = jnp.array([1.0, 3.0], F32)
    noisy = jax.jit(add_noise)(key, image, sky)
    assert noisy.shape == image.shape and noisy.dtype == jnp.float32
    a = np.asarray(noisy).reshape(-1, 2)
    np.testing.assert_allclose(a.mean(0), 0.0, atol=4 * 3.0 / 128)
    np.testing.assert_allclose(a.std(0), [1.0, 3.0], rtol=2e-2)


def test_add_noise_gaussian_poisson_variance(key):
    # Band 0 has source light, band 1 none; 256^2 pixels give variances to ~1%.
    image = jnp.concatenate([jnp.full((256, 256, 1), 50.0, F32), jnp.zeros((256, 256, 1), F32)], -1)
    noisy = add_noise(key, image, 2.0, gain=10.0)
    resid = np.asarray(noisy - image).reshape(-1, 2)
    expected = np.asarray(noise_variance(image, 2.0, 10.0)).reshape(-1, 2)[0]
    np.testing.assert_allclose(expected, [4.0 + 50.0 / 10.0, 4.0])
    np.testing.assert_allclose(resid.var(0), expected, rtol=4e-2)
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=4 * 3.0 / 256)
    # Per-band sky and gain.
    sky, gain = jnp.array([2.0, 1.0], F32), jnp.array([10.0, 5.0], F32)
    resid = np.asarray(add_noise(key, image, sky, gain) - image).reshape(-1, 2)
    np.testing.assert_allclose(resid.var(0), [9.0, 1.0], rtol=4e-2)


def test_add_noise_exact_poisson(key):
    # The first row is negative: those pixels keep their value (no Poisson term there).
    image = jnp.full((129, 128, 1), 3.7, F32).at[0].set(-1.0)
    noisy = np.asarray(add_noise(key, image, 0.0, gain=2.0, poisson="exact"))
    np.testing.assert_allclose(noisy[0], -1.0)
    noisy = noisy[1:]
    counts = noisy * 2.0
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)  # integer counts
    assert noisy.mean() == pytest.approx(3.7, abs=4 * np.sqrt(3.7 / 2) / 128)
    assert noisy.var() == pytest.approx(3.7 / 2.0, rel=4e-2)


def test_add_noise_bad_poisson(key):
    with pytest.raises(ValueError, match="^poisson:"):
        add_noise(key, jnp.zeros((4, 4, 1), F32), 1.0, gain=1.0, poisson="poisson")


def test_noise_variance_shapes():
    rng = _rng(6)
    image = jnp.asarray(rng.normal(size=(3, 8, 7, 2)), F32)
    sky = jnp.array([1.0, 2.0], F32)
    var = noise_variance(image, sky)
    assert var.shape == image.shape
    np.testing.assert_allclose(var[..., 0], 1.0)
    np.testing.assert_allclose(var[..., 1], 4.0)
    gain = jnp.array([10.0, 5.0], F32)
    var = jax.jit(noise_variance)(image, sky, gain)
    expected = np.asarray(sky) ** 2 + np.maximum(np.asarray(image), 0) / np.asarray(gain)
    np.testing.assert_allclose(var, expected, rtol=1e-6)


# ------------------------------------------------------------------------ surveys


@pytest.mark.parametrize("name", sorted(SURVEYS))
def test_survey_dict_round_trip(name):
    s = SURVEYS[name]
    assert s.name == name
    assert Survey.from_dict(s.to_dict()) == s
    assert Survey.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(psf_fwhm=(0.7,)), "^psf_fwhm: expected 6 values"),
        (dict(sky_sigma=(1.0,) * 5), "^sky_sigma: expected 6 values"),
        (dict(zeropoint=(30.0,) * 7), "^zeropoint: expected 6 values"),
        (dict(sky_sigma=(1.0,) * 5 + (0.0,)), "^sky_sigma: expected positive"),
        (dict(psf_size=40), "^psf_size:"),
        (dict(gain=-1.0), "^gain:"),
        (dict(mag_max=19.0), "mag_max"),
    ],
)
def test_survey_checks(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(LSST, **change)


@pytest.mark.parametrize("survey", [TINY_R, TINY_LSST, dataclasses.replace(HSC, psf_size=9)])
def test_survey_psf(survey):
    nb, n = survey.n_bands, survey.psf_size
    pix = survey.pixel_psf()
    assert pix.shape == (n, n, nb)
    np.testing.assert_allclose(pix.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    over = survey.psf(3)
    assert over.shape == (3 * n, 3 * n, nb)
    np.testing.assert_allclose(over.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    assert survey.psf().shape == (n * survey.render.oversample,) * 2 + (nb,)


@pytest.mark.parametrize("name", sorted(SURVEYS))
def test_sample_galaxy_valid(key, name):
    survey = SURVEYS[name]
    # Eager vmap: jit-compiling the sampler for each survey costs seconds, and tracing
    # under vmap already checks that it is traceable.
    keys = jax.random.split(key, 32)  # one batch size: each new shape recompiles the sampler
    params = jax.vmap(lambda k: sample_galaxy(k, survey))(keys)
    validate_galaxy_params(params)
    nb, nc = survey.n_bands, survey.n_clumps
    assert params.flux.shape == (32, nb)
    assert params.clump_uv.shape == (32, nc, 2)
    assert params.x.shape == (32,)
    for name_, a in zip(params._fields, params, strict=True):
        assert a.dtype == jnp.float32, name_
    assert np.all(np.asarray(params.flux) > 0)
    c = (survey.stamp_size - 1) / 2
    assert np.all(np.abs(np.asarray(params.x) - c) <= 0.5)
    np.testing.assert_allclose(params.clump_weight.sum(-1), 1.0, rtol=1e-5)
    smooth = jax.vmap(lambda k: sample_galaxy(k, survey, detail=False))(keys)
    assert np.all(np.asarray(smooth.clump_frac) == 0) and np.all(np.asarray(smooth.arm_amp) == 0)


# ------------------------------------------------------------------------- fields


def test_sample_positions(key):
    size, margin = 48, 6.0
    fn = jax.jit(jax.vmap(lambda k, sep: sample_positions(k, 5, size, sep, margin), (0, None)))
    keys = jax.random.split(key, 10)
    for min_sep in (8.0, 100.0):  # feasible, and impossible (the farthest candidate wins)
        pos = np.asarray(fn(keys, min_sep))
        assert pos.shape == (10, 5, 2)
        assert np.all(pos >= margin) and np.all(pos <= size - 1 - margin)
    pos = np.asarray(fn(keys, 8.0))
    d = np.linalg.norm(pos[:, :, None] - pos[:, None, :], axis=-1)
    d[:, np.arange(5), np.arange(5)] = np.inf
    assert d.min() >= 8.0


def test_place_stamp():
    rng = _rng(7)
    stamp = jnp.asarray(rng.uniform(0.1, 1.0, size=(5, 5, 2)), F32)
    field = jax.jit(place_stamp, static_argnums=(3, 4))(stamp, 10.3, 12.6, 32, 30)
    assert field.shape == (32, 30, 2)
    np.testing.assert_allclose(field.sum(axis=(0, 1)), stamp.sum(axis=(0, 1)), rtol=1e-6)
    # The central pixel goes to (round(x), round(y)) = column 10, row 13.
    np.testing.assert_array_equal(field[11:16, 8:13], stamp)
    # Near the edges the stamp is cut.
    left = place_stamp(stamp, 0.2, 12.0, 32, 30)
    np.testing.assert_allclose(left.sum(axis=(0, 1)), stamp[:, 2:].sum(axis=(0, 1)), rtol=1e-6)
    corner = place_stamp(stamp, 29.4, 31.0, 32, 30)
    np.testing.assert_array_equal(corner[-3:, -3:], stamp[:3, :3])
    assert float(place_stamp(stamp, -10.0, 5.0, 32, 30).sum()) == 0.0


@pytest.fixture(scope="module")
def tiny_fields():
    """Six fields of a cheap six-band survey in two chunks of 3, and the first five of
    them in two chunks of 3 (the second padded): one compiled shape for both.

    Compiling ``simulate_field`` dominates this file's run time (mostly the gamma
    samplers behind ``sample_galaxy``), so both field tests share these two runs.
    """
    kw = dict(survey=TINY_LSST, n_max=3, n_min=2)
    key = jax.random.key(1)
    return simulate_fields(key, 6, chunk=3, **kw), simulate_fields(key, 5, chunk=3, **kw)


@pytest.mark.slow  # one compilation of the field simulator (3 fields)
def test_simulate_field(tiny_fields):
    f = tiny_fields[1]
    survey, n, n_max, margin = TINY_LSST, 5, 3, 6.0
    nb, size = survey.n_bands, survey.field_size
    assert f.image.shape == f.noiseless.shape == f.sigma.shape == (n, size, size, nb)
    assert f.sources.shape == (n, n_max, size, size, nb)
    assert f.positions.shape == (n, n_max, 2) and f.fluxes.shape == (n, n_max, nb)
    assert f.mask.shape == f.snr.shape == (n, n_max) and f.mask.dtype == np.bool_
    assert f.params.flux.shape == (n, n_max, nb) and f.params.clump_uv.shape[:2] == (n, n_max)
    for name, a in zip(f._fields, f, strict=True):
        if name != "params":
            assert isinstance(a, np.ndarray), name
    mask = f.mask
    assert np.all((mask.sum(1) >= 2) & (mask.sum(1) <= n_max))
    assert np.all(mask[:, :2])  # real sources come first
    np.testing.assert_allclose(f.noiseless, f.sources.sum(1), rtol=1e-5, atol=1e-5)
    assert np.all(f.sources[~mask] == 0)
    assert np.all(f.fluxes[~mask] == 0) and np.all(f.snr[~mask] == 0)
    assert np.all(f.fluxes[mask] > 0) and np.all(f.snr[mask] > 0)
    pos = f.positions[mask]
    assert np.all(pos >= margin) and np.all(pos <= size - 1 - margin)
    np.testing.assert_allclose(f.params.x, f.positions[..., 0])
    np.testing.assert_allclose(f.params.y, f.positions[..., 1])
    sky = jnp.asarray(survey.sky_sigma, F32)
    var = noise_variance(jnp.asarray(f.noiseless), sky, survey.gain)
    np.testing.assert_allclose(f.sigma**2, var, rtol=1e-5)
    assert np.all(np.isfinite(f.image)) and not np.allclose(f.image, f.noiseless)
    # Each source lies where it was placed.
    for i, j in zip(*np.nonzero(mask), strict=True):
        c = _centroid(f.sources[i, j].sum(-1))
        assert np.linalg.norm(c - f.positions[i, j]) < 2.5


@pytest.mark.slow  # one compilation of the field simulator (3 fields)
def test_simulate_fields_independent_of_chunk(tiny_fields):
    a, b = tiny_fields  # fields 3 and 4: in a full chunk of a, in b's padded one
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert isinstance(x, np.ndarray) and x.shape[0] == 6 and y.shape[0] == 5
        np.testing.assert_array_equal(x[:5], y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_fields=0), "^n_fields:"),
        (dict(n_max=0), "^n_max:"),
        (dict(n_max=3, n_min=4), "^n_min:"),
        (dict(n_min=-1), "^n_min:"),
        (dict(chunk=0), "^chunk:"),
    ],
)
def test_simulate_fields_bad_arguments(key, kwargs, match):
    args = dict(n_fields=2, survey=TINY_R) | kwargs
    with pytest.raises(ValueError, match=match):
        simulate_fields(key, **args)


def test_half_light_ellipse_axes_and_component():
    from galjax.sim import GalaxyParams, half_light_ellipse

    e = 0.3 * np.array([np.cos(1.0), np.sin(1.0)])  # |e| 0.3 at 2 beta = 1 rad
    p = GalaxyParams.sersic(1.0, 3.0, 1.0, e1=e[0], e2=e[1])
    a, b, t = (float(v) for v in half_light_ellipse(p))
    np.testing.assert_allclose([a * b, b / a, t], [9.0, 0.7 / 1.3, 0.5], rtol=1e-5)
    # A larger bulge is taken only when the galaxy has one.
    big_bulge = p._replace(bulge_hlr=jnp.asarray(6.0), bulge_e1=jnp.asarray(0.0))
    assert float(half_light_ellipse(big_bulge)[0]) == pytest.approx(a)
    with_bulge = big_bulge._replace(bulge_frac=jnp.asarray([0.4]))
    np.testing.assert_allclose([float(v) for v in half_light_ellipse(with_bulge)], [6, 6, 0])
