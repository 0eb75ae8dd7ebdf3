"""Training recipes for the galaxy deblending models: data, losses and the staged
MADNESS schedule.

1. :func:`train_vae`: the VAE on isolated simulated galaxies (noise drawn afresh
   for every batch; denoising target by default).
2. :func:`train_flow`: the flow prior on samples of the encoder's aggregate posterior.
3. :func:`train_init_encoder`: a copy of the encoder retrained on cutouts of
   blended fields (decoder frozen) to initialise the MAP deblender.

Each recipe is a thin composition of :func:`galjax.train.fit` with a loss
function; the command line (``galjax train``) records the configs and seeds. The
calibration of the deblender's flux errors runs the deblender, so it lives with it
(:func:`galjax.deblend.calibrate_flux_errors`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.chunks import chunked_map, pad_chunk
from galjax.image.transforms import cutouts
from galjax.models.flow import FlowConfig, init_flow, log_prior
from galjax.models.vae import VAEConfig, decode, elbo, encode, init_vae
from galjax.sim.blend import simulate_field
from galjax.sim.galaxy import render_galaxy
from galjax.sim.noise import noise_variance
from galjax.sim.psf import convolve_fft
from galjax.sim.survey import Survey, sample_galaxy
from galjax.train.config import TrainConfig
from galjax.train.loop import fit
from galjax.train.state import init_state, make_train_step

__all__ = [
    "make_stamps",
    "make_blend_cutouts",
    "vae_loss",
    "train_vae",
    "encode_dataset",
    "train_flow",
    "train_init_encoder",
]


def _map_keys(fn, keys, chunk: int, progress: bool, desc: str):
    """``fn(keys)`` in chunks compiled for ``chunk`` keys, also when there are fewer
    (a single short chunk is padded too: the simulator's floats depend on the compiled
    batch size, so a dataset does not change with ``n``); numpy outputs."""
    n = keys.shape[0]
    keys = pad_chunk([keys], max(n, chunk))[0]
    out = chunked_map(jax.jit(fn), keys, chunk_size=chunk, progress=progress, desc=desc)
    return jax.tree.map(lambda a: a[:n], out)


def make_stamps(key, survey: Survey, n: int, chunk: int = 512, progress: bool = True):
    """Noiseless isolated galaxies centred exactly on the stamp centre.

    Args:
      key: PRNG key.
      survey: the :class:`~galjax.sim.Survey` whose galaxies, PSF and stamp size
        ``s`` are drawn.
      n: number of stamps.
      chunk: stamps per compiled call (memory bound); default 512.
      progress: show a progress bar.

    Returns:
      ``{"image": (n, s, s, bands), "flux": (n, bands)}`` numpy arrays (convolved
      with the survey PSF; fluxes in the survey's counts).
    """
    s = survey.stamp_size
    c = (s - 1) / 2.0
    psf = survey.psf()

    def one(k):
        p = sample_galaxy(k, survey, x=c, y=c)
        img = render_galaxy(p, s, s, psf, survey.render.oversample, survey.render, survey.n_arms)
        return {"image": img, "flux": p.flux}

    return _map_keys(jax.vmap(one), jax.random.split(key, n), chunk, progress, "rendering stamps")


def make_blend_cutouts(
    key, survey: Survey, n_fields: int, n_max: int = 4, chunk: int = 128, progress: bool = True
):
    """Cutouts around every source of simulated blended fields, with their truth.

    Args:
      key: PRNG key.
      survey: the :class:`~galjax.sim.Survey` simulated (stamp size ``s``).
      n_fields: simulated fields.
      n_max: most sources per field; default 4.
      chunk: fields per compiled call; default 128.
      progress: show a progress bar.

    Returns:
      numpy ``{"cutout": (m, s, s, b)`` noisy blended, ``"target": (m, s, s, b)`` the
      source alone (noiseless), ``"sigma": (m, s, s, b)}`` the noise standard
      deviation (0 outside the field), ``m`` the number of real sources.
    """
    s = survey.stamp_size
    psf = survey.psf()

    def one(k):
        f = simulate_field(k, survey, n_max, psf=psf)
        cut = cutouts(f.image, f.positions, s)
        sig = cutouts(f.sigma, f.positions, s)
        tgt = jax.vmap(lambda src, xy: cutouts(src, xy[None], s)[0])(f.sources, f.positions)
        return {"cutout": cut, "target": tgt, "sigma": sig, "mask": f.mask}

    keys = jax.random.split(key, n_fields)
    out = _map_keys(jax.vmap(one), keys, chunk, progress, "simulating blends")
    m = out.pop("mask").reshape(-1)
    return {k: v.reshape((-1,) + v.shape[2:])[m] for k, v in out.items()}


def vae_loss(config: VAEConfig, survey: Survey, kl_weight: float = 1.0, denoise: bool = True):
    """``loss_fn(params, key, batch)`` = mean negative ELBO per pixel, noise drawn afresh.

    ``batch["image"]`` holds noiseless stamps ``(b, s, s, bands)``; the noise is
    ``N(0, sky^2 + image / gain)``. With ``denoise`` the likelihood scores the
    noiseless image (MADNESS), otherwise the noisy one (Regier et al.). An
    explicit-PSF model (``config.psf_explicit``) draws the galaxy before the PSF
    and is scored after convolution with the survey's pixel-level effective PSF
    (:meth:`~galjax.sim.Survey.pixel_psf`; ``Survey.psf()`` is the sub-pixel one).

    Args:
      config: the VAE's :class:`~galjax.models.VAEConfig`.
      survey: the survey whose noise (``sky_sigma``, ``gain``) is drawn.
      kl_weight: weight of the KL term (beta-VAE), >= 0; default 1.
      denoise: score the noiseless image; default True.

    Returns:
      ``loss_fn(params, key, batch) -> (loss, {"nll_per_pixel", "kl"})``, the loss the
      negative ELBO per pixel value, averaged over the batch.
    """
    sky = jnp.asarray(survey.sky_sigma, jnp.float32)
    psf = survey.pixel_psf() if config.psf_explicit else None  # pixel level, like the stamps
    npix = config.stamp_size**2 * config.bands

    def loss_fn(params, key, batch):
        k_noise, k_z = jax.random.split(key)
        clean = batch["image"]
        sigma = jnp.sqrt(noise_variance(clean, sky, survey.gain))
        noisy = clean + sigma * jax.random.normal(k_noise, clean.shape, clean.dtype)
        target = clean if denoise else noisy
        t = elbo(
            k_z, params, config, noisy, target=target, sigma=sigma, psf=psf, kl_weight=kl_weight
        )
        loss = -jnp.mean(t.elbo) / npix
        return loss, {"nll_per_pixel": -jnp.mean(t.loglik) / npix, "kl": jnp.mean(t.kl)}

    return loss_fn


def _adam(lr: float, n_steps: int):
    sched = optax.cosine_decay_schedule(lr, n_steps, alpha=0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))


def train_vae(
    key,
    stamps,
    survey: Survey,
    config: VAEConfig,
    train: TrainConfig,
    lr: float = 1e-3,
    kl_weight: float = 1.0,
    denoise: bool = True,
    eval_stamps=None,
    workdir=None,
    progress: bool = True,
):
    """Fit the VAE to noiseless stamps, noise drawn afresh for every batch (:func:`vae_loss`).

    Adam with a cosine-decayed learning rate (down to 5 % of ``lr``) and gradients
    clipped at global norm 1.

    Args:
      key: PRNG key (initialisation and training).
      stamps: ``{"image": (n, s, s, bands)}`` noiseless stamps (:func:`make_stamps`).
      survey: the survey whose noise is drawn.
      config: the VAE's :class:`~galjax.models.VAEConfig`.
      train: :class:`~galjax.train.TrainConfig` (steps, batch size, ...).
      lr: peak learning rate; default 1e-3.
      kl_weight, denoise: as for :func:`vae_loss`.
      eval_stamps: optional held-out stamps, scored during training.
      workdir: folder for logs and checkpoints (None: none).
      progress: show a progress bar.

    Returns:
      ``(params, history)``.
    """
    k_init, k_fit = jax.random.split(key)
    tx = _adam(lr, train.n_steps)
    loss_fn = vae_loss(config, survey, kl_weight, denoise)
    state = init_state(init_vae(k_init, config), tx)
    step = make_train_step(loss_fn, tx)
    eval_fn = None
    if eval_stamps is not None:
        eval_fn = lambda k, st, b: (
            loss_fn(st.params, k, b)[1] | {"loss": loss_fn(st.params, k, b)[0]}
        )
    state, hist = fit(
        k_fit,
        state,
        step,
        stamps,
        train,
        eval_fn=eval_fn,
        eval_data=eval_stamps,
        workdir=workdir,
        progress=progress,
    )
    return state.params, hist


def encode_dataset(params, config: VAEConfig, images, chunk: int = 1024, key=None,
                   n_samples: int = 0):  # fmt: skip
    """Latents of many images, in chunks (numpy).

    With ``n_samples = 0`` the posterior means ``g_mu(x)``, ``(n, latent_dim)``. With
    ``n_samples = k > 0`` (and a ``key``) ``k`` draws per image from
    ``q(z | x) = N(g_mu, g_sigma^2)``, ``(k * n, latent_dim)``: samples of the aggregate
    posterior, which fills the volume a MAP latent explores where the means lie on
    a thin sheet.

    Args:
      params, config: the VAE.
      images: ``(n, s, s, bands)`` images in flux units.
      chunk: images per call; default 1024.
      key: PRNG key of the draws (needed when ``n_samples > 0``).
      n_samples: draws per image, >= 0; default 0 (the means).

    Returns:
      ``(n, latent_dim)`` or ``(n_samples * n, latent_dim)`` numpy latents.
    """
    f = jax.jit(lambda x: encode(params, config, x))
    mu, log_sigma = chunked_map(f, images, chunk_size=chunk, pad=False)
    sigma = np.exp(log_sigma)
    if n_samples == 0:
        return mu
    if key is None or n_samples < 0:
        raise ValueError("n_samples: draws need a key and n_samples >= 0")
    eps = np.asarray(jax.random.normal(key, (n_samples, *mu.shape), mu.dtype))
    return (mu[None] + sigma[None] * eps).reshape(-1, mu.shape[-1])


def train_flow(
    key,
    latents,
    config: FlowConfig,
    train: TrainConfig,
    lr: float = 1e-3,
    workdir=None,
    progress: bool = True,
):
    """Fit the flow prior to latents by maximum likelihood.

    Minimises ``-mean log p(z) / dim`` with the optimiser of :func:`train_vae`.

    Args:
      key: PRNG key (initialisation and training).
      latents: ``(n, dim)`` samples (:func:`encode_dataset`).
      config: the flow's :class:`~galjax.models.FlowConfig`.
      train: :class:`~galjax.train.TrainConfig`.
      lr: peak learning rate; default 1e-3.
      workdir: folder for logs and checkpoints (None: none).
      progress: show a progress bar.

    Returns:
      ``(params, history)``.
    """
    k_init, k_fit = jax.random.split(key)
    tx = _adam(lr, train.n_steps)

    def loss_fn(params, key, batch):
        lp = log_prior(params, config, batch["z"])
        return -jnp.mean(lp) / config.dim, {}

    state = init_state(init_flow(k_init, config), tx)
    state, hist = fit(
        k_fit,
        state,
        make_train_step(loss_fn, tx),
        {"z": jnp.asarray(latents)},
        train,
        workdir=workdir,
        progress=progress,
    )
    return state.params, hist


def train_init_encoder(
    key,
    vae_params,
    config: VAEConfig,
    cutouts,
    train: TrainConfig,
    lr: float = 5e-4,
    workdir=None,
    progress: bool = True,
    psf=None,
):
    """Retrain the encoder on blended cutouts with the decoder frozen (MADNESS stage 3).

    Loss: ``chi^2(target, f_mu(g_mu(cutout))) / n_pixels`` with the cutouts' noise,
    optimised as in :func:`train_vae` with the decoder's updates set to zero.

    Args:
      key: PRNG key of the training.
      vae_params, config: the trained VAE.
      cutouts: ``{"cutout", "target", "sigma"}``, each ``(m, s, s, bands)``
        (:func:`make_blend_cutouts`).
      train: :class:`~galjax.train.TrainConfig`.
      lr: peak learning rate; default 5e-4.
      workdir: folder for logs and checkpoints (None: none).
      progress: show a progress bar.
      psf: ``(ph, pw, bands)`` the cutouts' PSF, needed by explicit-PSF models.

    Returns:
      ``(params, history)``: the full VAE parameter tree with the new encoder.
    """
    if config.psf_explicit and psf is None:
        raise ValueError("psf: this model has psf_explicit=True; give the cutouts' PSF")
    tx = optax.multi_transform(
        {"train": _adam(lr, train.n_steps), "frozen": optax.set_to_zero()},
        {k: ("train" if k == "encoder" else "frozen") for k in vae_params},
    )
    npix = config.stamp_size**2 * config.bands

    def loss_fn(params, key, batch):
        mu, _ = encode(params, config, batch["cutout"])
        f_mu, _ = decode(params, config, mu)
        if config.psf_explicit:
            f_mu = convolve_fft(f_mu, psf)
        # Cutouts reaching past the field edge have sigma = 0 there: weight 0, not inf.
        sig = batch["sigma"]
        ivar = jnp.where(sig > 0, 1.0 / jnp.where(sig > 0, sig, 1.0) ** 2, 0.0)
        chi2 = jnp.sum((batch["target"] - f_mu) ** 2 * ivar, axis=(-3, -2, -1))
        return jnp.mean(chi2) / npix, {}

    state = init_state(vae_params, tx)
    state, hist = fit(
        key, state, make_train_step(loss_fn, tx), cutouts, train, workdir=workdir, progress=progress
    )
    return state.params, hist
