"""MAP deblending: objective, stopping rule, vmap/chunk/sharding invariance, Laplace, bad input."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.deblend import (
    DeblendConfig,
    calibrate_model_error,
    deblend,
    deblend_field,
    laplace,
    render_sources,
    shift_stamp,
)
from galjax.image.transforms import cutouts
from galjax.models import FlowConfig, GalaxyModel, VAEConfig, init_flow, init_vae

CFG = VAEConfig(stamp_size=15, latent_dim=4, hidden=(16,), enc_channels=(4, 8),
                dec_channels=(8, 4), dec_start=4, scale=1.0)  # fmt: skip
FLOW = FlowConfig(dim=4, n_layers=2, hidden=(8,))
FAST = DeblendConfig(n_steps=30, chunk=2)


@pytest.fixture(scope="module")
def model():
    """The untrained model, its reference noise (``meta["survey"]["sky_sigma"]``) the
    scene's sigma: deblend()'s noise units are then the scene's own units."""
    k = jax.random.key(3)
    base = GalaxyModel(CFG, init_vae(k, CFG), FLOW, init_flow(k, FLOW))
    sigma = float(_scene(base)["sigma"].flat[0])
    return base.replace(meta={"survey": {"sky_sigma": [sigma]}})


@pytest.fixture(scope="module")
def scene(model):
    return _scene(model)


def _scene(model):
    """Fields made by the model itself from known latents, so the truth is reachable."""
    k = jax.random.key(7)
    n, n_max, h = 3, 2, 24
    z = jax.random.normal(k, (n, n_max, 4))
    pos = jnp.array(
        [[[7.3, 8.0], [15.6, 14.2]], [[11.0, 11.0], [0.0, 0.0]], [[6.0, 16.0], [17.2, 6.8]]]
    )
    mask = jnp.array([[True, True], [True, False], [True, True]])
    src = jax.vmap(lambda zz, p, m: render_sources(model.vae_params, CFG, zz, p, m, h, h))(
        z, pos, mask
    )
    clean = src.sum(axis=1)
    sigma = 0.01 * float(jnp.abs(clean).max()) + jnp.zeros_like(clean)
    noisy = clean + sigma * jax.random.normal(k, clean.shape)
    return dict(z=z, pos=np.asarray(pos), mask=np.asarray(mask), src=src, clean=clean,
                sigma=np.asarray(sigma), field=np.asarray(noisy))  # fmt: skip


def test_shift_stamp_integer_shift_is_a_roll():
    img = jnp.zeros((15, 15, 1)).at[7, 7, 0].set(1.0).at[6, 8, 0].set(0.5)
    out = shift_stamp(img, jnp.array([1.0, -2.0]))
    np.testing.assert_allclose(out, jnp.roll(img, (-2, 1), axis=(0, 1)), atol=1e-5)


def test_cutouts_centred_and_zero_outside():
    field = jnp.arange(20 * 30, dtype=jnp.float32).reshape(20, 30, 1)
    c = cutouts(field, jnp.array([[10.2, 5.7], [0.0, 0.0]]), 5)
    np.testing.assert_array_equal(c[0, 2, 2, 0], field[6, 10, 0])
    assert float(c[1, 0, 0, 0]) == 0.0 and float(c[1, 2, 2, 0]) == float(field[0, 0, 0])


def test_deblend_lowers_the_objective_and_fits(model, scene):
    res = deblend(model, scene["field"], scene["pos"], scene["mask"], sigma=scene["sigma"],
                  config=FAST, progress=False)  # fmt: skip
    assert res.models.shape == (3, 2, 24, 24, 1)
    assert res.fluxes.shape == (3, 2, 1) and res.latents.shape == (3, 2, 4)
    hist = res.loss_history
    assert np.all(hist[:, -1] <= hist[:, 0])
    # Padded sources have no image.
    assert np.all(res.models[1, 1] == 0)
    np.testing.assert_allclose(
        res.residual, scene["field"] - res.models.sum(axis=1), rtol=1e-5, atol=1e-5
    )


def test_vmapped_call_equals_loop_and_chunking(model, scene):
    a = deblend(model, scene["field"], scene["pos"], scene["mask"], sigma=scene["sigma"],
                config=FAST, progress=False)  # fmt: skip
    b = deblend(model, scene["field"], scene["pos"], scene["mask"], sigma=scene["sigma"],
                config=DeblendConfig(n_steps=30, chunk=3), progress=False)  # fmt: skip
    ivar = 1 / scene["sigma"] ** 2
    c = deblend_field(model, scene["field"][2], scene["pos"][2], scene["mask"][2], ivar[2],
                      config=FAST)  # fmt: skip
    np.testing.assert_allclose(a.latents, b.latents, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.latents[2], c.latents, rtol=1e-4, atol=1e-5)


