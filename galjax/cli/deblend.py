"""``galjax deblend``: MAP deblending of the demo fields or of the user's FITS fields.

Every input is read and checked (:mod:`galjax.cli.deblend_inputs`) before anything is
written; the finished chunks go to ``OUT/chunks`` as they finish, and ``--resume``
reads them back (:mod:`galjax.cli.deblend_chunks`). Fields the deblender could not fit
(``status`` no_data or nonfinite) are reported and keep NaN fluxes in the catalogue.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from galjax.cli.runtime import finite_float, nonnegative_float, positive_float, positive_int

__all__ = ["register"]


def _write_deblend_outputs(out, res, flux_err, positions, bands, field_image, sigma, title):
    """catalog.ecsv, models.fits, residuals.fits and summary.png for a deblending run
    (each written atomically)."""
    from astropy.io import fits
    from astropy.table import Table

    from galjax.core.files import atomic_write
    from galjax.deblend import status_text
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
    status = _status(res)
    t["status"] = [status_text(int(c)) for c in status[field]]
    t["flags"] = status[field].astype(np.int32)
    t.meta["comments"] = [
        "x, y: 0-based pixels, (x, y) = (column, row), pixel centres at integers",
        "flux: sum of the source's model image inside the field; flux_err: Laplace 1-sigma",
        "point: modelled as a point source (the PSF times a flux per band) instead of a galaxy",
        "chi2: residual chi^2 per unmasked pixel of the field",
        "status, flags: the field's galjax.deblend.DeblendStatus as text and as bits "
        "(no_data, nonfinite: not fitted, fluxes NaN)",
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
    )
    fig.suptitle(title)
    atomic_write(out / "summary.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def _status(res) -> np.ndarray:
    """``res.status`` (zeros for a result without one)."""
    status = getattr(res, "status", None)
    return np.zeros(len(res.chi2), np.int32) if status is None else np.asarray(status)


# Options that name input files (hashed by content for --resume) and options that do
# not change the results; every other option is a setting of the run.
_INPUT_FILES = ("fields", "positions", "psf", "variance")
_NOT_SETTINGS = {"out", "quiet", "resume", "debug", "func", "cpu_devices", "command", "model",
                 "image", "shard", "distributed", "coordinator", "num_processes", "process_id",
                 "wait", *_INPUT_FILES}  # fmt: skip


def _check_options(args) -> None:
    """Combinations of options that cannot work, refused before anything is read."""
    if args.demo:
        given = [f"--{k}" for k in (*_INPUT_FILES, "sigma") if getattr(args, k) is not None]
        if given:
            raise ValueError(
                f"--demo: simulates its own fields, noise and positions; do not combine it "
                f"with {', '.join(given)}"
            )
    elif not args.fields:
        raise ValueError("--fields: give a survey IMAGE, the fields FITS, or --demo")
    for opt in ("weight", "mask", "zeropoint", "hdu"):
        if getattr(args, opt, None) is not None:
            raise ValueError(f"--{opt}: only with a survey IMAGE")
    if args.shard != (0, 1) or args.distributed or args.coordinator:
        raise ValueError("--shard/--distributed/--coordinator: only with a survey IMAGE")
    if args.resume and args.find_stars:
        raise ValueError("--resume: not available with --find-stars (two passes over the fields)")


def _read_inputs(args, model, folder):
    """The checked inputs: ``(fields, ivar, positions, mask, point, psf, truth, title)``.

    ``ivar`` is float64 (0 for masked pixels); ``psf`` is the field PSF the model
    needs (explicit-PSF models), else None.
    """
    from galjax.io import read_fits_stack

    from .deblend_inputs import read_input, read_noise, read_positions, read_psf

    explicit = model.vae_config.psf_explicit
    if args.demo:
        import jax

        from galjax.sim import Survey, noise_variance, simulate_fields

        if "survey" not in (model.meta or {}):
            raise ValueError(f"--demo: the model {folder} names no survey to simulate")
        survey = Survey.from_dict(model.meta["survey"])
        f = simulate_fields(jax.random.key(args.seed), args.n, survey, n_max=args.max_sources)
        fields = np.asarray(f.image, np.float32)
        var = np.asarray(noise_variance(fields, np.asarray(survey.sky_sigma), survey.gain))
        ivar = 1.0 / var.astype(np.float64)
        psf = np.asarray(survey.pixel_psf()) if explicit else None
        title = f"galjax deblend --demo: {args.n} simulated {survey.name} fields"
        return fields, ivar, np.asarray(f.positions), np.asarray(f.mask), None, psf, f, title
    fields = np.asarray(read_input("--fields", read_fits_stack, args.fields).data, np.float32)
    bands = model.vae_config.bands
    if fields.shape[-1] != bands:
        raise ValueError(
            f"--fields: {args.fields} has {fields.shape[-1]} band(s), the model {bands}"
        )
    ivar = read_noise(fields, args.variance, args.sigma)
    usable = np.isfinite(fields) & (ivar > 0)
    if not usable.any():
        raise ValueError(
            "--fields: no field has a usable pixel (a finite value with a positive finite "
            "variance); check --sigma/--variance"
        )
    psf = read_psf(args.psf, bands) if args.psf else None
    if explicit and psf is None:
        raise ValueError(
            f"--psf: the model {folder} draws sources before the PSF (explicit PSF) and "
            "needs the field PSF"
        )
    if args.find_stars and not (explicit and psf is not None):
        raise ValueError("--find-stars: needs a model that draws sources before the PSF, and --psf")
    if args.positions:
        positions, mask, point = read_positions(args.positions, len(fields), args.max_sources)
    else:
        from galjax.detect import detect

        if psf is None:
            raise ValueError("--psf: detection (no --positions) needs the PSF")
        with np.errstate(divide="ignore"):
            sigma = np.where(ivar > 0, ivar**-0.5, np.inf).astype(np.float32)
        det = detect(fields, psf, sigma, max_peaks=args.max_sources)
        positions, mask = np.asarray(det.positions), np.asarray(det.mask)
        point = None
        print(f"detected {int(mask.sum())} sources in {len(fields)} fields")
        full = int(np.sum(mask.sum(axis=1) >= args.max_sources))
        if full:
            print(
                f"galjax deblend: warning: {full} field(s) reached --max-sources "
                f"{args.max_sources} detections; fainter peaks there were not kept: raise "
                "--max-sources (or give a survey IMAGE, which has no cap)",
                file=sys.stderr,
            )
    title = f"galjax deblend: {args.fields}"
    return fields, ivar, positions, mask, point, (psf if explicit else None), None, title


def _manifest(args, folder, n_fields):
    from .deblend_chunks import file_digest, run_manifest

    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    inputs = {f"--{k}": file_digest(getattr(args, k)) for k in _INPUT_FILES if getattr(args, k)}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix in (".json", ".msgpack"):
            inputs[f"model/{p.name}"] = file_digest(p)
    return run_manifest(settings, inputs, n_fields)


def _report_flags(res) -> None:
    """A warning line for the fields that were not fitted; an error if none was."""
    from galjax.deblend import DeblendStatus, status_text

    status = _status(res)
    no_data = (status & int(DeblendStatus.NO_DATA)) != 0
    if no_data.all():
        raise ValueError("no field has usable pixels; check --sigma/--variance units")
    for flag in (DeblendStatus.NO_DATA, DeblendStatus.NONFINITE):
        k = int(np.sum((status & int(flag)) != 0))
        if k:
            print(
                f"galjax deblend: warning: {k} of {len(status)} field(s) flagged "
                f"{status_text(int(flag))}: not fitted, their fluxes are NaN (catalog column "
                "status)",
                file=sys.stderr,
            )


def _deblend(args) -> int:
    import functools

    from galjax.deblend import DeblendConfig, DeblendResult, deblend, laplace_flux_errors

    from .deblend_chunks import ChunkStore, merge_chunks
    from .deblend_inputs import load_deblend_model

    t0 = time.perf_counter()
    cfg = DeblendConfig(n_steps=args.steps, chunk=args.chunk, debias=not args.no_debias)
    if args.prior_weight is not None:
        cfg = dataclasses.replace(cfg, prior_weight=args.prior_weight)
    if args.prior_weight_faint is not None:
        faint = None if args.prior_weight_faint < 0 else args.prior_weight_faint
        cfg = dataclasses.replace(cfg, prior_weight_faint=faint)
    if args.image:
        from .deblend_image import run_image

        return run_image(args, cfg)
    _check_options(args)
    model, folder = load_deblend_model(args.model)
    bands = tuple(model.meta.get("survey", {}).get("bands", ("band0",)))
    fields, ivar, positions, mask, point, psf, truth, title = _read_inputs(args, model, folder)
    n = len(fields)
    # Every input has passed its checks: from here on files are written.
    out = Path(args.out)
    store = ChunkStore(out, _manifest(args, folder, n), resume=args.resume)
    parts = store.finished(DeblendResult._fields)
    done = np.zeros(n, bool)
    for idx, _ in parts:
        done[idx] = True
    todo = np.flatnonzero(~done)
    if args.resume and parts:
        print(f"resuming: {int(done.sum())} of {n} fields were finished, {todo.size} to go")

    def save_chunk(start, r):  # finished fields are on disk even if the run stops later
        store.save(todo[start : start + len(r.chi2)], r._asdict())

    if todo.size:
        run = functools.partial(
            deblend, model, fields[todo], positions[todo], mask[todo], ivar=ivar[todo],
            psf=psf, config=cfg, max_sources=args.max_sources, on_chunk=save_chunk,
            progress=not args.quiet,
        )  # fmt: skip
        res = run(point=None if point is None else point[todo])
        if args.find_stars:  # never with --resume: todo holds every field
            from galjax.core.checks import check_psf
            from galjax.deblend import point_source_tests

            psf_b = check_psf("psf", psf, bands=fields.shape[-1])
            found = point_source_tests(res, ivar, psf_b, positions) > 0
            found = found if point is None else found | point
            print(
                f"point-source test: {int(found.sum())} of {int(np.sum(mask))} sources are "
                "better fitted as point sources; deblending again"
            )
            res = run(point=found)
        parts.append((todo, res._asdict()))
    res = DeblendResult(**merge_chunks(parts, n))
    store.start()  # the folder exists (and the manifest) even when nothing was left to do
    _report_flags(res)
    flux_err = laplace_flux_errors(model, res, positions, ivar, psf)
    with np.errstate(divide="ignore"):
        sigma = np.where(ivar > 0, ivar**-0.5, np.inf)
    _write_deblend_outputs(out, res, flux_err, positions, bands, fields, sigma, title)
    elapsed = time.perf_counter() - t0
    n_gal = int(np.asarray(mask).sum())
    print(
        f"deblended {n} fields ({n_gal} galaxies) in {elapsed:.1f} s "
        f"(mean {res.n_iter.mean():.0f} steps, {res.converged.mean():.0%} converged)"
    )
    if truth is not None:
        _print_demo_scores(res, truth, flux_err, sigma, model)
    print(f"  outputs: {out}/catalog.ecsv, models.fits, residuals.fits, summary.png")
    return 0


def _print_demo_scores(res, truth, flux_err, sigma, model) -> None:
    """The --demo run's scores against the simulated truth."""
    from galjax.fit import segmentation_fluxes
    from galjax.scores.truth import evaluate, evaluate_apertures, truth_apertures
    from galjax.sim import Survey

    survey = Survey.from_dict(model.meta["survey"])
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
        f"  no deblending (segments)   {np.mean(d_seg):10.2%}   {np.median(d_seg):12.2%}         -"
    )
    print(f"  true flux within the Laplace 1-sigma interval: {within.mean():.0%} (68% ideal)")
    # MADNESS's published statistic: apertures on residual + model against noise + truth.
    aps = truth_apertures(truth.params, truth.positions, survey.psf_fwhm[0] / survey.pixel_scale)
    ap = evaluate_apertures(res.models, res.residual, truth.image, truth.noiseless,
                            truth.sources, truth.mask, aps, truth.snr)["summary"]  # fmt: skip
    print(
        f"  aperture photometry by MADNESS's protocol, mean |dF/F|: galjax "
        f"{ap['mean_abs_dflux']:.2%}, no deblending {ap['no_deblending_mean_abs_dflux']:.2%} "
        "(the MADNESS paper, on its simulations: 1.97 % and 14.2 %)"
    )


