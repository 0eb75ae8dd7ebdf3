"""Radio-galaxy WGAN on FIRST: speed, RMAE checkpoint table, smearing, augmented classifiers.

Measures, on this machine:
1. generator+critic training steps per second at 64x64 (CNN and FCN critic; one step =
   ``n_critic`` = 5 critic updates + 1 generator update, batch 32), compile time apart;
2. a reduced run: one conditional WGAN-GP trained for a fixed wall-time budget at
   ``--size`` on the train+valid pool, checkpoints every ``--checkpoint-every`` steps,
   the RMAE table (three histograms, per class) and the per-class selection;
3. the smearing study (sigma in {0, 0.5, 1, 1.5, 2}, applied before the clipping) and
   the best-matching pairs per class;
4. FCN and CNN classifier test accuracy with lambda_gen in {0, 1, 2, 3, 5} generated
   images per real one, 5-fold cross-validation (mean and std over folds), on the
   fixed test split. By default one GAN (step 2) is shared by all folds: it has seen
   the held-out folds' images, never the test images. With ``--per-fold-gans`` each
   fold trains its own GAN on its training part (``--fold-gan-steps``, default the
   shared run's step count) with its own per-class checkpoint selection, as in the
   paper: 5x the GAN budget, meant for an accelerator.

The classifiers train for ``--fcn-steps`` / ``--cnn-steps`` steps at every ratio unless
``--scale-steps`` gives the ``lambda_gen = L`` runs ``(1 + L)`` times as many (the same
number of epochs: with a fixed step count, a larger ratio means fewer passes over the
real images). ``--d4`` applies a random symmetry of the square to every training batch.
``--reuse-gan`` keeps the GAN checkpoints of an earlier run in ``--run-dir`` (same
configuration and step count) instead of training again.

Writes benchmarks/results/radio_gan.json (and radio_gan_rmae.csv); ``--out NAME`` for
another name.

    python benchmarks/radio_gan.py --size 32 --gan-minutes 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS_DIR, best_time, compile_jitted, format_table, machine_info, write_json

from galjax.core.files import atomic_write
from galjax.experiments.radio import (
    augmentation_experiment,
    best_matching_pairs,
    evaluate_checkpoints,
    kfold_indices,
    sample_classes,
    smearing_study,
)
from galjax.image.transforms import random_dihedral
from galjax.io.radio import load_radio
from galjax.models.classifier import CNNClassifier, FCNClassifier
from galjax.models.gan import GANConfig, init_gan, make_gan_step
from galjax.scores.histograms import format_rmae_table, write_rmae_table
from galjax.train.recipes.gan import list_checkpoints, load_gan_checkpoint, train_gan

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "radio_first_fr_4class"


def speed(size: int, critic: str, batch: int, repeats: int, **cfg) -> dict:
    config = GANConfig(image_size=size, critic=critic, **cfg)
    state = init_gan(jax.random.key(0), config)
    real = jnp.zeros((config.n_critic, batch, size, size, 1), jnp.float32)
    labels = jnp.zeros((config.n_critic, batch), jnp.int32)
    key = jax.random.key(1)
    compiled, t_compile = compile_jitted(jax.jit(make_gan_step(config)), key, state, real, labels)
    t = best_time(lambda: jax.block_until_ready(compiled(key, state, real, labels)), repeats)
    n_gen = sum(x.size for x in jax.tree.leaves(state.gen_params))
    n_crit = sum(x.size for x in jax.tree.leaves(state.critic_params))
    return {
        "size": size,
        "critic": critic,
        "batch": batch,
        "n_critic": config.n_critic,
        "compile_s": t_compile,
        "step_s": t,
        "steps_per_s": 1.0 / t,
        "real_images_per_s": config.n_critic * batch / t,
        "gen_params": n_gen,
        "critic_params": n_crit,
    }


def _fold_gan(args, config, x, y, names, fold: int, n_steps: int):
    """Train fold ``fold``'s GAN on its training images, select per class; -> (sampler, best)."""
    run = Path(args.run_dir) / f"fold_{fold}"
    for p in run.glob("ckpt_*.msgpack"):
        p.unlink()
    t0 = time.perf_counter()
    _, _, ckpts = train_gan(jax.random.fold_in(jax.random.key(args.seed), fold + 1), config, x, y,
                            n_steps=n_steps, batch_size=args.batch_size,
                            checkpoint_every=args.checkpoint_every, out_dir=run, class_names=names,
                            progress=False)  # fmt: skip
    table = evaluate_checkpoints(jax.random.fold_in(jax.random.key(1), fold + 1), ckpts, x, y,
                                 n_per_class=args.n_per_class)  # fmt: skip
    print(f"fold {fold} GAN: {n_steps} steps in {time.perf_counter() - t0:.0f} s, "
          f"best steps {table.best_steps}", flush=True)  # fmt: skip
    gens = {c: load_gan_checkpoint(ckpts[i])[:2] for c, i in enumerate(table.best)}
    return (lambda key, labels: sample_classes(key, gens, labels)), table.best_steps


