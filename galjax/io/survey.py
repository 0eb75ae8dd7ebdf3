"""Survey images of any size, read by windows (tiles) with their noise, mask and WCS.

:func:`open_survey_image` reads headers and shapes only; :meth:`SurveyImage.read`
returns one window of the image, its inverse variance and its good pixels as
``(h, w, bands)``. FITS files are opened anew for each read and sliced with astropy's
``hdu.section``, so no image is ever loaded whole and a :class:`SurveyImage` pickles
small to other processes. A file name may pick its HDU as CFITSIO does,
``"file.fits[EXTNAME]"`` or ``"file.fits[2]"`` (e.g. an HSC calexp's ``VARIANCE``).
:func:`create_fits_image` and :func:`open_fits_image` build output mosaics of any
size tile by tile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.nddata import InverseVariance, NDData, StdDevUncertainty, VarianceUncertainty
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from galjax.core.files import atomic_write
from galjax.io.fits import celestial_wcs

__all__ = [
    "ZEROPOINT_KEYS",
    "SurveyImage",
    "Window",
    "create_fits_image",
    "open_fits_image",
    "open_survey_image",
    "pixel_to_sky",
    "sky_header",
]

#: Header keys holding an AB zeropoint (``mag = zp - 2.5 log10(flux)``), in the order
#: they are looked up; ``FLUXMAG0`` (HSC, the flux of magnitude 0) comes last.
ZEROPOINT_KEYS = ("MAGZERO", "MAGZP", "MAGZPT", "ZEROPT", "ZP", "PHOTZP", "FLUXMAG0")

# Keywords describing a data array; a user header's copies would describe the wrong one.
_STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BSCALE",
    "BZERO", "BLANK", "CHECKSUM", "DATASUM", "GROUPS", "END",
}  # fmt: skip
_BITPIX = {"uint8": 8, "int16": 16, "int32": 32, "int64": 64, "float32": -32, "float64": -64}
_UNCERTAINTIES = {StdDevUncertainty: "stddev", VarianceUncertainty: "variance"}
_UNCERTAINTIES[InverseVariance] = "weight"
_EXT = re.compile(r"^(?P<path>.+)\[(?P<ext>[^\[\]]+)\]$")


class Window(NamedTuple):
    """One window of a :class:`SurveyImage`.

    Attributes:
      data: ``(h, w, bands)`` float32, the pixel values as stored (non-finite kept).
      ivar: ``(h, w, bands)`` float64 inverse variance in the image's unit^-2, 0
        wherever ``good`` is False; None when the image has no noise.
      good: ``(h, w, bands)`` bool: finite data, not masked and (with noise) a
        finite positive inverse variance.
    """

    data: np.ndarray
    ivar: np.ndarray | None
    good: np.ndarray


class _Fits(NamedTuple):
    """One image HDU on disk: ``(1, ..., 1, [bands,] h, w)`` in numpy order."""

    path: str
    hdu: int
    lead: int  # leading axes of length 1, dropped
    cube: bool  # (bands, h, w) rather than (h, w)
    memmap: bool  # astropy refuses to memory-map scaled integer data

    def read(self, name: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        key = (0,) * self.lead + (slice(None),) * self.cube + (slice(y0, y1), slice(x0, x1))
        try:
            with fits.open(self.path, memmap=self.memmap) as hdul:
                block = np.array(hdul[self.hdu].section[key])
        except (OSError, ValueError, TypeError, IndexError) as err:
            raise ValueError(
                f"{name}: cannot read window [{y0}:{y1}, {x0}:{x1}] of {self.path!r} ({err})"
            ) from err
        return np.moveaxis(block, 0, -1) if self.cube else block[..., None]


def _read_parts(parts, name, y0, y1, x0, x1, dtype) -> np.ndarray:
    """Concatenate the window of each part (a :class:`_Fits` or an ``(h, w, b)`` array)."""
    blocks = [
        p.read(name, y0, y1, x0, x1) if isinstance(p, _Fits) else p[y0:y1, x0:x1] for p in parts
    ]
    return np.concatenate([np.asarray(b, dtype=dtype) for b in blocks], axis=-1)


@dataclasses.dataclass(frozen=True)
class SurveyImage:
    """A survey image of any size, read by windows with :meth:`read`.

    Made by :func:`open_survey_image`; holds file names (or arrays) and headers'
    facts, never the pixels of a FITS file.

    Attributes:
      shape: ``(h, w)`` in pixels.
      bands: number of bands.
      band_names: one name per band (``FILTER``/``BAND`` keys, else ``"band0"``...).
      wcs: the celestial 2-D :class:`~astropy.wcs.WCS` (x then y), or None.
      unit: the pixel unit (``BUNIT`` or the NDData unit) as a string, or None.
      zeropoint: AB zeropoint per band (``mag = zp - 2.5 log10(flux)``), or None
        unless every band has one.
      pixel_scale: arcsec per pixel (geometric mean of the WCS axes), or None.
      noise: what the noise was given as: ``"variance"`` (also a standard-deviation
        map or uncertainty), ``"weight"`` (inverse variance), ``"sigma"`` (constant
        per band) or ``"none"``.
    """

    shape: tuple[int, int]
    bands: int
    band_names: tuple[str, ...]
    wcs: WCS | None
    unit: str | None
    zeropoint: tuple[float, ...] | None
    pixel_scale: float | None
    noise: str
    _image: tuple = dataclasses.field(repr=False, compare=False)
    # (kind: variance|stddev|weight|sigma|none, parts of the map, unit scale, sigma per band)
    _noise: tuple = dataclasses.field(repr=False, compare=False)
    _masks: tuple = dataclasses.field(repr=False, compare=False)  # parts of each mask

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Window:
        """The window ``[y0:y1, x0:x1]`` (0-based, ends exclusive) of every band.

        Args:
          y0, y1: first and one-past-last row, ``0 <= y0 < y1 <= h``.
          x0, x1: first and one-past-last column, ``0 <= x0 < x1 <= w``.

        Returns:
          :class:`Window` ``(data, ivar, good)``, each ``(y1 - y0, x1 - x0, bands)``.

        Raises:
          ValueError: ``window: ...`` for non-integer, empty or out-of-image bounds.

        >>> img = open_survey_image(np.ones((4, 6)), sigma=0.5)
        >>> win = img.read(1, 3, 0, 2)
        >>> win.data.shape, float(win.ivar[0, 0, 0]), bool(win.good.all())
        ((2, 2, 1), 4.0, True)
        """
        bounds = (y0, y1, x0, x1)
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in bounds):
            raise ValueError(f"window: expected integer bounds (y0, y1, x0, x1), got {bounds}")
        h, w = self.shape
        y0, y1, x0, x1 = (int(v) for v in bounds)
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(
                f"window: [{y0}:{y1}, {x0}:{x1}] is empty or outside the {h}x{w} image "
                f"(need 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w})"
            )
        data = _read_parts(self._image, "image", y0, y1, x0, x1, np.float32)
        good = np.isfinite(data)
        for parts in self._masks:
            good &= _read_parts(parts, "mask", y0, y1, x0, x1, np.float64) == 0
        if self.noise == "none":
            return Window(data, None, good)
        if self.noise == "sigma":
            ivar = np.tile(1.0 / np.square(np.asarray(self._noise[3])), (*data.shape[:2], 1))
        else:
            kind, parts, scale, _ = self._noise
            raw = _read_parts(parts, self.noise, y0, y1, x0, x1, np.float64) * scale
            # 0, negative or non-finite noise (and 1/0 overflow) marks a pixel unusable.
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                ivar = raw if kind == "weight" else 1.0 / (raw * raw if kind == "stddev" else raw)
        good &= np.isfinite(ivar) & (ivar > 0)
        ivar[~good] = 0.0
        return Window(data, ivar, good)


def _split_path(name: str, path) -> tuple[Path, str | int | None]:
    """``file.fits[EXT]`` -> (file, EXT) unless a file of that very name exists."""
    match = None if Path(path).exists() else _EXT.match(str(path))
    path, ext = (Path(match["path"]), match["ext"].strip()) if match else (Path(path), None)
    ext = int(ext) if ext is not None and ext.isdigit() else ext
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    return path, ext


def _fits_part(name: str, path, hdu) -> tuple[_Fits, tuple[int, int, int], fits.Header]:
    """Open ``path`` once to learn its HDU, shape and header; load no pixels."""
    path, ext = _split_path(name, path)
    hdu = ext if ext is not None else hdu
    try:
        with fits.open(path, memmap=True) as hdul:
            images = (i for i, c in enumerate(hdul) if c.is_image and c.header.get("NAXIS", 0) > 1)
            try:
                index = next(images) if hdu is None else hdul.index_of(hdu)
                selected = hdul[index]
            except (KeyError, IndexError, StopIteration) as err:
                what = "no HDU with image data" if hdu is None else f"no HDU {hdu!r}"
                raise ValueError(f"{name}: {str(path)!r} has {what}") from err
            if not selected.is_image or selected.header.get("NAXIS", 0) < 2:
                raise ValueError(f"{name}: HDU {hdu!r} of {str(path)!r} holds no image data")
            header = selected.header.copy()
            disk = tuple(int(n) for n in selected.shape)
            compressed = isinstance(selected, fits.CompImageHDU)
            data_start = hdul.fileinfo(index)["datLoc"]
    except OSError as err:  # astropy parses lazily: damage may show at any HDU
        raise ValueError(f"{name}: {str(path)!r} is not a readable FITS file ({err})") from err
    shape, lead = disk, 0
    while len(shape) > 2 and shape[0] == 1:
        shape, lead = shape[1:], lead + 1
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name}: HDU {index} of {str(path)!r} has shape {disk}; expected (h, w) or "
            "(bands, h, w)"
        )
    end = data_start + math.prod(disk) * abs(int(header["BITPIX"])) // 8
    if not compressed and end > path.stat().st_size:
        raise ValueError(f"{name}: {str(path)!r} is not a readable FITS file (truncated)")
    scaled = header.get("BSCALE", 1) != 1 or header.get("BZERO", 0) != 0 or "BLANK" in header
    part = _Fits(str(path), index, lead, len(shape) == 3, memmap=compressed or not scaled)
    hwb = (shape[-2], shape[-1], shape[0] if len(shape) == 3 else 1)
    return part, hwb, header


def _as_array(name: str, value) -> np.ndarray:
    """An array in galjax order as an ``(h, w, bands)`` view (no copy of a memmap)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (h, w) or (h, w, bands), got {arr.shape}")
    return arr[..., None] if arr.ndim == 2 else arr


