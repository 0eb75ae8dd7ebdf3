"""The ``galjax`` command line."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galjax.cli import main


def test_simulate_writes_fields_truth_and_figure(tmp_path):
    out = tmp_path / "fields.fits"
    # 5 fields: the simulator's compiled shape (8) is the calibration test's
    assert main(["simulate", "--n", "5", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    with fits.open(out) as hdul:
        assert hdul[0].data.shape == (5, 1, 64, 64)  # stacks are stored as (n, bands, h, w)
        assert hdul[0].header["SURVEY"] == "lsst_r"
        noiseless = hdul["NOISELESS"].data
        assert np.all(np.isfinite(hdul[0].data)) and noiseless.min() >= 0
    truth = Table.read(tmp_path / "fields_truth.ecsv")
    assert 5 <= len(truth) <= 20
    assert set(truth["field"]) <= {0, 1, 2, 3, 4}
    assert np.all((truth["x"] >= 0) & (truth["x"] < 64))
    # The truth fluxes are the sources' total fluxes: the field holds at most that much light.
    for i in range(5):
        assert noiseless[i].sum() <= truth["flux_r"][truth["field"] == i].sum() * 1.001
    assert (tmp_path / "fields.png").stat().st_size > 0


def test_compilation_cache_dir_follows_the_environment(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from galjax.cli import compilation_cache_dir

    assert compilation_cache_dir({"GALJAX_CACHE_DIR": "off"}) is None
    assert compilation_cache_dir({"GALJAX_CACHE_DIR": ""}) is None
    assert compilation_cache_dir({"GALJAX_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "galjax" / "xla"
    assert compilation_cache_dir({}) == Path.home() / ".cache" / "galjax" / "xla"
    # In a fresh process the command turns the cache on, and compilations land in it.
    code = ("import jax, jax.numpy as jnp; from galjax.cli import runtime as cli; "
            "cli.enable_compilation_cache(); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
            "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready(); "
            "print(jax.config.jax_compilation_cache_dir)")  # fmt: skip
    env = {**os.environ, "GALJAX_CACHE_DIR": str(tmp_path / "xla")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir())


def test_simulate_rejects_bad_arguments(tmp_path, capsys):
    assert main(["simulate", "--survey", "nope", "--out", str(tmp_path / "f.fits")]) == 2
    assert "galjax simulate: error: --survey" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: the option's type
        main(["simulate", "--n", "0", "--out", str(tmp_path / "f.fits")])
    assert exc.value.code == 2 and "argument --n" in capsys.readouterr().err
    assert main(["simulate", "--n", "1", "--out", str(tmp_path / "f.txt")]) == 2
    assert "galjax simulate: error: --out" in capsys.readouterr().err


def test_deblend_user_fields_writes_outputs(tmp_path, capsys):
    import jax
    from test_deblend import CFG as cfg  # the tiny VAE and flow of the deblending tests
    from test_deblend import FLOW as fcfg

    from galjax.io import write_fits, write_table
    from galjax.models import GalaxyModel, init_flow, init_vae, save_model

    k = jax.random.key(0)
    save_model(tmp_path / "model", GalaxyModel(cfg, init_vae(k, cfg), fcfg, init_flow(k, fcfg),
                                               meta={"survey": {"bands": ["r"]}}))  # fmt: skip
    rng = np.random.default_rng(0)
    write_fits(tmp_path / "fields.fits", rng.normal(size=(2, 24, 24, 1)).astype(np.float32))
    write_table(tmp_path / "pos.ecsv", Table({"field": [0, 0, 1], "x": [5.0, 15.2, 12.0],
                                             "y": [6.0, 17.1, 11.5]}))  # fmt: skip
    out = tmp_path / "out"
    args = ["deblend", "--fields", str(tmp_path / "fields.fits"), "--positions",
            str(tmp_path / "pos.ecsv"), "--sigma", "1.0", "--model", str(tmp_path / "model"),
            "--out", str(out), "--steps", "10", "--quiet"]  # fmt: skip
    assert main(args) == 0
    cat = Table.read(out / "catalog.ecsv")
    assert len(cat) == 3 and set(cat["field"]) == {0, 1}
    assert {"flux_r", "flux_err_r", "chi2", "converged"} <= set(cat.colnames)
    with fits.open(out / "models.fits") as hdul:
        assert hdul[0].data.shape == (4, 1, 24, 24)  # n_fields * n_max rows
    assert (out / "residuals.fits").exists() and (out / "summary.png").stat().st_size > 0
    assert len(list((out / "chunks").glob("chunk_*.npz"))) >= 1
    assert main(args[:5] + ["--model", str(tmp_path / "model"), "--out", str(out)]) == 2
    assert "galjax deblend: error: --sigma/--variance" in capsys.readouterr().err
    cat = Table.read(out / "catalog.ecsv")
    assert list(cat["status"]) and set(cat["flags"]) <= {0, 1}  # ok or not_converged
    # A model with a calibrated noise bias (+25 % everywhere): divided out unless --no-debias.
    table = {"snr": [1.0, 1e6], "bias": [0.25, 0.25], "n": [10, 10]}
    save_model(tmp_path / "biased", GalaxyModel(cfg, init_vae(k, cfg), fcfg, init_flow(k, fcfg),
               meta={"survey": {"bands": ["r"]}, "flux_bias": table}))  # fmt: skip
    base = [*args[:7], "--model", str(tmp_path / "biased"), "--steps", "10", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "b1")]) == 0
    assert main([*base, "--out", str(tmp_path / "b0"), "--no-debias"]) == 0
    on, off = (Table.read(tmp_path / d / "catalog.ecsv")["flux_r"] for d in ("b1", "b0"))
    np.testing.assert_allclose(on, off / 1.25, rtol=1e-4, atol=1e-6)
    # --prior-weight-faint: a negative value means --prior-weight for every source, the
    # same solve as giving the faint sources that weight explicitly.
    assert main([*base, "--out", str(tmp_path / "u1"), "--prior-weight-faint", "-1"]) == 0
    assert main([*base, "--out", str(tmp_path / "u2"), "--prior-weight-faint", "0.01"]) == 0
    u1, u2 = (Table.read(tmp_path / d / "catalog.ecsv")["flux_r"] for d in ("u1", "u2"))
    np.testing.assert_allclose(u1, u2, rtol=1e-5, atol=1e-6)
    # and a very strong faint-source prior changes the fit of these (faint) sources.
    assert main([*base, "--out", str(tmp_path / "u3"), "--prior-weight-faint", "1e4"]) == 0
    u3 = Table.read(tmp_path / "u3" / "catalog.ecsv")["flux_r"]
    assert not np.allclose(u1, u3, rtol=1e-3)


def test_deblend_point_sources_from_the_table_and_found(tmp_path):
    """A ``point`` column in the positions; ``--find-stars`` finds a star by itself."""
    import jax
    from test_point_sources import CFG as cfg  # tiny explicit-PSF VAE
    from test_point_sources import FLOW as fcfg
    from test_point_sources import PSF, _star

    from galjax.io import write_fits, write_table
    from galjax.models import GalaxyModel, init_flow, init_vae, save_model

    k = jax.random.key(5)
    save_model(tmp_path / "model", GalaxyModel(cfg, init_vae(k, cfg), fcfg, init_flow(k, fcfg),
                                               meta={"survey": {"bands": ["r"]}}))  # fmt: skip
    rng = np.random.default_rng(0)
    field = _star(300.0, 18.0, 17.0, 0.2, 0.1) + rng.normal(0, 0.05, (28, 28, 1))
    write_fits(tmp_path / "f.fits", field[None].astype(np.float32))
    write_fits(tmp_path / "psf.fits", PSF.astype(np.float32))
    common = ["deblend", "--fields", str(tmp_path / "f.fits"), "--sigma", "0.05", "--psf",
              str(tmp_path / "psf.fits"), "--model", str(tmp_path / "model"), "--steps", "60",
              "--quiet"]  # fmt: skip
    table = {"x": [6.0, 18.0], "y": [7.0, 17.0]}
    write_table(tmp_path / "p.ecsv", Table({**table, "point": [False, True]}))
    assert (
        main([*common, "--positions", str(tmp_path / "p.ecsv"), "--out", str(tmp_path / "a")]) == 0
    )
    cat = Table.read(tmp_path / "a" / "catalog.ecsv")
    assert list(cat["point"]) == [False, True]
    assert cat["flux_r"][1] == pytest.approx(300.0, rel=0.05)
    write_table(tmp_path / "q.ecsv", Table(table))
    assert main([*common, "--positions", str(tmp_path / "q.ecsv"), "--out", str(tmp_path / "b"),
                 "--find-stars"]) == 0  # fmt: skip
    assert bool(Table.read(tmp_path / "b" / "catalog.ecsv")["point"][1])


def test_train_vae_from_a_folder_of_fits_stamps(tmp_path, capsys):
    """`galjax train vae --stamps DIR` reads one stamp per FITS file and writes a model."""
    from galjax.models import load_model

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:45, :45]
    folder = tmp_path / "stamps"
    folder.mkdir()
    for i in range(6):
        img = 50.0 * np.exp(-((xx - 22) ** 2 + (yy - 22) ** 2) / (2 * (2 + i) ** 2))
        fits.writeto(folder / f"g{i}.fits", (img + rng.normal(0, 0.1, img.shape)).astype("f4"))
    out = tmp_path / "model"
    argv = ["train", "vae", "--out", str(out), "--stamps", str(folder), "--steps", "3",
            "--batch", "2", "--latent-dim", "4", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    model = load_model(out)
    assert model.vae_config.latent_dim == 4 and model.vae_config.stamp_size == 45
    # The flow prior on two draws from q(z|x) per stamp.
    flow_argv = ["train", "flow", "--out", str(out), "--stamps", str(folder), "--steps", "3",
                 "--batch", "4", "--posterior-samples", "2", "--quiet"]  # fmt: skip
    assert main(flow_argv) == 0
    model = load_model(out)
    assert model.flow_config.dim == 4 and model.flow_params is not None
    assert model.meta["recipes"]["flow"]["posterior_samples"] == 2
    # A rerun of the same recipe resumes the finished run; another recipe starts over.
    capsys.readouterr()
    assert main(flow_argv) == 0
    assert "starting over" not in capsys.readouterr().err
    assert main([*flow_argv[:-2], "1", "--quiet"]) == 0
    assert "starting over" in capsys.readouterr().err
    fits.writeto(folder / "odd.fits", np.zeros((30, 30), "f4"))
    assert main(argv) == 2
    assert "differ in shape" in capsys.readouterr().err


def test_train_calibrate_writes_the_model_error(tmp_path):
    """`galjax train calibrate` stores the flux model error that the Laplace errors then use."""
    import jax
    from test_deblend import CFG
    from test_deblend import FLOW as fcfg

    from galjax.deblend import DeblendConfig, deblend, laplace_flux_errors
    from galjax.models import (
        GalaxyModel,
        init_flow,
        init_vae,
        load_model,
        save_model,
    )
    from galjax.sim import LSST_R, simulate_fields

    cfg = dataclasses.replace(CFG, scale=100.0)  # galaxy-sized outputs
    k = jax.random.key(0)
    save_model(tmp_path / "m", GalaxyModel(cfg, init_vae(k, cfg), fcfg, init_flow(k, fcfg),
                                           meta={"survey": LSST_R.to_dict()}))  # fmt: skip
    argv = ["train", "calibrate", "--out", str(tmp_path / "m"), "--n-fields", "6", "--seed", "3",
            "--quiet"]  # fmt: skip
    with pytest.warns(UserWarning, match="flux bias not calibrated"):
        assert main(argv) == 0
    model = load_model(tmp_path / "m")
    s = model.meta["flux_model_error"]
    cal = model.meta["flux_calibration"]
    assert s >= 0 and cal["n_fields"] == 6 and cal["n_galaxies"] >= 1
    # Its fluxes are too far off to tabulate a noise bias: none is stored.
    assert "flux_bias" in model.meta and model.meta["flux_bias"] is None
    assert model.meta["recipes"]["calibrate"]["seed"] == 3
    # An untrained decoder is far from the galaxies: the statistical errors undercover.
    assert cal["coverage_statistical"] < 0.68 and s > 0
    f = simulate_fields(jax.random.key(9), 5, LSST_R)  # the calibration's compiled shape (8)
    res = deblend(model, f.image, f.positions, f.mask, sigma=10.0, config=DeblendConfig(n_steps=5),
                  progress=False)  # fmt: skip
    ivar = np.full(f.image.shape, 0.01, np.float32)
    default = laplace_flux_errors(model, res, f.positions, ivar)
    stat = laplace_flux_errors(model, res, f.positions, ivar, model_error=0.0)
    expect = np.sqrt(stat**2 + (s * np.asarray(res.fluxes)) ** 2) * f.mask[..., None]
    np.testing.assert_allclose(default, expect, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="model_error"):
        laplace_flux_errors(model, res, f.positions, ivar, model_error=-1.0)


def test_survey_overrides_for_training():
    from galjax.cli.train import _override_survey
    from galjax.sim import HSC

    s = _override_survey(HSC, ["mag_min=18.5", "sky_sigma=2,2,2,2,2", "gain=none", "detail=false"])
    assert s.mag_min == 18.5 and s.sky_sigma == (2.0,) * 5 and s.gain is None and not s.detail
    assert s.bands == HSC.bands and _override_survey(HSC, None) is HSC
    for bad in (["nope=1"], ["mag_min"], ["mag_min=abc"], ["sky_sigma=1,1"], ["name=x"]):
        with pytest.raises(ValueError, match="--survey-set"):
            _override_survey(HSC, bad)


def test_deblend_cpu_devices_setting(monkeypatch, tmp_path, capsys):
    import jax

    from galjax.cli.runtime import use_cpu_cores

    jax.devices()  # JAX runs in this process from here on
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for bad in ("zero", "0"):
        monkeypatch.setenv("GALJAX_CPU_DEVICES", bad)
        assert main(["deblend", "--demo", "--out", str(tmp_path / "o")]) == 2
        assert "GALJAX_CPU_DEVICES" in capsys.readouterr().err
    # JAX already runs in this process: its devices are kept, nothing is raised.
    monkeypatch.setenv("GALJAX_CPU_DEVICES", "3")
    use_cpu_cores()


def test_version_flag(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"galjax {metadata.version('galjax')}"
