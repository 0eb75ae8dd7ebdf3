"""Training recipe of the radio-galaxy WGAN-GP on :func:`galjax.train.fit`, with its checkpoints.

:func:`train_gan` trains the conditional WGAN-GP of :mod:`galjax.models.gan`
(Rustige et al. 2023, RASTI 2, 264) on images prepared by
:func:`galjax.io.radio.prepare_images`. One step of :func:`galjax.train.fit` is one
call of the kernel :func:`galjax.models.gan.make_gan_step`: ``n_critic`` critic
updates on ``n_critic`` real batches, then one generator update. A checkpoint is
kept every ``checkpoint_every`` steps (``run/ckpt_{step:07d}.msgpack``, all kept) for
the per-class selection of :func:`galjax.experiments.radio.evaluate_checkpoints`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from galjax.core.checks import check_labels
from galjax.core.files import atomic_write
from galjax.io.radio import CLASS_NAMES, augment_images, check_classes_present, check_gan_images
from galjax.models.gan import GANConfig, GANState, init_gan, make_gan_step
from galjax.train.checkpoint import load_checkpoint_metadata, restore_checkpoint, save_checkpoint
from galjax.train.config import TrainConfig
from galjax.train.loop import fit

__all__ = [
    "checkpoint_path",
    "list_checkpoints",
    "save_gan_checkpoint",
    "load_gan_checkpoint",
    "train_gan",
]


def checkpoint_path(run_dir, step: int) -> Path:
    """``run_dir/ckpt_{step:07d}.msgpack``."""
    return Path(run_dir) / f"ckpt_{int(step):07d}.msgpack"


def list_checkpoints(run_dir) -> list[Path]:
    """The checkpoints of a run, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir: folder {str(run_dir)!r} does not exist")
    return sorted(run_dir.glob("ckpt_*.msgpack"))


def save_gan_checkpoint(
    path, state: GANState, config: GANConfig, class_names: Sequence[str] = CLASS_NAMES
) -> Path:
    """Save a GAN state with its config and class names (atomic; see galjax.train.save_checkpoint).

    Args:
      path: file to write (e.g. :func:`checkpoint_path`).
      state: the :class:`galjax.models.gan.GANState`.
      config: its :class:`galjax.models.gan.GANConfig` (stored as metadata).
      class_names: names in label order (stored as metadata).

    Returns:
      The path written.
    """
    meta = {"gan_config": config.to_dict(), "class_names": list(class_names), "kind": "galjax-gan"}
    return save_checkpoint(path, state, meta)


def load_gan_checkpoint(path) -> tuple[GANConfig, GANState, tuple[str, ...]]:
    """Load ``(config, state, class_names)`` written by :func:`save_gan_checkpoint`."""
    meta = load_checkpoint_metadata(path)
    if "gan_config" not in meta:
        raise ValueError(f"path: {str(path)!r} is a checkpoint but not of a galjax GAN")
    config = GANConfig.from_dict(meta["gan_config"])
    state = restore_checkpoint(path, init_gan(jax.random.key(0), config))
    return config, state, tuple(meta.get("class_names", CLASS_NAMES))


def _fit_step(config: GANConfig, images, labels, batch_size: int, augment: bool) -> Callable:
    """The ``fit`` kernel ``step(key, state, None) -> (state, metrics)`` of :func:`train_gan`.

    One step draws ``n_critic * batch_size`` images uniformly with replacement (and
    augments them) inside the same jitted call as the ``n_critic`` critic updates and
    the generator update of :func:`galjax.models.gan.make_gan_step`, so XLA fuses the
    draw with the first update. ``split(key, 3)`` gives the keys of the indices, the
    augmentation and the GAN step. ``metrics["loss"]`` (watched by ``fit`` for
    NaN/inf) is the critic loss ``L_D``.
    """
    gan_step = make_gan_step(config)
    xs, ys = jnp.asarray(images), jnp.asarray(labels)
    shape = (config.n_critic, batch_size)

    def step(key, state: GANState, batch):
        del batch  # None: fit(data=None); the batches are drawn here
        k_idx, k_aug, k_step = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (shape[0] * shape[1],), 0, xs.shape[0])
        real = xs[idx]
        if augment:
            real = augment_images(k_aug, real)
        real = real.reshape(shape + real.shape[1:])
        state, metrics = gan_step(k_step, state, real, ys[idx].reshape(shape))
        return state, {**metrics, "loss": metrics["critic_loss"]}

    return step


