"""Regier et al.'s comparison: a VAE with a per-pixel Gaussian likelihood vs a fitted 2-D Gaussian.

A VAE with the talk's architecture (MLP, two hidden layers of 128 ReLU units, 8-d
latent, learned per-pixel ``f_sigma``) is trained on noisy simulated stamps (the
likelihood scores the noisy image, as in the talk). On held-out galaxies we count

- ``frac_lower_mse``: the VAE reconstruction ``f_mu(g_mu(x))`` has a lower mean
  squared error against the pixels than a least-squares bivariate Gaussian fit;
- ``frac_more_probable``: ``log N(x; f_mu, f_sigma^2)`` exceeds
  ``max_sigma log N(x; gaussian fit, sigma^2 I)``, i.e. the pixels are more probable
  under the VAE than under the Gaussian fit for every sigma;
- the same two with the VAE's latent fitted to each image (``*_fitted``: 200 Adam
  steps on ``-log N(x; f_mu(z), f_sigma(z)^2) + |z|^2/2`` from ``g_mu(x)``, the centre
  held where the Gaussian put it), the VAE's counterpart of the Gaussian's per-image fit;
- the same two with the fit the Gaussian gets (``*_fitted_xy``): the centre fitted too
  (a sub-pixel shift of the decoded image) and each criterion scored after the fit of
  its own objective, the weighted least squares ``chi^2 / 2 + |z|^2 / 2`` (by which the
  Gaussian is fitted) for the MSE and the likelihood above for the likelihood.

Two settings: held-out SDSS-like 69x69 simulated galaxies (the talk's), and the
100 real COSMOS HST F814W stamps of ``../shared/data/cosmos_hst_f814w_100`` scored by
the same architecture trained on HST-like simulations at their pixel scale (0.03"),
stamps cropped/padded to 64x64 (padded pixels are left out of every sum),
divided by the stamp's noise std and centred on their galaxy (:func:`_recentre`), with
the training population's magnitudes and sizes matched to the sample's catalogue
(``--population matched``). Every fraction is also given per SNR bin. Talk: 97.1 %
(MSE) and 97.2 % (likelihood), on images "cropped around one prominent galaxy".

    python benchmarks/vae_vs_gaussian.py              # about 40 minutes on 2 cores
    python benchmarks/vae_vs_gaussian.py --steps 4000 # the short budget, ~5 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import RESULTS_DIR, format_table, machine_info, write_json

from galjax.fit import fit_gaussian, gaussian_best_sigma_loglik
from galjax.image.transforms import random_dihedral
from galjax.models.vae import REGIER_MLP, decode, elbo, encode, gaussian_loglik, init_vae
from galjax.sim import HST_F814W, SDSS_R, noise_variance
from galjax.train import (
    TrainConfig,
    load_checkpoint_metadata,
    restore_checkpoint,
    save_checkpoint,
)
from galjax.train.recipes import make_stamps, train_vae

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cosmos_hst_f814w_100"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
SNR_BINS = (0.0, 20.0, 50.0, 100.0, 200.0, np.inf)
# "Prominent" galaxies, the talk's selection ("cropped around one prominent galaxy"):
# SNR of the Gaussian fit >= 50, about the median of the real COSMOS sample.
PROMINENT_SNR = 50.0


def _noisy(key, clean, survey):
    sigma = np.sqrt(noise_variance(clean, np.asarray(survey.sky_sigma), survey.gain))
    return clean + sigma * np.asarray(jax.random.normal(key, clean.shape)), sigma


def _train(key, survey, n_train, n_steps, batch):
    """Train the talk's MLP VAE on ``survey``'s noisy stamps (cached in ``benchmarks/.cache``).

    The cache key is the survey, the budget and the key's data, so a re-run with the
    same arguments re-scores without retraining.
    """
    cfg = dataclasses.replace(REGIER_MLP, stamp_size=survey.stamp_size)
    tag = hashlib.sha1(
        repr((survey, cfg, n_train, n_steps, batch, jax.random.key_data(key).tolist())).encode()
    ).hexdigest()[:12]
    cache = CACHE_DIR / f"vae_{survey.name}_{tag}.msgpack"
    if cache.exists():
        params = restore_checkpoint(cache, init_vae(jax.random.key(0), cfg))
        return cfg, params, load_checkpoint_metadata(cache)["train"]
    k_data, k_fit = jax.random.split(key)
    stamps = make_stamps(k_data, survey, n_train)
    t0 = time.perf_counter()
    params, hist = train_vae(
        k_fit,
        {"image": stamps["image"]},
        survey,
        cfg,
        TrainConfig(n_steps=n_steps, batch_size=batch, log_every=250, eval_every=10**9),
        lr=1e-3,
        denoise=False,
    )
    last = hist["train"][-1]
    info = {
        "train_s": time.perf_counter() - t0,
        "n_train": n_train,
        "n_steps": n_steps,
        "batch": batch,
        "final_nll_per_pixel": float(last["nll_per_pixel"]),
    }
    save_checkpoint(cache, params, {"train": info})
    return cfg, params, info


def _shift(img, offset):
    """Shift ``(n, h, w, c)`` images by sub-pixel ``offset (n, 2) = (dx, dy)`` (Lanczos-3)."""

    def one(im, off):
        return jax.image.scale_and_translate(
            im, im.shape, (0, 1), jnp.ones(2, im.dtype), off[::-1].astype(im.dtype),
            method="lanczos3", antialias=False,
        )  # fmt: skip

    return jax.vmap(one)(img, offset)


def _decode_at(params, cfg, z, offset=None):
    """``f_mu, log f_sigma`` of latents ``z (n, d)``, shifted by ``offset (n, 2)`` if given."""
    f_mu, f_ls = decode(params, cfg, z)
    if offset is None:
        return f_mu, f_ls
    return _shift(f_mu, offset), _shift(f_ls, offset)


def _fit_latents(params, cfg, x, mask, z0, n_steps: int, lr: float = 0.05, offset=None,
                 objective: str = "loglik", sigma=None, fit_centre: bool = False):  # fmt: skip
    """Per-image MAP latent fit, the VAE's counterpart of the Gaussian's per-image fit.

    Minimises, by Adam from the encoder's ``g_mu(x)`` (vmapped over images),

    - ``objective="loglik"``: ``-log N(x; f_mu(z), f_sigma(z)^2) + |z|^2 / 2``;
    - ``objective="chi2"``: ``sum_p m_p (x_p - f_mu(z)_p)^2 / (2 sigma_p^2) + |z|^2 / 2``,
      the weighted least squares the bivariate Gaussian is fitted by.

    The decoded images are placed at ``offset (n, 2) = (dx, dy)`` pixels from the stamp
    centre; with ``fit_centre`` a sub-pixel shift is fitted on top of it, as the
    Gaussian fits its centre. Returns ``z (n, d)`` and the final offsets ``(n, 2)``.
    """
    tx = optax.adam(lr)
    if offset is None:
        offset = jnp.zeros((len(x), 2), jnp.float32)
    if sigma is None:
        sigma = jnp.ones_like(x)

    def one(xi, mi, si, zi, oi):
        def loss(p):
            z, dxy = p
            f_mu, f_ls = _decode_at(params, cfg, z[None], (oi + dxy)[None])
            if objective == "loglik":
                nll = -gaussian_loglik(xi[None], f_mu, log_sigma=f_ls, mask=mi[None])[0]
            else:
                nll = 0.5 * jnp.sum(mi * ((xi - f_mu[0]) / si) ** 2)
            return nll + 0.5 * z @ z

        def step(carry, _):
            p, opt = carry
            z_grad, xy_grad = jax.grad(loss)(p)
            grad = (z_grad, xy_grad if fit_centre else jnp.zeros_like(xy_grad))
            upd, opt = tx.update(grad, opt, p)
            return (optax.apply_updates(p, upd), opt), None

        p0 = (zi, jnp.zeros(2, zi.dtype))
        ((z, dxy), _), _ = jax.lax.scan(step, (p0, tx.init(p0)), None, length=n_steps)
        return z, oi + dxy

    fn = jax.jit(jax.vmap(one))
    parts = [fn(x[i : i + 100], mask[i : i + 100], sigma[i : i + 100], z0[i : i + 100],
                offset[i : i + 100]) for i in range(0, len(x), 100)]  # fmt: skip
    return jnp.concatenate([p[0] for p in parts]), jnp.concatenate([p[1] for p in parts])


def _by_snr(snr, flags: dict) -> list[dict]:
    """Fractions of each boolean per-image flag in the bins of :data:`SNR_BINS`."""
    rows = []
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:], strict=True):
        sel = (snr >= lo) & (snr < hi)
        row = {"snr_min": lo, "snr_max": None if np.isinf(hi) else hi, "n": int(sel.sum())}
        for name, flag in flags.items():
            row[f"frac_{name}"] = float(flag[sel].mean()) if sel.any() else None
        rows.append(row)
    return rows


def _compare(params, cfg, x, sigma, mask, fit_steps: int = 0, per_image: bool = False,
             offset=None, fit_centre: bool = True):  # fmt: skip
    """Per-image MSE and log-likelihood of the VAE and of the Gaussian fit (masked pixels).

    The VAE is scored at the encoder's ``g_mu(x)`` (amortised) and, with ``fit_steps``,
    at the per-image latent fit of :func:`_fit_latents` (``*_fitted`` keys: likelihood,
    centre held), and with ``fit_centre`` also at the fits with a free centre, least squares
    for the MSE and likelihood for the likelihood (``*_fitted_xy`` keys). Each
    image's signal-to-noise ratio is that of its Gaussian fit,
    ``SNR = sqrt(sum_p m_p xhat_p^2 / sigma_p^2)`` (the same definition for simulated
    and real images), and every fraction is also given per SNR bin (``by_snr``) and for
    the prominent galaxies, SNR >= :data:`PROMINENT_SNR` (``prominent``).
    With ``offset (n, 2)`` the VAE's images are placed at that sub-pixel offset from
    the stamp centre (see :func:`_cosmos`).
    """
    mu, _ = jax.jit(lambda v: encode(params, cfg, v))(x)
    decode_at = jax.jit(lambda z, o: _decode_at(params, cfg, z, o))
    f_mu, f_ls = decode_at(mu, offset)
    m = jnp.asarray(mask, jnp.float32)
    npix = jnp.sum(m, axis=(-3, -2, -1))
    ll_vae = gaussian_loglik(x, f_mu, log_sigma=f_ls, mask=m)
    fits = [
        fit_gaussian(
            x[i : i + 100], sigma=sigma[i : i + 100], pixel_mask=mask[i : i + 100], n_steps=300
        )
        for i in range(0, len(x), 100)
    ]
    g_model = jnp.concatenate([f.model for f in fits])
    snr = np.sqrt(np.asarray(jnp.sum(m * (g_model / sigma) ** 2, axis=(-3, -2, -1))))
    ll_gauss = gaussian_best_sigma_loglik(x, g_model, mask=m)
    mse_vae = jnp.sum(m * (x - f_mu) ** 2, axis=(-3, -2, -1)) / npix
    mse_gauss = jnp.sum(m * (x - g_model) ** 2, axis=(-3, -2, -1)) / npix
    flags = {
        "lower_mse": np.asarray(mse_vae < mse_gauss),
        "more_probable": np.asarray(ll_vae > ll_gauss),
    }
    out = {
        "n_images": len(x),
        "frac_lower_mse": float(flags["lower_mse"].mean()),
        "frac_more_probable": float(flags["more_probable"].mean()),
        "median_mse_ratio_vae_over_gauss": float(np.median(np.asarray(mse_vae / mse_gauss))),
        "median_dloglik_per_pixel": float(np.median(np.asarray((ll_vae - ll_gauss) / npix))),
        "snr_percentiles_10_50_90": [float(v) for v in np.percentile(snr, [10, 50, 90])],
    }
    if fit_steps > 0:
        z, _ = _fit_latents(params, cfg, x, m, mu, fit_steps, offset=offset)
        f_mu, f_ls = decode_at(z, offset)
        ll_fit = gaussian_loglik(x, f_mu, log_sigma=f_ls, mask=m)
        mse_fit = jnp.sum(m * (x - f_mu) ** 2, axis=(-3, -2, -1)) / npix
        flags |= {
            "lower_mse_fitted": np.asarray(mse_fit < mse_gauss),
            "more_probable_fitted": np.asarray(ll_fit > ll_gauss),
        }
        out |= {
            "fit_steps": fit_steps,
            "frac_lower_mse_fitted": float(flags["lower_mse_fitted"].mean()),
            "frac_more_probable_fitted": float(flags["more_probable_fitted"].mean()),
            "median_mse_ratio_fitted_over_gauss": float(np.median(np.asarray(mse_fit / mse_gauss))),
        }
    if fit_steps > 0 and fit_centre:
        # each criterion with the fit the Gaussian gets: its own objective, centre free
        z, o = _fit_latents(params, cfg, x, m, mu, fit_steps, offset=offset, objective="chi2",
                            sigma=sigma, fit_centre=True)  # fmt: skip
        mse_xy = jnp.sum(m * (x - decode_at(z, o)[0]) ** 2, axis=(-3, -2, -1)) / npix
        z, o = _fit_latents(params, cfg, x, m, mu, fit_steps, offset=offset, fit_centre=True)
        f_mu, f_ls = decode_at(z, o)
        ll_xy = gaussian_loglik(x, f_mu, log_sigma=f_ls, mask=m)
        flags |= {
            "lower_mse_fitted_xy": np.asarray(mse_xy < mse_gauss),
            "more_probable_fitted_xy": np.asarray(ll_xy > ll_gauss),
        }
        out |= {
            "frac_lower_mse_fitted_xy": float(flags["lower_mse_fitted_xy"].mean()),
            "frac_more_probable_fitted_xy": float(flags["more_probable_fitted_xy"].mean()),
            "median_mse_ratio_fitted_xy_over_gauss": float(
                np.median(np.asarray(mse_xy / mse_gauss))
            ),
        }
    out["by_snr"] = _by_snr(snr, flags)
    sel = snr >= PROMINENT_SNR
    out["prominent"] = {"snr_min": PROMINENT_SNR, "n": int(sel.sum())} | {
        f"frac_{name}": float(flag[sel].mean()) if sel.any() else None
        for name, flag in flags.items()
    }
    if per_image:
        out |= flags | {"snr": snr}
    return out


def _finetune(key, params, cfg, x, mask, n_steps: int, batch: int = 32, lr: float = 1e-4):
    """Fine-tune a VAE on a few real stamps: Adam on the masked ELBO, random D4 symmetries.

    Image and pixel mask get the same symmetry (they are stacked as two bands).
    """
    tx = optax.adam(lr)
    x, mask = jnp.asarray(x), jnp.asarray(mask)

    @jax.jit
    def step(params, opt, key):
        k_idx, k_aug, k_eps = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (batch,), 0, x.shape[0])
        xm = random_dihedral(k_aug, jnp.concatenate([x[idx], mask[idx]], axis=-1))
        xb, mb = xm[..., :1], xm[..., 1:]
        loss = lambda p: -jnp.mean(elbo(k_eps, p, cfg, xb, mask=mb).elbo)
        value, grad = jax.value_and_grad(loss)(params)
        upd, opt = tx.update(grad, opt, params)
        return optax.apply_updates(params, upd), opt, value

    opt = tx.init(params)
    for t in range(n_steps):
        params, opt, value = step(params, opt, jax.random.fold_in(key, t))
    return params, float(value)


def _cosmos_folds(key, params, cfg, x, mask, k: int, n_steps: int, fit_steps: int) -> dict:
    """Each real stamp scored by the sim-trained VAE fine-tuned on the other folds' stamps."""
    from galjax.experiments.radio import kfold_indices

    n = len(x)
    lower, more, lower_fit, more_fit = (np.zeros(n, bool) for _ in range(4))
    losses = []
    t0 = time.perf_counter()
    for fold, (train, test) in enumerate(kfold_indices(jax.random.key(0), n, k)):
        tuned, loss = _finetune(jax.random.fold_in(key, fold), params, cfg, x[train], mask[train],
                                n_steps)  # fmt: skip
        losses.append(loss)
        r = _compare(tuned, cfg, jnp.asarray(x[test]), jnp.ones_like(jnp.asarray(x[test])),
                     mask[test], fit_steps, per_image=True, fit_centre=False)  # fmt: skip
        lower[test], more[test] = r["lower_mse"], r["more_probable"]
        if fit_steps > 0:
            lower_fit[test], more_fit[test] = r["lower_mse_fitted"], r["more_probable_fitted"]
    out = {
        "n_images": n,
        "folds": k,
        "finetune_steps": n_steps,
        "finetune_final_loss_per_fold": losses,
        "finetune_s": time.perf_counter() - t0,
        "frac_lower_mse": float(lower.mean()),
        "frac_more_probable": float(more.mean()),
    }
    if fit_steps > 0:
        out |= {"fit_steps": fit_steps, "frac_lower_mse_fitted": float(lower_fit.mean()),
                "frac_more_probable_fitted": float(more_fit.mean())}  # fmt: skip
    return out


