"""Out-of-distribution scores for galaxy images from PixelCNN++ likelihoods.

Raw likelihoods of deep generative models are dominated by global properties:
size, brightness, background and overall complexity (Nalisnick et al. 2019;
Serra et al. 2020; Ren et al. 2019). This module provides the corrections:

- **Archetype likelihood ratio** (Zanisi et al. 2021): fit a smooth Sersic
  profile to each galaxy (:func:`fit_sersic`, vmapped Adam), render its
  archetype with the same global properties on the same background and noise
  (:func:`render_archetypes`, :func:`add_background`), train a second PixelCNN on
  archetypes and score ``LLR(x) = log p(x; theta_real) - log p(x; theta_arch)``
  per image (:func:`llr`) or per pixel (:func:`llr_map`): background and global
  properties cancel, the ratio measures ``log p(details | global)``.
- **Background model ratio** (Ren et al. 2019): the second model is trained on
  inputs with a fraction ``mu`` of pixels replaced by uniform noise
  (:func:`perturbed_sampler`, built on :func:`galjax.image.transforms.perturb_pixels`).
- **Input complexity** (Serra et al. 2020): ``S(x) = -log2 p(x) - L(x)`` with
  ``L`` the length in bits of the losslessly compressed quantised image
  (:func:`compressed_bits`, :func:`complexity_score`).
- Evaluation: :func:`auroc` / :func:`roc` between two samples for any score
  (via :mod:`galjax.scores.metrics`), and the per-pixel figure :func:`llr_figure`.

Convention: a *score* is larger for *more anomalous* inputs; :func:`auroc` puts
the out-of-distribution sample in the positive class.
"""

from __future__ import annotations

import bz2
import dataclasses
import functools
import lzma
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.checks import check_image, check_positive, check_psf, is_concrete
from galjax.scores.metrics import auc, roc_curve
from galjax.models.pixelcnn import PixelCNNConfig, check_input, log_prob_map, quantise
from galjax.sim import RenderConfig, add_noise, render, sersic_sb
from galjax.image.transforms import perturb_pixels

__all__ = [
    "FIT_RENDER",
    "SersicFit",
    "FitConfig",
    "moment_guess",
    "fit_sersic",
    "render_archetypes",
    "add_background",
    "estimate_background",
    "llr",
    "llr_map",
    "perturbed_sampler",
    "compressed_bits",
    "complexity_score",
    "roc",
    "auroc",
    "llr_figure",
]

#: Fast renderer for fitting and archetypes: pixel-centre sampling (with the
#: midpoint Laplacian correction) plus 3 levels of cusp refinement, pixel-level PSF.
FIT_RENDER = RenderConfig(oversample=1, refine_levels=3, refine_cells=4, refine_factor=4, pad=4)


