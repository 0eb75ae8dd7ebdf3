"""``galjax deblend``: MAP deblending of the demo fields or of the user's FITS fields."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

__all__ = ["register"]


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

    from galjax.deblend import DeblendConfig, deblend, laplace_flux_errors
    from galjax.io import read_fits, read_fits_stack
    from galjax.models import default_model_dir, load_model
    from galjax.scores.truth import evaluate, evaluate_apertures, truth_apertures
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
        from galjax.fit import segmentation_fluxes

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


def register(subparsers) -> None:
    """Add the ``deblend`` sub-command to an ``argparse`` sub-parser collection."""
    db = subparsers.add_parser(
        "deblend", help="deblend fields with the VAE + flow MAP (the main job)"
    )
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
    db.set_defaults(func=_deblend, cpu_devices=True)
