"""The products of a survey-image run: the catalogue and the model/residual mosaics.

:func:`catalog_table` merges :class:`~galjax.deblend.survey.TileResult` s into an
astropy ``Table`` (RA/Dec from the image's WCS, fluxes in its unit, AB magnitudes);
:func:`write_images` writes the model and residual mosaics tile by tile with the
image's WCS and BUNIT; :func:`report_flags` counts and reports the sources that were
not fitted or were cut by a tile's edge.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from galjax.deblend.config import FAILED, DeblendStatus
from galjax.deblend.tiles import Tile
from galjax.io.survey import SurveyImage, pixel_to_sky

__all__ = [
    "SOURCE_COLUMNS",
    "TileResult",
    "empty_sources",
    "catalog_table",
    "write_images",
    "report_flags",
]


#: Per-source arrays of a :class:`TileResult` (``(n,)`` or ``(n, bands)``).
SOURCE_COLUMNS = (
    "hlr",
    "det_snr",
    "x",
    "y",
    "flux",
    "flux_err",
    "blend",
    "chi2",
    "chi2_footprint",
    "n_iter",
    "status",
    "truncated",
    "det_flux",
    "npix",
    "keep",
    "point",
)


class TileResult(NamedTuple):
    """The sources a tile owns, their blends' models and the tile's background.

    Attributes:
      tile: the :class:`~galjax.deblend.tiles.Tile`.
      sources: dict of :data:`SOURCE_COLUMNS` arrays, one row per source: ``x, y``
        global pixels; ``flux``, ``flux_err`` ``(n, bands)`` in the image's unit
        (sum of the model's pixels; Laplace 1-sigma); ``blend`` the blend's index
        in this tile; ``chi2`` residual chi^2 per usable pixel of the blend's
        cutout; ``chi2_footprint`` the same over the source's own footprint (its
        segmentation pixels); ``n_iter``; ``status`` the blend's
        :class:`~galjax.deblend.DeblendStatus` bits; ``truncated`` the blend
        reached the edge of the tile's read window; ``hlr`` the half-light radius
        (pixels) on the detection image; ``det_snr``, ``det_flux``, ``npix`` the
        detection's SNR ``flux / (rms sqrt(npix))``, flux and footprint area;
        ``keep`` False for sources in the image border
        (:attr:`~galjax.deblend.survey.DetectionConfig.border`).
      boxes: ``(n_blends, 4)`` global ``(y0, y1, x0, x1)`` of each blend's model:
        its canvas (the cutout, centred on a canvas of :data:`~galjax.deblend.tiles.CANVAS_SIZES`)
        clipped to the image.
      models: list of ``(y1 - y0, x1 - x0, bands)`` float32, each blend's model.
      background: ``(core_h, core_w, bands)`` float32 background level of the core.
    """

    tile: Tile
    sources: dict
    boxes: np.ndarray
    models: list
    background: np.ndarray


def empty_sources(bands: int) -> dict:
    """The :data:`SOURCE_COLUMNS` of a tile without sources."""
    out = {k: np.zeros(0, np.float64) for k in SOURCE_COLUMNS}
    out["flux"] = out["flux_err"] = np.zeros((0, bands), np.float64)
    for k in ("blend", "n_iter", "status", "npix"):
        out[k] = np.zeros(0, np.int32)
    out["truncated"] = out["keep"] = out["point"] = np.zeros(0, bool)
    return out


def catalog_table(image: SurveyImage, results: Sequence[TileResult]):
    """Merge tile results into one catalogue, an astropy ``Table``.

    Columns: ``id``; ``x``, ``y`` (0-based pixels); ``ra``, ``dec`` (deg, when the
    image has a WCS); ``flux_<band>``, ``flux_err_<band>`` in the image's unit
    (sum over the source's model pixels); ``mag_<band>``, ``mag_err_<band>`` (AB,
    when a zeropoint is known: ``mag = zp - 2.5 log10(flux)``, NaN for flux <= 0);
    ``blend`` (a global blend id) and ``blend_size`` (its number of sources);
    ``chi2`` (the blend's cutout) and ``chi2_footprint`` (the source's footprint),
    both per usable pixel; ``n_iter``; ``status`` (text) and ``flags``
    (:class:`~galjax.deblend.DeblendStatus` bits); ``truncated``; ``tile``;
    ``hlr`` (pixels, sep's half-light radius on the detection image), ``det_snr``,
    ``det_flux``, ``npix`` (the detection's). Rows sorted by tile, blend, source;
    border sources dropped.
    """
    from astropy import units as u
    from astropy.table import Table

    from galjax.deblend.config import status_text

    parts = [r.sources for r in results]
    bands = image.bands
    cols = {
        k: np.concatenate([p[k] for p in parts]) if parts else empty_sources(bands)[k]
        for k in SOURCE_COLUMNS
    }
    tile_ix = np.concatenate(
        [np.full(len(p["x"]), r.tile.index, np.int32) for p, r in zip(parts, results, strict=True)]
        or [np.zeros(0, np.int32)]
    )
    offsets, n = [], 0
    for r in results:
        offsets.append(n)
        n += len(r.boxes)
    blend = np.concatenate(
        [p["blend"] + o for p, o in zip(parts, offsets, strict=True)] or [np.zeros(0, np.int32)]
    ).astype(np.int64)
    keep = cols["keep"].astype(bool)
    sizes = np.bincount(blend, minlength=n) if blend.size else np.zeros(0, np.int64)
    t = Table()
    t["id"] = np.arange(int(keep.sum()), dtype=np.int64)
    t["x"] = cols["x"][keep] * u.pix
    t["y"] = cols["y"][keep] * u.pix
    if image.wcs is not None:
        ra, dec = pixel_to_sky(image.wcs, cols["x"][keep], cols["y"][keep])
        t["ra"], t["dec"] = ra * u.deg, dec * u.deg
    unit = _unit(image.unit)
    zps = image.zeropoint
    for b, name in enumerate(image.band_names):
        f, e = cols["flux"][keep, b], cols["flux_err"][keep, b]
        t[f"flux_{name}"] = f if unit is None else f * unit
        t[f"flux_err_{name}"] = e if unit is None else e * unit
        if zps is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                mag = np.where(f > 0, zps[b] - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)
                merr = np.where(f > 0, 2.5 / np.log(10.0) * e / np.where(f > 0, f, 1.0), np.nan)
            t[f"mag_{name}"] = mag * u.ABmag
            t[f"mag_err_{name}"] = merr * u.mag
    t["blend"] = blend[keep]
    t["blend_size"] = sizes[blend[keep]] if blend.size else np.zeros(0, np.int64)
    t["chi2"] = cols["chi2"][keep]
    t["chi2_footprint"] = cols["chi2_footprint"][keep]
    t["n_iter"] = cols["n_iter"][keep]
    status = cols["status"][keep].astype(np.int32)
    t["status"] = [status_text(int(c)) for c in status]
    t["flags"] = status
    t["truncated"] = cols["truncated"][keep].astype(bool)
    t["point"] = cols["point"][keep].astype(bool)
    t["tile"] = tile_ix[keep]
    t["hlr"] = cols["hlr"][keep] * u.pix
    t["det_snr"] = cols["det_snr"][keep]
    t["det_flux"] = cols["det_flux"][keep]
    t["npix"] = cols["npix"][keep]
    t.meta["unit"] = image.unit or "unknown"
    t.meta["comments"] = [
        "x, y: 0-based pixels, (x, y) = (column, row), pixel centres at integers",
        "ra, dec: ICRS degrees from the image WCS (absent: the image has no WCS)",
        f"flux: sum of the source's model pixels, in the image unit ({image.unit or 'unknown'}); "
        "flux_err: Laplace 1-sigma",
        "mag: AB, zp - 2.5 log10(flux) (absent: no zeropoint known)",
        "chi2: residual chi^2 per usable pixel of the blend's cutout; chi2_footprint: over "
        "the source's footprint",
        "status, flags: the blend's galjax.deblend.DeblendStatus (no_data, nonfinite: not fitted)",
        "truncated: the blend reached the edge of its tile's read window (raise the overlap)",
    ]
    return t


def _unit(text):
    if not text:
        return None
    from astropy import units as u

    try:
        return u.Unit(text, parse_strict="silent")
    except (ValueError, TypeError):
        return None


def write_images(image: SurveyImage, results: Sequence[TileResult], model_path, residual_path):
    """Write the model and residual mosaics as FITS, tile by tile (bounded memory).

    ``model`` = sum of every blend's model; ``residual`` = image - background -
    model (0 where the image has no usable pixel). Both carry the image's WCS and
    BUNIT. ``results`` may be any sequence (e.g. tiles loaded from disk on access);
    it is read twice.
    """
    from galjax.core.files import atomic_write
    from galjax.io.survey import create_fits_image, open_fits_image, sky_header

    h, w = image.shape
    header = sky_header(image)

    def write_model(tmp):
        create_fits_image(tmp, (h, w, image.bands), header)
        with open_fits_image(tmp) as data:
            out = data.reshape(image.bands, h, w)  # a view of the memory map
            for r in results:
                for (y0, y1, x0, x1), m in zip(r.boxes, r.models, strict=True):
                    out[:, y0:y1, x0:x1] += np.moveaxis(m, -1, 0)

    atomic_write(model_path, write_model)

    def write_residual(tmp):
        from astropy.io import fits

        create_fits_image(tmp, (h, w, image.bands), header)
        with open_fits_image(tmp) as data, fits.open(model_path, memmap=True) as mhdu:
            out = data.reshape(image.bands, h, w)
            model = mhdu[0].data.reshape(image.bands, h, w)
            for r in results:
                y0, y1, x0, x1 = r.tile.core
                win = image.read(y0, y1, x0, x1)
                m = np.moveaxis(np.asarray(model[:, y0:y1, x0:x1], np.float32), 0, -1)
                res = np.where(win.good, win.data - r.background - m, 0.0)
                out[:, y0:y1, x0:x1] = np.moveaxis(res, -1, 0)

    atomic_write(residual_path, write_residual)


def report_flags(results: Sequence[TileResult]) -> dict:
    """Counts of sources not fitted, truncated and unconverged; warns about the first two."""
    status = np.concatenate([r.sources["status"] for r in results] or [np.zeros(0, np.int32)])
    trunc = np.concatenate([r.sources["truncated"] for r in results] or [np.zeros(0, bool)])
    counts = {
        "failed": int(np.count_nonzero(status & int(FAILED))),
        "truncated": int(np.count_nonzero(trunc)),
        "not_converged": int(np.count_nonzero(status & int(DeblendStatus.NOT_CONVERGED))),
        "sources": int(status.size),
    }
    if counts["failed"]:
        warnings.warn(
            f"{counts['failed']} source(s) in blends that could not be fitted "
            "(status no_data/nonfinite; NaN fluxes)",
            RuntimeWarning,
            stacklevel=2,
        )
    if counts["truncated"]:
        warnings.warn(
            f"{counts['truncated']} source(s) in blends cut by a tile's read window "
            "(column truncated); raise the overlap",
            RuntimeWarning,
            stacklevel=2,
        )
    return counts
