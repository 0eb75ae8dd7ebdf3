"""``galjax gan train|select|sample``: the radio-galaxy WGAN pipeline from the command line.

    galjax gan train --data first_fr_4class.npz --out run --steps 2000 --checkpoint-every 200
    galjax gan select --run run --data first_fr_4class.npz
    galjax gan sample --run run --class FRII --n 16 --out frii.png

``train`` writes ``run/ckpt_XXXXXXX.msgpack`` (every ``--checkpoint-every`` steps,
all kept) and ``run/history.json``; ``select`` scores every checkpoint per class
with the histogram RMAE and writes ``run/rmae_table.csv``/``.json`` (the selected
step per class included) and ``run/samples_selected.png``; ``sample`` draws a class
with its selected checkpoint (or the last one before ``select``) and writes a PNG
grid and an ``.npy`` array beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from galjax.cli.runtime import nonnegative_float, positive_int

__all__ = ["register"]


def _load_data(args, split=None):
    from galjax.io.radio import load_radio

    return load_radio(args.data, size=args.size, crop=args.crop, split=split)


def _checkpoints(run):
    """The run's checkpoints; a missing folder or none in it names ``--run``."""
    from galjax.train.recipes.gan import list_checkpoints

    try:
        ckpts = list_checkpoints(run)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--run: {err}") from err
    if not ckpts:
        raise SystemExit(f"--run: no checkpoint (ckpt_*.msgpack) in {str(run)!r}")
    return ckpts


def _train(args) -> int:
    import jax

    from galjax.models.gan import GANConfig
    from galjax.train.recipes.gan import train_gan

    if args.steps < 1 or args.checkpoint_every < 1:
        raise SystemExit("--steps and --checkpoint-every: expected positive integers")
    data = _load_data(args)
    keep = np.isin(data.split, args.splits.split(","))
    if not keep.any():
        raise SystemExit(f"--splits: no image in splits {args.splits!r}")
    config = GANConfig(
        image_size=args.size,
        critic=args.critic,
        n_classes=len(data.class_names),
        smear_sigma=args.smear,
        smear_where=args.smear_where,
        gen_features=args.gen_features,
        critic_features=args.critic_features,
        latent_dim=args.latent_dim,
        n_critic=args.n_critic,
    )
    _, hist, ckpts = train_gan(
        jax.random.key(args.seed),
        config,
        data.images[keep],
        data.labels[keep],
        n_steps=args.steps,
        batch_size=args.batch_size,
        checkpoint_every=args.checkpoint_every,
        out_dir=args.out,
        class_names=data.class_names,
        progress=not args.quiet,
    )
    print(
        f"wrote {len(ckpts)} checkpoints to {args.out}; last W distance "
        f"{hist['wasserstein'][-1]:.4f}"
    )
    return 0


def _select(args) -> int:
    import jax

    from galjax.experiments.radio import evaluate_checkpoints, sample_classes
    from galjax.plot import image_grid
    from galjax.scores.histograms import format_rmae_table, write_rmae_table
    from galjax.train.recipes.gan import load_gan_checkpoint

    ckpts = _checkpoints(args.run)
    cfg, _, _ = load_gan_checkpoint(ckpts[0])
    args.size = cfg.image_size
    data = _load_data(args, split=args.split)
    table = evaluate_checkpoints(
        jax.random.key(args.seed), ckpts, data.images, data.labels, n_per_class=args.n_per_class
    )
    print(format_rmae_table(table))
    csv_path, _ = write_rmae_table(Path(args.run) / "rmae_table", table)
    gens = {c: load_gan_checkpoint(ckpts[i])[:2] for c, i in enumerate(table.best)}
    y = np.repeat(np.arange(len(gens)), 8)
    x = sample_classes(jax.random.key(args.seed + 1), gens, y)
    names = [table.class_names[c] for c in y]
    image_grid(
        x + 1.0,
        ncols=8,
        titles=names,
        path=Path(args.run) / "samples_selected.png",
        percentile=100.0,
    )
    print(f"wrote {csv_path} and the .json beside it; selected steps {table.best_steps}")
    return 0


