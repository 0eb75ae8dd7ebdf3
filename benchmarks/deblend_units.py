"""Deblending in any units, and finite flux errors where they used to be NaN.

On galjax's own simulated LSST-like fields (the shipped ``lsst_r`` model, true
centres given), three checks of issue 20:

1. **Units.** Fields and noise sigma are multiplied by ``c`` for ``c`` from 1e-20 to
   1e20; the fluxes divided by ``c`` are compared with those at ``c = 1`` (largest
   relative difference over all sources) and with the truth (median |dF/F|,
   galaxies with SNR >= 10).
2. **Bright sources.** The same fields with the sources 30x and 1e4x brighter (noise
   unchanged): fraction of real sources with a finite, positive Laplace flux error.
3. **Coincident sources.** Each field's first source is duplicated at the same
   position: fraction of finite, positive flux errors.

Also the status flags counted per run. Writes
``benchmarks/results/deblend_units.json``.

    python benchmarks/deblend_units.py --n 32
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import RESULTS_DIR, machine_info, write_json

from galjax import set_cpu_device_count
from galjax.deblend import DeblendConfig, DeblendStatus, deblend, laplace_flux_errors
from galjax.models import default_model_dir, load_model
from galjax.sim import LSST_R, noise_variance, simulate_fields

SCALES = (1e-20, 1e-12, 1e-6, 1e-2, 1.0, 1e3, 1e6, 1e12, 1e20)


def _status_counts(status) -> dict:
    return {f.name.lower(): int(np.sum((status & f.value) > 0)) for f in DeblendStatus if f.value}


def _run(model, image, positions, mask, sigma, cfg):
    """Deblend and Laplace errors with the noise given as sigma (float64 inverse variance)."""
    res = deblend(model, image, positions, mask, sigma=sigma, config=cfg, progress=False)
    ivar = 1.0 / np.asarray(sigma, np.float64) ** 2
    err = laplace_flux_errors(model, res, positions, ivar)
    return res, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="number of fields")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="CPU devices (default: one per core)")  # fmt: skip
    args = ap.parse_args()
    set_cpu_device_count(args.cpu_devices)
    model = load_model(default_model_dir("lsst_r"))
    cfg = DeblendConfig()
    f = simulate_fields(jax.random.key(args.seed), args.n, LSST_R, n_max=4)
    sigma = np.sqrt(np.asarray(noise_variance(f.image, np.asarray(LSST_R.sky_sigma), LSST_R.gain)))
    true_flux = f.sources.sum(axis=(2, 3))[..., 0]
    sel = f.mask & (f.snr >= 10)
    t0 = time.perf_counter()

    units = []
    ref = None
    for c in SCALES:
        image = (f.image.astype(np.float64) * c).astype(np.float32)
        sig = (sigma.astype(np.float64) * c).astype(np.float32)
        res, err = _run(model, image, f.positions, f.mask, sig, cfg)
        flux = res.fluxes[..., 0].astype(np.float64) / c
        if c == 1.0:
            ref = flux
        d = np.abs(flux[sel] - true_flux[sel]) / true_flux[sel]
        good = np.isfinite(err[f.mask]) & (err[f.mask] > 0)
        units.append(
            {
                "scale": c,
                "median_abs_dflux": float(np.median(d)),
                "finite_fluxes": float(np.mean(np.isfinite(res.fluxes[f.mask]))),
                "finite_positive_errors": float(np.mean(good)),
                "status": _status_counts(res.status),
                "_flux": flux,
            }
        )
    for row in units:
        rel = np.abs(row.pop("_flux")[f.mask] - ref[f.mask]) / np.abs(ref[f.mask])
        row["max_rel_diff_vs_unit_scale"] = float(np.max(rel))

    bright = []
    for factor in (30.0, 1e4):
        image = f.image + (factor - 1.0) * f.noiseless
        sig = np.sqrt(np.asarray(noise_variance(f.noiseless * factor, np.asarray(LSST_R.sky_sigma),
                                                LSST_R.gain)))  # fmt: skip
        res, err = _run(model, image, f.positions, f.mask, sig, cfg)
        ok = np.isfinite(err[f.mask]) & (err[f.mask] > 0)
        bright.append(
            {
                "brightness_factor": factor,
                "n_sources": int(f.mask.sum()),
                "finite_positive_errors": float(np.mean(ok)),
                "status": _status_counts(res.status),
            }
        )

    # Coincident sources: slot 1 moved onto slot 0 (both real).
    pos = np.array(f.positions)
    mask = np.array(f.mask)
    two = mask[:, 0] & mask[:, 1]
    pos[two, 1] = pos[two, 0]
    res, err = _run(model, f.image, pos, mask, sigma, cfg)
    pair = err[two][:, :2, 0]
    coincident = {
        "n_fields": int(two.sum()),
        "finite_positive_errors": float(np.mean(np.isfinite(pair) & (pair > 0))),
        "median_error_over_flux": float(np.median(pair / np.abs(res.fluxes[two][:, :2, 0]))),
        "status": _status_counts(res.status),
    }
    elapsed = time.perf_counter() - t0

    print("units: fields and sigma times c; fluxes / c against c = 1 and the truth (SNR >= 10)")
    print("   scale    max rel diff   median |dF/F|   finite errors")
    for r in units:
        print(f"  {r['scale']:6.0e}   {r['max_rel_diff_vs_unit_scale']:12.2e}   "
              f"{r['median_abs_dflux']:13.2%}   {r['finite_positive_errors']:13.1%}")  # fmt: skip
    for r in bright:
        print(f"sources x{r['brightness_factor']:g}: finite positive flux errors "
              f"{r['finite_positive_errors']:.1%} of {r['n_sources']}")  # fmt: skip
    print(f"coincident pairs ({coincident['n_fields']} fields): finite positive errors "
          f"{coincident['finite_positive_errors']:.1%}, median error/flux "
          f"{coincident['median_error_over_flux']:.2f}")  # fmt: skip
    payload = {
        "benchmark": "deblend_units",
        "data": f"galjax's own simulator, {args.n} LSST-like r-band fields (seed {args.seed}), "
        "1-4 galaxies, true centres",
        "machine": machine_info(),
        "model": "shipped lsst_r",
        "deblend_config": cfg.to_dict(),
        "units": units,
        "bright_sources": bright,
        "coincident_sources": coincident,
        "seconds": elapsed,
    }
    write_json(RESULTS_DIR / "deblend_units.json", payload)


if __name__ == "__main__":
    main()
