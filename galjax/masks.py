"""Contaminant masks (MaxiMask-like): injection, a segmentation network, tiled inference.

Paillard, Bertin et al. (2019, "MaxiMask and MaxiTrack") classify every pixel of
a survey image as cosmic ray, hot/bad pixel or column, satellite trail,
saturated, ... with a convolutional network trained on contaminants injected
into real images. This module provides the same chain in miniature:

1. :func:`inject_contaminants` adds synthetic contaminants to an image and
   returns per-pixel labels ``(h, w, n_classes)`` (pure JAX; ``jit``/``vmap``).
   Classes (bit ``i`` of the mask is class ``i`` of :data:`MASK_CLASSES`):

   ====  ===================  ====================================================
   bit   class                model
   ====  ===================  ====================================================
   0     ``cosmic_ray``       straight tracks, 2-12 px long, ~1 px wide, sharp
                              (not PSF-blurred), 10-300 sigma
   1     ``hot``              single hot pixels (5-1000 sigma) and partial hot
                              columns (3-30 sigma)
   2     ``bad``              dead pixels and partial dead columns, 5-200 sigma
                              below the background
   3     ``trail``            satellite trails crossing the image: Gaussian line
                              profile, width 0.6-2.5 px, 3-100 sigma; labelled
                              where the trail adds more than 1 sigma
   4     ``saturated``        bright stars clipped at a saturation level, with
                              vertical bleed trails holding the excess charge
   ====  ===================  ====================================================

2. :class:`MaskNet`: a small fully convolutional network of dilated 3x3
   convolutions (no pooling, so it is exactly translation-equivariant) giving
   per-pixel per-class logits; probabilities are independent sigmoids.
3. :func:`train_mask_net` (binary cross-entropy via :func:`galjax.train.fit`)
   on batches from :func:`make_injection_sampler`.
4. :func:`predict_mask`: tiled inference over any image with overlapping tiles
   whose centres only are kept; equal to whole-image inference away from the
   image edges (margin >= receptive radius).
5. :func:`mask_bits` -> integer bit mask, :func:`write_mask_fits`,
   :func:`save_mask_model` / :func:`load_mask_model` (``galjax/weights/mask``).

Network input is ``arcsinh((image - background) / sigma)`` (:func:`stretch_for_mask`)
with scalar background and noise estimated robustly from the whole image, so
tiles see the same normalisation as the whole image.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from galjax.core.checks import as_float_array, check_image, check_positive, is_concrete
from galjax.core.files import atomic_write
from galjax.train import TrainConfig, fit, init_state, make_train_step
from galjax.image.transforms import arcsinh_stretch, random_dihedral

__all__ = [
    "MASK_CLASSES",
    "InjectionConfig",
    "MaskNet",
    "inject_contaminants",
    "robust_background",
    "stretch_for_mask",
    "make_injection_sampler",
    "mask_loss",
    "train_mask_net",
    "receptive_radius",
    "predict_mask",
    "mask_bits",
    "per_class_auc",
    "write_mask_fits",
    "save_mask_model",
    "load_mask_model",
    "default_mask_dir",
]

#: Contaminant classes; class ``i`` is bit ``2**i`` of :func:`mask_bits`.
MASK_CLASSES = ("cosmic_ray", "hot", "bad", "trail", "saturated")
_N = len(MASK_CLASSES)


# --------------------------------------------------------------------------- injection
@dataclasses.dataclass(frozen=True)
class InjectionConfig:
    """How many contaminants of each kind to inject and how strong (amplitudes in sigma).

    Counts are static maxima (``n_*``): each slot is switched on with probability
    ``p_*``, so the shapes are fixed and injection can be jitted. Ranges
    ``(lo, hi)`` are drawn log-uniformly for amplitudes and uniformly otherwise.

    >>> InjectionConfig.from_dict(InjectionConfig().to_dict()) == InjectionConfig()
    True
    """

    n_cosmic: int = 4
    p_cosmic: float = 0.6
    cosmic_length: tuple[float, float] = (2.0, 12.0)
    cosmic_amplitude: tuple[float, float] = (10.0, 300.0)
    n_hot: int = 8
    p_hot: float = 0.5
    hot_amplitude: tuple[float, float] = (5.0, 1000.0)
    n_hot_columns: int = 1
    p_hot_column: float = 0.15
    hot_column_amplitude: tuple[float, float] = (3.0, 30.0)
    n_bad: int = 8
    p_bad: float = 0.5
    n_bad_columns: int = 1
    p_bad_column: float = 0.15
    bad_depth: tuple[float, float] = (5.0, 200.0)
    n_trails: int = 1
    p_trail: float = 0.3
    trail_width: tuple[float, float] = (0.6, 2.5)
    trail_amplitude: tuple[float, float] = (3.0, 100.0)
    n_stars: int = 1
    p_star: float = 0.3
    star_fwhm: tuple[float, float] = (2.0, 5.0)
    saturation: tuple[float, float] = (200.0, 3000.0)
    star_peak: tuple[float, float] = (1.5, 50.0)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("n_"):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{f.name}: expected a non-negative integer, got {v!r}")
            elif f.name.startswith("p_"):
                if not 0.0 <= float(v) <= 1.0:
                    raise ValueError(f"{f.name}: expected a probability in [0, 1], got {v!r}")
            else:
                if len(v) != 2 or not 0 < v[0] <= v[1]:
                    raise ValueError(
                        f"{f.name}: expected a range (lo, hi) with 0 < lo <= hi, got {v!r}"
                    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the settings."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InjectionConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"d: unknown InjectionConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# One uniform draw per contaminant kind, mapped to every parameter: each
# jax.random call costs compile time, and injection is recompiled per config.
def _lin(u, rng):
    return rng[0] + u * (rng[1] - rng[0])


def _log(u, rng):
    lo, hi = math.log(rng[0]), math.log(rng[1])
    return jnp.exp(lo + u * (hi - lo))


def _on(u, p):
    return (u < p).astype(jnp.float32)


def _segment_distance(yy, xx, y0, x0, y1, x1):
    """Distance of pixel centres ``(yy, xx)`` to the segment ``(y0, x0)-(y1, x1)``."""
    dy, dx = y1 - y0, x1 - x0
    # the epsilon keeps a zero-length segment (a point) from dividing 0 by 0
    t = jnp.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-12), 0.0, 1.0)
    return jnp.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def _cosmic_rays(key, yy, xx, h, w, cfg: InjectionConfig):
    n = cfg.n_cosmic
    if not n:
        return jnp.zeros((h, w), jnp.float32)
    u = jax.random.uniform(key, (7, n))
    on = _on(u[0], cfg.p_cosmic)
    yc, xc = _lin(u[1], (0.0, h - 1.0)), _lin(u[2], (0.0, w - 1.0))
    ang = _lin(u[3], (0.0, math.pi))
    length = _lin(u[4], cfg.cosmic_length)
    half_width = _lin(u[5], (0.5, 1.0))
    amp = _log(u[6], cfg.cosmic_amplitude) * on
    dy, dx = jnp.sin(ang) * length / 2, jnp.cos(ang) * length / 2

    def one(y0, x0, ddy, ddx, hw, a):
        d = _segment_distance(yy, xx, y0 - ddy, x0 - ddx, y0 + ddy, x0 + ddx)
        return a * (d <= hw).astype(jnp.float32)

    return jnp.sum(jax.vmap(one)(yc, xc, dy, dx, half_width, amp), axis=0)


def _pixels_and_columns(key, yy, xx, h, w, n_pix, p_pix, amp_pix, n_col, p_col, amp_col):
    """Max of single-pixel and partial-column maps ``(h, w)`` (amplitude per pixel)."""
    out = jnp.zeros((h, w), jnp.float32)
    k_pix, k_col = jax.random.split(key)
    if n_pix:
        u = jax.random.uniform(k_pix, (4, n_pix))
        py = jnp.minimum(jnp.floor(u[1] * h), h - 1).astype(jnp.int32)
        px = jnp.minimum(jnp.floor(u[2] * w), w - 1).astype(jnp.int32)
        out = out.at[py, px].max(_log(u[3], amp_pix) * _on(u[0], p_pix))
    if n_col:
        u = jax.random.uniform(k_col, (6, n_col))
        on = _on(u[0], p_col)
        cx = jnp.minimum(jnp.floor(u[1] * w), w - 1)
        lo, hi = jnp.minimum(u[2], u[3]) * h, jnp.maximum(u[2], u[3]) * h
        full = u[4] < 0.5  # half of the columns run over the whole height
        lo, hi = jnp.where(full, 0.0, lo), jnp.where(full, float(h), hi)
        a = _log(u[5], amp_col) * on

        def col(x0, r0, r1, amp):
            inside = (xx == x0) & (yy >= r0) & (yy <= r1)
            return amp * inside.astype(jnp.float32)

        out = jnp.maximum(out, jnp.max(jax.vmap(col)(cx, lo, hi, a), axis=0))
    return out


def _trails(key, yy, xx, h, w, cfg: InjectionConfig):
    n = cfg.n_trails
    if not n:
        return jnp.zeros((h, w), jnp.float32)
    u = jax.random.uniform(key, (6, n))
    on = _on(u[0], cfg.p_trail)
    y0, x0 = _lin(u[1], (0.0, h - 1.0)), _lin(u[2], (0.0, w - 1.0))
    ang = _lin(u[3], (0.0, math.pi))
    width = _lin(u[4], cfg.trail_width)
    amp = _log(u[5], cfg.trail_amplitude) * on

    def one(yc, xc, t, s, a):
        d = (xx - xc) * jnp.sin(t) - (yy - yc) * jnp.cos(t)
        return a * jnp.exp(-0.5 * (d / s) ** 2)

    return jnp.sum(jax.vmap(one)(y0, x0, ang, width, amp), axis=0)


def _saturated_star(u, img, yy, xx, h, w, bg, sigma, cfg: InjectionConfig):
    """Add one (possibly inactive) saturated star; ``u``: 6 uniforms. Returns ``(img, mask)``."""
    on = _on(u[0], cfg.p_star)
    y0, x0 = _lin(u[1], (0.0, h - 1.0)), _lin(u[2], (0.0, w - 1.0))
    s = _lin(u[3], cfg.star_fwhm) / 2.3548
    full = _log(u[4], cfg.saturation) * sigma  # saturation level above the background
    peak = _log(u[5], cfg.star_peak) * full * on
    star = peak * jnp.exp(-0.5 * ((yy - y0) ** 2 + (xx - x0) ** 2) / s**2)
    level = bg + full
    val = img + star
    core = (val >= level) & (on > 0)
    # Bleeding: the charge above saturation in each column spills along the column,
    # filling ``excess / full`` more pixels, shared above and below the core.
    excess = jnp.sum(jnp.where(core, val - level, 0.0), axis=0)  # (w,)
    n_core = jnp.sum(core.astype(jnp.float32), axis=0)
    half = (n_core + excess / full) / 2
    bleed = (jnp.abs(yy - y0) <= half[None, :]) & (n_core[None, :] > 0)
    sat = core | bleed
    return jnp.where(sat, level, val), sat


def inject_contaminants(key, image, sigma, background=0.0, config: InjectionConfig | None = None):
    """Inject synthetic contaminants into one single-band image, with per-pixel labels.

    Order: saturated stars, satellite trails, cosmic rays and hot pixels/columns
    are added; dead pixels/columns then overwrite the image (their pixels lose
    every other label). Amplitudes are in units of ``sigma`` above
    ``background``.

    Args:
      key: PRNG key.
      image: ``(h, w, 1)`` image (raw counts; background included or not).
      sigma: scalar background noise standard deviation (> 0).
      background: scalar background level (saturation and dead levels are set
        relative to it).
      config: :class:`InjectionConfig` (default settings when None).

    Returns:
      ``(image, labels)``: the contaminated ``(h, w, 1)`` float32 image and
      ``(h, w, len(MASK_CLASSES))`` float32 0/1 labels. Works under
      ``jit``/``vmap`` (``config`` static).

    >>> import jax, jax.numpy as jnp
    >>> img, lab = inject_contaminants(jax.random.key(0), jnp.zeros((32, 32, 1)), 1.0)
    >>> img.shape, lab.shape
    ((32, 32, 1), (32, 32, 5))
    """
    cfg = InjectionConfig() if config is None else config
    if not isinstance(cfg, InjectionConfig):
        raise TypeError(f"config: expected an InjectionConfig, got {type(cfg).__name__}")
    img = check_image("image", image)
    if img.ndim != 3 or img.shape[-1] != 1:
        raise ValueError(f"image: expected one single-band image (h, w, 1), got shape {img.shape}")
    sigma = as_float_array("sigma", sigma).astype(jnp.float32)
    bg = as_float_array("background", background).astype(jnp.float32)
    if sigma.ndim or bg.ndim:
        raise ValueError(
            f"sigma, background: expected scalars, got shapes {sigma.shape} and {bg.shape}"
        )
    check_positive("sigma", sigma)
    return _inject(key, img.astype(jnp.float32), sigma, bg, cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _inject(key, image, sigma, bg, cfg):
    h, w = image.shape[0], image.shape[1]
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    k_star, k_trail, k_cr, k_hot, k_bad = jax.random.split(key, 5)
    img = image[..., 0]
    sat = jnp.zeros((h, w), bool)
    u_star = jax.random.uniform(k_star, (max(cfg.n_stars, 1), 6))
    for i in range(cfg.n_stars):
        img, s = _saturated_star(u_star[i], img, yy, xx, h, w, bg, sigma, cfg)
        sat = sat | s
    trail = _trails(k_trail, yy, xx, h, w, cfg)
    cr = _cosmic_rays(k_cr, yy, xx, h, w, cfg)
    hot = _pixels_and_columns(
        k_hot,
        yy,
        xx,
        h,
        w,
        cfg.n_hot,
        cfg.p_hot,
        cfg.hot_amplitude,
        cfg.n_hot_columns,
        cfg.p_hot_column,
        cfg.hot_column_amplitude,
    )
    bad = _pixels_and_columns(
        k_bad,
        yy,
        xx,
        h,
        w,
        cfg.n_bad,
        cfg.p_bad,
        cfg.bad_depth,
        cfg.n_bad_columns,
        cfg.p_bad_column,
        cfg.bad_depth,
    )
    img = img + sigma * (trail + cr + hot)
    is_bad = bad > 0
    img = jnp.where(is_bad, bg - sigma * bad, img)
    labels = jnp.stack([cr > 0, hot > 0, is_bad, trail > 1.0, sat], axis=-1)
    others = jnp.broadcast_to(jnp.arange(_N) != 2, labels.shape)
    labels = labels & ~(is_bad[..., None] & others)  # dead pixels hide the rest
    return img[..., None], labels.astype(jnp.float32)


# --------------------------------------------------------------------------- normalisation
def robust_background(image):
    """Scalar background and noise: ``median`` and ``1.4826 * MAD`` of the finite pixels.

    Returns:
      ``(background, sigma)`` as Python floats (sigma floored at a tiny positive value).
    """
    a = np.asarray(check_image("image", image), np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("image: no finite pixels")
    med = float(np.median(a))
    mad = 1.4826 * float(np.median(np.abs(a - med)))
    if mad <= 0:  # constant images: fall back to the standard deviation or 1
        mad = float(np.std(a)) or 1.0
    return med, mad


def stretch_for_mask(image, background, sigma):
    """Network input ``arcsinh((image - background) / sigma)``.

    Uses :func:`galjax.image.transforms.arcsinh_stretch`; ``image`` is ``(..., h, w, 1)``.
    """
    image = check_image("image", image)
    return arcsinh_stretch(image - jnp.asarray(background, image.dtype), sigma)


# --------------------------------------------------------------------------- network
class MaskNet(nn.Module):
    """Fully convolutional per-pixel classifier (dilated 3x3 convolutions, no pooling).

    Each layer is ``relu(conv3x3(x, dilation=d))``; the input is concatenated to
    the last hidden layer and a 1x1 convolution gives one logit per class. The
    receptive field reaches ``sum(dilations)`` pixels from the centre
    (:func:`receptive_radius`); with no pooling the network commutes with
    integer translations, which makes tiled inference exact.

    Attributes:
      n_classes: number of output classes.
      features: channels of every hidden layer.
      dilations: dilation of each 3x3 layer.

    ``__call__(x)``: ``(..., h, w, 1)`` stretched image -> logits ``(..., h, w, n_classes)``.

    >>> import jax, jax.numpy as jnp
    >>> net = MaskNet(features=4, dilations=(1, 2))
    >>> v = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    >>> net.apply(v, jnp.zeros((2, 20, 24, 1))).shape
    (2, 20, 24, 5)
    """

    n_classes: int = _N
    features: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1)

    @nn.compact
    def __call__(self, x):
        h = x
        for d in self.dilations:
            h = nn.relu(nn.Conv(self.features, (3, 3), kernel_dilation=(d, d), padding="SAME")(h))
        h = jnp.concatenate([h, x], axis=-1)
        return nn.Conv(self.n_classes, (1, 1))(h)


def receptive_radius(model: MaskNet) -> int:
    """Pixels from the centre that can change one output pixel of ``model``: ``sum(dilations)``."""
    return int(sum(model.dilations))


def mask_loss(logits, labels, pos_weight=None):
    """Mean per-pixel binary cross-entropy of independent class sigmoids.

    ``L = -mean[w_c y log s(z) + (1 - y) log(1 - s(z))]`` with ``w_c`` the
    positive weight of class ``c`` (rare classes: ``w_c > 1``).

    Args:
      logits: ``(..., h, w, n_classes)``.
      labels: same shape, 0/1.
      pos_weight: ``(n_classes,)`` or None (all 1).
    """
    # log_sigmoid keeps log s(z) finite for large |z| (log(sigmoid) would hit log 0)
    log_p = jax.nn.log_sigmoid(logits)
    log_q = jax.nn.log_sigmoid(-logits)
    wpos = (
        1.0
        if pos_weight is None
        else jnp.broadcast_to(jnp.asarray(pos_weight, logits.dtype), logits.shape)
    )
    return -jnp.mean(wpos * labels * log_p + (1 - labels) * log_q)


# --------------------------------------------------------------------------- training data
def make_injection_sampler(
    bases, backgrounds, sigmas, tile: int, batch_size: int, config: InjectionConfig | None = None
):
    """Build ``sample(key) -> {"x", "y"}``: random tiles of base images with injections.

    Each example picks a base image, a random ``tile x tile`` crop and a random
    dihedral orientation, injects contaminants (:func:`inject_contaminants`) and
    stretches it (:func:`stretch_for_mask` with that base's background/sigma).

    Args:
      bases: ``(n, H, W, 1)`` clean-ish images (real fields and/or simulations),
        ``H, W >= tile``.
      backgrounds: ``(n,)`` scalar background of each base.
      sigmas: ``(n,)`` noise standard deviation of each base (> 0).
      tile: crop size in pixels.
      batch_size: examples per call.
      config: :class:`InjectionConfig`.

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
        img, lab = _inject(k_inj, crop, sig[i], bgs[i], cfg)
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

    Loss: :func:`mask_loss`; optimiser ``clip(1) + adam`` with cosine decay;
    driven by :func:`galjax.train.fit`.

    Returns:
      ``(params, history)``.
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


# --------------------------------------------------------------------------- inference
def predict_mask(
    model: MaskNet,
    params,
    image,
    *,
    tile: int = 128,
    margin: int | None = None,
    background: float | None = None,
    sigma: float | None = None,
    batch_size: int = 8,
):
    """Per-pixel class probabilities of a single-band image of any size, by overlapping tiles.

    The image is stretched once (:func:`stretch_for_mask`; background and sigma
    from :func:`robust_background` unless given), reflect-padded by ``margin``
    and cut into ``tile x tile`` tiles on a stride of ``tile - 2 margin``; only the
    central ``(tile - 2 margin)^2`` of each tile is kept. With ``margin >=
    receptive_radius(model)`` (the default) the result equals the network
    applied to the whole (reflect-padded) image: exactly, except within
    ``margin`` of the image edges where padding differs.

    Args:
      model, params: the trained :class:`MaskNet`.
      image: ``(h, w, 1)`` (or ``(h, w)``) image, ``h, w >= tile``.
      tile: tile size (pixels).
      margin: overlap kept off each tile side (default the receptive radius).
      background, sigma: scalar normalisation (robust estimates when None).
      batch_size: tiles per forward pass.

    Returns:
      ``(h, w, n_classes)`` float32 numpy probabilities in ``[0, 1]``.
    """
    img = np.asarray(as_float_array("image", image), np.float32)
    if img.ndim == 2:
        img = img[..., None]
    img = np.asarray(check_image("image", img, bands=1))
    if img.ndim != 3:
        raise ValueError(f"image: expected one image (h, w, 1), got shape {img.shape}")
    h, w = img.shape[:2]
    margin = receptive_radius(model) if margin is None else int(margin)
    if margin < 0:
        raise ValueError(f"margin: expected >= 0, got {margin}")
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile <= 2 * margin:
        raise ValueError(f"tile: expected an integer > 2 * margin = {2 * margin}, got {tile!r}")
    if h < tile or w < tile:
        raise ValueError(
            f"image: {h}x{w} pixels is smaller than one tile ({tile}x{tile}); pass a smaller "
            f"tile (> 2 * margin = {2 * margin})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if background is None or sigma is None:
        bg_est, sig_est = robust_background(img)
        background = bg_est if background is None else background
        sigma = sig_est if sigma is None else sigma
    good = np.isfinite(img)
    img = np.where(good, img, np.float32(background))  # NaN pixels -> background
    x = np.asarray(stretch_for_mask(img, background, sigma))
    core = tile - 2 * margin
    ny, nx = math.ceil(h / core), math.ceil(w / core)
    ph, pw = ny * core + 2 * margin, nx * core + 2 * margin
    padded = np.pad(
        x, ((margin, ph - h - margin), (margin, pw - w - margin), (0, 0)), mode="reflect"
    )
    starts = [(i * core, j * core) for i in range(ny) for j in range(nx)]
    tiles = np.stack([padded[y : y + tile, xx : xx + tile] for y, xx in starts])
    fn = _apply_sigmoid(model)
    probs = []
    for b in range(0, len(tiles), batch_size):
        chunk = tiles[b : b + batch_size]
        n_real = chunk.shape[0]
        if n_real < batch_size and len(tiles) > batch_size:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n_real, 0)])
        probs.append(np.asarray(fn(params, jnp.asarray(chunk)))[:n_real])
    probs = np.concatenate(probs)[:, margin : margin + core, margin : margin + core]
    out = np.zeros((ny * core, nx * core, probs.shape[-1]), np.float32)
    for (y, xx), p in zip(starts, probs, strict=True):
        out[y : y + core, xx : xx + core] = p
    return out[:h, :w]


