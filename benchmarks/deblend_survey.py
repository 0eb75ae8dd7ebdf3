"""Survey images end to end through ``galjax deblend IMAGE.fits``: a simulated mosaic,
the real ESO field, the real HSC scenes, and two processes under jax.distributed.

Every run is the command line in a fresh process (``python -m galjax.cli.main``),
whose peak resident memory (``ru_maxrss``) is reported.

1. **Mosaic** (``--size``, default 4096 x 4096, LSST-like r band, galjax's simulator
   at 25 galaxies/arcmin^2, Poisson + sky noise, :func:`galjax.sim.simulate_mosaic`):
   the command detects and deblends every source with the shipped ``lsst_r`` model,
   the image's variance map and PSF. Detections are matched one-to-one to the truth
   within 2 px; reported by SNR bin: completeness, and median |dF/F| of galjax
   (model flux) and of the no-deblending baseline (sep's isophotal flux of the
   detection's footprint); overall purity, galaxies per second end to end (detection
   + deblending + Laplace errors + writing), peak memory. The oracle floor of this
   data (true shapes, least-squares amplitudes) is not computed here: the mosaic keeps
   no per-galaxy images; ``deblend_quality.json`` has it for the same simulator.
2. **ESO field** (``../shared/data/field_eso_ntt_emmi_sep``, real R-band CCD image):
   the command with default.sex's detection settings and the background rms as noise;
   its detections matched to the SExtractor catalogue within 2 px (completeness,
   purity) and its model fluxes against SExtractor's FLUX_AUTO (median ratio).
3. **HSC scenes** (``../shared/data/hsc_blends_scarlet``, real grizy): each scene is
   written as a FITS cube with its PSF cube and inverse-variance cube and run through
   the command with the ``hsc`` model; residual chi^2 per usable pixel from
   ``residual.fits``, beside ``deblend_hsc.json`` (the array API with the scenes'
   catalogue positions, and the Sersic fit).
4. **Two processes**: the mosaic cut to ``--two-size`` pixels, deblended by one process
   (all cores) and by two processes on localhost under ``jax.distributed`` (one core
   each); the catalogues are compared and both wall times reported.

    python benchmarks/deblend_survey.py [--size 4096] [--skip mosaic,eso,hsc,two]

Writes ``benchmarks/results/deblend_survey.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS_DIR, format_table, machine_info, write_json
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SNR_BINS = (5, 10, 20, 50, 100, 1e9)
WRAPPER = (
    "import resource, sys\n"
    "from galjax.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    "sys.exit(rc)\n"
)


def run_command(args, env=None, log=None):
    """``galjax <args>`` in a fresh process: (wall seconds, peak RSS in GB, output)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", WRAPPER, *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    out = p.stdout + p.stderr
    if log is not None:
        Path(log).write_text(out)
    if p.returncode != 0:
        raise RuntimeError(f"galjax {' '.join(map(str, args))} failed:\n{out[-3000:]}")
    rss = [int(line.split()[1]) for line in p.stdout.splitlines() if line.startswith("PEAK_RSS")]
    return wall, rss[-1] / 2**20 if rss else float("nan"), out


def match(true_xy, found_xy, radius=2.0):
    """One-to-one nearest matches within ``radius``: index into found per true (-1: none)."""
    idx = np.full(len(true_xy), -1)
    if len(found_xy) == 0 or len(true_xy) == 0:
        return idx
    d, j = cKDTree(found_xy).query(true_xy, k=1, distance_upper_bound=radius)
    taken = set()
    for i in np.argsort(d):
        if np.isfinite(d[i]) and j[i] not in taken:
            idx[i] = j[i]
            taken.add(j[i])
    return idx


def _flux_column(t, err=False) -> str:
    """The first band's flux (or flux error) column of a catalogue."""
    cols = [c for c in t.colnames if c.startswith("flux_") and not c.startswith("flux_err_")]
    return cols[0].replace("flux_", "flux_err_") if err else cols[0]


def _mean(a) -> float:
    return float(np.mean(a)) if len(a) else float("nan")


def _median(a) -> float:
    return float(np.median(a)) if len(a) else float("nan")