def test_float_settings_are_traced_not_recompiled(model, scene):
    """A new learning rate, tolerance or prior weight reuses the compiled solve, and the
    solve uses the new values (it equals the one-field function, which reads the config)."""
    from galjax.deblend.solve import deblend_chunk

    args = (model, scene["field"], scene["pos"], scene["mask"])
    deblend(*args, sigma=scene["sigma"], config=FAST, progress=False)
    compiled = deblend_chunk._cache_size()
    other = dataclasses.replace(FAST, learning_rate=0.02, decay=0.5, tol=1e-2, prior_weight=0.3,
                                prior_weight_faint=2.0, faint_snr=(5.0, 50.0))  # fmt: skip
    a = deblend(*args, sigma=scene["sigma"], config=other, progress=False)
    assert deblend_chunk._cache_size() == compiled
    ivar = 1 / scene["sigma"] ** 2
    for i in range(2):
        b = deblend_field(model, scene["field"][i], scene["pos"][i], scene["mask"][i], ivar[i],
                          config=other)  # fmt: skip
        np.testing.assert_allclose(a.prior_weights[i], b.prior_weights, rtol=1e-5)
        np.testing.assert_array_equal(a.n_iter[i], b.n_iter)
        np.testing.assert_allclose(a.latents[i], b.latents, rtol=1e-4, atol=1e-5)
    # Turning the prior off changes the program: a new compilation.
    no_prior = dataclasses.replace(FAST, prior_weight=0.0, prior_weight_faint=None)
    deblend(*args, sigma=scene["sigma"], config=no_prior, progress=False)
    assert deblend_chunk._cache_size() > compiled


@pytest.mark.parametrize("group", [1, 2])
def test_groups_inside_a_chunk_equal_one_vmap(model, scene, group):
    args = (scene["field"], scene["pos"], scene["mask"])
    a = deblend(model, *args, sigma=scene["sigma"], progress=False,
                config=DeblendConfig(n_steps=30, chunk=3, group=3))  # fmt: skip
    b = deblend(model, *args, sigma=scene["sigma"], progress=False,
                config=DeblendConfig(n_steps=30, chunk=3, group=group))  # fmt: skip
    np.testing.assert_allclose(a.latents, b.latents, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.fluxes, b.fluxes, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a.n_iter, b.n_iter)


def test_padded_slots_are_dropped_without_changing_results(model, scene):
    # Field 1 has one source, in slot 1 here (a gap before it): its chunk is solved on
    # one slot and scattered back; every field must match the full-slot solve.
    pos, mask = scene["pos"].copy(), scene["mask"].copy()
    pos[1] = pos[1, ::-1]
    mask[1] = mask[1, ::-1]
    ivar = 1 / scene["sigma"] ** 2
    res = deblend(model, scene["field"], pos, mask, sigma=scene["sigma"],
                  config=DeblendConfig(n_steps=30, chunk=1), progress=False)  # fmt: skip
    for i in range(3):
        full = deblend_field(model, scene["field"][i], pos[i], mask[i], ivar[i], config=FAST)
        for name in ("models", "latents", "fluxes", "amplitudes", "residual"):
            np.testing.assert_allclose(getattr(res, name)[i], getattr(full, name),
                                       rtol=1e-4, atol=1e-5, err_msg=name)  # fmt: skip
        assert res.n_iter[i] == full.n_iter
    np.testing.assert_array_equal(res.mask, mask)
    assert np.all(res.models[1, 0] == 0) and np.all(res.amplitudes[1, 0] == 1)


def test_slot_buckets_bound_the_compiled_shapes():
    from galjax.deblend.batching import chunk_slots, slot_bucket

    assert [slot_bucket(k, 16) for k in (0, 1, 3, 4, 5, 8, 9, 16)] == [1, 1, 3, 4, 8, 8, 16, 16]
    assert slot_bucket(7, 6) == 6
    m = np.array([[False, True, False, True], [True, False, False, False]])
    np.testing.assert_array_equal(chunk_slots(m), [[1, 3], [0, 1]])


def test_stopping_rule_freezes_fields(model, scene):
    cfg = DeblendConfig(n_steps=60, patience=3, tol=1e-2, chunk=3)
    res = deblend(model, scene["field"], scene["pos"], scene["mask"], sigma=scene["sigma"],
                  config=cfg, progress=False)  # fmt: skip
    assert np.all(res.converged) and np.all(res.n_iter < 60)
    for i, n in enumerate(res.n_iter):  # history constant after the stop
        assert np.all(res.loss_history[i, n:] == res.loss_history[i, n - 1])


