"""Contaminant-mask benchmark: per-class ROC AUC on held-out injections, tiled inference speed.

The packaged network (galjax/weights/mask, trained by scripts/train_mask_weights.py
on the ESO NTT/EMMI field rows [0, 176) and simulated LSST_R fields) is
evaluated on injections into data it never saw:

* ``real``: 64x64 tiles cut from the held-out rows [176, 256) of the real field,
* ``sim``: freshly simulated LSST_R fields (new seed),

each with fresh random contaminants. Per class: ROC AUC over all pixels
(galjax.scores.metrics.auc), and TPR/FPR at the stored threshold. Speed: pixels per
second of :func:`galjax.detect.masks.predict_mask` (tiled, overlapping tiles) on the
full 256x256 field and on a 1024x1024 mosaic, compile time separate.

    nice -n 10 python benchmarks/masks.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, format_table, machine_info, write_json  # noqa: E402

from galjax.detect.masks import predict_mask  # noqa: E402
from galjax.image.background import estimate_background  # noqa: E402
from galjax.io import load_sep_field  # noqa: E402
from galjax.models.masknet import load_mask_model  # noqa: E402
from galjax.scores.classification import per_class_auc  # noqa: E402
from galjax.sim import LSST_R, simulate_fields  # noqa: E402
from galjax.sim.contaminants import MASK_CLASSES  # noqa: E402
from galjax.train.recipes.masknet import make_injection_sampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
HELD_OUT_ROWS = slice(176, 256)


def evaluate(model, params, sample, key, n_batches: int, thresholds):
    apply = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))
    probs, labels = [], []
    for i in range(n_batches):
        b = sample(jax.random.fold_in(key, i))
        probs.append(np.asarray(apply(params, b["x"])))
        labels.append(np.asarray(b["y"]))
    probs, labels = np.concatenate(probs), np.concatenate(labels) > 0.5
    aucs = per_class_auc(probs, labels)
    out = {}
    for c, name in enumerate(MASK_CLASSES):
        pc, yc = probs[..., c], labels[..., c]
        flag = pc >= thresholds[c]
        out[name] = {
            "auc": aucs[name],
            "positive_pixels": int(yc.sum()),
            "tpr_at_threshold": float(flag[yc].mean()) if yc.any() else None,
            "fpr_at_threshold": float(flag[~yc].mean()),
            "threshold": float(thresholds[c]),
        }
    return out


def speed(model, params, image, tile: int, repeats: int = 3):
    t0 = time.perf_counter()
    predict_mask(model, params, image, tile=tile)  # compiles
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_mask(model, params, image, tile=tile)
        times.append(time.perf_counter() - t0)
    best = min(times)
    n_pix = image.shape[0] * image.shape[1]
    return {
        "image_shape": list(image.shape[:2]),
        "tile": tile,
        "first_call_seconds": round(first, 3),
        "best_seconds": round(best, 4),
        "pixels_per_second": n_pix / best,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=16, help="batches of 16 tiles per source")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "masks.json")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    info = machine_info()
    model, params, cfg = load_mask_model(args.model)
    thr = np.asarray(cfg["thresholds"] or [0.5] * model.n_classes)
    key = jax.random.key(args.seed)
    k_real, k_sim, k_simf = jax.random.split(key, 3)

    field = load_sep_field(DATA / "field_eso_ntt_emmi_sep")
    full = np.asarray(field.image, np.float32)
    held = full[HELD_OUT_ROWS]
    bg, sig = estimate_background(held, method="global")
    real_sampler = make_injection_sampler(held[None], [bg], [sig], 64, 16)
    sims = simulate_fields(k_simf, 64, LSST_R, n_max=4).image.astype(np.float32)
    sim_sampler = make_injection_sampler(
        sims, np.zeros(len(sims)), np.full(len(sims), LSST_R.sky_sigma[0]), 64, 16
    )
    results = {
        "real_heldout": evaluate(model, params, real_sampler, k_real, args.batches, thr),
        "sim_heldout": evaluate(model, params, sim_sampler, k_sim, args.batches, thr),
    }
    mosaic = np.tile(full, (4, 4, 1))
    results["speed"] = [
        speed(model, params, full, 256),
        speed(model, params, full, 128),
        speed(model, params, mosaic, 256),
    ]
    payload = {
        "benchmark": "masks",
        "config": {
            "batches": args.batches,
            "tiles_per_batch": 16,
            "tile": 64,
            "seed": args.seed,
            "held_out": "ESO NTT/EMMI field rows [176, 256) and 64 new LSST_R sim fields",
            "model": cfg["model"],
            "trained": cfg.get("meta", {}),
        },
        "budget": "about 25 minutes of wall time for calibration + masks together on a shared "
        "2-core CPU (nice 10, other jobs running)",
        "machine": info,
        "results": results,
        "published_reference": "MaxiMask (Paillard et al. 2019) reports per-class AUC 0.98-0.995",
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(args.out, payload)
    rows = [
        {
            "class": c,
            "real": results["real_heldout"][c]["auc"],
            "sim": results["sim_heldout"][c]["auc"],
        }
        for c in MASK_CLASSES
    ]
    print(
        format_table(
            rows, [("class", "class", "s"), ("real", "AUC real", ".4f"), ("sim", "AUC sim", ".4f")]
        )
    )
    for s in results["speed"]:
        print(f"{s['image_shape']} tile {s['tile']}: {s['pixels_per_second']:.3g} pixels/s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