def smearing_section(x, y, names, cfg, state, n_per_class) -> dict:
    """Mean RMAE per sigma and class, smearing before and after the clipping."""
    res = {"checkpoint_step": int(state.step), "n_per_class": n_per_class}
    for where in ("before_clip", "after_clip"):
        sm = smearing_study(
            jax.random.key(2),
            cfg,
            state,
            x,
            y,
            n_per_class=n_per_class,
            where=where,
            class_names=names,
        )
        res["sigmas"] = sm["sigmas"]
        res[where] = sm["rmae"]
        print(where, [[round(r[3], 3) for r in per_sigma] for per_sigma in sm["rmae"]], flush=True)
    return res


def smearing_only(args) -> None:
    """Redo the smearing study on the last checkpoint of an existing run; update the JSON."""
    import json

    from galjax.train.recipes.gan import list_checkpoints

    path = RESULTS_DIR / f"{args.out}.json"
    out = json.loads(path.read_text())
    data = load_radio(args.data, size=args.size)
    pool = data.split != "test"
    cfg, state, _ = load_gan_checkpoint(list_checkpoints(args.run_dir)[-1])
    t0 = time.perf_counter()
    out["smearing"] = smearing_section(
        data.images[pool], data.labels[pool], data.class_names, cfg, state, args.n_per_class
    )
    out["smearing"]["seconds"] = time.perf_counter() - t0
    out["smearing"]["machine"] = machine_info()
    write_json(path, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "first_fr_4class.npz"))
    ap.add_argument("--size", type=int, default=32, help="image side of the reduced run")
    ap.add_argument("--gan-minutes", type=float, default=8.0, help="GAN training budget")
    ap.add_argument(
        "--gan-steps",
        type=int,
        default=None,
        help="GAN steps (default: what --gan-minutes allows at the probed speed)",
    )
    ap.add_argument(
        "--reuse-gan",
        action="store_true",
        help="reuse the checkpoints in --run-dir if they are of this configuration",
    )
    ap.add_argument(
        "--scale-steps",
        action="store_true",
        help="(1 + lambda_gen) x the classifier steps: the same epochs per ratio",
    )
    ap.add_argument("--d4", action="store_true",
                    help="random dihedral symmetry of every classifier training batch")  # fmt: skip
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gen-features", type=int, default=32)
    ap.add_argument("--critic-features", type=int, default=32)
    ap.add_argument("--n-per-class", type=int, default=100, help="images per class for RMAE")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fcn-steps", type=int, default=600)
    ap.add_argument("--cnn-steps", type=int, default=300)
    ap.add_argument("--lambdas", default="0,1,2,3,5")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument(
        "--smearing-only",
        action="store_true",
        help="redo only the smearing study on the last checkpoint in --run-dir",
    )
    ap.add_argument("--run-dir", default="/tmp/galjax_radio_gan_bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-fold-gans", action="store_true",
                    help="train and select one GAN per fold on its training part (the paper's "
                    "protocol; 5x the GAN budget)")  # fmt: skip
    ap.add_argument("--fold-gan-steps", type=int, default=None,
                    help="steps per fold GAN (default: the shared run's)")  # fmt: skip
    ap.add_argument("--out", default="radio_gan", help="name of the results JSON and CSV")
    args = ap.parse_args()
    if args.smearing_only:
        smearing_only(args)
        return
    t_start = time.perf_counter()
    out = {"machine": machine_info(), "args": vars(args)}

    # 1. speed at 64x64
    if not args.skip_speed:
        rows = [speed(64, c, 32, 3) for c in ("cnn", "fcn")]
        out["speed_64"] = rows
        print(
            format_table(
                rows,
                [
                    ("critic", "critic", "s"),
                    ("compile_s", "compile s", ".1f"),
                    ("steps_per_s", "steps/s", ".3f"),
                    ("real_images_per_s", "real img/s", ".1f"),
                ],
            )
        )

    # 2. reduced GAN run on the train+valid pool
    data = load_radio(args.data, size=args.size)
    pool = data.split != "test"
    x, y = data.images[pool], data.labels[pool]
    xt, yt = data.images[~pool], data.labels[~pool]
    names = data.class_names
    config = GANConfig(
        image_size=args.size,
        critic="cnn",
        gen_features=args.gen_features,
        critic_features=args.critic_features,
    )
    probe = speed(
        args.size,
        "cnn",
        args.batch_size,
        2,
        gen_features=args.gen_features,
        critic_features=args.critic_features,
    )
    every = args.checkpoint_every
    n_steps = args.gan_steps or max(
        every, int(args.gan_minutes * 60 / probe["step_s"]) // every * every
    )
    print(
        f"GAN {args.size}x{args.size}: {probe['step_s']:.3f} s/step -> {n_steps} steps", flush=True
    )
    run = Path(args.run_dir)
    record = run / "gan_run.json"  # what trained the checkpoints, for --reuse-gan
    wanted = {"config": config.to_dict(), "n_steps": n_steps, "seed": args.seed,
              "batch_size": args.batch_size, "checkpoint_every": every,
              "train_images": int(len(x))}  # fmt: skip
    old = json.loads(record.read_text()) if args.reuse_gan and record.exists() else None
    wanted = json.loads(json.dumps(wanted))  # tuples -> lists, as read back
    if old is not None and all(old.get(k) == v for k, v in wanted.items()):
        print(f"reusing the GAN checkpoints in {run} ({old['seconds']:.0f} s of training)")
        ckpts = list_checkpoints(run)
        out["gan_run"] = {**old, "reused": True}
    else:
        for p in run.glob("ckpt_*.msgpack"):
            p.unlink()
        t0 = time.perf_counter()
        _, hist, ckpts = train_gan(
            jax.random.key(args.seed),
            config,
            x,
            y,
            n_steps=n_steps,
            batch_size=args.batch_size,
            checkpoint_every=every,
            out_dir=run,
            class_names=names,
            progress=False,
        )
        t_gan = time.perf_counter() - t0
        out["gan_run"] = {**wanted, "seconds": t_gan, "steps_per_s": n_steps / t_gan,
                          "history": hist}  # fmt: skip
        text = json.dumps(out["gan_run"], default=float)
        atomic_write(record, lambda tmp: tmp.write_text(text))

    t0 = time.perf_counter()
    table = evaluate_checkpoints(jax.random.key(1), ckpts, x, y, n_per_class=args.n_per_class)
    print(format_rmae_table(table), flush=True)
    write_rmae_table(RESULTS_DIR / f"{args.out}_rmae", table)
    out["rmae_table"] = {
        "steps": table.steps,
        "class_names": names,
        "columns": ["intensity", "n_above", "total", "mean"],
        "rmae": table.rmae,
        "best_step": table.best_steps,
        "seconds": time.perf_counter() - t0,
        "n_per_class": args.n_per_class,
    }
    gens = {c: load_gan_checkpoint(ckpts[i])[:2] for c, i in enumerate(table.best)}
    last_cfg, last_state, _ = load_gan_checkpoint(ckpts[-1])

    # 3. smearing study (last checkpoint) and best-matching pairs (selected checkpoints)
    out["smearing"] = smearing_section(x, y, names, last_cfg, last_state, args.n_per_class)
    pairs = {}
    for c, name in enumerate(names):
        fake = sample_classes(jax.random.key(3), {c: gens[c]}, np.full(100, c))
        pr = best_matching_pairs(x[y == c], fake, top=5)
        pairs[name] = {
            "distance": pr.distance,
            "fake_index": pr.fake_index,
            "real_index": pr.real_index,
        }
    out["pairs"] = pairs

    # 4. augmented classifiers over k folds
    lambdas = tuple(int(v) for v in args.lambdas.split(","))
    folds = kfold_indices(jax.random.key(4), len(x), args.folds, y)
    sampler = lambda key, labels: sample_classes(key, gens, labels)
    fold_gans = {}  # fold -> (sampler, best step per class), trained once, shared by the models

    def make_sampler(f, tr):
        if not args.per_fold_gans:
            return sampler
        if f not in fold_gans:
            fold_gans[f] = _fold_gan(args, config, x[tr], y[tr], names, f,
                                     args.fold_gan_steps or n_steps)  # fmt: skip
        return fold_gans[f][0]

    t0 = time.perf_counter()
    res = {}
    for name, model, steps in (
        ("FCN", FCNClassifier(4, hidden=(256, 64)), args.fcn_steps),
        ("CNN", CNNClassifier(4, features=(8, 16, 32), dense=32), args.cnn_steps),
    ):
        r = augmentation_experiment(
            jax.random.key(5),
            x,
            y,
            xt,
            yt,
            make_sampler=make_sampler,
            models={name: model},
            lambdas=lambdas,
            folds=folds,
            classifier_kwargs={"n_steps": steps, "batch_size": 64,
                               "augment": random_dihedral if args.d4 else None},
            scale_steps=args.scale_steps,
            progress=True,
        )  # fmt: skip
        res[name] = {
            "n_steps": steps,
            "n_steps_per_lambda": r["n_steps"],
            "d4": args.d4,
            "batch_size": 64,
            "accuracy": r["accuracy"][name],
            "mean": r["mean"][name],
            "std": r["std"][name],
        }
    out["classifiers"] = {
        "results": res,
        "lambdas": lambdas,
        "folds": args.folds,
        "test_images": int(len(xt)),
        "seconds": time.perf_counter() - t0,
        "gan": (
            {
                "per_fold": True,
                "steps": args.fold_gan_steps or n_steps,
                "best_step": {f: v[1] for f, v in sorted(fold_gans.items())},
            }
            if args.per_fold_gans
            else "one GAN shared by all folds (see docstring)"
        ),  # fmt: skip
        "architectures": {
            "FCN": "FCNClassifier(hidden=(256, 64))",
            "CNN": "CNNClassifier(features=(8, 16, 32), dense=32)",
        },
        "published": {
            "FCN": [0.587, 0.694],
            "CNN": [0.790, 0.814],
            "note": "lambda_gen 0 -> best, 128x128, long GPU training (Rustige et al.)",
        },
    }
    rows = [{"model": m, **{f"l{lam}": res[m]["mean"][lam] for lam in lambdas}} for m in res]
    print(
        format_table(
            rows,
            [("model", "model", "s")] + [(f"l{lam}", f"lambda={lam}", ".3f") for lam in lambdas],
        )
    )
    out["total_seconds"] = time.perf_counter() - t_start
    write_json(RESULTS_DIR / f"{args.out}.json", out)
    print(f"done in {out['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