def _is_paths(value) -> bool:
    return isinstance(value, Sequence) and all(isinstance(v, str | os.PathLike) for v in value)


def _parts(name: str, value, hdu=None) -> tuple[tuple, tuple[int, int, int], list]:
    """``(parts, (h, w, bands), headers)`` of a path, a list of per-band paths or an array."""
    if isinstance(value, str | os.PathLike):
        part, hwb, header = _fits_part(name, value, hdu)
        return (part,), hwb, [header]
    if _is_paths(value) and not isinstance(value, np.ndarray):
        if len(value) == 0:
            raise ValueError(f"{name}: expected a file, files or an array, got an empty list")
        parts, shapes, headers = [], [], []
        for k, path in enumerate(value):
            part, hwb, header = _fits_part(f"{name}[{k}]", path, hdu)
            if hwb[2] != 1:
                raise ValueError(
                    f"{name}[{k}]: expected a 2-D image (one band per file), got {hwb[2]} bands"
                )
            if shapes and hwb[:2] != shapes[0]:
                raise ValueError(
                    f"{name}[{k}]: shape {hwb[:2]} differs from {name}[0]'s {shapes[0]}"
                )
            parts.append(part)
            shapes.append(hwb[:2])
            headers.append(header)
        return tuple(parts), (*shapes[0], len(parts)), headers
    arr = _as_array(name, value)
    return (arr,), arr.shape, [None]