def test_on_chunk_receives_every_field(model, scene):
    seen = []
    record = lambda start, r: seen.append((start, r.fluxes.shape[0]))
    deblend(model, scene["field"], scene["pos"], scene["mask"], sigma=scene["sigma"], config=FAST,
            on_chunk=record, progress=False)  # fmt: skip
    assert seen == [(0, 2), (2, 1)]


def test_laplace_flux_errors_and_samples(model, scene):
    ivar = 1 / scene["sigma"] ** 2
    res = deblend_field(model, scene["field"][0], scene["pos"][0], scene["mask"][0], ivar[0],
                        config=DeblendConfig(n_steps=100))  # fmt: skip
    lp = laplace(jax.random.key(0), model, res, scene["pos"][0], ivar[0], n_samples=400)
    # latents (2 sources x 4) then the refit amplitudes (2 sources x 1 band)
    assert lp.cov.shape == (10, 10) and lp.samples.shape == (400, 2, 24, 24, 1)
    assert np.all(np.linalg.eigvalsh(np.asarray(lp.cov)) > 0)
    # The fluxes are parameters: the samples' fluxes spread as the linearised error.
    spread = np.std(np.asarray(lp.sample_fluxes), axis=0)
    np.testing.assert_allclose(spread, lp.flux_err, rtol=0.15)
    # Marginalising over the shapes cannot make a flux more certain than the fit of its
    # amplitude alone: var(F) = [H^-1]_FF >= 1 / H_FF = 1 / sum_p w_p u_p^2.
    u = np.asarray(res.models) / np.asarray(res.fluxes)[:, None, None, :]
    template_err = 1 / np.sqrt(np.sum(ivar[0] * u**2, axis=(1, 2)))
    assert np.all(np.asarray(lp.flux_err) >= 0.999 * template_err)
    # Fixed amplitudes (results without the flux refit): the latents only.
    fixed = laplace(jax.random.key(0), model, res, scene["pos"][0], ivar[0], n_samples=0,
                    free_amplitudes=False)  # fmt: skip
    assert fixed.cov.shape == (8, 8) and fixed.samples is None
    # The model error adds in quadrature.
    me = laplace(jax.random.key(0), model, res, scene["pos"][0], ivar[0], n_samples=0,
                 model_error=0.1)  # fmt: skip
    np.testing.assert_allclose(me.flux_err**2, lp.flux_err**2 + (0.1 * res.fluxes) ** 2, rtol=1e-4)


def test_calibrate_model_error_reaches_the_coverage():
    rng = np.random.default_rng(0)
    true = rng.uniform(100, 1000, 4000)
    stat = 0.01 * true  # statistical errors that are too small ...
    flux = true * (1 + 0.05 * rng.normal(size=true.size))  # ... for a 5 % scatter
    s = calibrate_model_error(flux, stat, true)
    cover = np.mean(np.abs(flux - true) <= np.sqrt(stat**2 + (s * flux) ** 2))
    assert abs(cover - 0.6827) < 0.01
    assert 0.04 < s < 0.06  # sqrt(0.05^2 - 0.01^2) ~ 0.049
    assert calibrate_model_error(flux, 10 * np.abs(flux - true), true) == 0.0
    with pytest.raises(ValueError, match="coverage"):
        calibrate_model_error(flux, stat, true, coverage=1.5)
    with pytest.raises(ValueError, match="same length"):
        calibrate_model_error(flux, stat[:3], true)


def test_bad_inputs(model, scene):
    f, p, m, s = scene["field"], scene["pos"], scene["mask"], scene["sigma"]
    with pytest.raises(ValueError, match="positions"):
        deblend(model, f, p + 100.0, m, sigma=s, progress=False)
    with pytest.raises(ValueError, match="sigma"):
        deblend(model, f, p, m, sigma=-1.0, progress=False)
    with pytest.raises(ValueError, match="sigma/ivar"):
        deblend(model, f, p, m, progress=False)
    with pytest.raises(ValueError, match="band"):
        deblend(model, np.repeat(f, 2, axis=-1), p, m, sigma=s, progress=False)
    with pytest.raises(ValueError, match="max_sources"):
        deblend(model, f, p, m, sigma=s, max_sources=1, progress=False)
    with pytest.raises(ValueError, match="mask"):
        deblend(model, f, p, m[:, :1], sigma=s, progress=False)
    bad = f.copy()
    bad[0, 3, 3, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="fields"):
        res = deblend(model, bad, p, m, sigma=s, config=FAST, progress=False)
    assert np.all(np.isfinite(res.latents))