def register(subparsers) -> None:
    """Add the ``deblend`` sub-command to an ``argparse`` sub-parser collection."""
    db = subparsers.add_parser(
        "deblend",
        help="deblend a survey image, or stacked fields, with the VAE + flow MAP (the main job)",
        description="galjax deblend IMAGE.fits --psf PSF.fits (--sigma S | --variance V.fits | "
        "--weight W.fits) --out DIR: detect and deblend every source of a survey image of any "
        "size; or --fields STACK.fits with --positions; or --demo.",
    )
    db.add_argument(
        "--demo",
        action="store_true",
        help="simulate fields with the built-in survey and deblend them",
    )
    db.add_argument("--n", type=positive_int, default=64, help="fields to simulate with --demo")
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
    noise = db.add_mutually_exclusive_group()
    noise.add_argument("--sigma", type=positive_float, help="noise std per pixel (same for all)")
    noise.add_argument(
        "--variance",
        help="FITS variance map(s), same shape as the fields; pixels with a variance <= 0 or "
        "not finite are masked",
    )
    db.add_argument("--psf", help="FITS PSF (psf_h, psf_w) or (bands, psf_h, psf_w)")
    db.add_argument(
        "--model",
        help="model directory, or the name of a shipped model (lsst_r, hsc; default lsst_r)",
    )
    db.add_argument("--out", default="galjax_deblend", help="output directory")
    db.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out: read its finished chunks back (same "
        "inputs and settings only) and deblend the missing fields",
    )
    db.add_argument("--max-sources", type=positive_int, default=4, help="static maximum per field")
    db.add_argument("--steps", type=positive_int, default=200, help="maximum MAP steps per field")
    db.add_argument(
        "--chunk",
        type=positive_int,
        default=None,
        help="fields per compiled call (default: 1 on CPU, where a chunk runs until its "
        "slowest field converges; 256 on GPU/TPU)",
    )
    db.add_argument(
        "--prior-weight",
        type=nonnegative_float,
        default=None,
        help="weight of the flow prior for bright sources (default 0.01; 1 is the full posterior)",
    )
    db.add_argument(
        "--prior-weight-faint",
        type=finite_float,
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
    from .deblend_image import add_image_options

    add_image_options(db)
    db.set_defaults(func=_deblend, cpu_devices=True)
