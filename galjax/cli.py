"""The ``galjax`` command line: thin wrappers around library functions.

``galjax simulate --n 64 --seed 0 --out demo/fields.fits`` simulates blended
fields with the built-in LSST-like survey and writes the fields (FITS), the truth
table (ECSV) and a figure (PNG).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]


def _simulate(args) -> int:
    import jax
    from astropy.io import fits
    from astropy.table import Table

    from .io import write_fits, write_table
    from .plot import image_grid
    from .sim import SURVEYS, simulate_fields

    if args.survey not in SURVEYS:
        raise SystemExit(f"--survey: unknown survey {args.survey!r}; choose from {sorted(SURVEYS)}")
    if args.n < 1:
        raise SystemExit(f"--n: expected >= 1, got {args.n}")
    survey = SURVEYS[args.survey]
    out = Path(args.out)
    if out.suffix.lower() not in (".fits", ".fit", ".fts"):
        raise SystemExit(f"--out: expected a .fits path, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    f = simulate_fields(
        jax.random.key(args.seed),
        args.n,
        survey,
        n_max=args.n_max,
        chunk=args.chunk,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - t0

    header = fits.Header()
    header["SURVEY"] = survey.name
    header["PIXSCALE"] = (survey.pixel_scale, "arcsec / pixel")
    header["BANDS"] = ",".join(survey.bands)
    header["SEED"] = args.seed
    header["NMAX"] = (args.n_max, "maximum sources per field")
    header["ORIGIN"] = "galjax simulate"
    to_cube = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1).astype(np.float32))
    extra = [
        fits.ImageHDU(to_cube(f.noiseless), name="NOISELESS"),
        fits.ImageHDU(to_cube(f.sigma), name="SIGMA"),
    ]
    write_fits(out, f.image, header=header, extra_hdus=extra)

    field, source = np.nonzero(f.mask)
    table = Table()
    table["field"] = field
    table["source"] = source
    table["x"] = f.positions[field, source, 0]
    table["y"] = f.positions[field, source, 1]
    for b, name in enumerate(survey.bands):
        table[f"flux_{name}"] = f.fluxes[field, source, b]
    table["snr"] = f.snr[field, source]
    p = f.params
    for col in ("disk_hlr", "disk_n", "disk_e1", "disk_e2", "bulge_hlr", "bulge_n"):
        table[col] = getattr(p, col)[field, source]
    table["bulge_frac"] = p.bulge_frac[field, source, 0]
    table["clump_frac"] = p.clump_frac[field, source, 0]
    table["arm_amp"] = p.arm_amp[field, source]
    table.meta.update(
        {
            "survey": survey.to_dict(),
            "seed": args.seed,
            "units": "x, y: pixels (0-based, x = column); fluxes: survey flux units; hlr: pixels",
        }
    )
    truth = out.with_name(out.stem + "_truth.ecsv")
    write_table(truth, table)

    figure = out.with_suffix(".png")
    k = min(args.n, 16)
    image_grid(
        f.image[:k],
        ncols=min(k, 8),
        titles=[f"field {i}: {int(f.mask[i].sum())} src" for i in range(k)],
        path=figure,
    )

    n_src = int(f.mask.sum())
    print(f"simulated {args.n} fields ({n_src} galaxies) of {survey.name} in {elapsed:.1f} s")
    print(
        f"  SNR of the galaxies: median {np.median(f.snr[f.mask]):.1f}, "
        f"5-95%: {np.percentile(f.snr[f.mask], 5):.1f}-{np.percentile(f.snr[f.mask], 95):.1f}"
    )
    print(f"  fields : {out}  (HDUs: PRIMARY noisy (n, bands, h, w), NOISELESS, SIGMA)")
    print(f"  truth  : {truth}")
    print(f"  figure : {figure}")
    return 0


def _train_config(args, n_steps):
    from .train import TrainConfig

    return TrainConfig(
        n_steps=n_steps,
        batch_size=args.batch,
        log_every=100,
        eval_every=10**9,
        checkpoint_every=1000,
        seed=args.seed,
    )


def _load_stamps(args, survey, key):
    """Isolated training stamps: a FITS stack given by the user, or the simulator."""
    from .train.recipes import make_stamps

    if args.stamps:
        from .io import read_fits_stack

        img = read_fits_stack(args.stamps).data.astype(np.float32)
        if img.shape[1] != survey.stamp_size or img.shape[-1] != survey.n_bands:
            raise SystemExit(
                f"--stamps: expected (n, {survey.stamp_size}, {survey.stamp_size}, "
                f"{survey.n_bands}) stamps for survey {survey.name}, got {img.shape}"
            )
        return {"image": img}
    return make_stamps(key, survey, args.n_stamps, progress=not args.quiet)


def _train(args) -> int:
    import dataclasses
    import json

    import jax

    from .models import FlowConfig, GalaxyModel, VAEConfig, load_model, save_model
    from .sim import SURVEYS
    from .train.recipes import (
        encode_dataset,
        make_blend_cutouts,
        train_flow,
        train_init_encoder,
        train_vae,
    )

    out = Path(args.out)
    recipe = {k: v for k, v in vars(args).items() if k != "func"}
    t0 = time.perf_counter()
    if args.what == "vae":
        if args.survey not in SURVEYS:
            raise SystemExit(
                f"--survey: unknown survey {args.survey!r}; choose from {sorted(SURVEYS)}"
            )
        survey = SURVEYS[args.survey]
        k_data, k_fit = jax.random.split(jax.random.key(args.seed))
        stamps = _load_stamps(args, survey, k_data)
        cfg = dataclasses.replace(
            VAEConfig(),
            stamp_size=survey.stamp_size,
            bands=survey.n_bands,
            latent_dim=args.latent_dim,
        )
        params, hist = train_vae(
            k_fit,
            {"image": stamps["image"]},
            survey,
            cfg,
            _train_config(args, args.steps),
            lr=args.lr,
            workdir=out / "logs_vae",
            progress=not args.quiet,
        )
        meta = {"survey": survey.to_dict(), "recipes": {"vae": recipe}}
        save_model(out, GalaxyModel(cfg, params, meta=meta))
        final = hist["train"][-1] if hist["train"] else {}
    else:
        model = load_model(out)
        survey = SURVEYS[model.meta["survey"]["name"]]
        meta = dict(model.meta)
        meta.setdefault("recipes", {})[args.what] = recipe
        k_data, k_fit = jax.random.split(jax.random.key(args.seed))
        if args.what == "flow":
            stamps = _load_stamps(args, survey, k_data)
            z = encode_dataset(model.vae_params, model.vae_config, stamps["image"])
            fcfg = FlowConfig(dim=model.vae_config.latent_dim)
            fparams, hist = train_flow(
                k_fit,
                z,
                fcfg,
                _train_config(args, args.steps),
                lr=args.lr,
                workdir=out / "logs_flow",
                progress=not args.quiet,
            )
            model = model._replace(flow_config=fcfg, flow_params=fparams, meta=meta)
        else:  # init encoder on blended cutouts
            cut = make_blend_cutouts(k_data, survey, args.n_fields, progress=not args.quiet)
            iparams, hist = train_init_encoder(
                k_fit,
                model.vae_params,
                model.vae_config,
                cut,
                _train_config(args, args.steps),
                lr=args.lr,
                workdir=out / "logs_init",
                progress=not args.quiet,
            )
            model = model._replace(init_params=iparams, meta=meta)
        save_model(out, model)
        final = hist["train"][-1] if hist["train"] else {}
    print(
        f"trained {args.what} in {time.perf_counter() - t0:.0f} s; last metrics: "
        f"{json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()})}"
    )
    print(f"  model directory: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``galjax`` argument parser (subcommands)."""
    parser = argparse.ArgumentParser(prog="galjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate blended fields with their truth")
    sim.add_argument("--n", type=int, default=64, help="number of fields (default 64)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--out", default="galjax_demo/fields.fits", help="output FITS path")
    sim.add_argument("--survey", default="lsst_r", help="built-in survey (default lsst_r)")
    sim.add_argument("--n-max", type=int, default=4, help="maximum sources per field")
    sim.add_argument("--chunk", type=int, default=256, help="fields per compiled call")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    tr = sub.add_parser("train", help="train the deblender's models (staged, as MADNESS)")
    tr.add_argument(
        "what",
        choices=["vae", "flow", "init"],
        help="vae: VAE on isolated galaxies; flow: latent prior (needs vae); "
        "init: encoder retrained on blended cutouts (needs vae)",
    )
    tr.add_argument("--out", required=True, help="model directory (read and updated)")
    tr.add_argument("--survey", default="lsst_r", help="built-in survey to simulate (vae)")
    tr.add_argument("--stamps", help="FITS stack of isolated stamps instead of the simulator")
    tr.add_argument("--n-stamps", type=int, default=32768, help="simulated training stamps")
    tr.add_argument("--n-fields", type=int, default=4096, help="blended fields (init)")
    tr.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    tr.add_argument("--batch", type=int, default=64, help="batch size")
    tr.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    tr.add_argument("--latent-dim", type=int, default=16, help="latent dimension (vae)")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``galjax`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