def test_set_cpu_device_count_in_a_running_process():
    import galjax

    have = len(jax.devices("cpu"))
    assert galjax.set_cpu_device_count(have) == have  # nothing to change
    with pytest.raises(RuntimeError, match="before the first JAX computation"):
        galjax.set_cpu_device_count(have + 1)
    with pytest.raises(ValueError, match="n"):
        galjax.set_cpu_device_count(0)


def test_sharded_run_equals_single_device(tmp_path):
    code = textwrap.dedent(
        """
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_dump_to=/x"
        import galjax, jax, numpy as np
        assert galjax.set_cpu_device_count(4) == 4
        assert os.environ["XLA_FLAGS"].split() == [
            "--xla_dump_to=/x", "--xla_force_host_platform_device_count=4"]
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        sys.path.insert(0, %r)
        from test_deblend import CFG, FLOW
        from galjax.deblend import DeblendConfig, deblend
        from galjax.models import GalaxyModel, init_flow, init_vae
        from galjax.train import data_mesh
        assert jax.device_count() == 4
        k = jax.random.key(3)
        model = GalaxyModel(CFG, init_vae(k, CFG), FLOW, init_flow(k, FLOW))
        rng = np.random.default_rng(0)
        fields = rng.normal(size=(6, 24, 24, 1)).astype(np.float32)
        pos = rng.uniform(4, 19, size=(6, 2, 2)).astype(np.float32)
        mesh1 = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        cfg = DeblendConfig(n_steps=20, chunk=4)
        seen = []
        # Several CPU devices: a worker thread per device, chunks out of order.
        a = deblend(model, fields, pos, sigma=1.0, config=cfg, progress=False,
                    on_chunk=lambda start, r: seen.append((start, len(r.fluxes))))
        assert sorted(seen) == [(0, 4), (4, 2)]
        b = deblend(model, fields, pos, sigma=1.0, config=cfg, mesh=mesh1, progress=False)
        # An explicit mesh over all four: each chunk sharded, its fields in step.
        c = deblend(model, fields, pos, sigma=1.0, config=cfg, mesh=data_mesh(), progress=False)
        for r in (a, c):
            np.testing.assert_allclose(r.latents, b.latents, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(r.fluxes, b.fluxes, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(r.n_iter, b.n_iter)
        print("OK")
        """.replace("%r", repr(os.path.dirname(__file__)))
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_evaluate_scores_flux_and_ssim():
    from galjax.scores.truth import evaluate

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32].astype(np.float32)
    blob = np.exp(-((xx - 16) ** 2 + (yy - 12) ** 2) / 8.0)[..., None]
    true = np.zeros((2, 2, 32, 32, 1), np.float32)
    true[:, 0] = 50 * blob
    true[:, 1] = 20 * np.roll(blob, 9, axis=1)
    mask = np.array([[True, True], [True, False]])
    snr = np.array([[30.0, 5.0], [30.0, 0.0]])
    same = evaluate(true, true, mask, snr, stamp=15)
    assert same["summary"]["n_galaxies"] == 2  # the SNR-5 and padded sources are left out
    np.testing.assert_allclose(same["dflux"], 0.0, atol=1e-6)
    np.testing.assert_allclose(same["ssim"], 1.0, atol=1e-5)
    noisy = true * 1.1 + rng.normal(0, 0.5, true.shape).astype(np.float32)
    ev = evaluate(noisy, true, mask, None, stamp=15)
    assert ev["summary"]["n_galaxies"] == 3
    assert np.all(np.abs(ev["dflux"] - 0.1) < 0.1) and np.all(ev["ssim"] < 1.0)