def _get(meta, key: str):
    """``meta[key]`` of a Header or a (case-insensitive) dict, or None."""
    if meta is None:
        return None
    if isinstance(meta, fits.Header):
        return meta.get(key)
    return next((v for k, v in dict(meta).items() if str(k).upper() == key), None)


def _header_zeropoint(meta, where: str) -> float | None:
    for key in ZEROPOINT_KEYS:
        value = _get(meta, key)
        if value is None:
            continue
        ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
        zp = float(value) if ok else math.nan
        if key == "FLUXMAG0":
            zp = 2.5 * math.log10(zp) if zp > 0 else math.nan
        if not math.isfinite(zp):
            raise ValueError(
                f"zeropoint: header key {key} = {value!r} of {where} is not a usable zeropoint; "
                "pass zeropoint= to override"
            )
        return zp
    return None


def _per_band(name: str, value, bands: int) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != bands):
        raise ValueError(f"{name}: expected a number or one per band ({bands}), got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got {value!r}")
    return tuple(float(v) for v in np.broadcast_to(arr, (bands,)))


def _celestial(wcs) -> WCS | None:
    wcs = getattr(wcs, "low_level_wcs", wcs)  # NDData wraps a low-level WCS
    if wcs is not None and not isinstance(wcs, WCS):
        raise ValueError(f"wcs: expected an astropy WCS, got {type(wcs).__name__}")
    return wcs.celestial if wcs is not None and wcs.has_celestial else None


