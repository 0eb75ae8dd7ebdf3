"""``galjax train vae|flow|init|calibrate``: the staged training of the deblender's models."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from galjax.cli.runtime import nonnegative_int, positive_float, positive_int

__all__ = ["register"]


def _train_config(args, n_steps):
    from galjax.train import TrainConfig

    return TrainConfig(
        n_steps=n_steps,
        batch_size=args.batch,
        log_every=100,
        eval_every=10**9,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )


def _load_stamps(args, survey, key):
    """Isolated training stamps: a FITS stack given by the user, or the simulator."""
    from galjax.train.recipes import make_stamps

    if args.stamps:
        from galjax.io import load_fits_folder, read_fits_stack

        if Path(args.stamps).is_dir():  # one stamp per FITS file
            img = load_fits_folder(args.stamps).images.astype(np.float32)
        else:
            img = read_fits_stack(args.stamps).data.astype(np.float32)
        if img.shape[1] != survey.stamp_size or img.shape[-1] != survey.n_bands:
            raise ValueError(
                f"--stamps: expected (n, {survey.stamp_size}, {survey.stamp_size}, "
                f"{survey.n_bands}) stamps for survey {survey.name}, got {img.shape}"
            )
        return {"image": img}
    return make_stamps(key, survey, args.n_stamps, progress=not args.quiet)


def _stage_workdir(out: Path, what: str, recipe: dict) -> Path:
    """``out/logs_<what>`` for a training stage, emptied when it holds another run.

    ``fit`` resumes from the checkpoint it finds there. That is right for an
    interrupted run, wrong for a run of another recipe or on other VAE weights (the
    later stages read them): then the folder is emptied and training starts over.
    """
    import hashlib
    import json
    import shutil

    from galjax.core.files import atomic_write

    work = out / f"logs_{what}"
    inputs = {}
    if what != "vae" and (out / "vae.msgpack").is_file():
        inputs["vae.msgpack"] = hashlib.sha256((out / "vae.msgpack").read_bytes()).hexdigest()
    run = json.loads(json.dumps({
        "recipe": {k: v for k, v in recipe.items() if k != "quiet"}, "inputs": inputs,
    }))  # fmt: skip
    stamp = work / "run.json"
    if work.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != run):
        print(f"{work}: a run of another recipe or other weights; starting over", file=sys.stderr)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write(stamp, lambda p: p.write_text(json.dumps(run, indent=1)))
    return work


def _override_survey(survey, items):
    """Apply ``--survey-set KEY=VALUE`` overrides (population or noise) to a survey."""

    if not items:
        return survey
    fields = {f.name: f for f in dataclasses.fields(survey)}
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key in ("render", "name"):
            raise ValueError(
                f"--survey-set: expected KEY=VALUE with KEY a Survey field "
                f"({', '.join(k for k in fields if k not in ('render', 'name'))}), got {item!r}"
            )
        old = getattr(survey, key)
        try:
            if key == "gain":  # the only optional field: None means sky noise only
                new = None if value.lower() == "none" else float(value)
            elif isinstance(old, tuple):
                new = tuple(type(old[0])(v) for v in value.split(","))
            elif isinstance(old, bool):
                new = value.lower() in ("1", "true", "yes")
            else:
                new = type(old)(value)
        except ValueError as err:
            raise ValueError(f"--survey-set: bad value for {key}: {value!r} ({err})") from err
        changes[key] = new
    try:
        return dataclasses.replace(survey, **changes)
    except ValueError as err:
        raise ValueError(f"--survey-set: {err}") from err


def _train(args) -> int:
    import json

    import jax

    from galjax.deblend import calibrate_flux_errors
    from galjax.models import FlowConfig, GalaxyModel, VAEConfig, load_model, save_model
    from galjax.sim import SURVEYS, Survey
    from galjax.train.recipes import (
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
            raise ValueError(
                f"--survey: unknown survey {args.survey!r}; choose from {sorted(SURVEYS)}"
            )
        survey = _override_survey(SURVEYS[args.survey], args.survey_set)
        k_data, k_fit = jax.random.split(jax.random.key(args.seed))
        stamps = _load_stamps(args, survey, k_data)
        cfg = dataclasses.replace(
            VAEConfig(),
            stamp_size=survey.stamp_size,
            bands=survey.n_bands,
            latent_dim=args.latent_dim,
            positive=not args.linear_output,
            psf_explicit=args.psf_explicit,
        )
        params, hist = train_vae(
            k_fit,
            {"image": stamps["image"]},
            survey,
            cfg,
            _train_config(args, args.steps),
            lr=args.lr,
            workdir=_stage_workdir(out, "vae", recipe),
            progress=not args.quiet,
        )
        meta = {"survey": survey.to_dict(), "recipes": {"vae": recipe}}
        save_model(out, GalaxyModel(cfg, params, meta=meta))
        final = hist["train"][-1] if hist["train"] else {}
    else:
        model = load_model(out)
        survey = Survey.from_dict(model.meta["survey"])  # with any --survey-set overrides
        meta = dict(model.meta)
        meta.setdefault("recipes", {})[args.what] = recipe
        k_data, k_fit = jax.random.split(jax.random.key(args.seed))
        if args.what == "flow":
            k_stamps, k_z = jax.random.split(k_data)
            stamps = _load_stamps(args, survey, k_stamps)
            z = encode_dataset(model.vae_params, model.vae_config, stamps["image"], key=k_z,
                               n_samples=args.posterior_samples)  # fmt: skip
            fcfg = FlowConfig(dim=model.vae_config.latent_dim)
            fparams, hist = train_flow(
                k_fit,
                z,
                fcfg,
                _train_config(args, args.steps),
                lr=args.lr,
                workdir=_stage_workdir(out, "flow", recipe),
                progress=not args.quiet,
            )
            model = model._replace(flow_config=fcfg, flow_params=fparams, meta=meta)
        elif args.what == "calibrate":
            cal = calibrate_flux_errors(k_data, model, survey, args.n_fields or 256,
                                        progress=not args.quiet)  # fmt: skip
            meta["flux_model_error"] = cal["flux_model_error"]
            meta["flux_bias"] = cal["flux_bias"]
            meta["flux_calibration"] = cal
            model = model._replace(meta=meta)
            hist = {"train": [{k: cal[k] for k in ("flux_model_error", "coverage_statistical")}]}
        else:  # init encoder on blended cutouts
            cut = make_blend_cutouts(k_data, survey, args.n_fields or 4096,
                                     progress=not args.quiet)  # fmt: skip
            iparams, hist = train_init_encoder(
                k_fit,
                model.vae_params,
                model.vae_config,
                cut,
                _train_config(args, args.steps),
                lr=args.lr,
                workdir=_stage_workdir(out, "init", recipe),
                progress=not args.quiet,
                psf=survey.pixel_psf() if model.vae_config.psf_explicit else None,
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


def register(subparsers) -> None:
    """Add the ``train`` sub-command to an ``argparse`` sub-parser collection."""
    tr = subparsers.add_parser("train", help="train the deblender's models (staged, as MADNESS)")
    tr.add_argument(
        "what",
        choices=["vae", "flow", "init", "calibrate"],
        help="vae: VAE on isolated galaxies; flow: latent prior (needs vae); "
        "init: encoder retrained on blended cutouts (needs vae); calibrate: the flux "
        "noise-bias table and the model error of the Laplace flux errors, on simulated "
        "blends (needs all three)",
    )
    tr.add_argument("--out", required=True, help="model directory (read and updated)")
    tr.add_argument("--survey", default="lsst_r", help="built-in survey to simulate (vae)")
    tr.add_argument(
        "--survey-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the survey for training (vae; repeatable), e.g. mag_min=18.5; "
        "the changed survey is stored with the model and used by the later stages",
    )
    tr.add_argument(
        "--stamps",
        help="FITS stack (n, bands, h, w) or a folder of FITS stamps, instead of the simulator",
    )
    tr.add_argument(
        "--n-stamps", type=positive_int, default=32768, help="simulated training stamps"
    )
    tr.add_argument(
        "--n-fields",
        type=positive_int,
        default=None,
        help="blended fields (init: 4096, calibrate: 256)",
    )
    tr.add_argument("--steps", type=positive_int, default=6000, help="optimiser steps")
    tr.add_argument("--batch", type=positive_int, default=64, help="batch size")
    tr.add_argument(
        "--lr", type=positive_float, default=1e-3, help="peak learning rate (cosine decay)"
    )
    tr.add_argument("--latent-dim", type=positive_int, default=16, help="latent dimension (vae)")
    tr.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=1000,
        help="save the training state every this many steps (and after the last); an "
        "interrupted run resumes from it",
    )
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.add_argument(
        "--linear-output", action="store_true", help="no ReLU on the decoder output (vae)"
    )
    tr.add_argument(
        "--psf-explicit",
        action="store_true",
        help="decoder draws galaxies before the PSF; deblending then needs the field PSF (vae)",
    )
    tr.add_argument(
        "--posterior-samples",
        type=nonnegative_int,
        default=4,
        help="flow: fit draws from q(z|x), this many per stamp (0: the posterior means)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_train)