def test_evaluate_apertures_counts_only_misallocated_light():
    from galjax.scores.truth import evaluate_apertures, truth_apertures
    from galjax.sim import GalaxyParams

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:32, :32].astype(np.float32)
    blob = lambda x0, y0: np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8.0)[..., None]
    true = np.zeros((2, 2, 32, 32, 1), np.float32)
    true[0, 0], true[0, 1] = 50 * blob(12, 16), 20 * blob(19, 16)  # a close pair
    true[1, 0] = 40 * blob(16, 16)  # alone in its field
    mask = np.array([[True, True], [True, False]])
    pos = np.array([[[12, 16], [19, 16]], [[16, 16], [0, 0]]], np.float32)
    noiseless = true.sum(axis=1)
    field = noiseless + rng.normal(0, 0.3, noiseless.shape).astype(np.float32)
    # Circular apertures of radius 2 sqrt(2^2 + 1^2): hlr 2 px, PSF FWHM 2 px.
    params = GalaxyParams.sersic(np.ones((2, 2, 1)), 2.0 * np.ones((2, 2)), np.ones((2, 2)))
    ap = truth_apertures(params, pos, psf_fwhm=2.0)
    np.testing.assert_allclose(ap[2], 2 * np.sqrt(5.0), rtol=1e-6)
    np.testing.assert_allclose(ap[3], ap[2])

    def run(models):
        resid = field - models.sum(axis=1)
        return evaluate_apertures(models, resid, field, noiseless, true, mask, ap)

    exact = run(true)
    np.testing.assert_allclose(exact["dflux"], 0.0, atol=1e-5)
    assert exact["summary"]["n_galaxies"] == 3 and exact["summary"]["n_blended"] == 2
    # No deblending puts the neighbour's light in each aperture of the pair.
    assert np.all(exact["dflux_blended"][exact["blended"]] > 0.01)
    # Light moved from one source of the pair to the other is an error (source 0 gains
    # the 20 % of source 1 that is inside its aperture); a wrong model of the isolated
    # galaxy is not: its residual carries the rest.
    wrong = true.copy()
    wrong[0, 0] += 0.2 * true[0, 1]
    wrong[0, 1] *= 0.8
    wrong[1, 0] *= 0.5
    ev = run(wrong)
    d = dict(zip(["pair0", "pair1", "alone"], ev["dflux"], strict=True))
    assert 0.001 < d["pair0"] < 0.05 and -0.25 < d["pair1"] < -0.15 and abs(d["alone"]) < 1e-5
    with pytest.raises(ValueError, match="psf_fwhm"):
        truth_apertures(params, pos, psf_fwhm=0.0)


def test_explicit_psf_per_field_equals_separate_runs(scene):
    """One PSF per field in one call gives what separate calls with each PSF give."""
    import dataclasses

    from galjax.deblend import laplace_flux_errors
    from galjax.sim import gaussian_psf

    cfg = dataclasses.replace(CFG, psf_explicit=True)
    k = jax.random.key(5)
    model = GalaxyModel(cfg, init_vae(k, cfg), FLOW, init_flow(k, FLOW))
    RAW = DeblendConfig(n_steps=30, chunk=2, refit_fluxes=False)  # random model: no refit
    psfs = np.stack([np.asarray(gaussian_psf(2.355 * s, 9)) for s in (0.8, 1.5, 2.2)])
    f, p, m, s = scene["field"], scene["pos"], scene["mask"], scene["sigma"]
    both = deblend(model, f, p, m, sigma=s, psf=psfs, config=RAW, progress=False)
    for i in range(3):
        one = deblend(model, f[i : i + 1], p[i : i + 1], m[i : i + 1], sigma=s[i : i + 1],
                      psf=psfs[i], config=RAW, progress=False)  # fmt: skip
        np.testing.assert_allclose(both.latents[i], one.latents[0], rtol=1e-4, atol=1e-4)
    # A wider PSF spreads the same latents: the per-field PSF is really used.
    assert not np.allclose(both.models[0], both.models[2])
    err = laplace_flux_errors(model, both, p, 1.0 / s**2, psf=psfs)
    assert err.shape == (3, 2, 1) and np.all(np.isfinite(err))
    with pytest.raises(ValueError, match="psf"):
        deblend(model, f, p, m, sigma=s, psf=psfs[:2], config=RAW, progress=False)
    with pytest.raises(ValueError, match="psf"):
        deblend(model, f, p, m, sigma=s, config=RAW, progress=False)


