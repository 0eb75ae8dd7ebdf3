"""Training recipes for the galaxy models: data, losses and the staged MADNESS schedule.

1. :func:`train_vae`: the VAE on isolated simulated galaxies (noise drawn afresh
   for every batch; denoising target by default).
2. :func:`train_flow`: the flow prior on samples of the encoder's aggregate posterior.
3. :func:`train_init_encoder`: a copy of the encoder retrained on cutouts of
   blended fields (decoder frozen) to initialise the MAP deblender.

Each recipe is a thin composition of :func:`galjax.train.fit` with a loss
function; the command line (``galjax train``) records the configs and seeds.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..models.flow import FlowConfig, init_flow, log_prior
from ..models.vae import VAEConfig, decode, elbo, encode, init_vae
from ..sim.blend import simulate_field
from ..sim.galaxy import render_galaxy
from ..sim.noise import noise_variance
from ..sim.psf import convolve_fft
from ..sim.survey import Survey, sample_galaxy
from galjax.image.transforms import cutouts
from .config import TrainConfig
from .loop import fit
from .state import init_state, make_train_step

__all__ = [
    "make_stamps",
    "make_blend_cutouts",
    "vae_loss",
    "train_vae",
    "encode_dataset",
    "train_flow",
    "train_init_encoder",
    "calibrate_flux_errors",
]


def _batched(fn, keys, chunk: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    out = []
    rng = range(0, keys.shape[0], chunk)
    for i in tqdm(rng, desc=desc, disable=not progress):
        k = keys[i : i + chunk]
        n = k.shape[0]
        if n < chunk:  # pad to keep one compiled shape
            k = jnp.concatenate([k, jnp.broadcast_to(k[:1], (chunk - n,))])
        out.append(jax.tree.map(lambda a, n=n: np.asarray(a[:n]), fn(k)))
    return jax.tree.map(lambda *a: np.concatenate(a), *out)


def make_stamps(key, survey: Survey, n: int, chunk: int = 512, progress: bool = True):
    """Noiseless isolated galaxies centred exactly on the stamp centre.

    Returns ``{"image": (n, s, s, bands), "flux": (n, bands)}`` numpy arrays
    (PSF-convolved with the survey PSF).
    """
    s = survey.stamp_size
    c = (s - 1) / 2.0
    psf = survey.psf()

    def one(k):
        p = sample_galaxy(k, survey, x=c, y=c)
        img = render_galaxy(p, s, s, psf, survey.render.oversample, survey.render, survey.n_arms)
        return {"image": img, "flux": p.flux}

    keys = jax.random.split(key, n)
    return _batched(jax.jit(jax.vmap(one)), keys, chunk, progress, "rendering stamps")


def make_blend_cutouts(
    key, survey: Survey, n_fields: int, n_max: int = 4, chunk: int = 128, progress: bool = True
):
    """Cutouts around every source of simulated blended fields, with their truth.

    Returns numpy ``{"cutout": (m, s, s, b) noisy blended, "target": (m, s, s, b)
    the source alone (noiseless), "sigma": (m, s, s, b)}``, ``m`` = number of real
    sources.
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
    out = _batched(jax.jit(jax.vmap(one)), keys, chunk, progress, "simulating blends")
    m = out.pop("mask").reshape(-1)
    return {k: v.reshape((-1,) + v.shape[2:])[m] for k, v in out.items()}


def vae_loss(config: VAEConfig, survey: Survey, kl_weight: float = 1.0, denoise: bool = True):
    """``loss_fn(params, key, batch)`` = mean negative ELBO per pixel, noise drawn afresh.

    ``batch["image"]`` holds noiseless stamps; the noise is
    ``N(0, sky^2 + image / gain)``. With ``denoise`` the likelihood scores the
    noiseless image (MADNESS), otherwise the noisy one (Regier et al.). An
    explicit-PSF model (``config.psf_explicit``) draws the galaxy before the PSF
    and is scored after convolution with the survey's pixel-level effective PSF
    (:meth:`~galjax.sim.Survey.pixel_psf`; ``Survey.psf()`` is the sub-pixel one).
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
    """Fit the VAE to noiseless stamps (noise added per batch); returns ``(params, history)``."""
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
    """
    f = jax.jit(lambda x: encode(params, config, x))
    mus, sigmas = [], []
    for i in range(0, len(images), chunk):
        mu, log_sigma = f(images[i : i + chunk])
        mus.append(np.asarray(mu))
        sigmas.append(np.exp(np.asarray(log_sigma)))
    mu, sigma = np.concatenate(mus), np.concatenate(sigmas)
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
    """Fit the flow prior to latents ``(n, dim)`` by maximum likelihood."""
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

    Loss: ``chi^2(target, f_mu(g_mu(cutout))) / n_pixels`` with the cutouts' noise;
    returns the full VAE parameter tree with the new encoder. Explicit-PSF
    models need ``psf`` ``(ph, pw, bands)``, the PSF of the cutouts.
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


