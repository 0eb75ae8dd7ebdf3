"""Train the packaged contaminant-mask network (galjax/weights/mask).

Bases: the real ESO NTT/EMMI field (rows [0, 176) only; rows [176, 256) are kept
for held-out evaluation in benchmarks/masks.py) plus simulated LSST-like fields
from galjax.sim. Contaminants are injected on the fly (galjax.sim.contaminants). Per-class
thresholds are chosen on separate validation injections at a false-positive
rate of 1e-3 (galjax.scores.calibration.threshold_at_fpr) and stored with the weights.

    nice -n 10 python scripts/train_mask_weights.py --steps 1500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

from galjax.image.background import estimate_background
from galjax.io import load_sep_field
from galjax.models.masknet import MaskNet, default_mask_dir, save_mask_model
from galjax.scores.calibration import threshold_at_fpr
from galjax.scores.classification import per_class_auc
from galjax.sim import LSST_R, simulate_fields
from galjax.sim.contaminants import MASK_CLASSES
from galjax.train.recipes.masknet import make_injection_sampler, train_mask_net

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROWS = 176  # real-field rows used for training; the rest is held out


def bases(data_dir: Path, key, n_sim: int, rows: slice):
    """Stack of base images with their background and sigma (real field part + simulations)."""
    field = load_sep_field(data_dir / "field_eso_ntt_emmi_sep")
    real = np.asarray(field.image, np.float32)[rows]
    bg, sig = estimate_background(real, method="global")
    sims = simulate_fields(key, n_sim, LSST_R, n_max=4).image.astype(np.float32)
    s = sims.shape[1]
    out = [real, *list(sims)]
    return out, [bg] + [0.0] * n_sim, [sig] + [float(LSST_R.sky_sigma[0])] * n_sim, s


def sampler(images, bgs, sigs, tile, batch):
    """Mix of samplers: one per base-image size (real crop, simulated fields)."""
    real = make_injection_sampler(images[0][None], bgs[:1], sigs[:1], tile, batch // 2)
    sim = make_injection_sampler(np.stack(images[1:]), bgs[1:], sigs[1:], tile, batch - batch // 2)

    def sample(key):
        k1, k2 = jax.random.split(key)
        a, b = real(k1), sim(k2)
        return jax.tree.map(lambda u, v: np.concatenate([u, v]), a, b)

    return sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=default_mask_dir())
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-sim", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    key = jax.random.key(args.seed)
    k_sim, k_train, k_val = jax.random.split(key, 3)
    images, bgs, sigs, _ = bases(args.data, k_sim, args.n_sim, slice(0, TRAIN_ROWS))
    sample = sampler(images, bgs, sigs, args.tile, args.batch)
    model = MaskNet(len(MASK_CLASSES), args.features, (1, 2, 4, 8, 1))
    t0 = time.perf_counter()
    params, hist = train_mask_net(
        k_train,
        model,
        sample,
        n_steps=args.steps,
        learning_rate=args.lr,
        pos_weight=[3.0, 3.0, 3.0, 2.0, 2.0],
    )
    train_s = time.perf_counter() - t0

    # thresholds at FPR 1e-3 on validation injections (training rows, fresh keys)
    apply = jax.jit(lambda prm, x: jax.nn.sigmoid(model.apply({"params": prm}, x)))
    probs, labels = [], []
    for i in range(8):
        b = sample(jax.random.fold_in(k_val, i))
        probs.append(np.asarray(apply(params, b["x"])))
        labels.append(np.asarray(b["y"]))
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    aucs = per_class_auc(probs, labels)
    thr = []
    for c in range(len(MASK_CLASSES)):
        pc, yc = probs[..., c].ravel(), labels[..., c].ravel()
        thr.append(threshold_at_fpr(pc, yc, 1e-3)[0] if 0 < yc.sum() < yc.size else 0.5)
    thr = [float(min(max(t, 0.05), 0.95)) for t in thr]
    meta = {
        "trained_on": f"ESO NTT/EMMI field rows [0, {TRAIN_ROWS}) + {args.n_sim} LSST_R sim fields",
        "steps": args.steps,
        "batch": args.batch,
        "tile": args.tile,
        "lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(train_s, 1),
        "final_loss": hist["train"][-1]["loss"],
        "validation_auc": aucs,
        "threshold_rule": "FPR 1e-3 on validation injections, clipped to [0.05, 0.95]",
    }
    out = save_mask_model(args.out, model, params, thr, meta)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"saved {out} ({size / 1024:.0f} KiB) in {train_s:.0f}s; AUC {aucs}; thresholds {thr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