def _sample(args) -> int:
    import jax

    from galjax.experiments.radio import sample_classes
    from galjax.io.radio import class_index
    from galjax.plot import image_grid
    from galjax.train.recipes.gan import checkpoint_path, load_gan_checkpoint

    run = Path(args.run)
    ckpts = _checkpoints(run)
    names = load_gan_checkpoint(ckpts[-1])[2]
    try:
        c = class_index(args.class_name, names)
    except ValueError as err:
        raise SystemExit(f"--class: {err}") from None
    path = ckpts[-1]
    table = run / "rmae_table.json"
    if table.exists():
        path = checkpoint_path(run, json.loads(table.read_text())["best_step"][names[c]])
    if args.n < 1:
        raise SystemExit(f"--n: expected >= 1, got {args.n}")
    cfg, st, _ = load_gan_checkpoint(path)
    x = sample_classes(jax.random.key(args.seed), {c: (cfg, st)}, np.full(args.n, c))
    out = Path(args.out or run / f"samples_{names[c]}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(x + 1.0, ncols=min(8, args.n), path=out, percentile=100.0)
    np.save(out.with_suffix(".npy"), x)
    print(f"wrote {out} and {out.with_suffix('.npy')} ({args.n} x {names[c]} from {path.name})")
    return 0


def _add_data_args(p):
    p.add_argument("--data", required=True, help="first_fr_4class.npz")
    p.add_argument("--crop", type=positive_int, default=128, help="central crop (input pixels)")
    p.add_argument("--seed", type=int, default=0)


def register(subparsers) -> None:
    """Add ``gan train``, ``gan select`` and ``gan sample`` to an argparse sub-parser set."""
    gan = subparsers.add_parser("gan", help="conditional WGAN for radio galaxies (FIRST)")
    sub = gan.add_subparsers(dest="gan_command", required=True)

    t = sub.add_parser("train", help="train the conditional WGAN-GP, keeping checkpoints")
    _add_data_args(t)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument(
        "--size", type=positive_int, default=64, help="image side (64 on CPU, 128 paper)"
    )
    t.add_argument("--steps", type=positive_int, default=2000, help="generator steps")
    t.add_argument("--checkpoint-every", type=positive_int, default=200)
    t.add_argument("--batch-size", type=positive_int, default=32)
    t.add_argument("--critic", choices=("cnn", "fcn"), default="cnn")
    t.add_argument(
        "--smear", type=nonnegative_float, default=0.0, help="Gaussian smearing sigma (px)"
    )
    t.add_argument("--smear-where", choices=("before_clip", "after_clip"), default="before_clip")
    t.add_argument("--gen-features", type=positive_int, default=32)
    t.add_argument("--critic-features", type=positive_int, default=32)
    t.add_argument("--latent-dim", type=positive_int, default=100)
    t.add_argument(
        "--n-critic", type=positive_int, default=5, help="critic updates per generator update"
    )
    t.add_argument("--splits", default="train", help="comma-separated splits to train on")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)

    s = sub.add_parser("select", help="RMAE table per checkpoint and class; best per class")
    _add_data_args(s)
    s.add_argument("--run", required=True)
    s.add_argument("--split", default="train", help="real images to compare with")
    s.add_argument("--n-per-class", type=positive_int, default=200)
    s.set_defaults(func=_select)

    m = sub.add_parser("sample", help="draw images of one class with its selected checkpoint")
    m.add_argument("--run", required=True)
    m.add_argument("--class", dest="class_name", required=True, help="FRI, FRII, Compact or Bent")
    m.add_argument("--n", type=positive_int, default=16)
    m.add_argument("--out", default=None, help="PNG path (default run/samples_CLASS.png)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_sample)


def _parser() -> argparse.ArgumentParser:  # for manual use: python -m galjax.cli.gan
    ap = argparse.ArgumentParser(prog="galjax")
    register(ap.add_subparsers(dest="command", required=True))
    return ap


if __name__ == "__main__":
    a = _parser().parse_args()
    raise SystemExit(a.func(a))
