"""Deblending a survey image of any size: background, detection, blends, tiles, catalogue.

For each tile (:mod:`~galjax.deblend.tiles`) of a :class:`~galjax.io.SurveyImage`:

1. the window is read; per band, the sky background and rms maps are estimated
   (:func:`galjax.detect.sky_background`, SExtractor's algorithm through sep) and
   the background is subtracted; without a noise map the background rms is the
   noise (``ivar = 1 / rms^2``);
2. sources are detected on the inverse-variance weighted mean of the bands,
   ``d = sum_b w_b y_b / sum_b w_b`` with noise ``1 / sqrt(sum_b w_b)``
   (:func:`galjax.detect.detect_sources`: threshold, minimum area, multi-threshold
   deblending with a contrast, a segmentation map);
3. sources whose footprints touch or nearly touch form blends
   (:func:`galjax.detect.group_blends`); each blend the tile owns is cut out at a
   size that holds its footprints plus a margin (at least the model's stamp), on a
   square canvas of a few fixed sizes (zero weight outside the cutout);
4. all blends of a canvas size are solved in one call of
   :func:`~galjax.deblend.deblend` (compiled, vmapped, chunked), with Laplace flux
   errors (:func:`~galjax.deblend.laplace_flux_errors`).

:func:`deblend_tile` does one tile and returns a :class:`TileResult` (host numpy; the
numbers of sources and blends are data-dependent, so these functions are not traced,
while the solves inside them are compiled and vmapped);
:func:`catalog_table` merges tile results into an astropy ``Table`` with RA/Dec
from the image's WCS, fluxes in the image's unit and AB magnitudes where a
zeropoint is known; :func:`write_images` writes the model and residual mosaics
tile by tile; :func:`deblend_image` runs everything in memory for the Python API
(arrays, FITS paths, ``NDData``/``CCDData``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from galjax.deblend.batching import deblend, slot_bucket
from galjax.deblend.catalog import (
    SOURCE_COLUMNS,
    TileResult,
    catalog_table,
    empty_sources,
    report_flags,
)
from galjax.deblend.config import DeblendConfig
from galjax.deblend.inputs import half_maximum_width, model_psf, prepare_psf
from galjax.deblend.laplace import laplace_flux_errors
from galjax.deblend.point import point_source_tests
from galjax.deblend.tiles import Tile, canvas_size, owned, plan_tiles
from galjax.detect.sources import blend_boxes, detect_sources, group_blends, sky_background
from galjax.image.background import Background
from galjax.io.survey import SurveyImage, open_survey_image
from galjax.models.store import GalaxyModel

__all__ = [
    "DetectionConfig",
    "TileResult",
    "SOURCE_COLUMNS",
    "deblend_tile",
    "deblend_image",
    "psf_mismatch",
    "name_bands",
]


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Background, detection and blend settings of :func:`deblend_tile`.

    Attributes:
      threshold: detection threshold in units of the noise, > 0 (default 1.5,
        SExtractor's ``DETECT_THRESH``).
      min_area: minimum pixels above threshold, >= 1 (default 5).
      deblend_contrast: flux fraction for a branch to become its own source, in
        ``[0, 1]`` (default 0.005, ``DEBLEND_MINCONT``; 1 = no splitting).
      deblend_levels: multi-threshold levels, >= 1 (default 32).
      border: sources whose centre lies within this many pixels of the image edge
        are fitted but left out of the catalogue, >= 0 (default 0).
      background_box: mesh size of the background map in pixels, >= 8 (default 64).
      gap: footprints at most ``2 * gap`` sky pixels apart are one blend (default 2).
      margin: pixels added around a blend's footprints in its cutout (default 8).
      pixstack: sep's pixel stack (pixels above threshold at once); raise it when
        detection says so (default 1_000_000).
    """

    threshold: float = 1.5
    min_area: int = 5
    deblend_contrast: float = 0.005
    deblend_levels: int = 32
    border: int = 0
    background_box: int = 64
    gap: int = 2
    margin: int = 8
    pixstack: int = 1_000_000

    def __post_init__(self):
        if not (isinstance(self.threshold, int | float) and 0 < self.threshold < np.inf):
            raise ValueError(f"threshold: expected a finite number > 0, got {self.threshold!r}")
        if not (isinstance(self.deblend_contrast, int | float) and 0 <= self.deblend_contrast <= 1):
            raise ValueError(
                f"deblend_contrast: expected a number in [0, 1], got {self.deblend_contrast!r}"
            )
        for name, lo in (
            ("min_area", 1),
            ("deblend_levels", 1),
            ("border", 0),
            ("background_box", 8),
            ("gap", 0),
            ("margin", 0),
            ("pixstack", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")


def _background(win_data, good, box: int):
    """Per band: background level and rms maps, ``(h, w, bands)`` float32 each."""
    level = np.zeros(win_data.shape, np.float32)
    rms = np.zeros(win_data.shape, np.float32)
    for b in range(win_data.shape[-1]):
        if not good[..., b].any():
            rms[..., b] = np.inf
            continue
        bg = sky_background(win_data[..., b], mask=good[..., b], box=box)
        level[..., b] = np.broadcast_to(np.asarray(bg.level, np.float32), level.shape[:2])
        rms[..., b] = np.broadcast_to(np.asarray(bg.rms, np.float32), rms.shape[:2])
    return level, rms


def _detection_image(sub, ivar):
    """Inverse-variance weighted mean over bands and its noise std (inf: no data)."""
    wsum = ivar.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = np.where(wsum > 0, (ivar * sub).sum(axis=-1) / wsum, 0.0)
        rms = np.where(wsum > 0, wsum**-0.5, np.inf)
    return det.astype(np.float32), rms.astype(np.float32)


def _footprint_chi2(residual, ivar, seg_box, sources_k):
    """chi^2 per usable pixel over each source's segmentation pixels in a cutout."""
    r2 = (residual**2 * ivar).sum(axis=-1)
    n_used = (ivar > 0).sum(axis=-1)
    out = np.full(len(sources_k), np.nan)
    for j, k in enumerate(sources_k):
        pix = seg_box == k + 1
        n = n_used[pix].sum()
        if n:
            out[j] = r2[pix].sum() / n
    return out


def _half_light_radii(image, x, y, a) -> np.ndarray:
    """Radius (pixels) of the circle holding half the flux within ``max(6 a, 3)`` (sep)."""
    import sep

    if len(x) == 0:
        return np.zeros(0)
    img = np.ascontiguousarray(image, np.float64)
    rmax = np.clip(6.0 * np.asarray(a, np.float64), 3.0, 64.0)
    r, _ = sep.flux_radius(img, np.asarray(x, np.float64), np.asarray(y, np.float64), rmax, 0.5)
    return np.asarray(r, np.float64)


def psf_mismatch(model: GalaxyModel, psf, hlr, snr, min_snr: float = 30.0) -> str | None:
    """A warning when the image's most compact bright sources are sharper than the PSF.

    Stars have the PSF's half-light radius and galaxies more, so the 10th percentile of
    ``hlr`` over sources with ``snr > min_snr`` (at least 5) should not fall below
    0.8 times the half-light radius of the PSF the fit uses (``psf``, ``(ph, pw,
    bands)``, or the model's built-in one). Returns the message, or None.
    """
    psf = model_psf(model) if psf is None else psf
    if psf is None:
        return None
    p = np.asarray(psf, np.float64).reshape(psf.shape[0], psf.shape[1], -1).mean(-1)
    c = (p.shape[1] - 1) / 2.0, (p.shape[0] - 1) / 2.0
    # The same aperture rule as for the sources: rmax = 6 a, a ~ the core's Gaussian sigma.
    sigma = half_maximum_width(p) / 2.3548
    ref = float(_half_light_radii(p, [c[0]], [c[1]], [sigma])[0])
    bright = np.asarray(snr) > min_snr
    if bright.sum() < 5:
        return None
    compact = float(np.percentile(np.asarray(hlr)[bright], 10))
    if compact >= 0.8 * ref:
        return None
    what = "the given PSF" if model.vae_config.psf_explicit else "the model's built-in PSF"
    return (
        f"image: its most compact bright sources (10th percentile over {int(bright.sum())} "
        f"sources with SNR > {min_snr:g}) have a half-light radius of {compact:.2f} px, less "
        f"than {what} ({ref:.2f} px): the image is sharper than the PSF of the fit and fluxes "
        "will be biased; give the image's own PSF to an explicit-PSF model, or resample"
    )


def deblend_tile(
    model: GalaxyModel,
    image: SurveyImage,
    tile: Tile,
    psf=None,
    *,
    detection: DetectionConfig = DetectionConfig(),
    config: DeblendConfig = DeblendConfig(),
    find_stars: bool = False,
) -> TileResult:
    """Background, detection, blends and MAP deblending of one tile.

    Args:
      model: trained :class:`~galjax.models.GalaxyModel`; ``model.vae_config.bands``
        must equal ``image.bands``.
      image: the :class:`~galjax.io.SurveyImage` (read by windows).
      tile: a :class:`~galjax.deblend.tiles.Tile` of ``plan_tiles(image.shape)``.
      psf: ``(ph, pw, bands)`` PSF for explicit-PSF models (odd, centred, unit sum
        per band), else None.
      detection: :class:`DetectionConfig`.
      config: :class:`~galjax.deblend.DeblendConfig` of the MAP solve.
      find_stars: after a first solve, solve again with the sources that
        :func:`~galjax.deblend.point_source_tests` finds better fitted by the PSF as
        point sources (explicit-PSF models with a ``psf`` only).

    Returns:
      :class:`TileResult` of the blends the tile owns (possibly none).
    """
    bands = image.bands
    if find_stars and not (model.vae_config.psf_explicit and psf is not None):
        raise ValueError("find_stars: needs an explicit-PSF model and the image's psf")
    if model.vae_config.bands != bands:
        raise ValueError(f"image: has {bands} band(s), the model {model.vae_config.bands}")
    ry0, ry1, rx0, rx1 = tile.read
    cy0, cy1, cx0, cx1 = tile.core
    win = image.read(ry0, ry1, rx0, rx1)
    good = win.good
    data = np.where(good, win.data, 0.0).astype(np.float32)
    level, rms = _background(data, good, detection.background_box)
    sub = np.where(good, data - level, 0.0).astype(np.float32)
    if win.ivar is None:
        with np.errstate(divide="ignore"):
            ivar = np.where(
                good & (rms > 0) & np.isfinite(rms), 1.0 / rms.astype(np.float64) ** 2, 0.0
            )
    else:
        ivar = np.where(good, win.ivar, 0.0)
    background = level[cy0 - ry0 : cy1 - ry0, cx0 - rx0 : cx1 - rx0].copy()
    empty = TileResult(tile, empty_sources(bands), np.zeros((0, 4), np.int64), [], background)
    if not (ivar > 0).any():
        return empty
    det, det_rms = _detection_image(sub, ivar)
    src = detect_sources(
        det,
        rms=det_rms,
        background=Background(0.0, det_rms),
        threshold=detection.threshold,
        min_area=detection.min_area,
        deblend_contrast=detection.deblend_contrast,
        deblend_levels=detection.deblend_levels,
        pixstack=detection.pixstack,
    )
    if len(src.x) == 0:
        return empty
    blend_id, n_blends = group_blends(src.segmentation, gap=detection.gap)
    tight = blend_boxes(src.segmentation, blend_id, margin=0)
    stamp = model.vae_config.stamp_size
    boxes = blend_boxes(src.segmentation, blend_id, margin=detection.margin, min_size=stamp)
    gx, gy = src.x + rx0, src.y + ry0
    weight = np.clip(src.flux, 0.0, None)
    keep_blends, truncated = [], []
    h_img, w_img = image.shape
    for k in range(n_blends):
        members = blend_id == k
        wk = weight[members]
        wk = wk if wk.sum() > 0 else np.ones_like(wk)
        ref_x, ref_y = np.average(gx[members], weights=wk), np.average(gy[members], weights=wk)
        if not owned(tile, ref_x, ref_y):
            continue
        ty0, ty1, tx0, tx1 = tight[k]
        cut = (
            (ty0 == 0 and ry0 > 0)
            or (tx0 == 0 and rx0 > 0)
            or (ty1 == ry1 - ry0 and ry1 < h_img)
            or (tx1 == rx1 - rx0 and rx1 < w_img)
        )
        keep_blends.append(k)
        truncated.append(cut)
    if not keep_blends:
        return empty
    # Blends grouped by canvas size and source-slot bucket: one compiled shape per group,
    # and no single galaxy padded to the slots of the largest blend (Laplace errors cost
    # as much per padded slot as per real one).
    n_src = np.bincount(blend_id, minlength=n_blends)
    by_size: dict[tuple[int, int], list[int]] = {}
    for j, k in enumerate(keep_blends):
        y0, y1, x0, x1 = boxes[k]
        key = (canvas_size(y1 - y0, x1 - x0), slot_bucket(int(n_src[k]), 1 << 30))
        by_size.setdefault(key, []).append(j)
    explicit = model.vae_config.psf_explicit
    rows = []
    models_out: list = [None] * len(keep_blends)
    model_boxes = np.zeros((len(keep_blends), 4), np.int64)
    for (size, _), js in sorted(by_size.items()):
        ks = [keep_blends[j] for j in js]
        members = [np.flatnonzero(blend_id == k) for k in ks]
        n_max = max(len(m) for m in members)
        fields = np.zeros((len(ks), size, size, bands), np.float32)
        ivar_c = np.zeros(fields.shape, np.float64)
        pos = np.zeros((len(ks), n_max, 2), np.float32)
        mask = np.zeros((len(ks), n_max), bool)
        origin = np.zeros((len(ks), 2), np.int64)  # canvas corner (y, x), window pixels
        for i, (k, m) in enumerate(zip(ks, members, strict=True)):
            y0, y1, x0, x1 = boxes[k]
            oy, ox = (size - (y1 - y0)) // 2, (size - (x1 - x0)) // 2  # cutout centred
            origin[i] = y0 - oy, x0 - ox
            fields[i, oy : oy + y1 - y0, ox : ox + x1 - x0] = sub[y0:y1, x0:x1]
            ivar_c[i, oy : oy + y1 - y0, ox : ox + x1 - x0] = ivar[y0:y1, x0:x1]
            pos[i, : len(m)] = np.stack([src.x[m] - origin[i, 1], src.y[m] - origin[i, 0]], -1)
            mask[i, : len(m)] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # reported per source below
            p = psf if explicit else None
            res = deblend(model, fields, pos, mask, ivar=ivar_c, psf=p, config=config,
                          progress=False)  # fmt: skip
            point = None
            if find_stars:  # a second pass with the sources a point source fits better
                point = (point_source_tests(res, ivar_c, p, pos) > 0) & mask
                if point.any():
                    res = deblend(model, fields, pos, mask, ivar=ivar_c, psf=p, config=config,
                                  progress=False, point=point)  # fmt: skip
            err = laplace_flux_errors(model, res, pos, ivar_c, p)
        for i, (k, m) in enumerate(zip(ks, members, strict=True)):
            j = js[i]
            # The model is kept over the whole canvas inside the image: its light beyond
            # the cutout (zero weight there) still belongs to the sources' fluxes.
            gy0, gx0 = origin[i] + (ry0, rx0)
            a0, a1 = max(gy0, 0), min(gy0 + size, h_img)
            b0, b1 = max(gx0, 0), min(gx0 + size, w_img)
            model_boxes[j] = (a0, a1, b0, b1)
            models_out[j] = np.asarray(
                res.models[i, : len(m), a0 - gy0 : a1 - gy0, b0 - gx0 : b1 - gx0].sum(0),
                np.float32,
            )
            y0, y1, x0, x1 = boxes[k]
            cy, cx = y0 - origin[i, 0], x0 - origin[i, 1]
            fp = _footprint_chi2(
                res.residual[i, cy : cy + y1 - y0, cx : cx + x1 - x0],
                ivar[y0:y1, x0:x1],
                src.segmentation[y0:y1, x0:x1],
                m,
            )
            rows.append(
                {
                    "idx": m,
                    "blend": np.full(len(m), j, np.int32),
                    "flux": res.fluxes[i, : len(m)],
                    "flux_err": err[i, : len(m)],
                    "chi2": np.full(len(m), res.chi2[i]),
                    "chi2_footprint": fp,
                    "n_iter": np.full(len(m), res.n_iter[i], np.int32),
                    "status": np.full(len(m), res.status[i], np.int32),
                    "truncated": np.full(len(m), truncated[j]),
                    "point": np.zeros(len(m), bool) if point is None else point[i, : len(m)],
                }
            )
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    order = np.lexsort((cat["idx"], cat["blend"]))
    cat = {k: v[order] for k, v in cat.items()}
    idx = cat.pop("idx")
    cat["x"], cat["y"] = gx[idx], gy[idx]
    cat["det_flux"], cat["npix"] = src.flux[idx], src.npix[idx].astype(np.int32)
    cat["hlr"] = _half_light_radii(det, src.x[idx], src.y[idx], src.a[idx])
    iy = np.clip(np.round(src.y[idx]).astype(int), 0, det.shape[0] - 1)
    ix = np.clip(np.round(src.x[idx]).astype(int), 0, det.shape[1] - 1)
    cat["det_snr"] = src.flux[idx] / (det_rms[iy, ix] * np.sqrt(np.maximum(src.npix[idx], 1)))
    bd = detection.border
    cat["keep"] = (
        (cat["x"] >= bd)
        & (cat["x"] <= w_img - 1 - bd)
        & (cat["y"] >= bd)
        & (cat["y"] <= h_img - 1 - bd)
    )
    cat["flux"] = np.asarray(cat["flux"], np.float64)
    cat["flux_err"] = np.asarray(cat["flux_err"], np.float64)
    return TileResult(tile, cat, model_boxes, models_out, background)


def name_bands(model: GalaxyModel, image: SurveyImage) -> SurveyImage:
    """The image with the model's band names when its files name none (``band0``...)."""
    names = tuple(((model.meta or {}).get("survey") or {}).get("bands") or ())
    default = tuple(f"band{b}" for b in range(image.bands))
    if image.band_names == default and len(names) == image.bands:
        return dataclasses.replace(image, band_names=names)
    return image


def deblend_image(
    model: GalaxyModel,
    image,
    psf=None,
    *,
    variance=None,
    weight=None,
    sigma=None,
    mask=None,
    detection: DetectionConfig = DetectionConfig(),
    config: DeblendConfig = DeblendConfig(),
    tile: int = 1024,
    overlap: int = 128,
    find_stars: bool = False,
    on_tile: Callable[[TileResult], None] | None = None,
    progress: bool = True,
):
    """Detect and deblend every source of a survey image; the catalogue as a ``Table``.

    Args:
      model: trained :class:`~galjax.models.GalaxyModel` with as many bands as the image.
      image: a :class:`~galjax.io.SurveyImage`, or anything
        :func:`~galjax.io.open_survey_image` opens: a FITS path (2-D or a
        ``(bands, h, w)`` cube), a list of per-band FITS paths, an ``(h, w)`` or
        ``(h, w, bands)`` array, an astropy ``NDData``/``CCDData`` (its
        uncertainty, mask, WCS and unit are used).
      psf: ``(ph, pw)`` or ``(ph, pw, bands)`` PSF of the image; required by
        explicit-PSF models (odd sizes, centred, normalised here to unit sum).
      variance, weight, sigma, mask: noise and bad-pixel maps as
        :func:`~galjax.io.open_survey_image` takes them (mask nonzero = bad); without
        noise the background rms of each tile is used.
      detection: :class:`DetectionConfig`; config: :class:`~galjax.deblend.DeblendConfig`.
      tile, overlap: tile core side and read overlap in pixels (:func:`plan_tiles`).
      find_stars: model the sources that a point source fits better as point
        sources (:func:`deblend_tile`).
      on_tile: called with each finished :class:`TileResult`.
      progress: tqdm bar over tiles.

    Returns:
      astropy ``Table`` (:func:`catalog_table`), ``meta["tiles"]`` the tile results.
    """
    from tqdm.auto import tqdm

    if not isinstance(image, SurveyImage):
        image = open_survey_image(image, variance=variance, weight=weight, sigma=sigma, mask=mask)
    elif any(a is not None for a in (variance, weight, sigma, mask)):
        raise ValueError("image: an opened SurveyImage carries its own noise and mask")
    image = name_bands(model, image)
    psf = prepare_psf(model, psf, image.bands)
    if image.wcs is None:
        warnings.warn(
            "image: no WCS; the catalogue has pixel positions only", UserWarning, stacklevel=2
        )
    results = []
    for t in tqdm(plan_tiles(image.shape, tile, overlap), desc="tiles", disable=not progress):
        r = deblend_tile(model, image, t, psf, detection=detection, config=config,
                         find_stars=find_stars)  # fmt: skip
        if on_tile is not None:
            on_tile(r)
        results.append(r)
    report_flags(results)
    table = catalog_table(image, results)
    msg = psf_mismatch(model, psf, table["hlr"].value, np.asarray(table["det_snr"]))
    if msg:
        warnings.warn(msg, UserWarning, stacklevel=2)
    table.meta["tiles"] = results
    return table
