"""Synthetic contaminants (MaxiMask-like) injected into an image, with per-pixel labels.

Paillard, Bertin et al. (2019, "MaxiMask and MaxiTrack") classify every pixel of a
survey image as cosmic ray, hot/bad pixel or column, satellite trail, saturated, ...
with a convolutional network trained on contaminants injected into real images.
:func:`inject_contaminants` is that simulator: it adds synthetic contaminants to one
image and returns per-pixel labels ``(h, w, n_classes)`` (pure JAX; ``jit``/``vmap``).
Classes (bit ``i`` of a mask is class ``i`` of :data:`MASK_CLASSES`):

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

The network that learns these labels is :class:`galjax.models.masknet.MaskNet`, its
training :func:`galjax.train.recipes.masknet.train_mask_net` and its tiled inference
:func:`galjax.detect.masks.predict_mask`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from galjax.core.checks import as_float_array, check_image, check_positive

__all__ = ["MASK_CLASSES", "InjectionConfig", "inject_contaminants"]

#: Contaminant classes; class ``i`` is bit ``2**i`` of :func:`galjax.detect.masks.mask_bits`.
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
