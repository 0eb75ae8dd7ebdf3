"""Tests for galjax.fit: Gaussian fit, parametric scene fit, segmentation fluxes.

Each fit compiles once per static configuration, so the tests share a few
configurations (and the module-level fixtures below) to stay fast.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import erf

from galjax import sim
from galjax.fit import (
    GaussianParams,
    fit_gaussian,
    fit_scene,
    gaussian_best_sigma_loglik,
    render_gaussian,
    segmentation_fluxes,
)
from galjax.fit.scene import _unit_sersic_sb

F32 = jnp.float32
PSF = sim.moffat_psf(3.5, beta=2.5, size=15)  # pixel-level effective PSF, FWHM 0.7"


def _noise(seed, shape, scale=1.0):
    """Gaussian noise from numpy (no compilation), float32."""
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), F32)


def _gauss(flux, x, y, cov):
    return GaussianParams(
        jnp.asarray(flux, F32), jnp.asarray(x, F32), jnp.asarray(y, F32), jnp.asarray(cov, F32)
    )


# -- render_gaussian ----------------------------------------------------------------


def test_render_gaussian_matches_exact_pixel_integral():
    # Axis-aligned: the pixel integral is a product of erf differences.
    sx, sy, x0, y0, flux = 1.6, 2.3, 9.3, 10.8, 250.0
    p = _gauss([flux], x0, y0, [[sx**2, 0.0], [0.0, sy**2]])
    img = render_gaussian(p, 20, 22)
    edges = lambda n, c, s: erf((jnp.arange(n + 1, dtype=F32) - 0.5 - c) / (s * math.sqrt(2)))
    ex = jnp.diff(edges(22, x0, sx)) / 2
    ey = jnp.diff(edges(20, y0, sy)) / 2
    exact = flux * ey[:, None] * ex[None, :]
    assert img.shape == (20, 22, 1)
    np.testing.assert_allclose(img[..., 0], exact, atol=2e-4 * float(exact.max()))
    # jit and vmap give the same images; flux per band and PSF convolution conserve flux.
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), p)
    mapped = jax.jit(jax.vmap(lambda q: render_gaussian(q, 20, 22)))(batch)
    np.testing.assert_allclose(mapped[1], img, rtol=1e-5, atol=1e-7 * flux)
    two = _gauss([flux, 2 * flux], x0, y0, [[3.0, 0.5], [0.5, 2.0]])
    conv = render_gaussian(two, 40, 40, psf=jnp.concatenate([PSF, PSF], axis=-1))
    np.testing.assert_allclose(conv.sum(axis=(0, 1)), [flux, 2 * flux], rtol=2e-3)


def test_render_gaussian_bad_cov():
    with pytest.raises(ValueError, match="params.cov"):
        render_gaussian(_gauss([1.0], 5.0, 5.0, [[1.0, 2.0], [2.0, 1.0]]), 10, 10)
    with pytest.raises(ValueError, match="params.cov"):
        render_gaussian(_gauss([1.0], 5.0, 5.0, jnp.eye(3)), 10, 10)


# -- fit_gaussian -------------------------------------------------------------------


def test_fit_gaussian_recovers_parameters_batch_psf_mask_nan():
    truths = [
        _gauss([3000.0, 1500.0], 12.3, 13.6, [[6.0, 1.5], [1.5, 4.0]]),
        _gauss([2000.0, 2500.0], 15.8, 11.1, [[3.0, -1.0], [-1.0, 5.0]]),
    ]
    psf = jnp.concatenate([PSF, sim.moffat_psf(3.0, size=15)], axis=-1)
    clean = jnp.stack([render_gaussian(p, 28, 28, psf=psf) for p in truths])
    noisy = clean + _noise(0, clean.shape)
    noisy = noisy.at[0, 3, 20, 1].set(jnp.nan).at[1, 14, 14, 0].set(1e6)  # NaN, cosmic ray
    pixel_mask = jnp.ones(noisy.shape).at[1, 14, 14, 0].set(0.0)
    with pytest.warns(RuntimeWarning, match="image"):
        # L-BFGS here (Adam is the default, used by the scene tests); the batch is vmapped.
        fit = fit_gaussian(noisy, 1.0, psf, pixel_mask=pixel_mask, method="lbfgs", n_steps=30)
    assert fit.model.shape == (2, 28, 28, 2) and fit.chi2.shape == (2,)
    for i, p in enumerate(truths):
        np.testing.assert_allclose(fit.params.flux[i], p.flux, rtol=0.02)
        assert abs(float(fit.params.x[i] - p.x)) < 0.1 and abs(float(fit.params.y[i] - p.y)) < 0.1
        np.testing.assert_allclose(fit.params.cov[i], p.cov, atol=0.1 * float(p.cov[0, 0]))
    assert bool(jnp.all(jnp.isfinite(fit.model)))
    # A correct model fits to the noise; the NaN and the masked pixel are left out.
    np.testing.assert_allclose(fit.chi2_per_pixel, 1.0, atol=0.1)
    np.testing.assert_allclose(fit.chi2, fit.chi2_per_pixel * (28 * 28 * 2 - 1), rtol=1e-5)


def test_fit_gaussian_bad_input():
    img = jnp.ones((8, 8, 1))
    with pytest.raises(ValueError, match="sigma"):
        fit_gaussian(img, sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        fit_gaussian(img, sigma=jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="image"):
        fit_gaussian(jnp.ones((8, 8)))
    with pytest.raises(ValueError, match="psf"):
        fit_gaussian(img, 1.0, psf=jnp.ones((5, 5, 2)))
    with pytest.raises(ValueError, match="psf"):
        fit_gaussian(img, 1.0, psf=jnp.ones((4, 4, 1)))
    with pytest.raises(ValueError, match="method"):
        fit_gaussian(img, 1.0, method="sgd")
    with pytest.raises(ValueError, match="n_steps"):
        fit_gaussian(img, 1.0, n_steps=0)
    with pytest.raises(TypeError, match="image"):
        fit_gaussian("image.fits")


# -- gaussian_best_sigma_loglik -----------------------------------------------------


def test_best_sigma_loglik_equals_brute_force_max():
    x = jnp.asarray(np.random.default_rng(2).normal(3.0, 2.0, size=(2, 6, 5, 3)), F32)
    mu = jnp.full_like(x, 2.5)
    best = gaussian_best_sigma_loglik(x, mu)
    assert best.shape == (2,)
    xs, ms = np.asarray(x, np.float64), np.asarray(mu, np.float64)
    sig = np.geomspace(0.1, 10.0, 20001)
    for i in range(2):
        rss, n = np.sum((xs[i] - ms[i]) ** 2), xs[i].size
        ll = -0.5 * n * np.log(2 * np.pi * sig**2) - rss / (2 * sig**2)
        np.testing.assert_allclose(best[i], ll.max(), rtol=1e-5)
        assert np.all(ll <= float(best[i]) + 1e-3 * abs(float(best[i])))
    np.testing.assert_allclose(jax.jit(gaussian_best_sigma_loglik)(x, mu), best, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(gaussian_best_sigma_loglik)(x, mu), best, rtol=1e-6)
    # A mask drops pixels; a NaN pixel is masked with a warning.
    mask = jnp.ones_like(x).at[:, 0].set(0.0)
    np.testing.assert_allclose(
        gaussian_best_sigma_loglik(x, mu, mask), gaussian_best_sigma_loglik(x[:, 1:], mu[:, 1:]),
        rtol=1e-5,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="image"):
        masked = gaussian_best_sigma_loglik(x.at[:, 0].set(jnp.nan), mu)
    np.testing.assert_allclose(masked, gaussian_best_sigma_loglik(x[:, 1:], mu[:, 1:]), rtol=1e-5)
    with pytest.raises(ValueError, match="image, model"):
        gaussian_best_sigma_loglik(x, mu[..., :2])


# -- fit_scene ----------------------------------------------------------------------

#: Sersic sources (flux, hlr, n, e1, e2, x, y) of three 48x48 fields, padded to n_max = 3.
SCENES = [
    [(6000.0, 2.5, 1.0, 0.2, -0.1, 12.3, 14.6), (3600.0, 1.8, 2.5, -0.1, 0.15, 34.7, 33.2)],
    [(4800.0, 2.0, 1.5, 0.0, 0.1, 23.6, 24.4)],
    [(3200.0, 1.5, 1.0, 0.1, 0.0, 10.2, 36.1), (4000.0, 2.2, 1.2, -0.2, 0.0, 36.4, 12.2),
     (2400.0, 1.6, 2.0, 0.0, -0.1, 30.5, 35.3)],
]  # fmt: skip


def _sersic_fields(size=48, n_max=3):
    """Noisy fields rendered with GalSim-accurate settings (oversampled PSF) + truth."""
    psf3 = sim.moffat_psf(3.5, beta=2.5, size=15, oversample=3)
    cfg = sim.RenderConfig(oversample=3, refine_levels=2, pad=8)
    rows = [list(s) + [(0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)] * (n_max - len(s)) for s in SCENES]
    par = jnp.asarray(rows, F32)  # (fields, n_max, 7)
    mask = jnp.asarray([[i < len(s) for i in range(n_max)] for s in SCENES])

    def one(q):
        # The simulator's sub-pixel shift mixes float32 and float64 under x64.
        with jax.numpy_dtype_promotion("standard"):
            return sim.render_sersic(
                q[0], q[1], q[2], q[3], q[4], q[5], q[6], height=size, width=size, psf=psf3,
                psf_oversample=3, config=cfg,
            )  # fmt: skip

    sources = jax.jit(jax.vmap(jax.vmap(one)))(par) * mask[..., None, None, None].astype(F32)
    field = sources.sum(axis=1) + _noise(3, (len(SCENES), size, size, 1))
    # Detected positions: the truth rounded to the pixel (the fit finds the offset).
    return field, jnp.round(par[..., 5:7]) * mask[..., None].astype(F32), mask, par


def test_fit_scene_recovers_fluxes_under_vmap_with_padding():
    field, pos, mask, par = _sersic_fields()
    # Padded sources may carry any position (here NaN): they are ignored.
    pos = jnp.where(mask[..., None], pos, jnp.nan)
    fit = fit_scene(field, pos, mask, 1.0, PSF)  # 3 fields vmapped in one call
    assert fit.sources.shape == (3, 3, 48, 48, 1) and fit.fluxes.shape == (3, 3, 1)
    true_flux = par[..., 0]
    m = np.asarray(mask)
    # Well-separated galaxies (SNR ~ 100-300) to within a few per cent.
    np.testing.assert_allclose(
        np.asarray(fit.fluxes[..., 0])[m], np.asarray(true_flux)[m], rtol=0.03
    )
    assert float(jnp.max(jnp.abs(fit.params.x[0, :2] - par[0, :2, 5]))) < 0.2
    # Padded sources: zero images and fluxes; the model is the sum of the sources.
    assert float(jnp.max(jnp.abs(fit.sources[~mask]))) == 0.0
    assert float(jnp.max(jnp.abs(fit.fluxes[~mask]))) == 0.0
    np.testing.assert_allclose(fit.model, fit.sources.sum(axis=1), atol=1e-3)
    np.testing.assert_allclose(fit.chi2_per_pixel, 1.0, atol=0.1)
    assert bool(jnp.all(jnp.isfinite(fit.params.hlr)))


def test_fit_scene_gaussian_under_jit_of_vmap():
    # A cheap configuration: two Gaussians in a 24x24 field, 1 band.
    truth = [_gauss([2000.0], 6.3, 7.2, 2.0 * jnp.eye(2)), _gauss([1200.0], 16.8, 15.6, jnp.eye(2))]
    clean = sum(render_gaussian(p, 24, 24, psf=PSF) for p in truth)
    fields = jnp.stack([clean + _noise(4, clean.shape), clean + _noise(5, clean.shape)])
    pos = jnp.asarray([[6.0, 7.0], [17.0, 16.0]], F32)
    mask = jnp.asarray([True, True])
    kw = dict(profile="gaussian", n_steps=60, stamp_size=15)
    fit = jax.jit(jax.vmap(lambda f: fit_scene(f, pos, mask, 1.0, PSF, **kw)))(fields)
    np.testing.assert_allclose(fit.fluxes[..., 0], [[2000.0, 1200.0]] * 2, rtol=0.03)
    np.testing.assert_allclose(fit.params.x, [[6.3, 16.8]] * 2, atol=0.1)
    # A Gaussian is a Sersic n = 0.5 with hlr = sigma sqrt(2 ln 2).
    np.testing.assert_allclose(fit.params.n, 0.5)
    np.testing.assert_allclose(fit.params.hlr[:, 0], math.sqrt(2.0 * 2 * math.log(2)), rtol=0.05)
    np.testing.assert_allclose(fit.chi2_per_pixel, 1.0, atol=0.1)


def test_unit_sersic_profile_matches_sim():
    dx, dy = jnp.meshgrid(jnp.linspace(-5, 5, 11, dtype=F32), jnp.linspace(-4, 6, 11, dtype=F32))
    for n in (0.7, 1.0, 3.5):
        ref = sim.sersic_sb(dx, dy, 1.0, 2.2, n, 0.1, -0.2)
        np.testing.assert_allclose(_unit_sersic_sb(2.2, n, 0.1, -0.2)(dx, dy), ref, rtol=1e-5)


def test_fit_scene_bad_input():
    f = jnp.zeros((16, 16, 1))
    pos = jnp.asarray([[4.0, 5.0], [10.0, 10.0]])
    mask = jnp.asarray([True, False])
    with pytest.raises(ValueError, match="positions"):
        fit_scene(f, jnp.asarray([[4.0, 5.0], [16.0, 3.0]]), None, 1.0)
    with pytest.raises(ValueError, match="positions"):
        fit_scene(f, jnp.asarray([[4.0, -0.6]]), None, 1.0)
    with pytest.raises(ValueError, match="positions"):
        fit_scene(f, jnp.asarray([4.0, 5.0]), None, 1.0)
    with pytest.raises(ValueError, match="mask"):
        fit_scene(f, pos, jnp.asarray([True]), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        fit_scene(f, pos, mask, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        fit_scene(f, pos, mask, None)
    with pytest.raises(ValueError, match="field"):
        fit_scene(jnp.zeros((16, 16)), pos, mask, 1.0)
    with pytest.raises(ValueError, match="psf"):
        fit_scene(jnp.zeros((16, 16, 2)), pos, mask, 1.0, PSF)
    with pytest.raises(ValueError, match="profile"):
        fit_scene(f, pos, mask, 1.0, profile="devauc")
    with pytest.raises(ValueError, match="stamp_size"):
        fit_scene(f, pos, mask, 1.0, stamp_size=24)
    with pytest.raises(ValueError, match="positions"):  # batch axes must agree
        fit_scene(jnp.zeros((2, 16, 16, 1)), pos, mask, 1.0)


# -- segmentation_fluxes ------------------------------------------------------------


def _two_sources(x2, size=40):
    """Two PSF-convolved Gaussians of fluxes 1e4 and 6e3 at (8.3, 19.6) and (x2, 20.2)."""
    cov = jnp.asarray([[[4.0, 1.0], [1.0, 3.0]], [[2.0, 0.0], [0.0, 2.0]]], F32)
    par = GaussianParams(
        jnp.asarray([[1e4], [6e3]], F32), jnp.asarray([8.3, x2], F32),
        jnp.asarray([19.6, 20.2], F32), cov,
    )  # fmt: skip
    img = jax.jit(jax.vmap(lambda q: render_gaussian(q, size, size, psf=PSF)))(par).sum(axis=0)
    pos = jnp.asarray([[8.0, 20.0], [round(x2), 20.0], [0.0, 0.0]], F32)
    return img, pos, jnp.asarray([True, True, False])


def test_segmentation_isolated_sources_give_their_fluxes():
    img, pos, mask = _two_sources(30.4)
    field = img + _noise(6, img.shape)
    seg = segmentation_fluxes(field, pos, mask, 1.0)
    assert seg.fluxes.shape == (3, 1) and seg.segmap.shape == (40, 40)
    np.testing.assert_allclose(seg.fluxes[:2, 0], [1e4, 6e3], rtol=0.03)
    assert float(seg.fluxes[2, 0]) == 0.0 and int(seg.npix[2]) == 0
    assert int(seg.segmap[20, 8]) == 0 and int(seg.segmap[20, 30]) == 1
    assert int(seg.segmap[0, 39]) == -1  # sky
    # Under jit of vmap of grad: the gradient of a flux is its segment's indicator.
    flux0 = lambda f: segmentation_fluxes(f, pos, mask, 1.0).fluxes[0, 0]
    g = jax.jit(jax.vmap(jax.grad(flux0)))(jnp.stack([field, field]))
    np.testing.assert_array_equal(np.asarray(g[1, ..., 0]), np.asarray(seg.segmap == 0))


def test_segmentation_blend_conserves_segmented_flux_and_skips_islands():
    img, pos, mask = _two_sources(14.6)  # 6.3 px apart: one footprint
    field = img + _noise(7, img.shape)
    field = field.at[3, 35, 0].set(50.0)  # a bright pixel connected to no source
    seg = segmentation_fluxes(field, pos, mask, 1.0)
    inside = np.asarray(seg.segmap) >= 0
    np.testing.assert_allclose(
        float(seg.fluxes.sum()), float(np.asarray(field)[inside].sum()), rtol=1e-5
    )
    assert int(seg.npix.sum()) == int(inside.sum()) and int(seg.npix[0]) > 0
    assert int(seg.segmap[3, 35]) == -1
    assert int(seg.segmap[20, 8]) == 0 and int(seg.segmap[20, 14]) == 1
    # Together the two segments hold nearly all the light of the blend.
    np.testing.assert_allclose(float(seg.fluxes.sum()), 1.6e4, rtol=0.03)
    # A NaN pixel is masked with a warning and adds nothing to its segment's flux.
    with pytest.warns(RuntimeWarning, match="field"):
        nan = segmentation_fluxes(field.at[20, 8, 0].set(jnp.nan), pos, mask, 1.0)
    assert bool(jnp.all(jnp.isfinite(nan.fluxes)))
    expected = float(seg.fluxes[0, 0] - field[20, 8, 0])  # the peak pixel, ~210
    np.testing.assert_allclose(float(nan.fluxes[0, 0]), expected, atol=30.0)


def test_segmentation_bad_input():
    f = jnp.zeros((10, 10, 1))
    pos = jnp.asarray([[4.0, 5.0]])
    with pytest.raises(ValueError, match="sigma"):
        segmentation_fluxes(f, pos, None, jnp.zeros((10, 10, 1)))
    with pytest.raises(ValueError, match="positions"):
        segmentation_fluxes(f, jnp.asarray([[4.0, 10.0]]), None, 1.0)
    with pytest.raises(ValueError, match="positions"):
        segmentation_fluxes(f, jnp.asarray([[jnp.nan, 1.0]]), None, 1.0)
    with pytest.raises(ValueError, match="smooth"):
        segmentation_fluxes(f, pos, None, 1.0, smooth=-1.0)
    with pytest.raises(ValueError, match="field"):
        segmentation_fluxes(jnp.zeros((10, 10)), pos, None, 1.0)


# -- shared pieces (galjax.fit.common) -----------------------------------------------


def _old_style_loop(fun, x0, n_steps, method, lr):
    """The loop the fits ran before galjax.core.optim.minimise: a hand-written lax.scan."""
    import optax

    if method == "adam":
        sched = optax.cosine_decay_schedule(lr, n_steps, alpha=0.02)
        opt = optax.chain(optax.zero_nans(), optax.adam(sched))

        def step(carry, _):
            x, st = carry
            v, g = jax.value_and_grad(fun)(x)
            with jax.numpy_dtype_promotion("standard"):
                u, st = opt.update(g, st, x)
            return (optax.apply_updates(x, u), st), v

    else:
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(fun)

        def step(carry, _):
            x, st = carry
            v, g = vg(x, state=st)
            with jax.numpy_dtype_promotion("standard"):
                u, st = opt.update(g, st, x, value=v, grad=g, value_fn=fun)
            return (optax.apply_updates(x, u), st), v

    with jax.numpy_dtype_promotion("standard"):
        st0 = opt.init(x0)
    (x, _), _ = jax.lax.scan(step, (x0, st0), None, length=n_steps)
    return x


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_minimise_shapes_is_the_old_loop_bit_for_bit(method):
    from galjax.fit.common import minimise_shapes

    target = jnp.asarray([1.5, -2.0, 0.25], F32)
    fun = lambda x: jnp.sum(jnp.cosh(x["a"] - target)) + jnp.sum(x["b"] ** 4)
    x0 = {"a": jnp.zeros(3, F32), "b": jnp.ones(2, F32)}
    new = jax.jit(lambda x: minimise_shapes(fun, x, 15, method, 0.1))(x0)
    old = jax.jit(lambda x: _old_style_loop(fun, x, 15, method, 0.1))(x0)
    for k in x0:
        np.testing.assert_array_equal(np.asarray(new[k]), np.asarray(old[k]))
    assert float(fun(new)) < float(fun(x0))  # and it did minimise


def test_common_reparametrisations_and_flux_solve():
    from galjax.fit.common import bounded, bounded_ellipticity, solve_fluxes, unbounded

    v = jnp.asarray([0.6, 1.0, 5.9], F32)
    np.testing.assert_allclose(bounded(unbounded(v, 0.5, 6.0), 0.5, 6.0), v, rtol=1e-5)
    e1, e2 = bounded_ellipticity(jnp.asarray([1e-4, 100.0]), jnp.asarray([0.0, 100.0]))
    np.testing.assert_allclose(e1[0], 1e-4 / math.sqrt(1 + (1e-4 / 0.95) ** 2), rtol=1e-6)
    assert float(jnp.hypot(e1[1], e2[1])) < 0.95
    # Two overlapping templates and a padded one: exact fluxes per band, 0 for padding.
    t = jnp.stack([render_gaussian(_gauss([1.0, 1.0], x, 8.0, 4 * jnp.eye(2)), 16, 16) for x in
                   (6.0, 9.0)] + [jnp.zeros((16, 16, 2))])  # fmt: skip
    f_true = jnp.asarray([[300.0, 100.0], [50.0, 200.0], [0.0, 0.0]], F32)
    data = jnp.einsum("ihwb,ib->hwb", t, f_true)
    f = solve_fluxes(t, data, jnp.ones_like(data), jnp.asarray([True, True, False]))
    np.testing.assert_allclose(f, f_true, rtol=1e-3, atol=1e-3)