def _cosmos(stamp):
    """Real COSMOS stamps in units of their noise std, cropped/padded, with a pixel mask."""
    from galjax.io import load_cosmos

    s = load_cosmos(DATA)
    sig = np.sqrt(np.asarray(s.catalog["NOISE_VARIANCE"], np.float64))
    imgs, masks = [], []
    for img, sg in zip(s.images, sig, strict=True):
        img = np.asarray(img, np.float64)[..., 0] / sg
        h, w = img.shape
        out = np.zeros((stamp, stamp))
        m = np.zeros((stamp, stamp))
        # centre crop or pad; for odd sizes the padding offset can differ by one pixel from
        # galjax.image.transforms.crop_or_pad (the numbers in results/vae_vs_gaussian.json)
        sy, sx = max((h - stamp) // 2, 0), max((w - stamp) // 2, 0)
        dy, dx = max((stamp - h) // 2, 0), max((stamp - w) // 2, 0)
        ch, cw = min(h, stamp), min(w, stamp)
        out[dy : dy + ch, dx : dx + cw] = img[sy : sy + ch, sx : sx + cw]
        m[dy : dy + ch, dx : dx + cw] = 1.0
        imgs.append(out)
        masks.append(m)
    x = np.asarray(imgs, np.float32)[..., None]
    mask = np.asarray(masks, np.float32)[..., None]
    mags = np.asarray(s.catalog["MAG"], float)
    # Zeropoint that puts these stamps in noise units: compare with HST_F814W's.
    zp_noise_units = float(np.median(25.94 - 2.5 * np.log10(sig)))
    info = {
        "median_zeropoint_in_noise_units": zp_noise_units,
        "mag_range": [float(mags.min()), float(mags.max())],
        "median_mag": float(np.median(mags)),
        # SExtractor FLUX_RADIUS (half-light radius) in pixels of PIXEL_SCALE arcsec
        "median_flux_radius_arcsec": float(
            np.median(np.asarray(s.catalog["flux_radius"], float) * s.catalog["PIXEL_SCALE"])
        ),
    }
    return x, mask, info


def _recentre(x, mask):
    """Centre each stamp's galaxy as the simulations are (at ``((s - 1) / 2, (s - 1) / 2)``).

    The galaxy's centre is the bivariate Gaussian fit's. Image and mask are shifted by
    whole pixels (exact: no interpolation of the noisy pixels; pixels shifted in from
    outside are masked); the remaining sub-pixel offset ``(n, 2) = (dx, dy)`` in
    ``[-0.5, 0.5]`` is returned for the VAE's images to be placed at (:func:`_shift`,
    Lanczos-3; the deblender's ``shift_stamp`` uses a Fourier phase ramp instead).
    Regier et al.'s images are "cropped around one prominent galaxy"; the sims the VAE
    learns from are centred exactly.
    """
    n, s = x.shape[0], x.shape[1]
    fit = fit_gaussian(jnp.asarray(x), sigma=jnp.ones_like(jnp.asarray(x)),
                       pixel_mask=jnp.asarray(mask), n_steps=300)  # fmt: skip
    c = (s - 1) / 2.0
    gx, gy = np.asarray(fit.params.x, float), np.asarray(fit.params.y, float)
    kx, ky = np.round(c - gx).astype(int), np.round(c - gy).astype(int)
    xs, ms = np.zeros_like(x), np.zeros_like(mask)
    for i in range(n):
        src = np.s_[max(-ky[i], 0) : s - max(ky[i], 0), max(-kx[i], 0) : s - max(kx[i], 0)]
        dst = np.s_[max(ky[i], 0) : s - max(-ky[i], 0), max(kx[i], 0) : s - max(-kx[i], 0)]
        xs[i][dst], ms[i][dst] = x[i][src], mask[i][src]
    offset = np.stack([gx + kx - c, gy + ky - c], axis=-1).astype(np.float32)
    moved = float(np.median(np.hypot(gx - c, gy - c)))
    return xs, ms, offset, {"median_centre_offset_before_px": moved}


def plot_by_snr(results: dict, path) -> Path:
    """Figure: the six fractions against SNR for each set, with the talk's 97 %.

    One panel per criterion (rows: lower MSE / more probable; columns: amortised,
    latent fit, latent + centre fit); each set is a line over the SNR bins' centres
    (geometric; the last bin at 2x its lower edge), its markers sized by the number of
    images in the bin; bins of fewer than 10 images are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = [("frac_lower_mse", "lower MSE, amortised"),
            ("frac_lower_mse_fitted", "lower MSE, latent fit"),
            ("frac_lower_mse_fitted_xy", "lower MSE, latent + centre fit"),
            ("frac_more_probable", "more probable, amortised"),
            ("frac_more_probable_fitted", "more probable, latent fit"),
            ("frac_more_probable_fitted_xy", "more probable, latent + centre fit")]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), sharey=True)
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        for name, r in results.items():
            rows = [b for b in r.get("by_snr", []) if b["n"] >= 10 and b.get(key) is not None]
            if not rows:
                continue
            x = [
                np.sqrt(max(b["snr_min"], 10.0) * (b["snr_max"] or 2 * b["snr_min"])) for b in rows
            ]
            ax.plot(x, [b[key] for b in rows], "-", label=name)
            ax.scatter(x, [b[key] for b in rows], s=[8 + b["n"] / 4 for b in rows])
        ax.axhline(0.971, color="k", ls=":", lw=1)
        ax.axhline(0.5, color="0.6", ls="--", lw=0.8)
        ax.set(xscale="log", xlabel="SNR of the Gaussian fit", title=title, ylim=(0, 1.02))
        ax.set_xticks([20, 50, 100, 200, 500], ["20", "50", "100", "200", "500"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of images where the VAE wins")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Regier et al.'s VAE vs a fitted bivariate Gaussian (dotted: the talk's 97 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=100000, help="training steps per model")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fit-steps",
        type=int,
        default=200,
        help="Adam steps of the per-image latent fit (0: amortised encoder only)",
    )
    ap.add_argument("--skip-sdss", action="store_true", help="only the HST-like and COSMOS sets")
    ap.add_argument("--skip-hst", action="store_true", help="only the SDSS-like set")
    ap.add_argument(
        "--finetune-folds",
        type=int,
        default=0,
        help="also score each real COSMOS stamp with the sim-trained VAE fine-tuned on the "
        "other folds' stamps (k-fold; 0: off)",
    )
    ap.add_argument("--finetune-steps", type=int, default=3000)
    ap.add_argument(
        "--population",
        choices=("matched", "default"),
        default="matched",
        help="HST-like training population: magnitude range and median size of the COSMOS "
        "sample's catalogue (matched) or galjax's HST_F814W defaults",
    )
    ap.add_argument("--out", default="vae_vs_gaussian", help="name of the results JSON")
    args = ap.parse_args()
    key = jax.random.key(args.seed)
    k_sdss, k_hst, k_test, k_noise = jax.random.split(key, 4)
    results, rows = {}, []

    # 1. The talk's setting: SDSS-like 69x69 stamps, held-out simulated galaxies.
    if not args.skip_sdss:
        cfg, params, train_info = _train(k_sdss, SDSS_R, args.n_train, args.steps, args.batch)
        clean = make_stamps(k_test, SDSS_R, args.n_test)["image"]
        x, sigma = _noisy(k_noise, clean, SDSS_R)
        r = _compare(params, cfg, jnp.asarray(x), jnp.asarray(sigma), np.ones_like(x),
                     args.fit_steps)  # fmt: skip
        results["sdss_sim"] = r | {"train": train_info}
        rows.append({"set": "SDSS-like sims (69x69)", **r})

    # 2. Real COSMOS galaxies, same architecture trained on HST-like sims (64x64) whose
    # zeropoint in noise units is the stamps' own (so simulated and real galaxies of
    # one magnitude have the same signal-to-noise) and, with --population matched, whose
    # magnitude range and median size are the sample's (from its catalogue, not pixels).
    if not args.skip_hst:
        hst, cosmos = HST_F814W, None
        if DATA.exists():
            cosmos = _cosmos(HST_F814W.stamp_size)
            info = cosmos[2]
            zp = round(info["median_zeropoint_in_noise_units"], 2)
            hst = dataclasses.replace(HST_F814W, name="hst_f814w_cosmos", zeropoint=(zp,))
            if args.population == "matched":
                lo, hi = info["mag_range"]
                # median disk size at mag_ref such that the size at the sample's median
                # magnitude is the sample's median flux radius
                hlr = info["median_flux_radius_arcsec"] * 10 ** (
                    hst.hlr_mag_slope * (info["median_mag"] - hst.mag_ref)
                )
                hst = dataclasses.replace(hst, name="hst_f814w_cosmos_matched",
                                          mag_min=round(lo, 2), mag_max=round(hi, 2),
                                          hlr_median=round(hlr, 3))  # fmt: skip
        cfg_h, params_h, train_h = _train(k_hst, hst, args.n_train, args.steps, args.batch)
        sim_info = {"sim_zeropoint": hst.zeropoint[0], "sim_mag_range": [hst.mag_min, hst.mag_max],
                    "sim_hlr_median": hst.hlr_median}  # fmt: skip
        if cosmos is not None:
            xc, mc, info = cosmos
            xr, mr, offset, centre_info = _recentre(xc, mc)
            ones = jnp.ones_like(jnp.asarray(xc))
            variants = {
                "cosmos_real": (xr, mr, offset, "COSMOS HST F814W (real, 64x64, centred)"),
                "cosmos_real_whole_pixel_centred": (xr, mr, None, "COSMOS real, whole px"),
                "cosmos_real_as_cut": (xc, mc, None, "COSMOS real, stamps as cut"),
            }
            for name, (xv, mv, off, label) in variants.items():
                r = _compare(params_h, cfg_h, jnp.asarray(xv), ones, mv, args.fit_steps,
                             offset=None if off is None else jnp.asarray(off))  # fmt: skip
                results[name] = r | {"train": train_h, **info, **centre_info, **sim_info}
                rows.append({"set": label, **r})
            if args.finetune_folds > 1:
                r = _cosmos_folds(jax.random.fold_in(k_hst, 7), params_h, cfg_h, xc, mc,
                                  args.finetune_folds, args.finetune_steps,
                                  args.fit_steps)  # fmt: skip
                results["cosmos_real_finetuned"] = r
                rows.append({"set": f"COSMOS real, fine-tuned ({args.finetune_folds}-fold)", **r})
        clean = make_stamps(jax.random.fold_in(k_test, 1), hst, args.n_test)["image"]
        x, sigma = _noisy(jax.random.fold_in(k_noise, 1), clean, hst)
        r = _compare(params_h, cfg_h, jnp.asarray(x), jnp.asarray(sigma), np.ones_like(x),
                     args.fit_steps)  # fmt: skip
        results["hst_sim"] = r | {"train": train_h, **sim_info}
        rows.append({"set": "HST-like sims (64x64)", **r})

    with_prominent = []
    for row in rows:
        with_prominent.append(row)
        if "prominent" in row:
            p = row["prominent"]
            with_prominent.append({"set": f"  SNR >= {p['snr_min']:g}", "n_images": p["n"], **p})
    print(
        format_table(
            with_prominent,
            [
                ("set", "set", "s"),
                ("n_images", "n", "d"),
                ("frac_lower_mse", "lower MSE", ".3f"),
                ("frac_more_probable", "more probable", ".3f"),
                ("median_mse_ratio_vae_over_gauss", "MSE ratio", ".3f"),
                ("frac_lower_mse_fitted", "lower MSE (z fit)", ".3f"),
                ("frac_more_probable_fitted", "more probable (z fit)", ".3f"),
                ("median_mse_ratio_fitted_over_gauss", "MSE ratio (z fit)", ".3f"),
                ("frac_lower_mse_fitted_xy", "lower MSE (z, xy fit)", ".3f"),
                ("frac_more_probable_fitted_xy", "more probable (z, xy fit)", ".3f"),
            ],
        )
    )
    write_json(
        RESULTS_DIR / f"{args.out}.json",
        {
            "benchmark": "vae_vs_gaussian",
            "machine": machine_info(),
            "config": {"vae": dataclasses.asdict(REGIER_MLP), **vars(args)},
            "reference": {"frac_lower_mse": 0.971, "frac_more_probable": 0.972},
            "results": results,
        },
    )
    plot_by_snr(results, RESULTS_DIR / f"{args.out}_by_snr.png")


if __name__ == "__main__":
    main()
