"""``galjax simulate``: blended fields from the built-in simulator, with their truth
table and a figure; or (``--mosaic SIZE``) a survey image with its variance, PSF, WCS
and truth, for ``galjax deblend IMAGE.fits``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from galjax.cli.runtime import positive_int

__all__ = ["register"]


def _simulate(args) -> int:
    import jax
    from astropy.io import fits
    from astropy.table import Table

    from galjax.core.files import clean_stale_tmp
    from galjax.io import write_fits, write_table
    from galjax.plot import image_grid
    from galjax.sim import SURVEYS, simulate_fields

    if args.survey not in SURVEYS:
        raise ValueError(f"--survey: unknown survey {args.survey!r}; choose from {sorted(SURVEYS)}")
    if args.n < 1:
        raise ValueError(f"--n: expected >= 1, got {args.n}")
    survey = SURVEYS[args.survey]
    if args.mosaic is not None:
        return _mosaic(args, survey)
    out = Path(args.out)
    if out.suffix.lower() not in (".fits", ".fit", ".fts"):
        raise ValueError(f"--out: expected a .fits path, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out.parent)  # temporary files of a killed earlier run

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


def _mosaic(args, survey) -> int:
    """``--mosaic SIZE``: image.fits, variance.fits, psf.fits and truth.ecsv in ``--out``."""
    import jax

    from galjax.sim import simulate_mosaic, write_mosaic

    out = Path(args.out)
    if out.suffix.lower() in (".fits", ".fit", ".fts"):
        raise ValueError(f"--out: with --mosaic, expected a folder, got {str(out)!r}")
    t0 = time.perf_counter()
    size = (args.mosaic, args.mosaic)
    m = simulate_mosaic(jax.random.key(args.seed), survey, shape=size, progress=not args.quiet)
    paths = write_mosaic(out, m, survey)
    print(
        f"simulated a {args.mosaic} x {args.mosaic} {survey.name} mosaic with "
        f"{len(m.truth['x'])} galaxies in {time.perf_counter() - t0:.1f} s\n"
        f"  outputs: {', '.join(str(p) for p in paths.values())}\n"
        f"  deblend it: galjax deblend {paths['image']} --psf {paths['psf']} --variance "
        f"{paths['variance']} --out {out / 'run'}"
    )
    return 0


def register(subparsers) -> None:
    """Add the ``simulate`` sub-command to an ``argparse`` sub-parser collection."""
    sim = subparsers.add_parser("simulate", help="simulate blended fields with their truth")
    sim.add_argument("--n", type=positive_int, default=64, help="number of fields (default 64)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--out", default="galjax_demo/fields.fits", help="output FITS path")
    sim.add_argument("--survey", default="lsst_r", help="built-in survey (default lsst_r)")
    sim.add_argument("--n-max", type=positive_int, default=4, help="maximum sources per field")
    sim.add_argument("--chunk", type=positive_int, default=256, help="fields per compiled call")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument(
        "--mosaic",
        type=positive_int,
        default=None,
        metavar="SIZE",
        help="instead of fields: one SIZE x SIZE survey image (25 galaxies per arcmin^2) with "
        "variance, PSF, WCS and truth, written to the folder --out",
    )
    sim.set_defaults(func=_simulate)