_APPLY_CACHE: dict = {}


def _apply_sigmoid(model):
    if model not in _APPLY_CACHE:
        _APPLY_CACHE[model] = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))
    return _APPLY_CACHE[model]


def mask_bits(probs, thresholds=0.5):
    """Integer bit mask: bit ``c`` set where ``probs[..., c] >= thresholds[c]``.

    Args:
      probs: ``(..., n_classes)`` probabilities in ``[0, 1]`` (``n_classes <= 31``).
      thresholds: scalar or ``(n_classes,)`` thresholds in ``[0, 1]``.

    Returns:
      ``(...)`` int32 mask ``sum_c 2^c [p_c >= t_c]``.

    >>> import numpy as np
    >>> mask_bits(np.array([[0.9, 0.1, 0.7]]), [0.5, 0.5, 0.8]).tolist()
    [1]
    """
    p = as_float_array("probs", probs)
    if p.ndim < 1 or p.shape[-1] > 31:
        raise ValueError(f"probs: expected (..., n_classes) with n_classes <= 31, got {p.shape}")
    if is_concrete(p):
        a = np.asarray(p)
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1):
            raise ValueError("probs: expected finite probabilities in [0, 1]")
    t = as_float_array("thresholds", thresholds).astype(p.dtype)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != p.shape[-1]):
        raise ValueError(
            f"thresholds: expected a scalar or {p.shape[-1]} values (one per class), "
            f"got shape {t.shape}"
        )
    if is_concrete(t) and (np.any(np.asarray(t) < 0) or np.any(np.asarray(t) > 1)):
        raise ValueError(f"thresholds: expected values in [0, 1], got {np.asarray(t).tolist()}")
    t = jnp.broadcast_to(t, p.shape)
    weights = jnp.broadcast_to(2 ** jnp.arange(p.shape[-1], dtype=jnp.int32), p.shape)
    return jnp.sum(jnp.where(p >= t, weights, 0), axis=-1).astype(jnp.int32)


