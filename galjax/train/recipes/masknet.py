"""Training recipe of the contaminant-mask network on injected contaminants.

:func:`make_injection_sampler` draws random tiles of clean-ish base images, injects
contaminants with :func:`galjax.sim.contaminants.inject_contaminants` and stretches
them like the network input (:func:`galjax.models.masknet.stretch_for_mask`);
:func:`train_mask_net` fits :class:`galjax.models.masknet.MaskNet` to such batches
with :func:`galjax.models.masknet.mask_loss` through :func:`galjax.train.fit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from galjax.core.checks import check_image, check_positive
from galjax.image.transforms import arcsinh_stretch, random_dihedral
from galjax.models.masknet import MaskNet, mask_loss
from galjax.sim.contaminants import InjectionConfig, inject_contaminants
from galjax.train.config import TrainConfig
from galjax.train.loop import fit
from galjax.train.state import init_state, make_train_step

__all__ = ["make_injection_sampler", "train_mask_net"]


def make_injection_sampler(
    bases, backgrounds, sigmas, tile: int, batch_size: int, config: InjectionConfig | None = None
):
    """Build ``sample(key) -> {"x", "y"}``: random tiles of base images with injections.

    Each example picks a base image, a random ``tile x tile`` crop and a random
    dihedral orientation, injects contaminants
    (:func:`~galjax.sim.contaminants.inject_contaminants`) and stretches it like
    :func:`~galjax.models.masknet.stretch_for_mask` with that base's background and sigma.

    Args:
      bases: ``(n, H, W, 1)`` clean-ish images (real fields and/or simulations),
        ``H, W >= tile``.
      backgrounds: ``(n,)`` scalar background of each base.
      sigmas: ``(n,)`` noise standard deviation of each base (> 0).
      tile: crop size in pixels.
      batch_size: examples per call.
      config: :class:`~galjax.sim.contaminants.InjectionConfig` (default settings when None).

    Returns:
      a jitted ``sample(key)`` giving ``x (b, tile, tile, 1)`` and ``y (b, tile, tile, n_classes)``.
    """
    cfg = InjectionConfig() if config is None else config
    bases = check_image("bases", bases, bands=1, min_ndim=4)
    if bases.ndim != 4:
        raise ValueError(f"bases: expected (n, H, W, 1), got shape {bases.shape}")
    n, hb, wb = bases.shape[:3]
    if hb < tile or wb < tile:
        raise ValueError(f"tile: {tile} is larger than the base images ({hb}x{wb})")
    bgs = jnp.asarray(backgrounds, jnp.float32).reshape(n)
    sig = jnp.asarray(sigmas, jnp.float32).reshape(n)
    check_positive("sigmas", sig)
    bases = bases.astype(jnp.float32)

    def one(key):
        k_i, k_y, k_x, k_rot, k_inj = jax.random.split(key, 5)
        i = jax.random.randint(k_i, (), 0, n)
        y0 = jax.random.randint(k_y, (), 0, hb - tile + 1)
        x0 = jax.random.randint(k_x, (), 0, wb - tile + 1)
        crop = jax.lax.dynamic_slice(bases[i], (y0, x0, 0), (tile, tile, 1))
        crop = random_dihedral(k_rot, crop)
        img, lab = inject_contaminants(k_inj, crop, sig[i], bgs[i], cfg)
        x = arcsinh_stretch(img - bgs[i], sig[i])
        return {"x": x, "y": lab}

    @jax.jit
    def sample(key):
        return jax.vmap(one)(jax.random.split(key, batch_size))

    return sample


def train_mask_net(
    key,
    model: MaskNet,
    sample,
    *,
    n_steps: int = 2000,
    learning_rate: float = 3e-3,
    pos_weight=None,
    batch_size: int | None = None,
    progress: bool = True,
):
    """Train ``model`` on batches from ``sample(key)`` (e.g. :func:`make_injection_sampler`).

    Loss: :func:`~galjax.models.masknet.mask_loss`; optimiser ``clip(1) + adam`` with
    a cosine decay to 5 % of ``learning_rate``; driven by :func:`galjax.train.fit`
    (metrics averaged over ``min(50, n_steps)`` steps in the history).

    Args:
      key: PRNG key (split for initialisation, a probe batch and ``fit``).
      model: the :class:`~galjax.models.masknet.MaskNet` to train.
      sample: ``sample(key) -> {"x": (b, h, w, 1), "y": (b, h, w, n_classes)}``.
      n_steps: optimiser steps.
      learning_rate: peak Adam learning rate.
      pos_weight: ``(n_classes,)`` positive-class weights of the loss, or None (all 1).
      batch_size: examples per batch (default: the probe batch's size).
      progress: show a progress bar.

    Returns:
      ``(params, history)``: the trained parameters and ``fit``'s history.
    """
    if not isinstance(model, MaskNet):
        raise TypeError(f"model: expected a MaskNet, got {type(model).__name__}")
    init_key, probe_key, fit_key = jax.random.split(key, 3)
    probe = sample(probe_key)
    bs = int(probe["x"].shape[0]) if batch_size is None else batch_size
    params = model.init(init_key, probe["x"][:1])["params"]
    sched = optax.cosine_decay_schedule(learning_rate, n_steps, alpha=0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    pw = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)

    def loss_fn(params, key, batch):
        logits = model.apply({"params": params}, batch["x"])
        return mask_loss(logits, batch["y"], pw), {}

    cfg = TrainConfig(n_steps=n_steps, batch_size=bs, log_every=max(1, min(50, n_steps)))
    state, history = fit(
        fit_key,
        init_state(params, tx),
        make_train_step(loss_fn, tx),
        sample,
        cfg,
        progress=progress,
    )
    return state.params, history