def mosaic_run(work: Path, size: int, seed: int = 0):
    import jax

    from galjax.sim import LSST_R, simulate_mosaic, write_mosaic

    t0 = time.perf_counter()
    m = simulate_mosaic(jax.random.key(seed), LSST_R, shape=(size, size), batch=128)
    paths = write_mosaic(work / "mosaic", m, LSST_R)
    t_sim = time.perf_counter() - t0
    truth = m.truth
    del m
    out = work / "mosaic_out"
    wall, rss, text = run_command(
        ["deblend", paths["image"], "--psf", paths["psf"], "--variance", paths["variance"],
         "--out", out, "--quiet"], log=work / "mosaic.log",
    )  # fmt: skip
    cat = Table.read(out / "catalog.ecsv")
    true_xy = np.stack([truth["x"], truth["y"]], -1)
    found_xy = np.stack([np.asarray(cat["x"]), np.asarray(cat["y"])], -1)
    idx = match(true_xy, found_xy)
    ok = idx >= 0
    f_true = truth["flux"][:, 0]
    f_gal = np.full(len(f_true), np.nan)
    f_seg = np.full(len(f_true), np.nan)
    f_gal[ok] = np.asarray(cat[_flux_column(cat)])[idx[ok]]
    f_seg[ok] = np.asarray(cat["det_flux"])[idx[ok]]
    snr = truth["snr"]
    rows = []
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:], strict=True):
        sel = (snr >= lo) & (snr < hi)
        both = sel & ok
        rows.append(
            dict(
                snr=f"{lo:g}-{hi:g}" if hi < 1e9 else f">= {lo:g}",
                n_true=int(sel.sum()),
                completeness=_mean(ok[sel]),
                galjax_median_abs_dflux=_median(np.abs(f_gal[both] / f_true[both] - 1)),
                galjax_median_dflux=_median(f_gal[both] / f_true[both] - 1),
                no_deblending_median_abs_dflux=_median(np.abs(f_seg[both] / f_true[both] - 1)),
            )
        )
    s10 = ok & (snr >= 10)
    err = np.full(len(f_true), np.nan)
    err[ok] = np.asarray(cat[_flux_column(cat, err=True)])[idx[ok]]
    n_gal = len(cat)
    return dict(
        data=f'galjax simulator, LSST-like r, {size} x {size} px at 0.2"/px, '
        f"{len(f_true)} galaxies (25 per arcmin^2), Poisson + sky noise",
        simulate_s=t_sim,
        wall_s=wall,
        peak_rss_gb=rss,
        n_true=len(f_true),
        n_detected=n_gal,
        completeness_snr10=float(ok[snr >= 10].mean()),
        purity=float(len(set(idx[ok])) / max(n_gal, 1)),
        galjax_median_abs_dflux_snr10=float(np.median(np.abs(f_gal[s10] / f_true[s10] - 1))),
        galjax_mean_abs_dflux_snr10=float(np.mean(np.abs(f_gal[s10] / f_true[s10] - 1))),
        no_deblending_median_abs_dflux_snr10=float(np.median(np.abs(f_seg[s10] / f_true[s10] - 1))),
        coverage_68_snr10=float(np.mean(np.abs(f_gal[s10] - f_true[s10]) <= err[s10])),
        galaxies_per_s=n_gal / wall,
        s_per_galaxy=wall / max(n_gal, 1),
        by_snr=rows,
        summary_line=[ln for ln in text.splitlines() if ln.startswith("deblended")],
    )


def eso_run(work: Path):
    from galjax.io.datasets import load_sep_field

    d = DATA / "field_eso_ntt_emmi_sep"
    field = load_sep_field(d)
    out = work / "eso_out"
    wall, rss, text = run_command(
        ["deblend", d / "image.fits", "--threshold", "1.5", "--min-area", "5", "--out", out,
         "--quiet", "--tile", "256"], log=work / "eso.log",
    )  # fmt: skip
    cat = Table.read(out / "catalog.ecsv")
    ref = field.catalog
    ref_xy = np.stack([np.asarray(ref["x"]), np.asarray(ref["y"])], -1)
    found_xy = np.stack([np.asarray(cat["x"]), np.asarray(cat["y"])], -1)
    idx = match(ref_xy, found_xy)
    ok = idx >= 0
    auto = np.asarray(ref["FLUX_AUTO"], float)
    good = ok & (auto > 0)
    ratio = np.asarray(cat[_flux_column(cat)])[idx[good]] / auto[good]
    return dict(
        data="real ESO NTT/EMMI R-band field, 256 x 256, SExtractor catalogue (65 objects)",
        wall_s=wall,
        peak_rss_gb=rss,
        n_sextractor=len(ref),
        n_detected=len(cat),
        completeness=float(ok.mean()),
        purity=float(ok.sum() / max(len(cat), 1)),
        median_flux_over_flux_auto=float(np.median(ratio)),
        warnings=[ln for ln in text.splitlines() if "warning" in ln or "note" in ln],
    )


