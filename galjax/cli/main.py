"""The ``galjax`` command line: thin wrappers around library functions.

``galjax simulate --n 64 --seed 0 --out demo/fields.fits`` simulates blended
fields with the built-in LSST-like survey and writes the fields (FITS), the truth
table (ECSV) and a figure (PNG).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "compilation_cache_dir"]


def _simulate(args) -> int:
    import jax
    from astropy.io import fits
    from astropy.table import Table

    from galjax.io import write_fits, write_table
    from galjax.plot import image_grid
    from galjax.sim import SURVEYS, simulate_fields

    if args.survey not in SURVEYS:
        raise SystemExit(f"--survey: unknown survey {args.survey!r}; choose from {sorted(SURVEYS)}")
    if args.n < 1:
        raise SystemExit(f"--n: expected >= 1, got {args.n}")
    survey = SURVEYS[args.survey]
    out = Path(args.out)
    if out.suffix.lower() not in (".fits", ".fit", ".fts"):
        raise SystemExit(f"--out: expected a .fits path, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    f = simulate_fields(
        jax.random.key(args.seed),
        args.n,
        survey,
        n_max=args.n_max,
        chunk=args.chunk,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - t0

    header = fits.Header()
    header["SURVEY"] = survey.name
    header["PIXSCALE"] = (survey.pixel_scale, "arcsec / pixel")
    header["BANDS"] = ",".join(survey.bands)
    header["SEED"] = args.seed
    header["NMAX"] = (args.n_max, "maximum sources per field")
    header["ORIGIN"] = "galjax simulate"
    to_cube = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1).astype(np.float32))
    extra = [
        fits.ImageHDU(to_cube(f.noiseless), name="NOISELESS"),
        fits.ImageHDU(to_cube(f.sigma), name="SIGMA"),
    ]
    write_fits(out, f.image, header=header, extra_hdus=extra)

    field, source = np.nonzero(f.mask)
    table = Table()
    table["field"] = field
    table["source"] = source
    table["x"] = f.positions[field, source, 0]
    table["y"] = f.positions[field, source, 1]
    for b, name in enumerate(survey.bands):
        table[f"flux_{name}"] = f.fluxes[field, source, b]
    table["snr"] = f.snr[field, source]
    p = f.params
    for col in ("disk_hlr", "disk_n", "disk_e1", "disk_e2", "bulge_hlr", "bulge_n"):
        table[col] = getattr(p, col)[field, source]
    table["bulge_frac"] = p.bulge_frac[field, source, 0]
    table["clump_frac"] = p.clump_frac[field, source, 0]
    table["arm_amp"] = p.arm_amp[field, source]
    table.meta.update(
        {
            "survey": survey.to_dict(),
            "seed": args.seed,
            "units": "x, y: pixels (0-based, x = column); fluxes: survey flux units; hlr: pixels",
        }
    )
    truth = out.with_name(out.stem + "_truth.ecsv")
    write_table(truth, table)

    figure = out.with_suffix(".png")
    k = min(args.n, 16)
    image_grid(
        f.image[:k],
        ncols=min(k, 8),
        titles=[f"field {i}: {int(f.mask[i].sum())} src" for i in range(k)],
        path=figure,
    )

    n_src = int(f.mask.sum())
    print(f"simulated {args.n} fields ({n_src} galaxies) of {survey.name} in {elapsed:.1f} s")
    print(
        f"  SNR of the galaxies: median {np.median(f.snr[f.mask]):.1f}, "
        f"5-95%: {np.percentile(f.snr[f.mask], 5):.1f}-{np.percentile(f.snr[f.mask], 95):.1f}"
    )
    print(f"  fields : {out}  (HDUs: PRIMARY noisy (n, bands, h, w), NOISELESS, SIGMA)")
    print(f"  truth  : {truth}")
    print(f"  figure : {figure}")
    return 0


def _train_config(args, n_steps):
    from galjax.train import TrainConfig

    return TrainConfig(
        n_steps=n_steps,
        batch_size=args.batch,
        log_every=100,
        eval_every=10**9,
        checkpoint_every=1000,
        seed=args.seed,
    )


def _load_stamps(args, survey, key):
    """Isolated training stamps: a FITS stack given by the user, or the simulator."""
    from galjax.train.recipes import make_stamps

    if args.stamps:
        from galjax.io import load_fits_folder, read_fits_stack

        if Path(args.stamps).is_dir():  # one stamp per FITS file
            img = load_fits_folder(args.stamps).images.astype(np.float32)
        else:
            img = read_fits_stack(args.stamps).data.astype(np.float32)
        if img.shape[1] != survey.stamp_size or img.shape[-1] != survey.n_bands:
            raise SystemExit(
                f"--stamps: expected (n, {survey.stamp_size}, {survey.stamp_size}, "
                f"{survey.n_bands}) stamps for survey {survey.name}, got {img.shape}"
            )
        return {"image": img}
    return make_stamps(key, survey, args.n_stamps, progress=not args.quiet)


def _stage_workdir(out: Path, what: str, recipe: dict) -> Path:
    """``out/logs_<what>`` for a training stage, emptied when it holds another run.

    ``fit`` resumes from the checkpoint it finds there. That is right for an
    interrupted run, wrong for a run of another recipe or on other VAE weights (the
    later stages read them): then the folder is emptied and training starts over.
    """
    import hashlib
    import json
    import shutil

    from galjax.core.files import atomic_write

    work = out / f"logs_{what}"
    inputs = {}
    if what != "vae" and (out / "vae.msgpack").is_file():
        inputs["vae.msgpack"] = hashlib.sha256((out / "vae.msgpack").read_bytes()).hexdigest()
    run = json.loads(json.dumps({
        "recipe": {k: v for k, v in recipe.items() if k != "quiet"}, "inputs": inputs,
    }))  # fmt: skip
    stamp = work / "run.json"
    if work.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != run):
        print(f"{work}: a run of another recipe or other weights; starting over", file=sys.stderr)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write(stamp, lambda p: p.write_text(json.dumps(run, indent=1)))
    return work


def _override_survey(survey, items):
    """Apply ``--survey-set KEY=VALUE`` overrides (population or noise) to a survey."""
    import dataclasses

    if not items:
        return survey
    fields = {f.name: f for f in dataclasses.fields(survey)}
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key in ("render", "name"):
            raise SystemExit(
                f"--survey-set: expected KEY=VALUE with KEY a Survey field "
                f"({', '.join(k for k in fields if k not in ('render', 'name'))}), got {item!r}"
            )
        old = getattr(survey, key)
        try:
            if key == "gain":  # the only optional field: None means sky noise only
                new = None if value.lower() == "none" else float(value)
            elif isinstance(old, tuple):
                new = tuple(type(old[0])(v) for v in value.split(","))
            elif isinstance(old, bool):
                new = value.lower() in ("1", "true", "yes")
            else:
                new = type(old)(value)
        except ValueError as err:
            raise SystemExit(f"--survey-set: bad value for {key}: {value!r} ({err})") from err
        changes[key] = new
    try:
        return dataclasses.replace(survey, **changes)
    except ValueError as err:
        raise SystemExit(f"--survey-set: {err}") from err


def _train(args) -> int:
    import dataclasses
    import json

    import jax

    from galjax.models import FlowConfig, GalaxyModel, VAEConfig, load_model, save_model
    from galjax.sim import SURVEYS, Survey
    from galjax.train.recipes import (
        calibrate_flux_errors,
        encode_dataset,
        make_blend_cutouts,
        train_flow,
        train_init_encoder,
        train_vae,
    )

    out = Path(args.out)
    recipe = {k: v for k, v in vars(args).items() if k != "func"}
    t0 = time.perf_counter()
    if args.what == "vae":
        if args.survey not in SURVEYS:
            raise SystemExit(
                f"--survey: unknown survey {args.survey!r}; choose from {sorted(SURVEYS)}"
            )
        survey = _override_survey(SURVEYS[args.survey], args.survey_set)
        k_data, k_fit = jax.random.split(jax.random.key(args.seed))
        stamps = _load_stamps(args, survey, k_data)
        cfg = dataclasses.replace(
            VAEConfig(),
            stamp_size=survey.stamp_size,
            bands=survey.n_bands,
            latent_dim=args.latent_dim,
            positive=not args.linear_output,
            psf_explicit=args.psf_explicit,
        )
        params, hist = train_vae(
            k_fit,
            {"image": stamps["image"]},
            survey,
            cfg,
            _train_config(args, args.steps),
            lr=args.lr,
            workdir=_stage_workdir(out, "vae", recipe),
            progress=not args.quiet,
        )
        meta = {"survey": survey.to_dict(), "recipes": {"vae": recipe}}
        save_model(out, GalaxyModel(cfg, params, meta=meta))
        final = hist["train"][-1] if hist["train"] else {}
    else:
        model = load_model(out)
        survey = Survey.from_dict(model.meta["survey"])  # with any --survey-set overrides
        meta = dict(model.meta)
        meta.setdefault("recipes", {})[args.what] = recipe
        k_data, k_fit = jax.random.split(jax.random.key(args.seed))
        if args.what == "flow":
            k_stamps, k_z = jax.random.split(k_data)
            stamps = _load_stamps(args, survey, k_stamps)
            z = encode_dataset(model.vae_params, model.vae_config, stamps["image"], key=k_z,
                               n_samples=args.posterior_samples)  # fmt: skip
            fcfg = FlowConfig(dim=model.vae_config.latent_dim)
            fparams, hist = train_flow(
                k_fit,
                z,
                fcfg,
                _train_config(args, args.steps),
                lr=args.lr,
                workdir=_stage_workdir(out, "flow", recipe),
                progress=not args.quiet,
            )
            model = model._replace(flow_config=fcfg, flow_params=fparams, meta=meta)
        elif args.what == "calibrate":
            cal = calibrate_flux_errors(k_data, model, survey, args.n_fields or 256,
                                        progress=not args.quiet)  # fmt: skip
            meta["flux_model_error"] = cal["flux_model_error"]
            meta["flux_bias"] = cal["flux_bias"]
            meta["flux_calibration"] = cal
            model = model._replace(meta=meta)
            hist = {"train": [{k: cal[k] for k in ("flux_model_error", "coverage_statistical")}]}
        else:  # init encoder on blended cutouts
            cut = make_blend_cutouts(k_data, survey, args.n_fields or 4096,
                                     progress=not args.quiet)  # fmt: skip
            iparams, hist = train_init_encoder(
                k_fit,
                model.vae_params,
                model.vae_config,
                cut,
                _train_config(args, args.steps),
                lr=args.lr,
                workdir=_stage_workdir(out, "init", recipe),
                progress=not args.quiet,
                psf=survey.pixel_psf() if model.vae_config.psf_explicit else None,
            )
            model = model._replace(init_params=iparams, meta=meta)
        save_model(out, model)
        final = hist["train"][-1] if hist["train"] else {}
    print(
        f"trained {args.what} in {time.perf_counter() - t0:.0f} s; last metrics: "
        f"{json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()})}"
    )
    print(f"  model directory: {out}")
    return 0


def _read_positions(path, n_fields, max_sources):
    """Positions table (ECSV/FITS: columns x, y, optionally field and point) -> padded
    ``(positions, mask, point)`` (``point`` None without the column)."""
    from galjax.io import read_table

    t = read_table(path)
    for col in ("x", "y"):
        if col not in t.colnames:
            raise SystemExit(f"--positions: table {path} has no column {col!r}")
    field = np.asarray(t["field"], int) if "field" in t.colnames else np.zeros(len(t), int)
    if len(t) and (field.min() < 0 or field.max() >= n_fields):
        raise SystemExit(f"--positions: field indices must be in [0, {n_fields - 1}]")
    counts = np.bincount(field, minlength=n_fields)
    n_max = max(int(counts.max()) if len(t) else 1, 1)
    if n_max > max_sources:
        raise SystemExit(
            f"--positions: a field has {n_max} sources, more than --max-sources={max_sources}"
        )
    pos = np.zeros((n_fields, n_max, 2), np.float32)
    mask = np.zeros((n_fields, n_max), bool)
    point = np.zeros((n_fields, n_max), bool)
    is_point = np.asarray(t["point"], bool) if "point" in t.colnames else np.zeros(len(t), bool)
    slot = np.zeros(n_fields, int)
    xs, ys = np.asarray(t["x"], float), np.asarray(t["y"], float)
    for f, x, y, pt in zip(field, xs, ys, is_point, strict=True):
        pos[f, slot[f]] = (x, y)
        mask[f, slot[f]] = True
        point[f, slot[f]] = pt
        slot[f] += 1
    return pos, mask, (point if "point" in t.colnames else None)


def _write_deblend_outputs(out, res, flux_err, positions, bands, field_image, sigma, title):
    """catalog.ecsv, models.fits, residuals.fits and summary.png for a deblending run."""
    from astropy.io import fits
    from astropy.table import Table

    from galjax.io import write_fits, write_table
    from galjax.plot import field_panels

    n, n_max = res.mask.shape
    field, source = np.nonzero(res.mask)
    t = Table()
    t["field"] = field
    t["source"] = source
    t["x"] = positions[field, source, 0]
    t["y"] = positions[field, source, 1]
    for b, name in enumerate(bands):
        t[f"flux_{name}"] = res.fluxes[field, source, b]
        t[f"flux_err_{name}"] = flux_err[field, source, b]
    t["point"] = res.point[field, source]
    t["chi2"] = res.chi2[field]
    t["converged"] = res.converged[field]
    t["n_iter"] = res.n_iter[field]
    t.meta["comments"] = [
        "x, y: 0-based pixels, (x, y) = (column, row), pixel centres at integers",
        "flux: sum of the source's model image inside the field; flux_err: Laplace 1-sigma",
        "point: modelled as a point source (the PSF times a flux per band) instead of a galaxy",
        "chi2: residual chi^2 per unmasked pixel of the field",
        "models.fits row = field * n_max + source",
    ]
    write_table(out / "catalog.ecsv", t)
    hdr = fits.Header()
    hdr["NMAX"] = (n_max, "sources per field; row = field * NMAX + source")
    hdr["BANDS"] = ",".join(bands)
    write_fits(out / "models.fits", res.models.reshape((n * n_max,) + res.models.shape[2:]), hdr)
    write_fits(out / "residuals.fits", res.residual)
    i = int(np.argmax(res.mask.sum(axis=1)))
    fig = field_panels(
        field_image[i],
        res.models[i].sum(axis=0),
        res.residual[i],
        sigma=sigma[i],
        positions=positions[i][res.mask[i]],
        path=out / "summary.png",
    )
    fig.suptitle(title)
    fig.savefig(out / "summary.png", dpi=100)


def _deblend(args) -> int:
    import functools

    import jax

    from galjax.deblend import (
        DeblendConfig,
        deblend,
        evaluate,
        evaluate_apertures,
        laplace_flux_errors,
        truth_apertures,
    )
    from galjax.io import read_fits, read_fits_stack
    from galjax.models import default_model_dir, load_model
    from galjax.sim import Survey, noise_variance, simulate_fields

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or default_model_dir("lsst_r")
    model = load_model(model_dir)
    bands = tuple(model.meta.get("survey", {}).get("bands", ("band0",)))
    cfg = DeblendConfig(n_steps=args.steps, chunk=args.chunk, debias=not args.no_debias)
    if args.prior_weight is not None:
        cfg = dataclasses.replace(cfg, prior_weight=args.prior_weight)
    if args.prior_weight_faint is not None:
        faint = None if args.prior_weight_faint < 0 else args.prior_weight_faint
        cfg = dataclasses.replace(cfg, prior_weight_faint=faint)
    truth = None
    if args.demo:
        survey = Survey.from_dict(model.meta["survey"])
        f = simulate_fields(jax.random.key(args.seed), args.n, survey, n_max=args.max_sources)
        fields, positions, mask, point = f.image, f.positions, f.mask, None
        sigma = np.sqrt(noise_variance(fields, np.asarray(survey.sky_sigma), survey.gain))
        truth = f
        title = f"galjax deblend --demo: {args.n} simulated {survey.name} fields"
    else:
        if not args.fields:
            raise SystemExit("--fields: give the fields FITS (or --demo)")
        fields = read_fits_stack(args.fields).data.astype(np.float32)
        if args.variance:
            var = read_fits_stack(args.variance).data.astype(np.float32)
            if var.shape != fields.shape:
                raise SystemExit(
                    f"--variance: shape {var.shape} differs from fields {fields.shape}"
                )
            sigma = np.sqrt(np.where(var > 0, var, np.inf))
        elif args.sigma is not None:
            if args.sigma <= 0:
                raise SystemExit(f"--sigma: expected a positive noise std, got {args.sigma}")
            sigma = np.full_like(fields, args.sigma)
        else:
            raise SystemExit("--sigma/--variance: give the noise (std or a variance FITS)")
        psf = read_fits(args.psf).data if args.psf else None
        if args.positions:
            positions, mask, point = _read_positions(args.positions, len(fields),
                                                     args.max_sources)  # fmt: skip
        else:
            from galjax.detect import detect

            if psf is None:
                raise SystemExit("--psf: detection (no --positions) needs the PSF")
            det = detect(fields, psf, sigma, max_peaks=args.max_sources)
            positions, mask = np.asarray(det.positions), np.asarray(det.mask)
            point = None
            print(f"detected {int(mask.sum())} sources in {len(fields)} fields")
        title = f"galjax deblend: {args.fields}"
    chunk_dir = out / "chunks"
    chunk_dir.mkdir(exist_ok=True)

    def save_chunk(start, r):  # finished fields are on disk even if the run stops later
        np.savez(chunk_dir / f"chunk_{start:08d}.npz", **r._asdict())

    psf_arg = None if not model.vae_config.psf_explicit else read_fits(args.psf).data
    if args.find_stars and psf_arg is None:
        raise SystemExit("--find-stars: needs a model that draws sources before the PSF, and --psf")
    run = functools.partial(deblend, model, fields, positions, mask, sigma=sigma, psf=psf_arg,
                            config=cfg, max_sources=args.max_sources, on_chunk=save_chunk,
                            progress=not args.quiet)  # fmt: skip
    res = run(point=point)
    ivar = 1.0 / np.asarray(sigma, np.float32) ** 2
    if args.find_stars:
        from galjax.core.checks import check_psf
        from galjax.deblend import point_source_tests

        psf_b = check_psf("psf", psf_arg, bands=fields.shape[-1])
        found = point_source_tests(res, ivar, psf_b, positions) > 0
        found = found if point is None else found | point
        print(
            f"point-source test: {int(found.sum())} of {int(np.sum(mask))} sources are "
            "better fitted as point sources; deblending again"
        )
        res = run(point=found)
    flux_err = laplace_flux_errors(model, res, np.asarray(positions), ivar, psf_arg)
    _write_deblend_outputs(
        out, res, flux_err, np.asarray(positions), bands, fields, np.asarray(sigma), title
    )
    elapsed = time.perf_counter() - t0
    n_gal = int(np.asarray(mask).sum())
    print(
        f"deblended {len(fields)} fields ({n_gal} galaxies) in {elapsed:.1f} s "
        f"(mean {res.n_iter.mean():.0f} steps, {res.converged.mean():.0%} converged)"
    )
    if truth is not None:
        from galjax.baselines import segmentation_fluxes

        ev = evaluate(res.models, truth.sources, truth.mask, truth.snr)["summary"]
        seg = segmentation_fluxes(truth.image, truth.positions, truth.mask, sigma)
        seg_flux = np.asarray(seg[0] if isinstance(seg, tuple) else seg.fluxes)[..., 0]
        true_flux = truth.sources.sum(axis=(2, 3))[..., 0]
        sel = truth.mask & (truth.snr >= 10)
        d_seg = np.abs(seg_flux[sel] - true_flux[sel]) / true_flux[sel]
        within = np.abs(res.fluxes[..., 0] - true_flux)[sel] <= flux_err[..., 0][sel]
        print("\n  galaxies with SNR >= 10   mean |dF/F|   median |dF/F|   mean SSIM")
        print(
            f"  galjax (MAP, flow prior)   {ev['mean_abs_dflux']:10.2%}   "
            f"{ev['median_abs_dflux']:12.2%}   {ev['mean_ssim']:9.3f}"
        )
        print(
            f"  no deblending (segments)   {np.mean(d_seg):10.2%}   {np.median(d_seg):12.2%}"
            "         -"
        )
        print(f"  true flux within the Laplace 1-sigma interval: {within.mean():.0%} (68% ideal)")
        # MADNESS's published statistic: apertures on residual + model against noise + truth.
        aps = truth_apertures(
            truth.params, truth.positions, survey.psf_fwhm[0] / survey.pixel_scale
        )
        ap = evaluate_apertures(res.models, res.residual, truth.image, truth.noiseless,
                                truth.sources, truth.mask, aps, truth.snr)["summary"]  # fmt: skip
        print(
            f"  aperture photometry by MADNESS's protocol, mean |dF/F|: galjax "
            f"{ap['mean_abs_dflux']:.2%}, no deblending {ap['no_deblending_mean_abs_dflux']:.2%} "
            "(the MADNESS paper, on its simulations: 1.97 % and 14.2 %)"
        )
    print(f"  outputs: {out}/catalog.ecsv, models.fits, residuals.fits, summary.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``galjax`` argument parser (subcommands)."""
    parser = argparse.ArgumentParser(prog="galjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate blended fields with their truth")
    sim.add_argument("--n", type=int, default=64, help="number of fields (default 64)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--out", default="galjax_demo/fields.fits", help="output FITS path")
    sim.add_argument("--survey", default="lsst_r", help="built-in survey (default lsst_r)")
    sim.add_argument("--n-max", type=int, default=4, help="maximum sources per field")
    sim.add_argument("--chunk", type=int, default=256, help="fields per compiled call")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    tr = sub.add_parser("train", help="train the deblender's models (staged, as MADNESS)")
    tr.add_argument(
        "what",
        choices=["vae", "flow", "init", "calibrate"],
        help="vae: VAE on isolated galaxies; flow: latent prior (needs vae); "
        "init: encoder retrained on blended cutouts (needs vae); calibrate: the flux "
        "noise-bias table and the model error of the Laplace flux errors, on simulated "
        "blends (needs all three)",
    )
    tr.add_argument("--out", required=True, help="model directory (read and updated)")
    tr.add_argument("--survey", default="lsst_r", help="built-in survey to simulate (vae)")
    tr.add_argument(
        "--survey-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the survey for training (vae; repeatable), e.g. mag_min=18.5; "
        "the changed survey is stored with the model and used by the later stages",
    )
    tr.add_argument(
        "--stamps",
        help="FITS stack (n, bands, h, w) or a folder of FITS stamps, instead of the simulator",
    )
    tr.add_argument("--n-stamps", type=int, default=32768, help="simulated training stamps")
    tr.add_argument(
        "--n-fields", type=int, default=None, help="blended fields (init: 4096, calibrate: 256)"
    )
    tr.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    tr.add_argument("--batch", type=int, default=64, help="batch size")
    tr.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    tr.add_argument("--latent-dim", type=int, default=16, help="latent dimension (vae)")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.add_argument(
        "--linear-output", action="store_true", help="no ReLU on the decoder output (vae)"
    )
    tr.add_argument(
        "--psf-explicit",
        action="store_true",
        help="decoder draws galaxies before the PSF; deblending then needs the field PSF (vae)",
    )
    tr.add_argument(
        "--posterior-samples",
        type=int,
        default=4,
        help="flow: fit draws from q(z|x), this many per stamp (0: the posterior means)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_train)

    db = sub.add_parser("deblend", help="deblend fields with the VAE + flow MAP (the main job)")
    db.add_argument(
        "--demo",
        action="store_true",
        help="simulate fields with the built-in survey and deblend them",
    )
    db.add_argument("--n", type=int, default=64, help="fields to simulate with --demo")
    db.add_argument("--seed", type=int, default=0, help="seed of the --demo fields")
    db.add_argument("--fields", help="FITS image or stack (n, bands, h, w) of fields")
    db.add_argument(
        "--positions",
        help="ECSV/FITS table with x, y (0-based), optionally field and point (bool: a point "
        "source, e.g. a star, drawn as the PSF times a flux per band)",
    )
    db.add_argument(
        "--find-stars",
        action="store_true",
        help="after a first run, deblend again with the sources that a point source fits "
        "better (galjax.deblend.point_source_tests) as point sources (explicit-PSF models)",
    )
    db.add_argument("--sigma", type=float, help="noise std per pixel (same for all)")
    db.add_argument("--variance", help="FITS variance map(s), same shape as the fields")
    db.add_argument("--psf", help="FITS PSF (psf_h, psf_w) or (bands, psf_h, psf_w)")
    db.add_argument("--model", help="model directory (default: the shipped lsst_r weights)")
    db.add_argument("--out", default="galjax_deblend", help="output directory")
    db.add_argument("--max-sources", type=int, default=4, help="static maximum per field")
    db.add_argument("--steps", type=int, default=200, help="maximum MAP steps per field")
    db.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="fields per compiled call (default: 1 on CPU, where a chunk runs until its "
        "slowest field converges; 256 on GPU/TPU)",
    )
    db.add_argument(
        "--prior-weight",
        type=float,
        default=None,
        help="weight of the flow prior for bright sources (default 0.01; 1 is the full posterior)",
    )
    db.add_argument(
        "--prior-weight-faint",
        type=float,
        default=None,
        help="weight of the flow prior for faint sources (initial SNR < 30; default 1); "
        "a negative value uses --prior-weight for every source",
    )
    db.add_argument(
        "--no-debias",
        action="store_true",
        help="keep the raw fluxes (no calibrated noise-bias correction)",
    )
    db.add_argument("--quiet", action="store_true", help="no progress bar")
    db.set_defaults(func=_deblend)

    # Sub-commands of the other capabilities live beside their modules.
    from galjax.cli import gan as cli_gan, mask as cli_mask

    cli_mask.register(sub)
    cli_gan.register(sub)
    return parser