def train_gan(
    key,
    config: GANConfig,
    images,
    labels,
    *,
    n_steps: int,
    batch_size: int = 32,
    checkpoint_every: int | None = None,
    out_dir=None,
    augment: bool = True,
    class_names: Sequence[str] = CLASS_NAMES,
    state: GANState | None = None,
    log_every: int = 25,
    progress: bool = True,
):
    """Train the conditional WGAN-GP, keeping a checkpoint every ``checkpoint_every`` steps.

    Each step draws ``n_critic`` batches uniformly from ``images`` (augmented with
    :func:`galjax.io.radio.augment_images` when ``augment``) and makes ``n_critic``
    critic updates and one generator update (:func:`galjax.models.gan.make_gan_step`),
    driven by :func:`galjax.train.fit`. Step ``t`` draws from ``fold_in(k, t)`` with
    ``k = split(key)[1]`` (``split(key)[0]`` initialises the networks; fit's
    ``step_keys``), so a run continued from a checkpoint's ``state`` goes on exactly
    as an uninterrupted one.

    Args:
      key: PRNG key.
      config: :class:`galjax.models.gan.GANConfig`.
      images: ``(n, size, size, 1)`` float32 in [-1, 1], ``size = config.image_size``.
      labels: ``(n,)`` int classes in ``[0, config.n_classes)``; every class present.
      n_steps: generator updates to reach (counted from ``state.step``).
      batch_size: images per critic batch.
      checkpoint_every: save ``out_dir/ckpt_{step:07d}.msgpack`` every this many steps
        (and at the end); all are kept for
        :func:`galjax.experiments.radio.evaluate_checkpoints`.
      out_dir: run folder (needed for checkpoints); ``history.json`` is written there.
      augment: random flips and rotations.
      class_names: stored in the checkpoints.
      state: continue from this state instead of a fresh :func:`galjax.models.gan.init_gan`.
      log_every: record the metrics of every this many steps (and of the last one).
      progress: tqdm progress bar (one per checkpoint interval).

    Returns:
      ``(state, history, checkpoints)``: final :class:`galjax.models.gan.GANState`;
      dict with lists ``step``, ``critic_loss``, ``wasserstein``, ``gp``,
      ``gen_loss`` (the metrics of the recorded steps) and ``seconds`` (since the
      start); list of checkpoint paths.

    Raises:
      FloatingPointError: a loss became NaN or infinite.
    """
    if not isinstance(config, GANConfig):
        raise TypeError(f"config: expected a GANConfig, got {type(config).__name__}")
    x = check_gan_images("images", images, config.image_size, config.bands)
    y = check_labels("labels", labels, config.n_classes, x.shape[0])
    check_classes_present(y, config.n_classes, "labels")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps!r}")
    if batch_size < 1 or batch_size > x.shape[0]:
        raise ValueError(f"batch_size: expected 1..{x.shape[0]}, got {batch_size}")
    if checkpoint_every is not None and (checkpoint_every < 1 or out_dir is None):
        raise ValueError("checkpoint_every: expected a positive integer together with out_dir")
    if len(class_names) != config.n_classes:
        raise ValueError(f"class_names: expected {config.n_classes} names, got {len(class_names)}")
    k_init, k_train = jax.random.split(key)
    state = init_gan(k_init, config) if state is None else state
    step = _fit_step(config, x, y, batch_size, augment)

    def step_keys(t):  # no batch to draw outside the step (data=None)
        return None, jax.random.fold_in(k_train, t)

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    names = ("critic_loss", "wasserstein", "gp", "gen_loss")
    history: dict[str, list] = {k: [] for k in ("step", *names, "seconds")}
    ckpts: list[Path] = []
    start = int(state.step)
    # fit runs to each checkpoint step in turn (its per-step keys make that exact).
    ends = [n_steps] if n_steps > start else []
    if checkpoint_every is not None:
        ends = [s for s in range(checkpoint_every, n_steps, checkpoint_every) if s > start] + ends
    t0 = time.perf_counter()
    for end in ends:
        offset = time.perf_counter() - t0
        config_fit = TrainConfig(n_steps=end, batch_size=batch_size, log_every=1)
        state, fit_history = fit(k_train, state, step, None, config_fit, progress=progress,
                                 step_keys=step_keys)  # fmt: skip
        for rec in fit_history["train"]:
            done = rec["step"]
            if done % log_every == 0 or done == n_steps:
                if not all(math.isfinite(rec[k]) for k in names):
                    raise FloatingPointError(f"GAN training diverged at step {done}: {rec}")
                history["step"].append(done)
                for k in names:
                    history[k].append(rec[k])
                history["seconds"].append(offset + rec["elapsed_s"])
        if checkpoint_every is not None:
            ckpts.append(save_gan_checkpoint(checkpoint_path(out, end), state, config, class_names))
    if out is not None:
        text = json.dumps({"config": config.to_dict(), **history}, indent=1) + "\n"
        atomic_write(out / "history.json", lambda p: p.write_text(text))
    return state, history, ckpts