def _pixel_scale(wcs: WCS | None) -> float | None:
    if wcs is None:
        return None
    try:
        sx, sy = proj_plane_pixel_scales(wcs)  # degrees per pixel
    except Exception:  # a degenerate WCS has no scale
        return None
    scale = math.sqrt(abs(sx * sy)) * 3600.0
    return scale if math.isfinite(scale) and scale > 0 else None


def _names(meta, bands: int) -> list[str | None]:
    """Band names from FILTER/BAND (one band) or FILTERk/BANDk (cube, k from 1)."""
    suffixes = [""] if bands == 1 else [str(k) for k in range(1, bands + 1)]
    found = []
    for suffix in suffixes:
        values = (_get(meta, key + suffix) for key in ("FILTER", "BAND"))
        found.append(next((str(v).strip() for v in values if str(v or "").strip()), None))
    return found if all(found) else [None] * bands


def _nddata(nd: NDData):
    """``(parts, hwb, meta, wcs, unit, noise, mask parts)`` of an astropy NDData/CCDData."""
    data = np.asarray(nd.data)
    if data.ndim not in (2, 3):
        raise ValueError(
            f"image: NDData data has shape {data.shape}; expected (h, w) or (bands, h, w)"
        )
    if data.dtype.kind not in "biuf":
        raise ValueError(f"image: expected real numeric NDData data, got dtype {data.dtype}")

    def hwb(a):  # astropy order -> galjax order, as a view
        return a[..., None] if a.ndim == 2 else np.moveaxis(a, 0, -1)

    unit = str(nd.unit) if nd.unit is not None else None
    noise = None
    unc = nd.uncertainty
    if unc is not None:
        kind = next((v for k, v in _UNCERTAINTIES.items() if isinstance(unc, k)), None)
        if kind is None:
            raise ValueError(
                f"uncertainty: {type(unc).__name__} is not usable; expected StdDevUncertainty, "
                "VarianceUncertainty or InverseVariance"
            )
        arr = np.asarray(unc.array)
        if arr.shape != data.shape:
            raise ValueError(f"uncertainty: shape {arr.shape} differs from the data's {data.shape}")
        scale, power = 1.0, {"stddev": 1, "variance": 2, "weight": -2}[kind]
        try:  # an uncertainty in its own unit (mJy for data in Jy) is converted
            if nd.unit is not None and unc.unit is not None:
                scale = float(unc.unit.to(nd.unit**power))
        except Exception as err:  # astropy's UnitConversionError and friends
            raise ValueError(f"uncertainty: unit {unc.unit} is not data unit^{power}") from err
        noise = (kind, (hwb(arr),), scale)
    masks = ()
    if nd.mask is not None:
        try:
            bad = np.broadcast_to(np.asarray(nd.mask), data.shape)
        except ValueError as err:
            raise ValueError(
                f"mask: the NDData mask's shape {np.shape(nd.mask)} differs from the data's "
                f"{data.shape}"
            ) from err
        masks = ((hwb(bad),),)
    return (hwb(data),), hwb(data).shape, nd.meta, _celestial(nd.wcs), unit, noise, masks