def per_class_auc(probs, labels, class_names=MASK_CLASSES):
    """ROC AUC of every class over all pixels (:func:`galjax.scores.metrics.auc`).

    Args:
      probs: ``(..., n_classes)`` per-pixel probabilities.
      labels: same shape, 0/1.
      class_names: names used as keys.

    Returns:
      dict ``name -> AUC`` (NaN for a class with no positive or no negative pixel).
    """
    from galjax.scores.metrics import auc

    p = np.asarray(as_float_array("probs", probs))
    y = np.asarray(labels)
    if p.shape != y.shape or p.ndim < 1:
        raise ValueError(
            f"probs, labels: expected equal shapes (..., n_classes), got {p.shape} and {y.shape}"
        )
    if len(class_names) != p.shape[-1]:
        raise ValueError(f"class_names: expected {p.shape[-1]} names, got {len(class_names)}")
    p, y = p.reshape(-1, p.shape[-1]), y.reshape(-1, y.shape[-1]) > 0.5
    out = {}
    for c, name in enumerate(class_names):
        n_pos = int(y[:, c].sum())
        out[str(name)] = float("nan") if n_pos in (0, y.shape[0]) else float(auc(p[:, c], y[:, c]))
    return out


def write_mask_fits(path, bits, class_names=MASK_CLASSES, thresholds=None, header=None):
    """Write a bit mask as an integer FITS image (int16 for <= 15 classes, else int32).

    The header names each bit (``MASKBn = class``) and its threshold (``MASKTn``).
    Written atomically. galjax.io.write_fits stores float32 only, so this uses
    astropy directly.

    Args:
      path: output file.
      bits: ``(h, w)`` integer mask from :func:`mask_bits`.
      class_names: names of the bits.
      thresholds: optional per-class thresholds to record.
      header: optional extra header cards (dict or Header), e.g. the image's WCS.
    """
    from astropy.io import fits

    b = np.asarray(bits)
    if b.ndim != 2 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"bits: expected a 2-D integer mask, got shape {b.shape} dtype {b.dtype}")
    dtype = np.int16 if len(class_names) <= 15 else np.int32
    hdr = fits.Header()
    skip = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BSCALE", "BZERO"}
    if header is not None:
        items = (
            [(c.keyword, c.value) for c in header.cards]
            if isinstance(header, fits.Header)
            else list(dict(header).items())
        )
        for k, v in items:
            if k == "COMMENT":
                hdr.add_comment(str(v))
            elif k == "HISTORY":
                hdr.add_history(str(v))
            elif k not in skip:
                hdr[k] = v
    for i, name in enumerate(class_names):
        hdr[f"MASKB{i}"] = (str(name), f"bit {i} (value {2**i})")
        if thresholds is not None:
            hdr[f"MASKT{i}"] = (
                float(np.broadcast_to(thresholds, (len(class_names),))[i]),
                f"threshold of bit {i}",
            )
    hdu = fits.PrimaryHDU(b.astype(dtype), header=hdr)
    return atomic_write(path, lambda tmp: hdu.writeto(tmp, overwrite=True))


