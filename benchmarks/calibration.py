"""Calibration benchmark: prior correction on FIRST radio galaxies and a binned-PDF regressor.

Part 1 (real data): a CNN is trained on FIRST FRI/FRII/Compact/Bent images
(300 px downsampled to 64 px) re-drawn to strongly wrong priors
P_T = (0.10, 0.10, 0.40, 0.40), and evaluated at the true class mix P (the class
frequencies of the FIRST training catalogue, 0.22/0.47/0.17/0.14). The held-out
valid+test images are balanced (100 per class), so the true mix is emulated by
per-example weights P(c)/0.25 (and, as a check, by under-sampling to P).
Accuracy and ECE are reported before and after ``correct_priors``.

Part 2 (simulation): a binned-PDF CNN predicts log10 of the disk half-light
radius (pixels) of noisy simulated LSST-like galaxies (galjax.sim); reported:
sigma_MAD and outlier fraction (|dz| > 0.15 dex) of the PDF mean, PIT KS/chi^2.

    nice -n 10 python benchmarks/calibration.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, format_table, machine_info, write_json  # noqa: E402

from galjax.image.transforms import arcsinh_stretch, crop_or_pad, random_dihedral  # noqa: E402
from galjax.io import load_first  # noqa: E402
from galjax.models.classifier import (  # noqa: E402
    BinnedPDFRegressor,
    CNNClassifier,
    predict_pdf,
    predict_proba,
)
from galjax.plot.calibration import pit_figure, reliability_diagram, roc_curves  # noqa: E402
from galjax.scores.calibration import (  # noqa: E402
    expected_calibration_error,
    pit_uniformity,
    reliability_curve,
    roc_per_class,
    threshold_at_fpr,
)
from galjax.scores.classification import (  # noqa: E402
    accuracy,
    class_priors,
    correct_priors,
    resample_to_priors,
)
from galjax.scores.pdf import (  # noqa: E402
    bin_edges,
    outlier_fraction,
    pdf_point_estimate,
    pit_values,
    sigma_mad,
)
from galjax.sim import LSST_R, add_noise, render_galaxy, sample_galaxy  # noqa: E402
from galjax.train.recipes.classifier import train_classifier, train_pdf_regressor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN_PRIORS = np.array([0.10, 0.10, 0.40, 0.40], np.float32)


def downsample(images: np.ndarray, size: int, chunk: int = 256) -> np.ndarray:
    """uint8 (n, 300, 300) -> float32 (n, size, size, 1) in [0, 1], antialiased linear resize."""
    f = jax.jit(
        lambda x: jax.image.resize(
            x.astype(jnp.float32) / 255.0, (x.shape[0], size, size), "linear", antialias=True
        )
    )
    out = [np.asarray(f(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return np.concatenate(out)[..., None]


def weighted_accuracy(probs, labels, w):
    hit = (np.argmax(probs, 1) == labels).astype(np.float64)
    return float(np.sum(w * hit) / np.sum(w))


def first_part(key, args, figdir: Path) -> dict:
    t0 = time.perf_counter()
    first = load_first(DATA / "radio_first_fr_4class" / "first_fr_4class.npz")
    x = downsample(first.images, args.size)
    y = first.labels
    names = first.class_names
    tr = first.split == "train"
    ho = ~tr  # valid + test: 100 per class
    true_priors = class_priors(y[tr], 4)
    k_res, k_fit, k_sub = jax.random.split(key, 3)
    idx = resample_to_priors(k_res, y[tr], TRAIN_PRIORS, n=int(tr.sum()))
    xt, yt = x[tr][idx], y[tr][idx]
    model = CNNClassifier(4, features=(16, 32, 64), dense=64, dropout=0.3)
    t_fit = time.perf_counter()
    params, hist = train_classifier(
        k_fit,
        model,
        xt,
        yt,
        n_steps=args.first_steps,
        batch_size=32,
        learning_rate=1e-3,
        weight_decay=1e-4,
        augment=random_dihedral,
        progress=False,
    )
    fit_s = time.perf_counter() - t_fit
    xh, yh = x[ho], y[ho]
    p_before = predict_proba(model, params, xh)
    p_after = np.asarray(correct_priors(p_before, TRAIN_PRIORS, true_priors))
    eval_priors = class_priors(yh, 4)
    w = (true_priors / eval_priors)[yh]  # importance weights to the true mix
    res = {
        "train_priors": TRAIN_PRIORS.tolist(),
        "true_priors": true_priors.tolist(),
        "n_train_resampled": int(len(idx)),
        "n_heldout": int(ho.sum()),
        "image_size": args.size,
        "n_steps": args.first_steps,
        "fit_seconds": round(fit_s, 1),
        "final_train_loss": hist["train"][-1]["loss"],
    }
    for tag, p in (("before", p_before), ("after", p_after)):
        res[f"accuracy_true_mix_{tag}"] = weighted_accuracy(p, yh, w)
        res[f"ece_true_mix_{tag}"] = float(expected_calibration_error(p, yh, 10, weights=w))
        res[f"accuracy_balanced_{tag}"] = accuracy(p, yh)
        res[f"ece_balanced_{tag}"] = float(expected_calibration_error(p, yh, 10))
    # check by under-sampling the held-out set to the true mix (largest n without repeats)
    n_sub = int(np.floor(np.min(np.bincount(yh, minlength=4) / true_priors)))
    sub = resample_to_priors(k_sub, yh, true_priors, n=n_sub)
    for tag, p in (("before", p_before), ("after", p_after)):
        res[f"accuracy_subsample_{tag}"] = accuracy(p[sub], yh[sub])
        res[f"ece_subsample_{tag}"] = float(expected_calibration_error(p[sub], yh[sub], 10))
    res["n_subsample"] = n_sub
    rocs = roc_per_class(p_after, yh, names)
    res["auc_per_class"] = {k: v["auc"] for k, v in rocs.items()}
    res["threshold_at_fpr_0.05"] = {
        n: dict(
            zip(
                ("threshold", "fpr", "tpr"),
                threshold_at_fpr(p_after[:, c], yh == c, 0.05),
                strict=True,
            )
        )
        for c, n in enumerate(names)
    }
    reliability_diagram(
        {
            "before (training priors)": reliability_curve(p_before, yh, 10, weights=w),
            "after prior correction": reliability_curve(p_after, yh, 10, weights=w),
        },
        path=figdir / "calibration_first_reliability.png",
        title="FIRST, evaluated at the true class mix",
    )
    roc_curves(rocs, path=figdir / "calibration_first_roc.png", title="FIRST one-vs-rest ROC")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def simulate_sizes(key, n: int, size: int):
    """Noisy LSST_R stamps (cropped to ``size``) and log10 disk half-light radius (pixels)."""
    survey = LSST_R
    s = survey.stamp_size
    c = (s - 1) / 2.0
    psf = survey.psf()
    sky = jnp.asarray(survey.sky_sigma, jnp.float32)

    def one(k):
        k1, k2 = jax.random.split(k)
        p = sample_galaxy(k1, survey, x=c, y=c)
        img = render_galaxy(p, s, s, psf, survey.render.oversample, survey.render, survey.n_arms)
        img = add_noise(k2, img, sky, survey.gain)
        img = arcsinh_stretch(crop_or_pad(img, size, size), sky) / 3.0
        return img, jnp.log10(p.disk_hlr)

    f = jax.jit(jax.vmap(one))
    keys = jax.random.split(key, n)
    xs, ys = [], []
    for i in range(0, n, 512):
        a, b = f(keys[i : i + 512])
        xs.append(np.asarray(a))
        ys.append(np.asarray(b))
    return np.concatenate(xs), np.concatenate(ys)


def pdf_part(key, args, figdir: Path) -> dict:
    t0 = time.perf_counter()
    k_tr, k_te, k_fit = jax.random.split(key, 3)
    x_tr, z_tr = simulate_sizes(k_tr, args.n_sim_train, args.stamp)
    x_te, z_te = simulate_sizes(k_te, args.n_sim_test, args.stamp)
    sim_s = time.perf_counter() - t0
    lo, hi = (
        float(np.floor(min(z_tr.min(), z_te.min()) * 20) / 20),
        float(np.ceil(max(z_tr.max(), z_te.max()) * 20) / 20),
    )
    edges = bin_edges(lo, hi, args.n_bins)
    model = BinnedPDFRegressor(args.n_bins, features=(16, 32), dense=64)
    t_fit = time.perf_counter()
    params, hist = train_pdf_regressor(
        k_fit,
        model,
        x_tr,
        z_tr,
        edges,
        n_steps=args.pdf_steps,
        batch_size=64,
        learning_rate=1e-3,
        augment=random_dihedral,
        progress=False,
        label_smoothing=0.02,
    )
    fit_s = time.perf_counter() - t_fit
    pdf = predict_pdf(model, params, x_te)
    zhat = np.asarray(pdf_point_estimate(pdf, edges))
    pit = np.asarray(pit_values(pdf, edges, z_te))
    unif = pit_uniformity(pit, 20)
    pit_figure(
        pit,
        20,
        path=figdir / "calibration_pdf_pit.png",
        title="PIT of log10 half-light radius PDFs (simulated LSST_R)",
    )
    return {
        "target": "log10(disk half-light radius / pixel), LSST_R simulated stamps with noise",
        "n_train": args.n_sim_train,
        "n_test": args.n_sim_test,
        "stamp": args.stamp,
        "n_bins": args.n_bins,
        "bin_range": [lo, hi],
        "n_steps": args.pdf_steps,
        "simulation_seconds": round(sim_s, 1),
        "fit_seconds": round(fit_s, 1),
        "sigma_mad_dex": float(sigma_mad(zhat, z_te)),
        "outlier_fraction_0.15dex": float(outlier_fraction(zhat, z_te, 0.15)),
        "target_std_dex": float(np.std(z_te)),
        "pit": unif,
        "final_train_loss": hist["train"][-1]["loss"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--first-steps", type=int, default=1500)
    p.add_argument("--pdf-steps", type=int, default=1500)
    p.add_argument("--n-sim-train", type=int, default=8000)
    p.add_argument("--n-sim-test", type=int, default=2000)
    p.add_argument("--stamp", type=int, default=32)
    p.add_argument("--n-bins", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "calibration.json")
    args = p.parse_args(argv)
    if args.quick:
        args.first_steps, args.pdf_steps, args.n_sim_train, args.n_sim_test = 30, 30, 512, 256
        args.out = args.out.with_name("calibration_quick.json")
    t0 = time.perf_counter()
    info = machine_info()
    k1, k2 = jax.random.split(jax.random.key(args.seed))
    figdir = RESULTS_DIR
    first = first_part(k1, args, figdir)
    pdf = pdf_part(k2, args, figdir)
    payload = {
        "benchmark": "calibration",
        "config": vars(args) | {"out": str(args.out)},
        "budget": "about 25 minutes of wall time for calibration + masks together on a shared "
        "2-core CPU (nice 10, other jobs running)",
        "machine": info,
        "first": first,
        "binned_pdf": pdf,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(args.out, payload)
    rows = [
        {
            "what": f"FIRST {tag}",
            "acc": first[f"accuracy_true_mix_{tag}"],
            "ece": first[f"ece_true_mix_{tag}"],
        }
        for tag in ("before", "after")
    ]
    print(
        format_table(rows, [("what", "", "s"), ("acc", "accuracy", ".3f"), ("ece", "ECE", ".3f")])
    )
    print(
        f"PDF: sigma_MAD {pdf['sigma_mad_dex']:.3f} dex, outliers "
        f"{pdf['outlier_fraction_0.15dex']:.3f}, PIT KS {pdf['pit']['ks_statistic']:.3f} "
        f"(p={pdf['pit']['ks_pvalue']:.2g})"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
