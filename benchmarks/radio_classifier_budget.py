"""FIRST classifiers on real images alone: test accuracy against image size, steps and augmentation.

How much of the gap to the paper's classifiers (Rustige et al.: FCN 58.7 %, CNN 79.0 %
without generated images, 128 px, long GPU training) is the training budget? The
classifiers of ``radio_gan.py`` are trained on fold 0 of the same stratified 5-fold
split of the train+valid pool and tested on the fixed test split, with the settings
below; augmentation is a random D4 symmetry per image and batch
(:func:`galjax.image.transforms.random_dihedral`).

Writes benchmarks/results/radio_classifier_budget.json.

    python benchmarks/radio_classifier_budget.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from _common import RESULTS_DIR, format_table, machine_info, write_json

from galjax.experiments.radio import kfold_indices
from galjax.image.transforms import random_dihedral
from galjax.io.radio import load_radio
from galjax.models.classifier import CNNClassifier, FCNClassifier, predict_proba
from galjax.scores.classification import accuracy
from galjax.train.recipes.classifier import train_classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "radio_first_fr_4class"

# (model, image size, steps, augmentation)
SETTINGS = [
    ("CNN", 32, 500, False),
    ("CNN", 32, 2000, False),
    ("CNN", 32, 2000, True),
    ("CNN", 32, 4000, True),
    ("CNN", 64, 2000, True),
    ("FCN", 32, 1000, False),
    ("FCN", 32, 4000, False),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "first_fr_4class.npz"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    models = {"CNN": CNNClassifier(4, features=(8, 16, 32), dense=32),
              "FCN": FCNClassifier(4, hidden=(256, 64))}  # fmt: skip
    rows = []
    for name, size, steps, aug in SETTINGS:
        d = load_radio(args.data, size=size)
        pool = d.split != "test"
        x, y = d.images[pool], d.labels[pool]
        xt, yt = d.images[~pool], d.labels[~pool]
        train, _ = kfold_indices(jax.random.key(args.seed), x.shape[0], 5, y)[0]
        t0 = time.perf_counter()
        params, _ = train_classifier(
            jax.random.key(args.seed + 1),
            models[name],
            jnp.asarray((x[train] + 1) / 2),  # [0, 1], empty sky 0, as in radio_gan.py
            jnp.asarray(y[train]),
            n_steps=steps,
            batch_size=64,
            augment=random_dihedral if aug else None,
            progress=False,
        )
        acc = float(accuracy(predict_proba(models[name], params, jnp.asarray((xt + 1) / 2)), yt))
        rows.append({"model": name, "size": size, "steps": steps, "augment": aug,
                     "n_train": int(len(train)), "test_accuracy": acc,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        print(rows[-1], flush=True)
    shown = [{**r, "d4": "yes" if r["augment"] else "no"} for r in rows]
    print(format_table(shown, [("model", "model", "s"), ("size", "size", "d"),
                               ("steps", "steps", "d"), ("d4", "D4", "s"),
                               ("test_accuracy", "test acc", ".3f"),
                               ("seconds", "s", ".0f")]))  # fmt: skip
    write_json(
        RESULTS_DIR / "radio_classifier_budget.json",
        {
            "benchmark": "radio_classifier_budget",
            "machine": machine_info(),
            "models": {
                "CNN": "CNNClassifier(features=(8, 16, 32), dense=32)",
                "FCN": "FCNClassifier(hidden=(256, 64))",
            },  # fmt: skip
            "split": "fold 0 of a stratified 5-fold split of train+valid; fixed test split",
            "batch_size": 64,
            "rows": rows,
            "paper_no_augmentation": {"FCN": 0.587, "CNN": 0.790},
        },
    )


if __name__ == "__main__":
    main()