class SersicFit(NamedTuple):
    """Sersic fits of a batch of images (pixel units; leading axis = image).

    Attributes:
      flux: ``(n, bands)`` total flux per band.
      hlr: ``(n,)`` half-light radius [pixels].
      n: ``(n,)`` Sersic index.
      e1, e2: ``(n,)`` reduced-shear ellipticity (GalSim convention).
      x, y: ``(n,)`` centre [pixels, 0-based, x = column].
      chi2: ``(n,)`` reduced chi^2 ``sum((image - model)^2 / sigma^2) / n_pix``
        (about 1 for a good fit to a smooth galaxy; larger where there is detail).
      flux_residual: ``(n,)`` ``sum(image - model) / sum(model)`` over bands.
    """

    flux: jax.Array
    hlr: jax.Array
    n: jax.Array
    e1: jax.Array
    e2: jax.Array
    x: jax.Array
    y: jax.Array
    chi2: jax.Array
    flux_residual: jax.Array


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_sersic`.

    Attributes:
      n_steps: Adam steps per image.
      lr: Adam learning rate (on log flux, log radius, logit n, ellipticity
        pre-image and centre).
      n_range: allowed Sersic index interval (a logistic map keeps ``n`` inside).
      e_max: largest ``|e|``.
      render: the :class:`~galjax.sim.RenderConfig` of the model images.
      chunk: images per compiled vmapped call (memory bound).
    """

    n_steps: int = 300
    lr: float = 0.05
    n_range: tuple[float, float] = (0.5, 6.0)
    e_max: float = 0.95
    render: RenderConfig = FIT_RENDER
    chunk: int = 256


def _sersic_image(theta, height, width, psf, cfg: FitConfig):
    """Render the Sersic of unconstrained parameters ``theta`` -> ``(h, w, bands)``."""
    flux, hlr, n, e1, e2, x, y = _unpack(theta, cfg)
    sb = lambda dx, dy: (
        sersic_sb(dx, dy, 1.0, hlr, n, e1, e2)[..., None] * flux.reshape((1,) * dx.ndim + (-1,))
    )
    return render(sb, jnp.stack([x, y]), height, width, psf, 1, cfg.render)


def _unpack(theta, cfg: FitConfig):
    lo, hi = cfg.n_range
    n = lo + (hi - lo) * jax.nn.sigmoid(theta["t_n"])
    a = theta["a_e"]
    # e = e_max * a / sqrt(1 + |a|^2): smooth, |e| < e_max, no angle (atan2 has NaN grads at 0).
    e = cfg.e_max * a / jnp.sqrt(1.0 + jnp.sum(a * a))
    return (
        jnp.exp(theta["log_flux"]),
        jnp.exp(theta["log_hlr"]),
        n,
        e[0],
        e[1],
        theta["xy"][0],
        theta["xy"][1],
    )


def moment_guess(image, sigma):
    """Starting point of a fit from thresholded image moments (one image).

    Pixels above ``2 sigma`` (or the top 5 % if none) give the centroid and the
    second moments ``Q``; ``hlr ~ 1.18 sqrt(det(Q)^(1/2))`` (exact for a Gaussian)
    and ``e`` from ``Q`` in the reduced-shear convention.

    Returns:
      dict of ``flux (bands,)``, ``hlr``, ``e1``, ``e2``, ``x``, ``y``.
    """
    img = jnp.sum(image, axis=-1)
    h, w = img.shape
    s = jnp.sqrt(jnp.mean(jnp.asarray(sigma, img.dtype) ** 2))
    thr = jnp.minimum(2.0 * s, jnp.quantile(img, 0.95))
    wgt = jnp.where(img > thr, img, jnp.zeros_like(img))
    tot = jnp.maximum(jnp.sum(wgt), 1e-12)
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=img.dtype), jnp.arange(w, dtype=img.dtype), indexing="ij"
    )
    xc = jnp.sum(wgt * xx) / tot
    yc = jnp.sum(wgt * yy) / tot
    qxx = jnp.sum(wgt * (xx - xc) ** 2) / tot + 0.1
    qyy = jnp.sum(wgt * (yy - yc) ** 2) / tot + 0.1
    qxy = jnp.sum(wgt * (xx - xc) * (yy - yc)) / tot
    det = jnp.maximum(qxx * qyy - qxy**2, 1e-6)
    denom = qxx + qyy + 2.0 * jnp.sqrt(det)
    e1 = (qxx - qyy) / denom
    e2 = 2.0 * qxy / denom
    hlr = 1.18 * det**0.25
    flux = jnp.maximum(jnp.sum(image, axis=(0, 1)), 1e-3 * jnp.ones(image.shape[-1], image.dtype))
    return {
        "flux": flux,
        "hlr": jnp.clip(hlr, 0.5, 0.5 * max(h, w)),
        "e1": e1,
        "e2": e2,
        "x": xc,
        "y": yc,
    }


def _fit_one(image, sigma, psf, cfg: FitConfig):
    h, w, _ = image.shape
    g = moment_guess(image, sigma)
    lo, hi = cfg.n_range
    p0 = (1.5 - lo) / (hi - lo)
    e = jnp.stack([g["e1"], g["e2"]])
    e = e * jnp.minimum(1.0, 0.8 / jnp.maximum(jnp.sqrt(jnp.sum(e * e)), 1e-6))
    # Invert e = e_max a / sqrt(1 + |a|^2): a = e / sqrt(e_max^2 - |e|^2).
    a = e / jnp.sqrt(cfg.e_max**2 - jnp.sum(e * e))
    theta = {
        "log_flux": jnp.log(g["flux"]),
        "log_hlr": jnp.log(g["hlr"]),
        "t_n": jnp.log(p0 / (1.0 - p0)) * jnp.ones((), image.dtype),
        "a_e": a,
        "xy": jnp.stack([g["x"], g["y"]]),
    }
    inv_var = 1.0 / sigma**2

    def loss(th):
        r = image - _sersic_image(th, h, w, psf, cfg)
        return 0.5 * jnp.mean(r * r * inv_var)

    tx = optax.adam(cfg.lr)

    def step(carry, _):
        th, opt = carry
        val, grad = jax.value_and_grad(loss)(th)
        with jax.numpy_dtype_promotion("standard"):  # optax's int/float arithmetic
            upd, opt = tx.update(grad, opt, th)
        return (optax.apply_updates(th, upd), opt), val

    with jax.numpy_dtype_promotion("standard"):
        opt0 = tx.init(theta)
    (theta, _), _ = jax.lax.scan(step, (theta, opt0), None, length=cfg.n_steps)
    model = _sersic_image(theta, h, w, psf, cfg)
    flux, hlr, n, e1, e2, x, y = _unpack(theta, cfg)
    chi2 = jnp.mean((image - model) ** 2 * inv_var)
    fres = jnp.sum(image - model) / jnp.maximum(jnp.sum(model), 1e-12)
    return SersicFit(flux, hlr, n, e1, e2, x, y, chi2, fres)


@functools.partial(jax.jit, static_argnames="cfg")
def _fit_batch(images, sigma, psf, cfg):
    return jax.vmap(_fit_one, in_axes=(0, 0, None, None))(images, sigma, psf, cfg)


def fit_sersic(images, sigma, psf=None, config: FitConfig | None = None) -> SersicFit:
    """Fit one elliptical Sersic profile to each image by least squares (vmapped Adam).

    Minimises ``chi^2 = sum_pixels (image - PSF * Sersic(flux, hlr, n, e1, e2, x, y))^2
    / sigma^2`` from a moment-based start (:func:`moment_guess`), for every image
    at once (``jax.vmap`` of a ``lax.scan`` of Adam steps, in chunks).

    Args:
      images: ``(n, h, w, bands)`` background-subtracted images (flux per pixel).
      sigma: per-pixel noise std, broadcastable to ``images`` (e.g. ``(n, 1, 1, 1)``).
      psf: None or a pixel-level PSF ``(ph, pw, bands)`` with unit sum (the
        fitted parameters are then intrinsic, before the PSF).
      config: :class:`FitConfig`.

    Returns:
      :class:`SersicFit` with the parameters and the fit quality per image.
    """
    cfg = config or FitConfig()
    x = check_image("images", images)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {x.shape}")
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(
            "images: expected finite values, found NaN/inf (mask or inpaint them first)"
        )
    check_positive("sigma", sigma)
    try:
        s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)
    except ValueError as err:
        raise ValueError(
            f"sigma: expected a shape broadcastable to {x.shape}, got {jnp.shape(sigma)}"
        ) from err
    if psf is not None:
        psf = check_psf("psf", psf, bands=x.shape[-1])
    parts = [
        _fit_batch(x[i : i + cfg.chunk], s[i : i + cfg.chunk], psf, cfg)
        for i in range(0, x.shape[0], cfg.chunk)
    ]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def render_archetypes(
    fit: SersicFit, height: int, width: int, psf=None, config: FitConfig | None = None
):
    """Noiseless archetype images ``(n, h, w, bands)`` of fitted Sersic parameters.

    The archetype keeps the fitted flux per band, half-light radius, index,
    ellipticity and centre of each galaxy (Zanisi et al.'s "same global
    properties") and is drawn with the same renderer and PSF as the fit.
    """
    cfg = config or FitConfig()

    def one(f, hlr, n, e1, e2, x, y):
        sb = lambda dx, dy: (
            sersic_sb(dx, dy, 1.0, hlr, n, e1, e2)[..., None] * f.reshape((1,) * dx.ndim + (-1,))
        )
        return render(sb, jnp.stack([x, y]), height, width, psf, 1, cfg.render)

    return jax.jit(jax.vmap(one))(fit.flux, fit.hlr, fit.n, fit.e1, fit.e2, fit.x, fit.y)


def add_background(key, images, sigma, level=0.0, gain=None):
    """Put noiseless images on a background: ``image + level + noise``.

    The noise is :func:`galjax.sim.add_noise` (sky std ``sigma``, Poisson term
    with ``gain``), so archetypes get the same kind of background and noise as
    the galaxies they stand for.

    Args:
      key: PRNG key.
      images: ``(n, h, w, bands)`` noiseless images.
      sigma: sky noise std, broadcastable to ``images`` (per image: ``(n, 1, 1, 1)``).
      level: background level added (broadcastable), e.g. from
        :func:`estimate_background`.
      gain: counts per flux unit for the Poisson term, or None.
    """
    x = check_image("images", images)
    check_positive("sigma", sigma)
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)
    lv = jnp.broadcast_to(jnp.asarray(level, x.dtype), x.shape)
    return add_noise(key, x, s, gain) + lv


def estimate_background(images, border: int = 4):
    """Background level and noise std per image and band from the border pixels.

    Uses the median and the MAD-based std (``1.4826 MAD``) of the ``border``
    pixels nearest each edge, robust to the galaxy's wings.

    Returns:
      ``(level, sigma)``, each ``(n, 1, 1, bands)`` (broadcastable to ``images``).
    """
    x = check_image("images", images)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {x.shape}")
    h, w = x.shape[1:3]
    if not (isinstance(border, int) and 1 <= border and 2 * border < min(h, w)):
        raise ValueError(f"border: expected an int in [1, {min(h, w) // 2 - 1}], got {border!r}")
    mask = np.zeros((h, w), bool)
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = True, True, True, True
    pix = x[:, mask, :]  # (n, m, bands)
    level = jnp.median(pix, axis=1)
    sigma = 1.4826 * jnp.median(jnp.abs(pix - level[:, None, :]), axis=1)
    sigma = jnp.maximum(sigma, 1e-12)
    return level[:, None, None, :], sigma[:, None, None, :]


# -- likelihood ratios -----------------------------------------------------------------


def llr(
    params_a, config_a: PixelCNNConfig, params_b, config_b: PixelCNNConfig, x, batch_size: int = 256
):
    """Likelihood ratio per image ``log p(x; theta_a) - log p(x; theta_b)`` in nats, ``(n,)``.

    ``theta_a``: the model of the data; ``theta_b``: the archetype (Zanisi et al.)
    or background (Ren et al.) model. Evaluated in chunks of ``batch_size``.
    """
    return jnp.sum(llr_map(params_a, config_a, params_b, config_b, x, batch_size), axis=(-2, -1))


def llr_map(params_a, config_a, params_b, config_b, x, batch_size: int = 256):
    """Per-pixel likelihood ratio ``log p(x_i | x_<i; a) - log p(x_i | x_<i; b)``, ``(n, h, w)``."""
    la = _batched_map(params_a, config_a, x, batch_size)
    lb = _batched_map(params_b, config_b, x, batch_size)
    return la - lb


@functools.partial(jax.jit, static_argnums=1)
def _map_jit(params, config, x):
    return log_prob_map(params, config, x)


def _batched_map(params, config, x, batch_size):
    single = jnp.ndim(x) == 3
    x = check_input("x", x, config)  # shape, bands, NaN, range and grid, once
    if single:
        return _batched_map(params, config, x, batch_size)[0]
    return jnp.concatenate(
        [_map_jit(params, config, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    )


def perturbed_sampler(
    x, batch_size: int, rate: float, low: float = -1.0, high: float = 1.0, n_bits=None
):
    """Batch sampler of perturbed inputs for Ren et al.'s background model.

    Each call draws ``batch_size`` random images of ``x`` and replaces each pixel
    with probability ``rate`` (the mutation rate mu; Ren et al. use 0.1-0.3) by a
    value uniform in ``[low, high]`` (:func:`galjax.image.transforms.perturb_pixels`);
    with ``n_bits`` the result is re-quantised onto the discrete head's grid.

    Args:
      x: ``(n, h, w, bands)`` training images.
      batch_size: images per batch.
      rate: mutation rate in [0, 1].
      low, high: range of the replacement values (the head's range by default).
      n_bits: bit depth to re-quantise to (discrete head), or None.

    Returns:
      ``sample_batch(key) -> (batch_size, h, w, bands)``, usable as ``data`` of
      :func:`galjax.train.fit` / :func:`galjax.train_pixelcnn.train_pixelcnn`.
    """
    x = check_image("x", x)
    if x.ndim != 4:
        raise ValueError(f"x: expected (n, h, w, bands), got shape {x.shape}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate: expected a mutation rate in [0, 1], got {rate!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")

    @jax.jit
    def sample_batch(key):
        k_idx, k_pert = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, x.shape[0])
        out = perturb_pixels(k_pert, x[idx], rate, low, high)
        if n_bits is not None:
            out = quantise(out, -1.0, 1.0, n_bits)
        return out

    return sample_batch


# -- input complexity ---------------------------------------------------------------

_COMPRESSORS = {
    "zlib": lambda b: zlib.compress(b, 9),
    "bz2": lambda b: bz2.compress(b, 9),
    "lzma": lambda b: lzma.compress(b, preset=9),
}


def compressed_bits(
    images, lo: float = -1.0, hi: float = 1.0, n_bits: int = 8, compressor: str = "zlib"
):
    """Compressed length ``L(x)`` in bits of each quantised image (Serra et al. 2020).

    Each image is quantised to ``n_bits`` (``n_bits <= 8``: one byte per value,
    rows in raster order, bands interleaved) on ``[lo, hi]`` and compressed with a
    standard-library lossless compressor. Runs on the host (not jit-able:
    compression is sequential byte-level code).

    Args:
      images: ``(n, h, w, bands)``.
      lo, hi: value range mapped to the quantisation levels (values are clipped).
      n_bits: bits per value, 1 to 8.
      compressor: ``"zlib"`` (deflate, as in PNG), ``"bz2"`` or ``"lzma"``.

    Returns:
      ``(n,)`` float64 numpy array of compressed lengths in bits.
    """
    if compressor not in _COMPRESSORS:
        raise ValueError(f"compressor: expected one of {sorted(_COMPRESSORS)}, got {compressor!r}")
    if not (isinstance(n_bits, int) and 1 <= n_bits <= 8):
        raise ValueError(f"n_bits: expected an integer in [1, 8], got {n_bits!r}")
    x = check_image("images", images)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {x.shape}")
    a = np.asarray(x, np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("images: expected finite values, found NaN/inf")
    if not hi > lo:
        raise ValueError(f"lo, hi: expected hi > lo, got lo={lo}, hi={hi}")
    q = np.round((np.clip(a, lo, hi) - lo) / (hi - lo) * (2**n_bits - 1)).astype(np.uint8)
    comp = _COMPRESSORS[compressor]
    return np.array([8.0 * len(comp(img.tobytes())) for img in q])


def complexity_score(log_p, bits):
    """Serra et al.'s score ``S(x) = -log2 p(x) - L(x)`` in bits (larger = more anomalous).

    Args:
      log_p: ``(n,)`` model log-likelihoods in nats (:func:`~galjax.models.pixelcnn.log_prob`).
      bits: ``(n,)`` compressed lengths in bits (:func:`compressed_bits`).
    """
    lp = np.asarray(log_p, np.float64)
    b = np.asarray(bits, np.float64)
    if lp.shape != b.shape:
        raise ValueError(f"log_p, bits: expected equal shapes, got {lp.shape} and {b.shape}")
    return -lp / np.log(2.0) - b


# -- evaluation ----------------------------------------------------------------------


def _labelled(scores_in, scores_out):
    s_in = np.asarray(scores_in, np.float64).ravel()
    s_out = np.asarray(scores_out, np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("scores_in, scores_out: expected non-empty samples")
    for name, s in (("scores_in", s_in), ("scores_out", s_out)):
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name}: expected finite scores, found NaN/inf")
    scores = np.concatenate([s_in, s_out]).astype(np.float32)
    labels = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)]).astype(np.int32)
    return scores, labels


def roc(scores_in, scores_out):
    """ROC curve ``(fpr, tpr, thresholds)`` with the OOD sample as positives (higher = OOD)."""
    return roc_curve(*_labelled(scores_in, scores_out))


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve separating ``scores_out`` (positive) from ``scores_in``.

    1 means every OOD input scores higher than every in-distribution one; 0.5 is
    chance; below 0.5 the score ranks the wrong way.

    >>> auroc([0.0, 0.1, 0.2], [1.0, 2.0])
    1.0
    """
    return float(auc(*_labelled(scores_in, scores_out)))


def llr_figure(
    image,
    logp_a,
    logp_b,
    path=None,
    titles=("image", "log p (model a)", "log p (model b)", "LLR"),
    band: int = 0,
):
    """Per-pixel LLR panels: the image, both log-likelihood maps and their difference.

    Args:
      image: ``(h, w, bands)``.
      logp_a, logp_b: ``(h, w)`` per-pixel log-likelihoods (:func:`log_prob_map`).
      path: file to save to, or None.
      titles: four panel titles.
      band: band shown in the image panel.

    Returns:
      The ``matplotlib.figure.Figure`` (LLR on a diverging colour map centred on 0).
    """
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    img = np.asarray(check_image("image", image))
    if img.ndim != 3:
        raise ValueError(f"image: expected (h, w, bands), got shape {img.shape}")
    a, b = np.asarray(logp_a), np.asarray(logp_b)
    if a.shape != img.shape[:2] or b.shape != img.shape[:2]:
        raise ValueError(
            f"logp_a, logp_b: expected maps of shape {img.shape[:2]}, got {a.shape} and {b.shape}"
        )
    d = a - b
    fig = Figure(figsize=(10, 2.8))
    axes = fig.subplots(1, 4)
    lo, hi = np.percentile(np.concatenate([a.ravel(), b.ravel()]), [1, 99])
    lim = max(float(np.max(np.abs(d))), 1e-6)
    panels = [
        (img[..., band], "gray", None),
        (a, "viridis", dict(vmin=lo, vmax=hi)),
        (b, "viridis", dict(vmin=lo, vmax=hi)),
        (d, "RdBu_r", dict(norm=TwoSlopeNorm(0.0, -lim, lim))),
    ]
    for ax, (data, cmap, kw), title in zip(axes, panels, titles, strict=True):
        im = ax.imshow(data, cmap=cmap, origin="lower", **(kw or {}))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
