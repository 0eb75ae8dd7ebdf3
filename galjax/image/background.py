"""Sky background and noise estimation: one entry point, three estimators.

:func:`estimate_background` returns a :class:`Background` ``(level, rms)`` whose two
fields broadcast against the image they were measured on, so that
``(image - bkg.level) / bkg.rms`` is the background-subtracted image in units of the
noise. The method chooses the estimator:

* ``"mesh"``: SExtractor's background map (Bertin & Arnouts 1996, sec. 3.1):
  sigma-clipped mode per ``box x box`` mesh, median filter over the meshes, bicubic
  spline to every pixel. For wide fields whose sky varies.
* ``"border"``: median and ``1.4826 MAD`` of the ``border`` pixels nearest the edges
  of each postage stamp of a batch, robust to a central galaxy's wings.
* ``"global"``: median and ``1.4826 MAD`` of all finite pixels of one image (two
  scalars), for a field that is mostly sky.

All three run on concrete arrays outside ``jit`` (``"mesh"`` and ``"global"`` in host
numpy, ``"border"`` in ``jax.numpy``); none is meant to be differentiated. Estimate
once, then pass the result to the jitted code.

>>> import numpy as np
>>> img = np.random.default_rng(0).normal(100.0, 5.0, (128, 128, 1))
>>> bkg = estimate_background(img, method="global")
>>> round(bkg.level), round(bkg.rms)
(100, 5)
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from astropy.stats import sigma_clip

from galjax.core.checks import check_image

__all__ = ["Background", "BACKGROUND_METHODS", "estimate_background"]

BACKGROUND_METHODS = ("mesh", "border", "global")

# Option of each method and its default (``None`` in the signature means "not given").
_OPTIONS = {
    "mesh": {"box": 64, "filter_size": 3, "sigma": 3.0, "mask": None},
    "border": {"border": 4},
    "global": {},
}

# 1 / Phi^{-1}(3/4): turns a median absolute deviation into a Gaussian standard deviation.
_MAD_TO_STD = 1.4826


class Background(NamedTuple):
    """Background level and noise standard deviation, in the image's flux units.

    Both fields broadcast to the image they were estimated from; their shape depends
    on the method (see :func:`estimate_background`).

    Attributes:
      level: sky level.
      rms: standard deviation of the sky noise.
    """

    level: np.ndarray | jnp.ndarray | float
    rms: np.ndarray | jnp.ndarray | float


def estimate_background(
    image,
    method: str = "mesh",
    *,
    box: int | None = None,
    filter_size: int | None = None,
    sigma: float | None = None,
    mask=None,
    border: int | None = None,
) -> Background:
    """Estimate the sky level and noise rms of an image (or a batch of stamps).

    Args:
      image: ``(..., h, w, bands)`` image in flux units; ``"border"`` needs a batch
        ``(n, h, w, bands)``.
      method: one of ``"mesh"`` (default), ``"border"``, ``"global"`` (module docstring).
      box: ``"mesh"`` only; mesh side in pixels, int >= 2, default 64 (SExtractor's
        ``BACK_SIZE``); the last row/column of meshes may be smaller.
      filter_size: ``"mesh"`` only; median-filter size in meshes, odd int >= 1,
        default 3 (SExtractor's ``BACK_FILTERSIZE``; 1 = no filter).
      sigma: ``"mesh"`` only; clipping threshold in standard deviations, > 0, default 3.
      mask: ``"mesh"`` only; optional weights broadcastable to ``image``: pixels with
        weight <= 0 (and non-finite pixels) are ignored.
      border: ``"border"`` only; width of the edge frame in pixels, int in
        ``[1, min(h, w) // 2 - 1]``, default 4.

    Returns:
      :class:`Background` ``(level, rms)``:

      * ``"mesh"``: float32 numpy maps of the image's shape. Per mesh the level is the
        clipped mode ``2.5 median - 1.5 mean`` (the median when
        ``|mean - median| / std >= 0.3``) and the rms the clipped std; every band of
        every image is done apart.
      * ``"border"``: JAX arrays ``(n, 1, 1, bands)``; the rms is floored at 1e-12.
      * ``"global"``: Python floats; a zero MAD (constant image) falls back to the
        standard deviation, or 1.

    Raises:
      ValueError: unknown method, an option given to a method that does not take it,
        or an option out of range.

    >>> import numpy as np
    >>> img = np.random.default_rng(0).normal(100.0, 5.0, (128, 128, 1))
    >>> bkg = estimate_background(img)  # mesh
    >>> bkg.level.shape, round(float(bkg.level.mean())), round(float(bkg.rms.mean()))
    ((128, 128, 1), 100, 5)
    >>> stamps = np.random.default_rng(1).normal(3.0, 2.0, (2, 32, 32, 1))
    >>> bkg = estimate_background(stamps, "border", border=4)
    >>> bkg.level.shape
    (2, 1, 1, 1)
    """
    if method not in _OPTIONS:
        raise ValueError(f"method: expected one of {BACKGROUND_METHODS}, got {method!r}")
    given = {
        "box": box,
        "filter_size": filter_size,
        "sigma": sigma,
        "mask": mask,
        "border": border,
    }
    extra = sorted(k for k, v in given.items() if v is not None and k not in _OPTIONS[method])
    if extra:
        raise ValueError(f"{', '.join(extra)}: not an option of method={method!r}")
    opts = {k: (d if given[k] is None else given[k]) for k, d in _OPTIONS[method].items()}
    if method == "mesh":
        return _mesh_background(image, **opts)
    if method == "border":
        return _border_background(image, **opts)
    return _global_background(image)


# ---------------------------------------------------------------- global


def _global_background(image) -> Background:
    """Median and ``1.4826 MAD`` of the finite pixels, as Python floats."""
    a = np.asarray(check_image("image", image), np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("image: no finite pixels")
    med = float(np.median(a))
    mad = _MAD_TO_STD * float(np.median(np.abs(a - med)))
    if mad <= 0:  # constant images: fall back to the standard deviation or 1
        mad = float(np.std(a)) or 1.0
    return Background(med, mad)


# ---------------------------------------------------------------- border


def _border_background(images, border: int) -> Background:
    """Median and MAD-based std of the border frame, per image and band."""
    x = check_image("images", images)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {x.shape}")
    h, w = x.shape[1:3]
    if not (isinstance(border, int) and 1 <= border and 2 * border < min(h, w)):
        raise ValueError(f"border: expected an int in [1, {min(h, w) // 2 - 1}], got {border!r}")
    frame = np.zeros((h, w), bool)
    frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    pix = x[:, frame, :]  # (n, m, bands)
    level = jnp.median(pix, axis=1)
    rms = _MAD_TO_STD * jnp.median(jnp.abs(pix - level[:, None, :]), axis=1)
    # A constant border has MAD 0; a zero rms would divide by zero downstream.
    rms = jnp.maximum(rms, 1e-12)
    return Background(level[:, None, None, :], rms[:, None, None, :])


# ---------------------------------------------------------------- mesh (SExtractor)


def _mesh_stats(pixels, sigma):
    """SExtractor's mesh estimate: clipped mode ``2.5 med - 1.5 mean`` (or median) and rms.

    As in SExtractor's ``backstat``/``backguess``: the mean and std ``s'`` of the
    pixels within ``mean +- 2 std`` set the histogram range ``mean' +- 5 s'``;
    pixels in that range are sigma-clipped about the median until convergence
    (Bertin & Arnouts 1996, sec. 3.1). The mode estimate is used unless
    ``|mean - med| / std >= 0.3`` (a crowded mesh), then the median.
    """
    m, s = np.mean(pixels), np.std(pixels)
    cut = pixels[(pixels >= m - 2.0 * s) & (pixels <= m + 2.0 * s)]
    m, s = np.mean(cut), np.std(cut)
    pixels = pixels[(pixels >= m - 5.0 * s) & (pixels <= m + 5.0 * s)]
    clipped = sigma_clip(pixels, sigma=sigma, maxiters=100, cenfunc="median", stdfunc="std")
    data = clipped.compressed()
    mean, med, std = float(np.mean(data)), float(np.median(data)), float(np.std(data))
    if std > 0 and abs(mean - med) / std < 0.3:
        return 2.5 * med - 1.5 * mean, std
    return med, std


def _natural_spline_matrix(nodes, x):
    """Matrix ``(len(x), len(nodes))`` evaluating the natural cubic spline through unit nodes.

    Columns are the splines through the unit vectors, so ``A @ values`` interpolates
    any node values; outside the nodes the end cubic segments are extended (as
    SExtractor's ``backline`` does).
    """
    n = len(nodes)
    if n == 1:
        return np.ones((len(x), 1))
    if n == 2:
        t = (x - nodes[0]) / (nodes[1] - nodes[0])
        return np.stack([1 - t, t], axis=-1)
    hstep = nodes[1] - nodes[0]
    # Second derivatives M solve the tridiagonal system with M_0 = M_{n-1} = 0.
    a = np.zeros((n - 2, n - 2))
    np.fill_diagonal(a, 4.0)
    idx = np.arange(n - 3)
    a[idx, idx + 1] = 1.0
    a[idx + 1, idx] = 1.0
    rhs = np.zeros((n - 2, n))
    rhs[np.arange(n - 2), np.arange(n - 2)] = 1.0
    rhs[np.arange(n - 2), np.arange(1, n - 1)] = -2.0
    rhs[np.arange(n - 2), np.arange(2, n)] = 1.0
    second = np.zeros((n, n))
    second[1:-1] = np.linalg.solve(a, 6.0 * rhs / hstep**2)
    seg = np.clip(np.floor((x - nodes[0]) / hstep).astype(int), 0, n - 2)
    t = (x - nodes[seg]) / hstep
    eye = np.eye(n)
    lo, hi = eye[seg], eye[seg + 1]
    c = (hstep**2 / 6.0) * (
        (t**3 - t)[:, None] * second[seg + 1] + ((1 - t) ** 3 - (1 - t))[:, None] * second[seg]
    )
    return (1 - t)[:, None] * lo + t[:, None] * hi + c


def _median_filter_mesh(mesh, size):
    """Median filter of a small mesh with a ``size x size`` window shrunk at the edges."""
    if size <= 1:
        return mesh
    r = size // 2
    out = np.empty_like(mesh)
    ny, nx = mesh.shape
    for j in range(ny):
        ry = min(r, j, ny - 1 - j)
        for i in range(nx):
            rx = min(r, i, nx - 1 - i)
            out[j, i] = np.median(mesh[j - ry : j + ry + 1, i - rx : i + rx + 1])
    return out


def _background_2d(img, good, box, filter_size, sigma):
    """Level and rms maps ``(h, w)`` of one band of one image."""
    h, w = img.shape
    ny, nx = -(-h // box), -(-w // box)
    back = np.full((ny, nx), np.nan)
    rms = np.full((ny, nx), np.nan)
    for j in range(ny):
        for i in range(nx):
            sl = (slice(j * box, (j + 1) * box), slice(i * box, (i + 1) * box))
            pix = img[sl][good[sl]]
            if pix.size >= 0.5 * img[sl].size and pix.size > 2:
                back[j, i], rms[j, i] = _mesh_stats(pix.astype(np.float64), sigma)
    bad = np.isnan(back)
    if bad.all():
        raise ValueError("image: no background mesh has enough usable pixels")
    if bad.any():  # replace a bad mesh by the mean of its nearest good meshes (as SExtractor)
        jj, ii = np.nonzero(~bad)
        for j, i in zip(*np.nonzero(bad), strict=True):
            d2 = (jj - j) ** 2 + (ii - i) ** 2
            near = d2 == d2.min()
            back[j, i], rms[j, i] = back[jj, ii][near].mean(), rms[jj, ii][near].mean()
    back = _median_filter_mesh(back, filter_size)
    rms = _median_filter_mesh(rms, filter_size)
    ay = _natural_spline_matrix(np.arange(ny) * box + (box - 1) / 2.0, np.arange(h, dtype=float))
    ax = _natural_spline_matrix(np.arange(nx) * box + (box - 1) / 2.0, np.arange(w, dtype=float))
    return ay @ back @ ax.T, ay @ rms @ ax.T


def _mesh_background(image, box, filter_size, sigma, mask) -> Background:
    """SExtractor-style level and rms maps (float32 numpy, image shape)."""
    arr = np.asarray(check_image("image", image))
    if not isinstance(box, int | np.integer) or box < 2:
        raise ValueError(f"box: expected an int >= 2 (pixels), got {box!r}")
    if not isinstance(filter_size, int | np.integer) or filter_size < 1 or filter_size % 2 != 1:
        raise ValueError(f"filter_size: expected an odd int >= 1 (meshes), got {filter_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma: expected a value > 0, got {sigma!r}")
    good = np.isfinite(arr)
    if mask is not None:
        good &= np.broadcast_to(np.asarray(mask), arr.shape) > 0
    h, w, bands = arr.shape[-3:]
    flat = arr.reshape((-1, h, w, bands))
    gflat = good.reshape(flat.shape)
    back = np.empty(flat.shape, np.float32)
    rms = np.empty(flat.shape, np.float32)
    for n in range(flat.shape[0]):
        for b in range(bands):
            back[n, ..., b], rms[n, ..., b] = _background_2d(
                flat[n, ..., b], gflat[n, ..., b], int(box), int(filter_size), float(sigma)
            )
    return Background(back.reshape(arr.shape), rms.reshape(arr.shape))
