"""Deblend the real HSC grizy blends of ``../shared/data/hsc_blends_scarlet`` with galjax.

The model is ``galjax/weights/hsc`` (explicit PSF, trained on HSC-like simulations by
``scripts/train_hsc_weights.sh``); each scene is deblended with its own measured
PSFs, in one vmapped call (scenes zero-padded to a common shape with zero weight
outside the data, one PSF per field). Images are put in noise units per band
(divided by the median noise std), the units the model was trained in.

Stars: a first run models every source as a galaxy; sources that
:func:`galjax.deblend.point_source_tests` finds better fitted as a point source
(``dchi2 > 0``) are then deblended again as point sources (the PSF times a flux
per band at a fitted sub-pixel offset), all sources together (``--no-point-sources``:
galaxies only).

Reported per scene: residual chi^2 per pixel (all bands, usable pixels), per band,
and for comparison the chi^2 of no model (the data alone) and of a parametric fit
(one Sersic per source with the same PSFs, :func:`galjax.fit.fit_scene`).
There is no truth for real blends, so chi^2 ~ 1 is the figure of merit. Writes
``benchmarks/results/deblend_hsc.json`` and ``deblend_hsc.png``.

    python benchmarks/deblend_hsc.py [--model DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from _common import RESULTS_DIR, format_table, machine_info, write_json

from galjax.deblend import (
    DeblendConfig,
    deblend,
    laplace_flux_errors,
    pad_fields,
    point_source_tests,
)
from galjax.detect import detect
from galjax.fit import fit_scene
from galjax.image.transforms import crop_or_pad
from galjax.io import load_hsc_fits, load_hsc_npz
from galjax.models import default_model_dir, load_model

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hsc_blends_scarlet"


def load_scenes(data=DATA, psf_size: int = 41):
    """The distinct real scenes, in noise units, with positions (catalogue or detection)."""
    scenes = {
        "hsc_cosmos_35": load_hsc_npz(data / "hsc_cosmos_35.npz"),
        "hsc_cosmos_43158172147386355": load_hsc_npz(data / "hsc_cosmos_43158172147386355.npz"),
        "hsc_ra150.24071_dec2.06514": load_hsc_fits(
            data / "hsc_ra150.24071_dec2.06514.fits", data / "psf_hsc_ra150.24071_dec2.06514.fits"
        ),
    }
    out = {}
    for name, s in scenes.items():
        ok = np.isfinite(s.variance) & (s.mask > 0)
        sig_b = np.sqrt(
            [np.median(s.variance[..., b][ok[..., b]]) for b in range(s.images.shape[-1])]
        )
        img = s.images / sig_b
        ivar = np.where(ok, 1.0 / np.where(ok, s.variance, 1.0), 0.0) * sig_b**2
        psf = _crop_psf(s.psfs, psf_size)
        pos = np.asarray(s.positions, np.float32)
        source = "catalogue"
        if len(pos) == 0:
            det = detect(img, psf, noise=1.0 / np.sqrt(np.maximum(ivar, 1e-12)), threshold=7.0,
                         min_separation=4.0, max_peaks=16, border=2)  # fmt: skip
            pos = np.asarray(det.positions)[np.asarray(det.mask)]
            source = "detection (threshold 7)"
        out[name] = dict(image=img.astype(np.float32), ivar=ivar.astype(np.float32), psf=psf,
                         positions=pos, sigma_b=sig_b, positions_from=source,
                         filters=list(s.filters))  # fmt: skip
    return out


def _crop_psf(psf, size):
    """Centre-crop to ``size`` (at most the largest odd size that fits) and renormalise."""
    h, w = psf.shape[:2]
    size = min(size, h - (1 - h % 2), w - (1 - w % 2))
    p = np.asarray(crop_or_pad(psf, size, size))
    return (p / p.sum(axis=(0, 1), keepdims=True)).astype(np.float32)


def stack(scenes):
    """One padded batch of all scenes (:func:`galjax.deblend.pad_fields`)."""
    names = list(scenes)
    parts = [[scenes[n][k] for n in names] for k in ("image", "ivar", "positions", "psf")]
    fields, ivar, pos, mask, psfs = pad_fields(*parts)
    return names, fields, ivar, pos, mask, psfs


def chi2_stats(residual, ivar):
    good = ivar > 0
    r2 = residual**2 * ivar
    per_band = (r2 * good).sum(axis=(0, 1)) / np.maximum(good.sum(axis=(0, 1)), 1)
    return float((r2 * good).sum() / good.sum()), [float(v) for v in per_band]


def figure(names, fields, models, ivar, positions, mask, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import make_lupton_rgb

    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3 * len(names)))
    for i, n in enumerate(names):
        good = ivar[i].sum(-1) > 0
        rows, cols = np.where(good)
        sl = (slice(0, rows.max() + 1), slice(0, cols.max() + 1))
        rgb = lambda a: make_lupton_rgb(a[..., 3], a[..., 2], a[..., 1], stretch=3, Q=8)
        res = (fields[i] - models[i]) * np.sqrt(ivar[i])
        axes[i, 0].imshow(rgb(fields[i][sl]), origin="lower")
        axes[i, 1].imshow(rgb(models[i][sl]), origin="lower")
        axes[i, 2].imshow(res[sl].sum(-1) / np.sqrt(5), origin="lower", cmap="RdBu_r",
                          vmin=-5, vmax=5)  # fmt: skip
        p = positions[i][mask[i]]
        for a in axes[i, :2]:
            a.plot(p[:, 0], p[:, 1], "+", color="cyan", ms=8)
        axes[i, 0].set_ylabel(n, fontsize=8)
    for a, t in zip(axes[0], ("data (z, i, r)", "galjax model", "residual / sigma (sum of bands)"),
                    strict=True):  # fmt: skip
        a.set_title(t, fontsize=9)
    for a in axes.ravel():
        a.set_xticks([]), a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: shipped hsc)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--prior-weight", type=float, default=None,
                    help="DeblendConfig.prior_weight (default: the library's)")  # fmt: skip
    ap.add_argument("--no-point-sources", action="store_true",
                    help="model every source as a galaxy (no point-source test)")  # fmt: skip
    ap.add_argument("--out", default="deblend_hsc", help="name of the results JSON and figure")
    args = ap.parse_args()
    model = load_model(args.model or default_model_dir("hsc"))
    scenes = load_scenes()
    names, fields, ivar, pos, mask, psfs = stack(scenes)

    cfg = DeblendConfig(n_steps=args.steps, chunk=len(names))
    if args.prior_weight is not None:
        cfg = dataclasses.replace(cfg, prior_weight=args.prior_weight)
    t0 = time.perf_counter()
    res = deblend(model, fields, pos, mask, ivar=ivar, psf=psfs, config=cfg)
    galaxies_only = res
    dchi2 = np.zeros(mask.shape, np.float32)
    if not args.no_point_sources:
        dchi2 = point_source_tests(res, ivar, psfs, pos)
        if np.any(dchi2 > 0):
            res = deblend(model, fields, pos, mask, ivar=ivar, psf=psfs, config=cfg,
                          point=dchi2 > 0)  # fmt: skip
    t_deblend = time.perf_counter() - t0
    flux_err = laplace_flux_errors(model, res, pos, ivar, psf=psfs)
    sigma = np.where(ivar > 0, 1.0 / np.sqrt(np.maximum(ivar, 1e-12)), 1e6).astype(np.float32)
    t0 = time.perf_counter()
    param_models = [
        np.asarray(fit_scene(fields[i], pos[i], mask[i], sigma[i], psfs[i], n_steps=200,
                             stamp_size=25, pixel_mask=(ivar[i] > 0).astype(np.float32)).model)
        for i in range(len(names))
    ]  # fmt: skip
    t_param = time.perf_counter() - t0

    rows, per_scene = [], {}
    for i, n in enumerate(names):
        c_gal, c_gal_b = chi2_stats(fields[i] - res.models[i].sum(0), ivar[i])
        c_gal_only, _ = chi2_stats(fields[i] - galaxies_only.models[i].sum(0), ivar[i])
        c_none, _ = chi2_stats(fields[i], ivar[i])
        c_par, _ = chi2_stats(fields[i] - param_models[i], ivar[i])
        k = int(mask[i].sum())
        snr_flux = np.asarray(res.fluxes[i][mask[i]]) / np.maximum(flux_err[i][mask[i]], 1e-12)
        per_scene[n] = {
            "shape": list(scenes[n]["image"].shape), "n_sources": k,
            "positions_from": scenes[n]["positions_from"],
            "noise_std_per_band": scenes[n]["sigma_b"],
            "chi2_galjax": c_gal, "chi2_galjax_per_band": c_gal_b,
            "chi2_galjax_galaxies_only": c_gal_only,
            "point_sources": np.flatnonzero(np.asarray(res.point[i])[: k]).tolist(),
            "point_source_dchi2": dchi2[i][mask[i]],
            "chi2_no_model": c_none, "chi2_parametric_sersic": c_par,
            "n_iter": int(res.n_iter[i]), "converged": bool(res.converged[i]),
            "fluxes_noise_units": res.fluxes[i][mask[i]],
            "median_flux_snr": float(np.median(snr_flux)),
        }  # fmt: skip
        rows.append({"scene": n, "n": k, "stars": int(np.asarray(res.point[i]).sum()),
                     "galjax": c_gal, "gal_only": c_gal_only, "param": c_par,
                     "none": c_none})  # fmt: skip
    print(format_table(rows, [("scene", "scene", "s"), ("n", "sources", "d"),
                              ("stars", "point sources", "d"), ("galjax", "chi2 galjax", ".2f"),
                              ("gal_only", "chi2 galaxies only", ".2f"),
                              ("param", "chi2 Sersic", ".2f"),
                              ("none", "chi2 no model", ".1f")]))  # fmt: skip
    figure(names, fields, res.models.sum(1), ivar, pos, mask, RESULTS_DIR / f"{args.out}.png")
    write_json(RESULTS_DIR / f"{args.out}.json", {
        "benchmark": "deblend_hsc",
        "machine": machine_info(),
        "model": str(args.model or default_model_dir("hsc")),
        "model_recipes": model.meta.get("recipes"),
        "config": cfg.to_dict() | {"point_sources": not args.no_point_sources},
        "time_s": {"galjax_deblend_incl_compile": t_deblend, "parametric": t_param},
        "scenes": per_scene,
    })  # fmt: skip


if __name__ == "__main__":
    main()