def compilation_cache_dir(environ=None) -> Path | None:
    """Where the command keeps XLA compilations between runs, or None for nowhere.

    ``$GALJAX_CACHE_DIR`` (``off``, ``0`` or empty: none), else
    ``$XDG_CACHE_HOME/galjax/xla``, else ``~/.cache/galjax/xla``.
    """
    env = os.environ if environ is None else environ
    value = env.get("GALJAX_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none") else Path(value)
    base = env.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "galjax" / "xla"


def _enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache for this process (see
    :func:`compilation_cache_dir`), unless one is already configured.

    Compiling the simulator and the deblender's solves takes most of a short run on a
    CPU (the simulator alone about 15 s); with the cache a second run loads them.
    Only compilations over one second are stored.
    """
    import jax

    path = compilation_cache_dir()
    if path is None or jax.config.jax_compilation_cache_dir:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache folder only costs the speed-up
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _use_cpu_cores() -> None:
    """One CPU device per core for ``galjax deblend`` (see :func:`galjax.set_cpu_device_count`).

    ``GALJAX_CPU_DEVICES=n`` chooses the count (1 turns it off); a device count already
    in ``XLA_FLAGS`` is kept. In a process where JAX already runs (a test, a notebook)
    nothing changes.
    """
    from galjax.train.parallel import _COUNT_FLAG, set_cpu_device_count

    if _COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    value = os.environ.get("GALJAX_CPU_DEVICES", "").strip()
    try:
        n = int(value) if value else None
    except ValueError:
        raise SystemExit(
            f"GALJAX_CPU_DEVICES: expected a positive integer, got {value!r}"
        ) from None
    try:
        set_cpu_device_count(n)
    except ValueError as err:
        raise SystemExit(f"GALJAX_CPU_DEVICES: {err}") from err
    except RuntimeError:
        pass  # JAX is already running in this process: keep its devices


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``galjax`` console script."""
    args = build_parser().parse_args(argv)
    if args.func is _deblend:
        _use_cpu_cores()
    _enable_compilation_cache()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
