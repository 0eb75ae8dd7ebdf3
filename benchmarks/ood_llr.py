"""PixelCNN++ likelihoods and OOD scores on simulated "detailed" galaxies and real COSMOS stamps.

Reproduces the finding of Zanisi et al. (2021) at small scale on CPU:

1. Simulate 32x32 single-band "detailed" galaxies (clumps + spiral arms) on a sky
   whose noise level varies from image to image; fit a Sersic to each (vmapped)
   and render its archetype on the same kind of background and noise.
2. Train three small PixelCNN++ (discretised logistic mixture, 8-bit arcsinh
   images): on the detailed galaxies, on their archetypes, and on perturbed
   detailed galaxies (Ren et al.'s background model, mutation rate mu).
3. Correlations of raw log p and of the archetype LLR with size, brightness and
   background; per-pixel LLR on background vs galaxy vs detail pixels.
4. AUROC of raw log p, Ren's ratio, Serra's complexity score and the archetype LLR:
   held-out detailed vs smooth (archetype-only) vs a different background.
5. Real COSMOS F814W stamps (resampled to 32x32, 8 dihedral copies) against their
   own Sersic archetypes: LLR distributions with the simulation-trained models.
6. Training speed, bits/dim reached and autoregressive sampling time.

Writes benchmarks/results/ood_llr.json and two PNG figures of LLR maps.

    nice -n 10 python benchmarks/ood_llr.py            # ~20 min on 2 shared CPU cores
    python benchmarks/ood_llr.py --steps 60 --n-train 256 --n-test 64   # smoke test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS_DIR, format_table, machine_info, write_json
from scipy.stats import spearmanr

from galjax.fit import FIT_RENDER, FitConfig, fit_sersic, render_archetypes
from galjax.image.background import estimate_background
from galjax.image.transforms import arcsinh_stretch, random_dihedral, resample
from galjax.io import load_cosmos
from galjax.models.pixelcnn import PixelCNNConfig, bits_per_dim, log_prob_map, quantise, sample
from galjax.ood import compressed_bits, perturbed_sampler
from galjax.plot.ood import llr_figure
from galjax.scores.metrics import auroc
from galjax.sim import Survey, add_background, render_galaxy, sample_galaxy, smooth_twin
from galjax.train import TrainConfig
from galjax.train.recipes.pixelcnn import train_pixelcnn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cosmos_hst_f814w_100"

#: 32x32 stamps at 0.1"/px with a 0.25" Moffat PSF: galaxies of a few pixels'
#: half-light radius whose clumps and arms are resolved.
SURVEY = Survey(
    name="ood32", pixel_scale=0.1, psf_fwhm=(0.25,), psf_size=15, stamp_size=32,
    mag_min=19.5, mag_max=22.5, hlr_median=0.45, render=FIT_RENDER,
)  # fmt: skip
SKY_RANGE = (0.6, 1.6)  # in-distribution noise std range (flux units)
OTHER_SKY = (2.5, 3.5)  # "different background": noisier sky ...
OTHER_LEVEL = 2.0  # ... with an unsubtracted level
LO, HI = -4.0, 8.0  # arcsinh(x / 1) range mapped onto 256 levels


def to_model(x):
    """Flux images -> 8-bit arcsinh images in [-1, 1] (softening = nominal sky std 1)."""
    return quantise(arcsinh_stretch(x, 1.0), LO, HI, 8)


def simulate(key, n, detail=True):
    """Noiseless detailed galaxies, their true smooth twins and their parameters."""
    psf = SURVEY.pixel_psf()
    params = jax.vmap(lambda k: sample_galaxy(k, SURVEY, detail=detail))(jax.random.split(key, n))
    draw = jax.jit(
        jax.vmap(lambda p: render_galaxy(p, 32, 32, psf, 1, SURVEY.render, SURVEY.n_arms))
    )
    return draw(params), draw(jax.vmap(smooth_twin)(params)), params


def archetypes_of(key, noisy, clean_sigma, psf, level=0.0):
    """Sersic fit of noisy images -> archetypes with the same sigma/background."""
    fit = fit_sersic(noisy - level, clean_sigma, psf, FitConfig(n_steps=250))
    arch = render_archetypes(fit, noisy.shape[1], noisy.shape[2], psf)
    return add_background(key, arch, clean_sigma, level, SURVEY.gain), fit


def per_pixel(params, cfg, x, chunk=128):
    f = jax.jit(lambda p, x: log_prob_map(p, cfg, x))
    return np.concatenate(
        [np.asarray(f(params, x[i : i + chunk])) for i in range(0, len(x), chunk)]
    )


def fit_summary(fit, true=None):
    s = {
        "reduced_chi2_median": float(np.median(fit.chi2)),
        "reduced_chi2_p90": float(np.percentile(fit.chi2, 90)),
        "flux_residual_median_abs": float(np.median(np.abs(fit.flux_residual))),
    }
    if true is not None:
        for name in ("hlr", "x", "y"):
            s[f"{name}_median_abs_err_px"] = float(
                np.median(np.abs(np.asarray(getattr(fit, name)) - np.asarray(true[name])))
            )
        s["flux_median_rel_err"] = float(
            np.median(np.abs(np.asarray(fit.flux[:, 0]) / np.asarray(true["flux"]) - 1))
        )
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=700, help="training steps per model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--mu", type=float, default=0.15, help="Ren et al. mutation rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS_DIR / "ood_llr.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    timings = {}
    key = jax.random.key(args.seed)
    ks = iter(jax.random.split(key, 32))
    psf = SURVEY.pixel_psf()
    n_tr, n_te = args.n_train, args.n_test
    info = machine_info()

    # -- data ----------------------------------------------------------------------
    t0 = time.perf_counter()
    clean, twin, gp = simulate(next(ks), n_tr + n_te)
    sky = jax.random.uniform(
        next(ks), (n_tr + n_te, 1, 1, 1), minval=SKY_RANGE[0], maxval=SKY_RANGE[1]
    )
    noisy = add_background(next(ks), clean, sky, 0.0, SURVEY.gain)
    arch, fit = archetypes_of(next(ks), noisy, sky, psf)
    timings["simulate_and_fit_s"] = time.perf_counter() - t0
    truth = {"hlr": gp.disk_hlr, "x": gp.x, "y": gp.y, "flux": gp.flux[:, 0]}
    fit_quality = fit_summary(fit, truth)
    # Quality of the fit to the smooth twins (what a Sersic can achieve without detail).
    twin_noisy = add_background(next(ks), twin[:256], sky[:256], 0.0, SURVEY.gain)
    fit_twin = fit_sersic(twin_noisy, sky[:256], psf, FitConfig(n_steps=250))
    fit_quality_twin = fit_summary(fit_twin)

    x_tr, x_te = to_model(noisy[:n_tr]), to_model(noisy[n_tr:])
    a_tr, a_te = to_model(arch[:n_tr]), to_model(arch[n_tr:])
    sl = slice(n_tr, None)
    other = to_model(
        add_background(
            next(ks), clean[sl],
            jax.random.uniform(next(ks), (n_te, 1, 1, 1), minval=OTHER_SKY[0], maxval=OTHER_SKY[1]),
            OTHER_LEVEL, SURVEY.gain,
        )
    )  # fmt: skip

    # -- models --------------------------------------------------------------------
    cfg = PixelCNNConfig(height=32, width=32, bands=1, n_filters=args.filters, n_resnet=1,
                         n_scales=3, head="logistic_mixture", n_mix=5)  # fmt: skip
    tc = TrainConfig(n_steps=args.steps, batch_size=args.batch, ema_decay=0.995,
                     eval_every=args.steps, log_every=50)  # fmt: skip
    train_kw = dict(lr=2e-3, lr_decay=0.1, clip=1.0)
    models, train_info = {}, {}
    sources = {
        "detailed": x_tr,
        "archetype": a_tr,
        "ren_background": perturbed_sampler(x_tr, args.batch, args.mu, n_bits=8),
    }
    for name, data in sources.items():
        t0 = time.perf_counter()
        state, hist = train_pixelcnn(next(ks), cfg, data, tc, eval_data=x_te[:128], **train_kw)
        wall = time.perf_counter() - t0
        tr = hist["train"]
        # steps/s from the logged wall clock, excluding the first window (compilation).
        steady = (tr[-1]["step"] - tr[0]["step"]) / max(
            tr[-1]["elapsed_s"] - tr[0]["elapsed_s"], 1e-9
        )
        models[name] = state.ema_params
        train_info[name] = {
            "wall_s": wall,
            "steps_per_s": steady,
            "first_logged_bpd": tr[0]["bits_per_dim"],
            "last_logged_bpd": tr[-1]["bits_per_dim"],
            "heldout_detailed_bpd_ema": hist["eval"][-1]["bits_per_dim"],
        }
        print(name, train_info[name], flush=True)
    timings["training_s"] = sum(v["wall_s"] for v in train_info.values())

    # -- scores --------------------------------------------------------------------
    t0 = time.perf_counter()
    sets = {"detailed_heldout": x_te, "smooth_archetypes": a_te, "different_background": other}
    maps = {s: {m: per_pixel(models[m], cfg, x) for m in models} for s, x in sets.items()}
    lp = {s: {m: v.sum(axis=(1, 2)) for m, v in d.items()} for s, d in maps.items()}
    bits = {s: compressed_bits(x, -1.0, 1.0, 8, "zlib") for s, x in sets.items()}
    scores = {
        s: {
            "raw_neg_log_p": -lp[s]["detailed"],
            "ren_neg_llr": -(lp[s]["detailed"] - lp[s]["ren_background"]),
            "complexity": -lp[s]["detailed"] / np.log(2) - bits[s],
            "archetype_neg_llr": -(lp[s]["detailed"] - lp[s]["archetype"]),
        }
        for s in sets
    }
    auroc_table = {
        ood: {k: auroc(scores["detailed_heldout"][k], scores[ood][k]) for k in scores[ood]}
        for ood in ("smooth_archetypes", "different_background")
    }
    timings["scoring_s"] = time.perf_counter() - t0

    # -- what drives log p and the LLR (held-out detailed set) ---------------------------
    te = slice(n_tr, None)
    mag = 31.0 - 2.5 * np.log10(np.asarray(gp.flux[te, 0]))
    size = np.log10(np.asarray(gp.disk_hlr[te]))
    bg = np.asarray(sky[te]).ravel()
    detail = np.asarray(
        jnp.sum(jnp.abs(clean[te] - twin[te]), axis=(1, 2, 3)) / jnp.sum(clean[te], axis=(1, 2, 3))
    )
    raw = lp["detailed_heldout"]["detailed"]
    ratio = raw - lp["detailed_heldout"]["archetype"]
    ren = raw - lp["detailed_heldout"]["ren_background"]
    corr = {}
    for name, v in (("log_p", raw), ("archetype_llr", ratio), ("ren_llr", ren)):
        corr[name] = {
            prop: float(spearmanr(v, p).statistic)
            for prop, p in (
                ("magnitude", mag),
                ("log_hlr", size),
                ("sky_sigma", bg),
                ("detail_fraction", detail),
            )
        }
    # Per-pixel: background vs galaxy vs detail pixels (noiseless truth, in sky sigmas).
    c = np.asarray(clean[te, ..., 0]) / bg[:, None, None]
    dmap = np.abs(np.asarray(clean[te, ..., 0] - twin[te, ..., 0])) / bg[:, None, None]
    masks = {"background": c < 0.2, "galaxy": c > 5.0, "detail": dmap > 1.0}
    llr_px = maps["detailed_heldout"]["detailed"] - maps["detailed_heldout"]["archetype"]
    lp_px = maps["detailed_heldout"]["detailed"]
    pixel_stats = {
        k: {
            "fraction_of_pixels": float(m.mean()),
            "mean_llr": float(llr_px[m].mean()),
            "mean_abs_llr": float(np.abs(llr_px[m]).mean()),
            "mean_log_p": float(lp_px[m].mean()),
        }
        for k, m in masks.items()
    }

    # -- real COSMOS stamps ---------------------------------------------------------------
    cosmos = None
    if DATA.is_dir():
        t0 = time.perf_counter()
        s = load_cosmos(DATA)
        # Each stamp onto 32x32 pixels covering the whole stamp (compiles per stamp size).
        scale = lambda im: s.pixel_scale * im.shape[0] / 32
        imgs = np.stack(
            [
                np.asarray(resample(jnp.asarray(im), s.pixel_scale, scale(im), (32, 32)))
                for im in s.images
            ]
        )
        level, sig = estimate_background(imgs, "border", border=3)
        norm = (imgs - level) / sig  # sky std ~ 1 as in the simulations
        ones = jnp.ones((len(norm), 1, 1, 1), jnp.float32)
        arch_c, fit_c = archetypes_of(next(ks), jnp.asarray(norm), ones, None)
        aug_keys = jax.random.split(next(ks), 8)
        real = jnp.concatenate([random_dihedral(k, jnp.asarray(norm)) for k in aug_keys])
        archs = jnp.concatenate([random_dihedral(k, arch_c) for k in aug_keys])
        xr, xa = to_model(real), to_model(archs)
        mr = {m: per_pixel(models[m], cfg, xr) for m in ("detailed", "archetype")}
        ma = {m: per_pixel(models[m], cfg, xa) for m in ("detailed", "archetype")}
        llr_r = (mr["detailed"] - mr["archetype"]).sum(axis=(1, 2))
        llr_a = (ma["detailed"] - ma["archetype"]).sum(axis=(1, 2))
        pct = lambda v: {f"p{q}": float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)}
        cosmos = {
            "n_galaxies": len(s.images),
            "n_augmented": int(len(xr)),
            "preprocessing": "each stamp resampled (lanczos3, flux-conserving) onto 32x32 "
            "covering the whole stamp; border median subtracted and divided by the border "
            "MAD std; Sersic fit without PSF; archetype + white noise of std 1 (the real "
            "noise is correlated); 8 random dihedral copies; arcsinh + 8-bit quantisation "
            "as for the simulations",
            "fit_quality": fit_summary(fit_c),
            "llr_real": {"mean": float(llr_r.mean()), "std": float(llr_r.std()), **pct(llr_r)},
            "llr_archetypes": {
                "mean": float(llr_a.mean()),
                "std": float(llr_a.std()),
                **pct(llr_a),
            },
            "auroc_real_vs_archetypes_llr": auroc(llr_a, llr_r),
            "auroc_real_vs_archetypes_raw_log_p": auroc(
                -mr["detailed"].sum(axis=(1, 2)), -ma["detailed"].sum(axis=(1, 2))
            ),
            "bits_per_dim_real_detailed_model": float(
                np.mean(-mr["detailed"].sum(axis=(1, 2)) / (1024 * np.log(2)))
            ),
            "llr_real_per_pixel_mean": float((mr["detailed"] - mr["archetype"]).mean()),
        }
        i = int(np.argmax(llr_r[: len(norm)]))
        llr_figure(np.asarray(xr[i]), mr["detailed"][i], mr["archetype"][i],
                   RESULTS_DIR / "ood_llr_map_cosmos.png",
                   titles=("COSMOS", "log p detailed", "log p archetype", "LLR"))  # fmt: skip
        timings["cosmos_s"] = time.perf_counter() - t0
    i = int(np.argmax(detail))
    llr_figure(np.asarray(x_te[i]), maps["detailed_heldout"]["detailed"][i],
               maps["detailed_heldout"]["archetype"][i], RESULTS_DIR / "ood_llr_map_sim.png",
               titles=("simulated", "log p detailed", "log p archetype", "LLR"))  # fmt: skip

    # -- sampling --------------------------------------------------------------------
    t0 = time.perf_counter()
    n_s = 4
    smp = sample(next(ks), models["detailed"], cfg, n_s)
    jax.block_until_ready(smp)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    smp = sample(next(ks), models["detailed"], cfg, n_s)
    jax.block_until_ready(smp)
    run = time.perf_counter() - t0
    sampling = {
        "n_images": n_s,
        "compile_plus_first_s": first,
        "run_s": run,
        "s_per_image": run / n_s,
        "bits_per_dim_of_samples_under_model": float(
            np.mean(bits_per_dim(models["detailed"], cfg, smp))
        ),
    }
    timings["total_s"] = time.perf_counter() - t_start

    rows = [
        {"score": k, **{o: auroc_table[o][k] for o in auroc_table}}
        for k in scores["detailed_heldout"]
    ]
    columns = [
        ("score", "score", "s"),
        ("smooth_archetypes", "vs smooth", ".3f"),
        ("different_background", "vs other background", ".3f"),
    ]
    table = format_table(rows, columns)
    print(table)
    payload = {
        "benchmark": "ood_llr",
        "machine": info,
        "budget": "about 25 min wall on 2 shared CPU cores (nice 10, other jobs running): "
        f"{args.steps} Adam steps of batch {args.batch} per model, 3 models",
        "config": {
            "pixelcnn": cfg.to_dict(),
            "train": {**tc.to_dict(), **train_kw, "polyak": "EMA 0.995, evaluated with EMA params"},
            "survey": SURVEY.to_dict(),
            "sky_sigma_range": SKY_RANGE,
            "different_background": {"sky_sigma_range": OTHER_SKY, "level": OTHER_LEVEL},
            "stretch": f"quantise(arcsinh(x / 1), {LO}, {HI}, 8 bits)",
            "n_train": n_tr,
            "n_test_per_set": n_te,
            "ren_mutation_rate": args.mu,
            "complexity_compressor": "zlib level 9 on the 8-bit images",
            "seed": args.seed,
            "score_sign": "higher = more anomalous; AUROC with the OOD set as positives",
        },
        "timings_s": timings,
        "training": train_info,
        "bits_per_dim_heldout_detailed": float(
            np.mean(-lp["detailed_heldout"]["detailed"] / (1024 * np.log(2)))
        ),
        "sampling": sampling,
        "archetype_fit_quality": {
            "detailed_galaxies": fit_quality,
            "smooth_twins": fit_quality_twin,
        },
        "auroc": auroc_table,
        "auroc_table_text": table,
        "spearman_heldout_detailed": corr,
        "per_pixel_llr_heldout_detailed": pixel_stats,
        "mean_log_p": {s: {m: float(v.mean()) for m, v in d.items()} for s, d in lp.items()},
        "cosmos": cosmos,
    }
    print(write_json(args.out, payload))


if __name__ == "__main__":
    main()