def hsc_run(work: Path):
    from galjax.io import load_hsc_fits, load_hsc_npz

    d = DATA / "hsc_blends_scarlet"
    scenes = {
        "hsc_cosmos_35": load_hsc_npz(d / "hsc_cosmos_35.npz"),
        "hsc_cosmos_43158172147386355": load_hsc_npz(d / "hsc_cosmos_43158172147386355.npz"),
        "hsc_ra150.24071_dec2.06514": load_hsc_fits(
            d / "hsc_ra150.24071_dec2.06514.fits", d / "psf_hsc_ra150.24071_dec2.06514.fits"
        ),
    }
    ref = json.loads((RESULTS_DIR / "deblend_hsc.json").read_text())
    out = {}
    for name, s in scenes.items():
        sd = work / "hsc" / name
        sd.mkdir(parents=True, exist_ok=True)
        ok = np.isfinite(s.variance) & (s.mask > 0)
        w = np.where(ok, 1.0 / np.where(ok, s.variance, 1.0), 0.0).astype(np.float32)
        hdr = s.wcs.to_header() if s.wcs is not None else fits.Header()
        fits.PrimaryHDU(np.moveaxis(s.images, -1, 0), hdr).writeto(
            sd / "image.fits", overwrite=True
        )
        fits.PrimaryHDU(np.moveaxis(w, -1, 0)).writeto(sd / "weight.fits", overwrite=True)
        p = s.psfs
        if p.shape[0] % 2 == 0:  # the command wants odd PSFs: drop a row and a column
            p = p[1:, 1:]
        fits.PrimaryHDU(np.moveaxis(p, -1, 0)).writeto(sd / "psf.fits", overwrite=True)
        wall, rss, text = run_command(
            ["deblend", sd / "image.fits", "--psf", sd / "psf.fits", "--weight", sd / "weight.fits",
             "--model", "hsc", "--out", sd / "out", "--quiet", "--steps", "300", "--find-stars"],
            log=sd / "log.txt",
        )  # fmt: skip
        res = np.moveaxis(fits.getdata(sd / "out" / "residual.fits"), 0, -1)
        used = w > 0
        chi2 = float((res**2 * w)[used].sum() / used.sum())
        cat = Table.read(sd / "out" / "catalog.ecsv")
        r = ref["scenes"].get(name, {}) if isinstance(ref.get("scenes"), dict) else {}
        out[name] = dict(
            chi2_per_pixel=chi2, n_detected=len(cat), wall_s=wall, peak_rss_gb=rss,
            array_api_chi2=r.get("chi2_galjax"), sersic_chi2=r.get("chi2_parametric_sersic"),
            no_model_chi2=r.get("chi2_no_model"),
        )  # fmt: skip
    return dict(data="real HSC grizy scenes (scarlet's test data)", scenes=out)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_run(work: Path, size: int):
    import jax

    from galjax.sim import LSST_R, simulate_mosaic, write_mosaic

    m = simulate_mosaic(jax.random.key(1), LSST_R, shape=(size, size), batch=128)
    paths = write_mosaic(work / "two", m, LSST_R)
    del m
    base = ["deblend", paths["image"], "--psf", paths["psf"], "--variance", paths["variance"],
            "--quiet", "--tile", str(max(size // 4, 16))]  # fmt: skip
    t_one, rss_one, _ = run_command([*base, "--out", work / "one"], log=work / "one.log")
    port = _port()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRAPPER,
                *map(str, base),
                "--out",
                str(work / "dist"),
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env={**os.environ, "GALJAX_CPU_DEVICES": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = [p.communicate()[0] for p in procs]
    t_two = time.perf_counter() - t0
    (work / "dist.log").write_text("\n".join(logs))
    if any(p.returncode for p in procs):
        raise RuntimeError("two-process run failed:\n" + "\n".join(logs)[-3000:])
    a, b = Table.read(work / "one" / "catalog.ecsv"), Table.read(work / "dist" / "catalog.ecsv")
    same_pos = len(a) == len(b) and np.array_equal(np.asarray(a["x"]), np.asarray(b["x"]))
    fa, fb = np.asarray(a[_flux_column(a)]), np.asarray(b[_flux_column(b)])
    return dict(
        data=f"galjax simulator mosaic, {size} x {size} px, {len(a)} sources",
        one_process_s=t_one,
        two_processes_s=t_two,
        one_process_peak_rss_gb=rss_one,
        same_sources=bool(same_pos),
        max_rel_flux_diff=float(np.nanmax(np.abs(fb / fa - 1))) if same_pos else None,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="mosaic side in pixels")
    ap.add_argument("--two-size", type=int, default=1024, help="mosaic side of the 2-process run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: mosaic,eso,hsc,two")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work or tempfile.mkdtemp(prefix="galjax_survey_"))
    work.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "deblend_survey.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["machine"] = machine_info()
    parts = {"eso": lambda: eso_run(work), "hsc": lambda: hsc_run(work),
             "two": lambda: two_run(work, args.two_size),
             "mosaic": lambda: mosaic_run(work, args.size)}  # fmt: skip
    for name, fn in parts.items():
        if name in skip:
            continue
        print(f"== {name}", flush=True)
        result[name] = fn()
        write_json(path, result)
        print(json.dumps(result[name], indent=1, default=str)[:3000], flush=True)
    if "mosaic" in result:
        cols = [("snr", "SNR", "s"), ("n_true", "n", "d"), ("completeness", "complete", ".3f"),
                ("galjax_median_abs_dflux", "galjax med |dF/F|", ".4f"),
                ("no_deblending_median_abs_dflux", "no deblending", ".4f")]  # fmt: skip
        print(format_table(result["mosaic"]["by_snr"], cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