def open_survey_image(
    image,
    *,
    variance=None,
    weight=None,
    sigma=None,
    mask=None,
    hdu=None,
    zeropoint=None,
    band_names=None,
) -> SurveyImage:
    """Open a survey image for reading by windows; no pixels are loaded.

    Args:
      image: a FITS path (2-D HDU = 1 band, cube ``(bands, h, w)``; leading axes of
        length 1 dropped); a sequence of FITS paths, one 2-D image per band (WCS and
        unit from the first, zeropoints from each); an array ``(h, w)`` or ``(h, w,
        bands)``; or an astropy ``NDData``/``CCDData`` in astropy order ``(h, w)`` or
        ``(bands, h, w)`` whose ``uncertainty`` (StdDev, Variance or
        InverseVariance), ``mask`` (True = bad), ``wcs``, ``unit`` and ``meta`` are used.
      variance: per-pixel variance (a path, per-band paths or an ``(h, w[, bands])``
        array in galjax order, as ``image``'s shape); <= 0 or non-finite is unusable.
      weight: per-pixel inverse variance, same kinds; <= 0 or non-finite is unusable.
      sigma: a positive noise standard deviation, or one per band.
      mask: path(s) or array ``(h, w)`` (all bands) or ``(h, w, bands)``;
        NONZERO = bad pixel (survey masks, ``galjax mask`` output).
      hdu: HDU index or EXTNAME of the image file(s); default the first HDU with
        image data. Any file name may also end in ``[EXTNAME]`` or ``[index]``.
      zeropoint: AB zeropoint, one or per band, overriding the header's
        (:data:`ZEROPOINT_KEYS`; ``FLUXMAG0`` gives ``2.5 log10(FLUXMAG0)``).
      band_names: one name per band, overriding the header's.

    Returns:
      :class:`SurveyImage`.

    Raises:
      FileNotFoundError: ``image: no such file ...`` (or ``variance``, ``mask``...).
      ValueError: unreadable FITS, shapes not 2-D/3-D, empty, per-band files or
        noise/mask of other shapes, more than one noise, bad ``sigma``/``zeropoint``/
        ``band_names``; each message starts with the argument's name.

    >>> img = open_survey_image(np.zeros((64, 80, 2)), sigma=[1.0, 2.0], zeropoint=27.0)
    >>> img.shape, img.bands, img.band_names, img.zeropoint, img.noise
    ((64, 80), 2, ('band0', 'band1'), (27.0, 27.0), 'sigma')
    """
    noise_kind, noise_parts, noise_scale, masks, wcs, unit = "none", (), 1.0, (), None, None
    noises = {"variance": variance, "weight": weight, "sigma": sigma}
    given = [name for name, value in noises.items() if value is not None]
    if len(given) > 1:
        raise ValueError(
            f"variance, weight, sigma: give at most one noise, got {' and '.join(given)}"
        )
    if isinstance(image, NDData):
        parts, hwb, meta, wcs, unit, nd_noise, masks = _nddata(image)
        if nd_noise is not None:
            if given:
                raise ValueError(
                    f"uncertainty: the NDData image has an uncertainty and {given[0]}= was also "
                    "given; give one noise"
                )
            noise_kind, noise_parts, noise_scale = nd_noise
        metas = [meta]
        if unit is None and _get(meta, "BUNIT"):
            unit = str(_get(meta, "BUNIT")).strip()
    else:
        parts, hwb, metas = _parts("image", image, hdu)
        if metas[0] is not None:
            wcs = celestial_wcs(metas[0])
            unit = str(metas[0].get("BUNIT", "")).strip() or None
    h, w, bands = hwb
    if h * w * bands == 0:
        raise ValueError(f"image: empty image of shape (h, w, bands) = {hwb}")
    shape_text = f"(h, w, bands) = {hwb}"

    if given and given[0] != "sigma":
        noise_kind = given[0]
        noise_parts, nhwb, _ = _parts(noise_kind, noises[noise_kind])
        if nhwb != hwb:
            raise ValueError(f"{noise_kind}: shape {nhwb} differs from the image's {shape_text}")
    sigmas = ()
    if sigma is not None:
        sigmas = _per_band("sigma", sigma, bands)
        if min(sigmas) <= 0:
            raise ValueError(f"sigma: expected positive values, got {sigma!r}")
        noise_kind = "sigma"
    if mask is not None:
        mask_parts, mhwb, _ = _parts("mask", mask)
        if mhwb[:2] != hwb[:2] or mhwb[2] not in (1, bands):
            raise ValueError(f"mask: shape {mhwb} differs from the image's {shape_text}")
        masks = (*masks, mask_parts)

    per_file = len(metas) == bands > 1  # one file per band: each header for its band
    if zeropoint is not None:
        zps = _per_band("zeropoint", zeropoint, bands)
    else:
        where = [f"image[{k}]" if per_file else "image" for k in range(len(metas))]
        found = tuple(_header_zeropoint(m, at) for m, at in zip(metas, where, strict=True))
        zps = None if None in found else found * (bands // len(found))

    if band_names is not None:
        if isinstance(band_names, str) or len(band_names) != bands:
            raise ValueError(f"band_names: expected {bands} names, got {band_names!r}")
        names = tuple(str(n) for n in band_names)
    else:
        found = [n for m in metas for n in _names(m, 1)] if per_file else _names(metas[0], bands)
        names = tuple(n or f"band{k}" for k, n in enumerate(found))

    return SurveyImage(
        shape=(h, w),
        bands=bands,
        band_names=names,
        wcs=wcs,
        unit=unit,
        zeropoint=zps,
        pixel_scale=_pixel_scale(wcs),
        noise="variance" if noise_kind == "stddev" else noise_kind,
        _image=parts,
        _noise=(noise_kind, noise_parts, noise_scale, sigmas),
        _masks=masks,
    )


def pixel_to_sky(wcs: WCS | None, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Sky coordinates of 0-based pixel positions (pixel centres at integers).

    Args:
      wcs: a celestial :class:`~astropy.wcs.WCS` (e.g. :attr:`SurveyImage.wcs`).
      x, y: columns and rows, broadcastable arrays.

    Returns:
      ``(ra, dec)`` in degrees, float64 arrays of the broadcast shape.

    Raises:
      ValueError: ``wcs: ...`` when ``wcs`` is None or has no celestial axes.

    >>> w = WCS({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150, "CRVAL2": 2})
    >>> [float(v) for v in pixel_to_sky(w, -1.0, -1.0)]
    [150.0, 2.0]
    """
    if wcs is None:
        raise ValueError("wcs: the image has no celestial WCS; sky positions are unknown")
    if not isinstance(wcs, WCS) or not wcs.has_celestial:
        raise ValueError(f"wcs: expected a celestial astropy WCS, got {wcs!r}")
    wcs = wcs.celestial
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    world = wcs.pixel_to_world_values(x, y)
    ra, dec = world[wcs.wcs.lng], world[wcs.wcs.lat]
    return np.asarray(ra, np.float64), np.asarray(dec, np.float64)


def sky_header(image: SurveyImage) -> fits.Header:
    """Header cards for output images on ``image``'s pixel grid.

    Holds the WCS keywords (``wcs.to_header(relax=True)``, SIP kept), ``BUNIT``
    when the unit is known and ``MAGZERO`` when every band has the same zeropoint.

    >>> sky_header(open_survey_image(np.ones((4, 4)), zeropoint=27.0))["MAGZERO"]
    27.0
    """
    header = fits.Header()
    if image.wcs is not None:
        header.update(image.wcs.to_header(relax=True))
    if image.unit is not None:
        header["BUNIT"] = (image.unit, "unit of the pixel values")
    if image.zeropoint is not None and len(set(image.zeropoint)) == 1:
        header["MAGZERO"] = (image.zeropoint[0], "AB zeropoint: mag = MAGZERO - 2.5 log10(flux)")
    return header


def create_fits_image(
    path, shape_hwb, header=None, dtype=np.float32, *, overwrite: bool = True
) -> Path:
    """Create a FITS image of zeros of any size on disk without allocating it.

    Writes the header, then extends the file to its full padded size (a multiple
    of 2880 bytes) by writing its last byte: the zeros are a sparse file's holes.
    The layout is ``(bands, h, w)`` in numpy order (``(h, w)`` for one band), as
    :func:`galjax.io.fits.write_fits` writes. Created atomically.

    Args:
      path: output file; its folder must exist.
      shape_hwb: ``(h, w, bands)`` (or ``(h, w)`` for one band).
      header: optional Header or dict copied in (e.g. :func:`sky_header`); its
        structural keywords are dropped.
      dtype: pixel type: float32 (default), float64, uint8, int16, int32 or int64.
      overwrite: replace an existing file (otherwise FileExistsError).

    Returns:
      The path written.

    >>> import tempfile
    >>> path = create_fits_image(tempfile.mkdtemp() + "/m.fits", (64, 80, 2))
    >>> fits.getdata(path).shape
    (2, 64, 80)
    """
    shape = tuple(shape_hwb) if isinstance(shape_hwb, Sequence) else ()
    ints = all(isinstance(n, int | np.integer) and not isinstance(n, bool) for n in shape)
    if len(shape) not in (2, 3) or not ints or min(shape) < 1:
        raise ValueError(f"shape_hwb: expected positive (h, w, bands) ints, got {shape_hwb!r}")
    h, w, bands = (int(n) for n in (*shape, 1)[:3])
    dtype = np.dtype(dtype)
    if dtype.name not in _BITPIX:
        raise ValueError(f"dtype: expected one of {sorted(_BITPIX)}, got {dtype.name}")
    axes = [w, h] + ([bands] if bands > 1 else [])
    cards = [("SIMPLE", True), ("BITPIX", _BITPIX[dtype.name]), ("NAXIS", len(axes))]
    cards += [(f"NAXIS{i}", n) for i, n in enumerate(axes, 1)] + [("EXTEND", True)]
    hdr = fits.Header(cards)
    if header is not None:
        extra = header if isinstance(header, fits.Header) else fits.Header(dict(header))
        for card in extra.cards:
            if card.keyword not in _STRUCTURAL and not card.keyword.startswith("NAXIS"):
                hdr.append(card)
    nbytes = -(-(h * w * bands * dtype.itemsize) // 2880) * 2880
    total = len(hdr.tostring()) + nbytes

    def write(tmp: Path) -> None:
        hdr.tofile(tmp, overwrite=True)
        with open(tmp, "rb+") as f:
            f.seek(total - 1)
            f.write(b"\0")

    return atomic_write(path, write, overwrite)


@contextlib.contextmanager
def open_fits_image(path):
    """A writable memory map of a FITS file's primary image, flushed on exit.

    Yields the ``(bands, h, w)`` array (``(h, w)`` for one band) in FITS order,
    big-endian as stored: assign into it (``out[:, y0:y1, x0:x1] =
    np.moveaxis(tile, -1, 0)``) and only those pages are written. Processes may
    write disjoint windows of the same file at once.

    Args:
      path: an existing FITS file, e.g. from :func:`create_fits_image`.

    >>> import tempfile
    >>> path = create_fits_image(tempfile.mkdtemp() + "/m.fits", (4, 6))
    >>> with open_fits_image(path) as out:
    ...     out[1:3, 2:4] = 5.0
    >>> float(fits.getdata(path).sum())
    20.0
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    try:
        hdul = fits.open(path, mode="update", memmap=True)
    except OSError as err:
        raise ValueError(f"path: {str(path)!r} is not a readable FITS file ({err})") from err
    with hdul:
        data = hdul[0].data
        if data is None or data.ndim < 2:
            raise ValueError(f"path: the primary HDU of {str(path)!r} holds no image")
        yield data
