"""Point sources (stars) in the deblender: rendering, fitting, the point-source test."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.deblend import (
    DeblendConfig,
    deblend,
    deblend_field,
    laplace_flux_errors,
    point_latents,
    point_source_test,
    point_source_tests,
    point_stamps,
    render_sources,
)
from galjax.models import FlowConfig, GalaxyModel, VAEConfig, init_flow, init_vae
from galjax.sim import gaussian_psf

CFG = VAEConfig(stamp_size=15, latent_dim=4, hidden=(16,), enc_channels=(4, 8),
                dec_channels=(8, 4), dec_start=4, scale=1.0, psf_explicit=True)  # fmt: skip
FLOW = FlowConfig(dim=4, n_layers=2, hidden=(8,))
PSF = np.asarray(gaussian_psf(2.355 * 1.2, 11))
H = 28
VAE_PARAMS = init_vae(jax.random.key(5), CFG)


@pytest.fixture(scope="module")
def model():
    return GalaxyModel(CFG, VAE_PARAMS, FLOW, init_flow(jax.random.key(5), FLOW))


def _star(flux, x, y, dx, dy):
    """A point source of ``flux`` at ``(x + dx, y + dy)``, drawn by the library: (H, H, 1)."""
    z = jnp.array([[np.log(flux), 1.5 * np.arctanh(dx / 1.5), 1.5 * np.arctanh(dy / 1.5), 0]]) / 0.2
    img = render_sources(VAE_PARAMS, CFG, z, jnp.array([[x, y]]), jnp.array([True]), H, H, PSF,
                         jnp.array([True]))  # fmt: skip
    return np.asarray(img[0])


@pytest.fixture(scope="module")
def scene(model):
    """A galaxy drawn by the model and a bright star 0.3 / -0.2 px off its catalogue position."""
    z_gal = jnp.array([[0.5, -0.3, 0.8, 0.1]])
    gal = render_sources(model.vae_params, CFG, z_gal, jnp.array([[9.0, 10.0]]),
                         jnp.array([True]), H, H, PSF)[0]  # fmt: skip
    gal = np.asarray(gal) * 200.0 / float(np.abs(gal).sum())
    star = _star(300.0, 18.0, 17.0, 0.3, -0.2)
    clean = gal + star
    sigma = 0.02
    noisy = clean + sigma * np.asarray(jax.random.normal(jax.random.key(1), clean.shape))
    pos = np.array([[[9.0, 10.0], [18.0, 17.0]]], np.float32)
    return dict(field=noisy[None].astype(np.float32), pos=pos, sigma=sigma, star=star)


def test_point_stamps_carry_flux_and_offset():
    img = _star(50.0, 12.0, 14.0, 0.4, -0.7)
    assert img.sum() == pytest.approx(50.0, rel=1e-3)
    yy, xx = np.mgrid[:H, :H]
    cx, cy = (img[..., 0] * xx).sum() / 50.0, (img[..., 0] * yy).sum() / 50.0
    assert cx == pytest.approx(12.4, abs=0.02) and cy == pytest.approx(13.3, abs=0.02)
    stamps, off = point_stamps(jnp.zeros((2, 4)).at[1, 0].set(5.0), 1, 9)  # flux exp(0.2 z)
    assert stamps.shape == (2, 9, 9, 1) and float(stamps[1, 4, 4, 0]) == pytest.approx(np.e)
    np.testing.assert_allclose(off, 0.0)


def test_point_latents_start_from_the_peak():
    field = jnp.zeros((20, 20, 1)).at[5, 8, 0].set(4.0)
    z = point_latents(field, jnp.array([[8.0, 5.0], [1.0, 1.0]]), jnp.asarray(PSF), 4)
    assert float(jnp.exp(0.2 * z[0, 0])) == pytest.approx(4.0 / PSF[5, 5, 0], rel=1e-5)
    assert float(jnp.exp(0.2 * z[1, 0])) == pytest.approx(1e-3)  # no light: the floor
    np.testing.assert_allclose(z[:, 1:], 0.0)


def test_deblend_fits_a_star_as_a_point_source(model, scene):
    cfg = DeblendConfig(n_steps=300, tol=1e-6, prior_weight=0.01, debias=False)
    point = np.array([[False, True]])
    res = deblend(model, scene["field"], scene["pos"], sigma=scene["sigma"], psf=PSF,
                  config=cfg, point=point, progress=False)  # fmt: skip
    np.testing.assert_array_equal(res.point, point)
    assert res.fluxes[0, 1, 0] == pytest.approx(300.0, rel=0.02)
    off = 1.5 * np.tanh(0.2 * res.latents[0, 1, 1:3] / 1.5)
    np.testing.assert_allclose(off, [0.3, -0.2], atol=0.05)
    np.testing.assert_allclose(res.models[0, 1], scene["star"], atol=0.05 * scene["star"].max())
    assert res.prior_weights[0, 1] == 0.0
    err = laplace_flux_errors(model, res, scene["pos"], np.full_like(scene["field"], 1 / 0.02**2),
                              psf=PSF)  # fmt: skip
    assert np.all(np.isfinite(err)) and 0 < err[0, 1, 0] < 0.05 * 300.0
    # The galaxy-only fit leaves the star in the residual.
    gal_only = deblend(model, scene["field"], scene["pos"], sigma=scene["sigma"], psf=PSF,
                       config=cfg, progress=False)  # fmt: skip
    assert res.chi2[0] < gal_only.chi2[0]


def test_point_source_test_finds_the_star(model, scene):
    cfg = DeblendConfig(n_steps=200, prior_weight=0.01, debias=False)
    res = deblend(model, scene["field"], scene["pos"], sigma=scene["sigma"], psf=PSF,
                  config=cfg, progress=False)  # fmt: skip
    one = jax.tree.map(lambda a: a[0], res)
    ivar = np.full(scene["field"].shape[1:], 1 / 0.02**2, np.float32)
    d = np.asarray(point_source_test(one, ivar, PSF, scene["pos"][0]))
    assert d[1] > 0 > d[0]
    masked = one._replace(mask=jnp.array([True, False]))
    assert float(point_source_test(masked, ivar, PSF, scene["pos"][0])[1]) == 0
    # over fields (vmapped, shared or per-field PSF): the same numbers
    many = point_source_tests(res, ivar[None], PSF, scene["pos"])
    np.testing.assert_allclose(many[0], d, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(point_source_tests(res, ivar[None], PSF[None], scene["pos"]), many)


def test_point_flags_survive_chunks_and_slots(model, scene):
    """deblend (chunks, padded slots dropped) solves the flagged sources as point sources."""
    f = np.concatenate([scene["field"]] * 3)
    pos = np.concatenate([scene["pos"], scene["pos"][:, ::-1], scene["pos"]])
    pos = np.concatenate([np.zeros((3, 1, 2), np.float32), pos], axis=1)  # a padded slot first
    mask = np.array([[False, True, True], [False, True, True], [False, True, False]])
    point = np.array([[False, False, True], [True, True, False], [False, True, False]])
    cfg = DeblendConfig(n_steps=40, chunk=2, debias=False)
    # The scene's sigma as the model's reference noise: deblend()'s noise units are the
    # scene's own, so its solve compares with deblend_field's on the raw field.
    ref = model.replace(meta={"survey": {"sky_sigma": [scene["sigma"]]}})
    res = deblend(ref, f, pos, mask, sigma=scene["sigma"], psf=PSF, config=cfg, point=point,
                  progress=False)  # fmt: skip
    np.testing.assert_array_equal(res.point, point & mask)
    # Inside the solve, point sources get no prior weight: the flags reached the right slots.
    np.testing.assert_array_equal(res.prior_weights == 0, ~mask | point)
    ivar = np.full(f.shape[1:], 1 / scene["sigma"] ** 2, np.float32)
    one = jax.jit(lambda *a: deblend_field(model, *a, PSF, cfg, point=jnp.asarray(point[1])))(
        f[1], pos[1], mask[1], ivar
    )
    np.testing.assert_allclose(res.fluxes[1], one.fluxes, rtol=2e-3, atol=1e-3)


def test_point_sources_bad_input(model, scene):
    f, p = scene["field"], scene["pos"]
    with pytest.raises(ValueError, match="point: expected shape"):
        deblend(model, f, p, sigma=0.02, psf=PSF, point=np.ones((1, 3), bool), progress=False)
    baked = GalaxyModel(dataclasses.replace(CFG, psf_explicit=False), model.vae_params, FLOW,
                        model.flow_params)  # fmt: skip
    with pytest.raises(ValueError, match="point: point sources need"):
        deblend(baked, f, p, sigma=0.02, point=np.array([[False, True]]), progress=False)
    small = GalaxyModel(dataclasses.replace(CFG, bands=3), model.vae_params, FLOW,
                        model.flow_params)  # fmt: skip
    with pytest.raises(ValueError, match="latent_dim"):
        deblend(small, np.repeat(f, 3, -1), p, sigma=0.02, psf=np.repeat(PSF, 3, -1),
                point=np.array([[False, True]]), progress=False)  # fmt: skip
    # No point source flagged: the galaxy-only program, same results.
    cfg = DeblendConfig(n_steps=20, debias=False)
    a = deblend(model, f, p, sigma=0.02, psf=PSF, config=cfg, progress=False)
    b = deblend(model, f, p, sigma=0.02, psf=PSF, config=cfg, point=np.zeros((1, 2), bool),
                progress=False)  # fmt: skip
    np.testing.assert_array_equal(a.latents, b.latents)