def calibrate_flux_errors(key, model, survey: Survey, n_fields: int = 256, config=None,
                          snr_min: float = 10.0, progress: bool = True) -> dict:  # fmt: skip
    """Calibrate the flux noise bias and the Laplace model error on simulations.

    Simulates ``n_fields`` blended fields of ``survey`` (1-4 galaxies) and deblends
    them without debiasing. Then:

    1. tabulates the noise bias ``<dF/F>`` against each source's measured SNR
       (:func:`~galjax.deblend.fit_flux_bias`, all sources and bands) and divides
       it out (:func:`~galjax.deblend.debias_fluxes`);
    2. finds with :func:`~galjax.deblend.calibrate_model_error` the fractional error
       that, added in quadrature to the statistical Laplace error of the debiased
       fluxes, puts the true flux of 68.3 % of the galaxies with ``SNR >= snr_min``
       (all bands) inside the 1-sigma interval.

    Use fields the results are not checked on.

    Returns:
      dict with ``flux_bias`` (the bias table, or None when too few sources are
      within 50 % of their true flux to tabulate it; for
      ``model.meta["flux_bias"]``), ``flux_model_error``, ``coverage_statistical``
      (coverage with no model error), the mean signed ``dF/F`` before and after the
      bias correction, ``n_galaxies``, ``n_fields``, ``snr_min`` and the deblend config.
    """
    from ..deblend import (
        DeblendConfig,
        calibrate_model_error,
        debias_fluxes,
        deblend,
        fit_flux_bias,
        laplace_flux_errors,
        model_snr,
    )
    from ..sim.blend import simulate_fields

    cfg = dataclasses.replace(config or DeblendConfig(), debias=False)
    truth = simulate_fields(key, n_fields, survey, n_max=4, progress=progress)
    sigma = np.sqrt(noise_variance(truth.image, np.asarray(survey.sky_sigma), survey.gain))
    ivar = 1.0 / sigma**2
    psf = survey.pixel_psf() if model.vae_config.psf_explicit else None
    res = deblend(model, truth.image, truth.positions, truth.mask, sigma=sigma, psf=psf,
                  config=cfg, progress=progress)  # fmt: skip
    true_flux = truth.sources.sum(axis=(2, 3))
    real = truth.mask & (true_flux[..., 0] > 0)
    snr = np.asarray(model_snr(res.models, ivar))
    dflux = (res.fluxes - true_flux)[real] / true_flux[real]
    try:
        table = fit_flux_bias(snr[real], dflux)
    except ValueError as exc:  # e.g. an untrained model: nearly every flux is far off
        warnings.warn(f"flux bias not calibrated: {exc}", stacklevel=2)
        table = None
    if table is not None:
        res = jax.tree.map(np.asarray, debias_fluxes(res, ivar, table))
    err = laplace_flux_errors(model, res, truth.positions, ivar, psf, model_error=0.0)
    sel = truth.mask & (truth.snr >= snr_min)
    flux, err, tf = np.asarray(res.fluxes)[sel], err[sel], true_flux[sel]
    if flux.size == 0:
        raise ValueError(f"n_fields: no galaxy with SNR >= {snr_min} in {n_fields} fields")
    s = calibrate_model_error(flux, err, tf)
    debiased = (res.fluxes - true_flux)[real] / true_flux[real]
    near = np.abs(dflux) <= 0.5
    return {
        "flux_bias": table,
        "flux_model_error": s,
        "coverage_statistical": float(np.mean(np.abs(flux - tf) <= err)),
        # Mean signed dF/F of the sources within 50 % of their true flux.
        "mean_dflux_raw": float(np.mean(dflux[near])) if near.any() else None,
        "mean_dflux_debiased": float(np.mean(debiased[near])) if near.any() else None,
        "n_galaxies": int(sel.sum()),
        "n_fields": n_fields,
        "snr_min": snr_min,
        "deblend_config": dataclasses.replace(cfg, debias=True).to_dict(),
    }