# --------------------------------------------------------------------------- storage
_WEIGHTS_NAME = "mask.msgpack"
_CONFIG_NAME = "model.json"
MASK_FORMAT = 1


def default_mask_dir() -> Path:
    """Folder of the packaged mask-network weights (``galjax/weights/mask``)."""
    return Path(__file__).resolve().parent / "weights" / "mask"


def save_mask_model(directory, model: MaskNet, params, thresholds=None, meta=None) -> Path:
    """Write ``mask.msgpack`` (flax msgpack) and ``model.json`` (architecture, thresholds, meta)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = flax.serialization.to_bytes(jax.device_get(params))
    atomic_write(d / _WEIGHTS_NAME, lambda tmp: tmp.write_bytes(data))
    thr = (
        None
        if thresholds is None
        else [float(t) for t in np.broadcast_to(thresholds, (model.n_classes,))]
    )
    cfg = {
        "format": MASK_FORMAT,
        "classes": list(MASK_CLASSES[: model.n_classes]),
        "model": {
            "n_classes": model.n_classes,
            "features": model.features,
            "dilations": list(model.dilations),
        },
        "thresholds": thr,
        "meta": meta or {},
    }
    text = json.dumps(cfg, indent=2, default=str)
    atomic_write(d / _CONFIG_NAME, lambda tmp: tmp.write_text(text + "\n"))
    return d


def load_mask_model(directory=None):
    """Load ``(model, params, config_dict)`` written by :func:`save_mask_model`.

    Args:
      directory: model folder, default :func:`default_mask_dir`.

    Raises:
      FileNotFoundError: no weights there (train them with ``scripts/train_mask_weights.py``).
    """
    d = default_mask_dir() if directory is None else Path(directory)
    if not (d / _WEIGHTS_NAME).is_file() or not (d / _CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"directory: no mask model ({_WEIGHTS_NAME} + {_CONFIG_NAME}) in {str(d)!r}; train one "
            "with scripts/train_mask_weights.py"
        )
    cfg = json.loads((d / _CONFIG_NAME).read_text())
    if cfg.get("format") != MASK_FORMAT:
        raise ValueError(f"directory: mask model format {cfg.get('format')} != {MASK_FORMAT}")
    m = cfg["model"]
    model = MaskNet(int(m["n_classes"]), int(m["features"]), tuple(int(x) for x in m["dilations"]))
    target = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    params = flax.serialization.from_bytes(target, (d / _WEIGHTS_NAME).read_bytes())
    return model, params, cfg
