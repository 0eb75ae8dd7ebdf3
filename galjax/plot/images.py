"""Figures for galaxy images: image grids and field / model / residual panels.

Figures are built as ``matplotlib.figure.Figure`` objects with an Agg canvas, so
they render without a display (batch jobs, CI) and never touch ``pyplot``'s
global state; in a notebook, a returned figure displays as the cell's value.
Pixel values are shown with ``astropy.visualization.ImageNormalize`` and an
``AsinhStretch``, which keeps faint outskirts and bright cores visible together.

Images are drawn with ``origin="lower"`` (FITS convention: row 0 at the bottom).
Positions are ``(x, y)`` in 0-based pixel coordinates, ``x`` along the width
(astropy's ``origin=0`` convention: the centre of the first pixel is ``(0, 0)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from matplotlib.figure import Figure

from galjax.core.checks import check_image
from galjax.plot.figure import new_figure, save_figure

__all__ = ["image_grid", "field_panels", "reconstructions", "latent_traversal", "latent_embedding"]


def _norm(data, percentile: float, stretch: float) -> ImageNormalize:
    finite = np.asarray(data, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        finite = np.zeros(1)
    return ImageNormalize(
        finite, interval=PercentileInterval(percentile), stretch=AsinhStretch(stretch), clip=True
    )


def _rgb(img: np.ndarray, bands: Sequence[int], norm: ImageNormalize | None, pct, a):
    """Asinh composite ``(h, w, 3)`` in [0, 1], one normalisation for the three bands."""
    chans = np.stack([img[..., b] for b in bands], axis=-1)
    norm = norm or _norm(chans, pct, a)
    return np.clip(np.ma.filled(norm(chans), 0.0), 0.0, 1.0)


def _resolve_bands(bands, n_bands: int):
    """Return an int (one band, grey scale) or a 3-tuple (red, green, blue bands)."""
    if bands is None:
        # Bands are ordered blue to red (e.g. g, r, i): the reddest of the first
        # three goes to the red channel.
        return (2, 1, 0) if n_bands >= 3 else 0
    if isinstance(bands, int | np.integer):
        picked = (int(bands),)
    else:
        picked = tuple(int(b) for b in bands)
        if len(picked) != 3:
            raise ValueError(f"bands: expected an int or 3 band indices (r, g, b), got {bands}")
    for b in picked:
        if not -n_bands <= b < n_bands:
            raise ValueError(f"bands: index {b} out of range for {n_bands} band(s)")
    return picked[0] if len(picked) == 1 else picked


def image_grid(
    images,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    path=None,
    *,
    bands: int | Sequence[int] | None = None,
    percentile: float = 99.5,
    stretch: float = 0.1,
    share_norm: bool = False,
    panel_size: float = 1.6,
) -> Figure:
    """Draw images on a grid, with an asinh stretch.

    Args:
      images: ``(n, h, w, bands)`` (or one ``(h, w, bands)`` image).
      ncols: panels per row (fewer if there are fewer images).
      titles: ``n`` panel titles, or None.
      path: file to save to (format from the suffix, e.g. ``.png``, ``.pdf``), or None.
      bands: which bands to show: None for the first band (grey) with 1-2 bands
        and an RGB composite of bands ``(2, 1, 0)`` with 3 or more (bands
        ordered blue to red); an int for one band; three indices
        ``(red, green, blue)`` for a composite.
      percentile: central percentile of the pixel values mapped to the colour
        range (``astropy.visualization.PercentileInterval``).
      stretch: ``a`` of ``AsinhStretch`` (smaller = stronger compression).
      share_norm: one normalisation for all panels (compare brightnesses)
        instead of one per panel (see every galaxy).
      panel_size: size of one panel in inches.

    Returns:
      The ``matplotlib.figure.Figure``.

    >>> import numpy as np
    >>> fig = image_grid(np.random.default_rng(0).random((6, 16, 16, 3)), ncols=3)
    >>> len(fig.axes)
    6
    """
    arr = check_image("images", images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"images: expected shape (n, h, w, bands), got {arr.shape}")
    imgs = np.asarray(arr, dtype=np.float64)
    n, n_bands = imgs.shape[0], imgs.shape[-1]
    if n == 0:
        raise ValueError("images: expected at least one image, got 0")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols: expected a positive integer, got {ncols!r}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles: expected {n} titles (one per image), got {len(titles)}")
    sel = _resolve_bands(bands, n_bands)
    rgb = isinstance(sel, tuple)
    shown = imgs[..., list(sel)] if rgb else imgs[..., sel]
    shared = _norm(shown, percentile, stretch) if share_norm else None

    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = new_figure(panel_size * ncols, panel_size * nrows + (0.25 * nrows if titles else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        if rgb:
            ax.imshow(_rgb(imgs[i], sel, shared, percentile, stretch), origin="lower")
        else:
            norm = shared or _norm(shown[i], percentile, stretch)
            ax.imshow(shown[i], cmap="gray", norm=norm, origin="lower")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    for ax in axes.flat[n:]:
        fig.delaxes(ax)
    save_figure(fig, path)
    return fig


def field_panels(
    field,
    model,
    residual=None,
    sigma=None,
    positions=None,
    path=None,
    *,
    band: int = 0,
    vmax_sigma: float = 5.0,
    percentile: float = 99.5,
    stretch: float = 0.1,
    panel_size: float = 3.2,
) -> Figure:
    """Show a field, its model and the residual side by side.

    Field and model share one asinh normalisation (computed from the field); the
    residual is shown in units of the noise, ``(field - model) / sigma``, on a
    diverging colour map clipped to ``+-vmax_sigma``, or in data units with
    symmetric limits when no ``sigma`` is given.

    Args:
      field: observed image ``(h, w, bands)``.
      model: model image, same shape.
      residual: ``field - model`` (same shape), or None to compute it.
      sigma: per-pixel noise standard deviation, broadcastable to ``field``, or None.
      positions: ``(n, 2)`` source positions ``(x, y)`` in 0-based pixels, marked
        with circles on all panels; or None.
      path: file to save to, or None.
      band: band to show.
      vmax_sigma: residual colour limit in units of sigma.
      percentile, stretch: see :func:`image_grid`.
      panel_size: size of one panel in inches.

    Returns:
      The ``matplotlib.figure.Figure`` with three image axes (plus a colour bar).

    >>> import numpy as np
    >>> f = np.random.default_rng(0).normal(size=(32, 32, 1))
    >>> fig = field_panels(f, 0 * f, sigma=1.0, positions=[[10.0, 20.0]])
    >>> [ax.get_title() for ax in fig.axes[:3]]
    ['field', 'model', 'residual / sigma']
    """
    field_a = np.asarray(check_image("field", field), dtype=np.float64)
    model_a = np.asarray(check_image("model", model), dtype=np.float64)
    if field_a.ndim != 3:
        raise ValueError(f"field: expected one image (h, w, bands), got shape {field_a.shape}")
    if model_a.shape != field_a.shape:
        raise ValueError(f"model: expected shape {field_a.shape} like field, got {model_a.shape}")
    if residual is None:
        resid = field_a - model_a
    else:
        resid = np.asarray(check_image("residual", residual), dtype=np.float64)
        if resid.shape != field_a.shape:
            raise ValueError(
                f"residual: expected shape {field_a.shape} like field, got {resid.shape}"
            )
    n_bands = field_a.shape[-1]
    if not -n_bands <= band < n_bands:
        raise ValueError(f"band: index {band} out of range for {n_bands} band(s)")
    if sigma is not None:
        sig = np.asarray(sigma, dtype=np.float64)
        try:
            sig = np.broadcast_to(sig, field_a.shape)
        except ValueError as err:
            raise ValueError(
                f"sigma: expected a shape broadcastable to {field_a.shape}, got {sig.shape}"
            ) from err
        with np.errstate(divide="ignore", invalid="ignore"):
            shown_resid = np.where(sig > 0, resid / sig, np.nan)[..., band]
        limit, label = vmax_sigma, "residual / sigma"
    else:
        shown_resid = resid[..., band]
        finite = np.abs(shown_resid[np.isfinite(shown_resid)])
        limit = float(np.percentile(finite, percentile)) if finite.size else 1.0
        limit, label = (limit if limit > 0 else 1.0), "residual"
    pos = None
    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(f"positions: expected shape (n, 2) of (x, y), got {pos.shape}")

    fig = new_figure(3 * panel_size + 0.8, panel_size)
    axes = fig.subplots(1, 3)
    norm = _norm(field_a[..., band], percentile, stretch)
    axes[0].imshow(field_a[..., band], cmap="gray", norm=norm, origin="lower")
    axes[1].imshow(model_a[..., band], cmap="gray", norm=norm, origin="lower")
    im = axes[2].imshow(shown_resid, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
    fig.colorbar(im, ax=axes[2], shrink=0.85)
    for ax, title in zip(axes, ("field", "model", label), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if pos is not None and len(pos):
            ax.scatter(pos[:, 0], pos[:, 1], s=60, facecolors="none", edgecolors="tab:orange")
        h, w = shown_resid.shape
        ax.set_xlim(-0.5, w - 0.5)  # sources off the image must not widen the axes
        ax.set_ylim(-0.5, h - 0.5)
    save_figure(fig, path)
    return fig


def reconstructions(images, f_mu, f_sigma=None, path=None, *, band: int = 0, n: int = 8,
                    panel_size: float = 1.5) -> Figure:  # fmt: skip
    """VAE reconstructions: input, ``f_mu``, ``f_sigma`` (if learned) and residual rows.

    The input and ``f_mu`` share one asinh normalisation per column; ``f_sigma`` is
    shown on its own linear scale, the residual ``x - f_mu`` on a diverging map with
    symmetric limits (in units of ``f_sigma`` when it is given).

    Args:
      images, f_mu: ``(n, h, w, bands)`` inputs and decoded means.
      f_sigma: optional ``(n, h, w, bands)`` decoded per-pixel standard deviations.
      path: file to save to, or None.
      band: band shown; n: columns (first ``n`` images).
    """
    x = np.asarray(check_image("images", images, min_ndim=4), np.float64)
    mu = np.asarray(check_image("f_mu", f_mu, min_ndim=4), np.float64)
    if x.shape != mu.shape:
        raise ValueError(f"images, f_mu: expected equal shapes, got {x.shape} and {mu.shape}")
    sig = None if f_sigma is None else np.asarray(check_image("f_sigma", f_sigma), np.float64)
    if sig is not None and sig.shape != x.shape:
        raise ValueError(f"f_sigma: expected shape {x.shape}, got {sig.shape}")
    if not 0 <= band < x.shape[-1]:
        raise ValueError(f"band: expected an index in [0, {x.shape[-1]}), got {band}")
    k = min(n, x.shape[0])
    rows = ["input", "f_mu"] + (["f_sigma"] if sig is not None else []) + ["residual"]
    fig = new_figure(panel_size * k, panel_size * len(rows))
    axes = fig.subplots(len(rows), k, squeeze=False)
    for j in range(k):
        norm = _norm(x[j, ..., band], 99.5, 0.1)
        res = x[j, ..., band] - mu[j, ..., band]
        if sig is not None:
            res = res / np.maximum(sig[j, ..., band], 1e-12)
        lim = max(float(np.max(np.abs(res))), 1e-12)
        panels = [(x[j, ..., band], dict(cmap="gray", norm=norm)),
                  (mu[j, ..., band], dict(cmap="gray", norm=norm))]  # fmt: skip
        if sig is not None:
            panels.append((sig[j, ..., band], dict(cmap="viridis")))
        panels.append((res, dict(cmap="RdBu_r", vmin=-lim, vmax=lim)))
        for i, (img, kw) in enumerate(panels):
            axes[i, j].imshow(img, origin="lower", **kw)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
    for i, name in enumerate(rows):
        label = "residual / f_sigma" if (name == "residual" and sig is not None) else name
        axes[i, 0].set_ylabel(label, fontsize=8)
    save_figure(fig, path)
    return fig


def latent_traversal(grid, path=None, *, dims: Sequence[int] | None = None, span: float = 3.0,
                     band: int = 0, panel_size: float = 1.1) -> Figure:  # fmt: skip
    """Latent traversals, one dimension per row (see :func:`galjax.models.vae.traverse`).

    Args:
      grid: ``(n_dims, n_steps, h, w, bands)`` decoded images.
      path: file to save to, or None.
      dims: the dimension index of each row (for the labels; default ``0..n_dims-1``).
      span: the traversal's ``|t|`` range in prior sigmas (for the column titles).
      band: band shown. Each row shares one asinh normalisation.
    """
    g = np.asarray(grid, np.float64)
    if g.ndim != 5:
        raise ValueError(f"grid: expected (n_dims, n_steps, h, w, bands), got shape {g.shape}")
    nd, ns = g.shape[:2]
    dims = list(range(nd)) if dims is None else list(dims)
    if len(dims) != nd:
        raise ValueError(f"dims: expected {nd} labels (one per row), got {len(dims)}")
    fig = new_figure(panel_size * ns, panel_size * nd + 0.3)
    axes = fig.subplots(nd, ns, squeeze=False)
    t = np.linspace(-span, span, ns)
    for i in range(nd):
        norm = _norm(g[i, ..., band], 99.5, 0.1)
        for j in range(ns):
            axes[i, j].imshow(g[i, j, ..., band], cmap="gray", norm=norm, origin="lower")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(f"{t[j]:+.1f} sigma", fontsize=7)
        axes[i, 0].set_ylabel(f"z[{dims[i]}]", fontsize=8)
    save_figure(fig, path)
    return fig


def latent_embedding(z, color=None, path=None, *, label: str = "", s: float = 4.0) -> Figure:
    """2-D embedding of posterior means by PCA (the two leading principal axes).

    Args:
      z: ``(n, latent_dim)`` posterior means ``g_mu(x)``.
      color: optional ``(n,)`` values to colour the points by (e.g. log flux, size).
      path: file to save to, or None.
      label: colour-bar label.

    Returns:
      The figure; the axes titles give the variance fraction of each axis.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or z.shape[0] < 3 or z.shape[1] < 2:
        raise ValueError(f"z: expected (n >= 3, latent_dim >= 2) latents, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("z: expected finite latents")
    zc = z - z.mean(axis=0)
    _, sv, vt = np.linalg.svd(zc, full_matrices=False)
    xy = zc @ vt[:2].T
    frac = sv**2 / np.sum(sv**2)
    fig = new_figure(4.6, 4.0)
    ax = fig.subplots()
    if color is not None:
        c = np.asarray(color, np.float64)
        if c.shape != (z.shape[0],):
            raise ValueError(f"color: expected shape ({z.shape[0]},), got {c.shape}")
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=c, s=s, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=s)
    ax.set_xlabel(f"PC 1 ({frac[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({frac[1]:.0%} of variance)")
    save_figure(fig, path)
    return fig