def test_pad_fields_stacks_scenes_of_different_shapes():
    from galjax.deblend import pad_fields
    from galjax.sim import gaussian_psf

    imgs = [np.ones((4, 5, 2)), 2 * np.ones((6, 3, 2))]
    psfs = [np.asarray(gaussian_psf([1.0, 1.0], 5)), np.asarray(gaussian_psf([1.0, 1.0], 7))]
    f, iv, p, m, ps = pad_fields(imgs, imgs, [np.array([[1.0, 2.0]]), np.zeros((0, 2))], psfs)
    assert f.shape == (2, 6, 5, 2) and ps.shape == (2, 7, 7, 2)
    assert f[1, :6, :3].min() == 2 and iv[1, :, 3:].max() == 0 and iv[0, 4:].max() == 0
    np.testing.assert_allclose(ps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert ps[0, 3, 3, 0] == ps[0].max()  # the small PSF stays centred
    assert m.tolist() == [[True], [False]]
    with pytest.raises(ValueError, match="bands"):
        pad_fields([np.ones((4, 5, 1)), np.ones((4, 5, 2))], [None, None], [[], []])
    with pytest.raises(ValueError, match="ivars"):
        pad_fields(imgs, imgs[:1], [[], []])
    with pytest.raises(ValueError, match="ivars\\[0\\]"):
        pad_fields(imgs, [np.ones((2, 2, 2)), imgs[1]], [[], []])


def test_refit_amplitudes_recovers_known_scales(scene):
    from galjax.deblend import refit_amplitudes

    src = jnp.asarray(scene["src"][0])  # (n_max, h, w, 1), both sources real
    field = jnp.sum(src, axis=0)
    ivar = jnp.ones_like(field)
    scales = jnp.array([[0.5], [2.0]])
    a = refit_amplitudes(src * scales[:, None, None, :], field, ivar, jnp.array([True, True]),
                         ridge=0.0)  # fmt: skip
    np.testing.assert_allclose(a, 1.0 / scales, rtol=1e-3)
    # A masked source keeps amplitude 1 and the other absorbs its light where they overlap.
    a = refit_amplitudes(src, field, ivar, jnp.array([True, False]))
    assert float(a[1, 0]) == 1.0 and float(a[0, 0]) >= 1.0


def test_flux_refit_does_not_raise_chi2(model, scene):
    f, p, m, s = scene["field"], scene["pos"], scene["mask"], scene["sigma"]
    on = deblend(model, f, p, m, sigma=s, config=FAST, progress=False)
    off = deblend(model, f, p, m, sigma=s, config=DeblendConfig(n_steps=30, chunk=2,
                                                                refit_fluxes=False),
                  progress=False)  # fmt: skip
    np.testing.assert_allclose(on.latents, off.latents, rtol=1e-5, atol=1e-5)
    assert np.all(on.chi2 <= off.chi2 * (1 + 1e-4))
    np.testing.assert_allclose(off.amplitudes, 1.0)
    np.testing.assert_allclose(on.fluxes, on.models.sum(axis=(2, 3)), rtol=1e-4, atol=1e-3)


def test_fit_flux_bias_tabulates_a_known_bias():
    from galjax.deblend import fit_flux_bias, flux_bias

    rng = np.random.default_rng(1)
    snr = np.exp(rng.uniform(np.log(10), np.log(1000), 8000))
    dflux = 2.0 / snr + 0.5 / snr * rng.normal(size=snr.size)  # bias 2/s, noise ~ 1/s
    dflux[:50] = 3.0  # blending failures are left out (clip)
    table = fit_flux_bias(snr, dflux)
    assert len(table["snr"]) == 8 and sum(table["n"]) == snr.size - 50
    assert np.all(np.diff(table["snr"]) > 0)
    np.testing.assert_allclose(table["bias"], 2.0 / np.asarray(table["snr"]), rtol=0.15)
    # Interpolated in log SNR between the nodes, constant beyond them.
    s = np.array([5.0, 30.0, 300.0, 5000.0])
    b = np.asarray(flux_bias(s, table))
    np.testing.assert_allclose(b[1:3], 2.0 / s[1:3], rtol=0.2)
    assert b[0] == pytest.approx(table["bias"][0]) and b[3] == pytest.approx(table["bias"][-1])
    with pytest.raises(ValueError, match="usable sources"):
        fit_flux_bias(snr[:5], dflux[:5])
    with pytest.raises(ValueError, match="same length"):
        fit_flux_bias(snr, dflux[:3])


def test_debias_fluxes_divides_the_bias_out(model, scene):
    from galjax.deblend import debias_fluxes, model_snr

    f, p, m, s = scene["field"], scene["pos"], scene["mask"], scene["sigma"]
    res = deblend(model, f, p, m, sigma=s, config=FAST, progress=False)
    ivar = 1.0 / s**2
    snr = np.asarray(model_snr(res.models, ivar))
    np.testing.assert_allclose(snr[0, 0, 0], np.sqrt(np.sum(res.models[0, 0] ** 2 * ivar[0])),
                               rtol=1e-5)  # fmt: skip
    table = {"snr": [1.0, 1e6], "bias": [0.25, 0.25], "n": [10, 10]}  # a constant +25 %
    out = debias_fluxes(res, ivar, table)
    real = np.asarray(m)
    np.testing.assert_allclose(np.asarray(out.fluxes)[real], res.fluxes[real] / 1.25, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.fluxes)[~real], res.fluxes[~real])
    np.testing.assert_allclose(np.asarray(out.fluxes), np.asarray(out.models).sum(axis=(2, 3)),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # The field is unchanged: residual + models is the same before and after.
    before = res.residual + res.models.sum(axis=1)
    after = np.asarray(out.residual) + np.asarray(out.models).sum(axis=1)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    # Pure: the same under jit, and field by field under vmap.
    fn = lambda r, iv: debias_fluxes(r, iv, table)  # noqa: E731
    for other in (jax.jit(fn)(res, ivar), jax.vmap(fn)(res, ivar)):
        np.testing.assert_allclose(other.fluxes, out.fluxes, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.chi2, out.chi2, rtol=1e-5)
    # deblend() applies a model's calibrated table unless debias=False.
    biased = model._replace(meta={**model.meta, "flux_bias": table})
    chunks = {}
    on = deblend(biased, f, p, m, sigma=s, config=FAST, progress=False,
                 on_chunk=lambda start, r: chunks.update({start: r.fluxes}))  # fmt: skip
    np.testing.assert_allclose(np.concatenate([chunks[k] for k in sorted(chunks)]), on.fluxes)
    off = deblend(biased, f, p, m, sigma=s, config=DeblendConfig(n_steps=30, chunk=2, debias=False),
                  progress=False)  # fmt: skip
    np.testing.assert_allclose(on.fluxes, np.asarray(out.fluxes), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(off.fluxes, res.fluxes, rtol=1e-5)


@pytest.mark.parametrize("bad", [dict(n_steps=0), dict(chunk=0), dict(group=0), dict(patience=0)])
def test_config_rejects_non_positive_sizes(bad):
    with pytest.raises(ValueError, match="must be >= 1"):
        DeblendConfig(**bad)


def test_faint_prior_weight_interpolates_by_initial_snr(model, scene):
    from galjax.deblend.objective import prior_weights

    ivar = 1 / scene["sigma"] ** 2
    args = (scene["field"][0], scene["pos"][0], scene["mask"][0], ivar[0], None)
    z0 = scene["z"][0]  # the true latents: both sources have a visible model
    all_bright = DeblendConfig(prior_weight=0.01, prior_weight_faint=1.0, faint_snr=(1e-3, 2e-3))
    all_faint = DeblendConfig(prior_weight=0.01, prior_weight_faint=1.0, faint_snr=(1e8, 2e8))
    f, p, m, iv, ps = args
    np.testing.assert_allclose(
        prior_weights(model, z0, f, p, m, iv, ps, all_bright), 0.01, rtol=1e-5
    )
    np.testing.assert_allclose(prior_weights(model, z0, f, p, m, iv, ps, all_faint), 1.0, rtol=1e-5)
    # All sources faint: the same solve as a uniform weight of 1.
    a = deblend_field(model, *args[:4], config=dataclasses.replace(all_faint, n_steps=20))
    b = deblend_field(model, *args[:4], config=DeblendConfig(n_steps=20, prior_weight=1.0))
    np.testing.assert_allclose(a.latents, b.latents, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="faint_snr"):
        DeblendConfig(faint_snr=(100.0, 30.0))


def test_laplace_uses_the_maps_per_source_prior_weights(model, scene):
    ivar = 1 / scene["sigma"] ** 2
    cfg = DeblendConfig(n_steps=20, prior_weight=0.01, prior_weight_faint=1.0, faint_snr=(1e8, 2e8))
    res = deblend_field(model, scene["field"][0], scene["pos"][0], scene["mask"][0], ivar[0],
                        config=cfg)  # fmt: skip
    np.testing.assert_allclose(res.prior_weights, [1.0, 1.0], rtol=1e-5)  # all faint here
    args = (model, res, scene["pos"][0], ivar[0])
    default = laplace(jax.random.key(0), *args, n_samples=0)
    explicit = laplace(jax.random.key(0), *args, n_samples=0, prior_weight=1.0)
    weak = laplace(jax.random.key(0), *args, n_samples=0, prior_weight=0.01)
    np.testing.assert_allclose(default.cov, explicit.cov, rtol=1e-5, atol=1e-7)
    # A stronger prior can only shrink the latents' posterior (H grows by a PSD term).
    assert np.all(np.diag(default.cov)[:8] <= np.diag(weak.cov)[:8] * (1 + 1e-4))
    assert not np.allclose(np.diag(default.cov)[:8], np.diag(weak.cov)[:8], rtol=1e-3)


def test_laplace_flux_errors_solve_real_sources_only(model, scene):
    """Real sources moved to the front (and unused slots dropped): the same errors as
    :func:`laplace` on each field's full slots, zero for padded slots."""
    from galjax.deblend import laplace_flux_errors

    ivar = 1 / scene["sigma"] ** 2
    mask = scene["mask"].copy()
    mask[0] = [False, True]  # a gap before a real source
    res = deblend(model, scene["field"], scene["pos"], mask, sigma=scene["sigma"], config=FAST,
                  progress=False)  # fmt: skip
    err = laplace_flux_errors(model, res, scene["pos"], ivar, chunk=2, model_error=0.0)
    assert err.shape == res.fluxes.shape
    for i in range(3):
        one = jax.tree.map(lambda a, i=i: a[i], res)
        ref = laplace(jax.random.key(0), model, one, scene["pos"][i], ivar[i], n_samples=0)
        np.testing.assert_allclose(err[i], ref.flux_err, rtol=2e-3, atol=1e-6)
    assert np.all(err[~mask] == 0) and np.all(err[mask] > 0)


def test_laplace_drops_slots_no_field_uses(model, scene):
    """Four slots, at most two used: the errors of the two-slot solve, zeros after."""
    from galjax.deblend import laplace_flux_errors

    ivar = 1 / scene["sigma"] ** 2
    res = deblend(model, scene["field"], scene["pos"], scene["mask"], sigma=scene["sigma"],
                  config=FAST, progress=False)  # fmt: skip
    pad = lambda a, fill: np.concatenate([a, np.full_like(a, fill)], axis=1)  # noqa: E731
    wide = res._replace(
        models=pad(res.models, 0), latents=pad(res.latents, 0), fluxes=pad(res.fluxes, 0),
        mask=pad(res.mask, False), amplitudes=pad(res.amplitudes, 1),
        prior_weights=pad(res.prior_weights, 0),
    )  # fmt: skip
    narrow = laplace_flux_errors(model, res, scene["pos"], ivar, model_error=0.0)
    both = laplace_flux_errors(model, wide, pad(scene["pos"], 0), ivar, model_error=0.0)
    assert both.shape == (3, 4, 1)
    np.testing.assert_allclose(both[:, :2], narrow, rtol=1e-5, atol=1e-7)
    assert np.all(both[:, 2:] == 0)


def test_galaxy_model_is_a_pytree_with_static_configs(model):
    leaves, tree = jax.tree.flatten(model)
    back = jax.tree.unflatten(tree, leaves)
    assert back.vae_config == CFG and back.flow_config == FLOW
    assert all(isinstance(x, jax.Array) for x in leaves)  # the configs are not leaves
    f = jax.jit(lambda m, x: m.vae_config.latent_dim * x)  # configs are Python values inside
    assert float(f(model, 1.0)) == 4.0
    # Metadata is static and compared by content: equal metadata share a compilation.
    f(model.replace(meta={"flux_bias": {"snr": [1.0, 2.0]}}), 1.0)
    n = f._cache_size()
    f(model.replace(meta={"flux_bias": {"snr": [1.0, 2.0]}}), 1.0)
    assert f._cache_size() == n
    f(model.replace(meta={"flux_bias": {"snr": [1.0, 3.0]}}), 1.0)
    assert f._cache_size() == n + 1
    assert model._replace(meta={"a": 1}).meta == {"a": 1} and "a" not in model.meta


def test_chi2_per_pixel_with_ivar_counts_usable_pixels():
    from galjax.scores.metrics import chi2_per_pixel

    r = jax.random.normal(jax.random.key(0), (2, 5, 5, 1))
    ivar = jnp.full(r.shape, 4.0).at[0, :2].set(0.0)
    want = jnp.sum(ivar * r**2, axis=(1, 2, 3)) / jnp.array([15.0, 25.0])
    np.testing.assert_allclose(chi2_per_pixel(r, ivar=ivar), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda a, b: chi2_per_pixel(a, ivar=b))(r, ivar), want,
                               rtol=1e-6)  # fmt: skip
    # The same statistic as sigma = 1 / sqrt(ivar) with the unusable pixels masked.
    np.testing.assert_allclose(chi2_per_pixel(r, 0.5, ivar > 0), want, rtol=1e-6)
    assert float(chi2_per_pixel(r[0], ivar=jnp.zeros_like(r[0]))) == 0.0  # no usable pixel
    with pytest.raises(ValueError, match="ivar"):
        chi2_per_pixel(r, ivar=-ivar)
    with pytest.raises(ValueError, match="exactly one"):
        chi2_per_pixel(r, 1.0, ivar=ivar)
