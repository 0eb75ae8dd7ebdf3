"""FITS images, tables and cutouts through astropy, in galjax's image convention.

On disk a FITS data unit is a numpy array whose *last* axis is ``NAXIS1`` (x).
galjax images are ``(h, w, bands)``, so:

* a 2-D HDU ``(h, w)`` reads as ``(h, w, 1)``;
* a 3-D cube ``(bands, h, w)`` (``NAXIS3 = bands``) reads as ``(h, w, bands)``;
* a stack ``(n, h, w, bands)`` is written as one 4-D HDU ``(n, bands, h, w)``,
  i.e. ``NAXIS1 = w, NAXIS2 = h, NAXIS3 = bands, NAXIS4 = n`` (also for one
  band), and :func:`read_fits_stack` reads it back.

A single-band image ``(h, w, 1)`` is written as a 2-D HDU so other tools (ds9,
astropy, SExtractor) see a plain image. Pixel data are returned as host numpy
float32 arrays (no device transfer on load); pass them to JAX as they are.
Scaled integer data (``BSCALE``/``BZERO``) are unscaled by astropy.

Every write goes to a temporary file in the destination folder that is then moved
over the destination with :func:`os.replace`, so a reader never sees a
half-written file and a failed write leaves the previous file intact.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from galjax.core.checks import check_image
from galjax.core.files import atomic_write

__all__ = [
    "Cutout",
    "FitsImage",
    "celestial_wcs",
    "cutout",
    "read_fits",
    "read_fits_stack",
    "read_table",
    "write_fits",
    "write_mask_fits",
    "write_table",
]

# Keywords astropy derives from the data array; copying them from a user header
# would describe the wrong array (or rescale float data with a stale BSCALE).
_STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT",
    "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "GROUPS",
}  # fmt: skip

_TABLE_FORMATS = {
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
}


class FitsImage(NamedTuple):
    """An image read from FITS.

    Attributes:
      data: float32 ``(h, w, bands)`` (``(n, h, w, bands)`` from
        :func:`read_fits_stack`).
      header: the HDU's :class:`astropy.io.fits.Header`.
      wcs: the celestial :class:`astropy.wcs.WCS` (2 axes, x then y), or None when
        the header has no celestial coordinates.
    """

    data: np.ndarray
    header: fits.Header
    wcs: WCS | None


class Cutout(NamedTuple):
    """A cutout made by :func:`cutout`.

    Attributes:
      data: float32 ``(ch, cw, bands)``, 0 outside the original image.
      mask: float32 ``(ch, cw, bands)``, 1 where the pixel lies inside the
        original image, 0 where it was filled.
      wcs: WCS of the cutout, or None without an input WCS.
      origin: ``(x, y)`` of the cutout's pixel ``(0, 0)`` in the original image
        (may be negative for a partial cutout).
      position: ``(x, y)`` of the requested position in cutout pixels.
    """

    data: np.ndarray
    mask: np.ndarray
    wcs: WCS | None
    origin: tuple[int, int]
    position: tuple[float, float]


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    return path


def celestial_wcs(header: fits.Header) -> WCS | None:
    """The celestial part of the header's WCS, or None (none, or not parsable)."""
    with warnings.catch_warnings():
        # FITSFixedWarning only reports astropy normalising legal-but-old keywords.
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception:  # astropy raises many types; an unparsable WCS counts as none
            return None
    return wcs.celestial if wcs.has_celestial else None


def _open(path: Path):
    try:
        return fits.open(path, memmap=False)
    except OSError as err:
        raise ValueError(f"path: {str(path)!r} is not a readable FITS file ({err})") from err


def _image_hdu(hdul, path: Path, hdu):
    """Select ``hdu`` (index, EXTNAME or None = first HDU with image data)."""
    if hdu is None:
        for candidate in hdul:
            if candidate.is_image and candidate.header.get("NAXIS", 0) >= 2:
                return candidate, hdul.index_of(candidate)
        raise ValueError(f"path: {str(path)!r} has no HDU with image data")
    try:
        selected = hdul[hdu]
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"hdu: {str(path)!r} has no HDU {hdu!r} (it has {len(hdul)} HDUs)"
        ) from err
    if not selected.is_image or selected.header.get("NAXIS", 0) < 2:
        raise ValueError(f"hdu: HDU {hdu!r} of {str(path)!r} holds no image data")
    return selected, hdu


def _read_array(path, hdu):
    """Shared body of the readers: ``(float32 data as on disk, header, hdu index)``."""
    path = _existing_file(path)
    with _open(path) as hdul:
        try:
            selected, index = _image_hdu(hdul, path, hdu)
        except OSError as err:  # HDUs are parsed lazily: damage may show up only here
            raise ValueError(f"path: {str(path)!r} is not a readable FITS file ({err})") from err
        try:
            data = np.asarray(selected.data, dtype=np.float32)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(
                f"path: cannot read image data of HDU {index!r} in {str(path)!r} ({err})"
            ) from err
        header = selected.header.copy()
    if data.ndim < 2:
        raise ValueError(f"hdu: HDU {index!r} of {str(path)!r} has shape {data.shape}")
    return data, header, index


def read_fits(path, hdu=None) -> FitsImage:
    """Read one FITS image HDU as ``(h, w, bands)`` float32.

    Args:
      path: FITS file (optionally gzipped).
      hdu: HDU index or EXTNAME; default the first HDU holding image data.

    Returns:
      :class:`FitsImage` ``(data, header, wcs)``: a 2-D HDU gives ``(h, w, 1)``;
      a cube ``(bands, h, w)`` gives ``(h, w, bands)``; extra leading axes of
      length 1 (radio ``STOKES``/``FREQ``) are dropped.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is not readable FITS, ``hdu`` is missing or holds no
        image, or the image has more than three non-trivial axes.

    >>> img = read_fits("field.fits")  # doctest: +SKIP
    >>> img.data.shape  # doctest: +SKIP
    (256, 256, 1)
    """
    data, header, index = _read_array(path, hdu)
    return FitsImage(_to_hwc(data, path, index), header, celestial_wcs(header))


def _to_hwc(data: np.ndarray, path, index) -> np.ndarray:
    """On-disk ``(h, w)`` or ``(bands, h, w)`` (plus unit leading axes) -> ``(h, w, bands)``."""
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim > 3:
        raise ValueError(
            f"hdu: HDU {index!r} of {str(path)!r} has shape {data.shape}; use read_fits_stack "
            "for (n, bands, h, w) stacks"
        )
    data = data[None] if data.ndim == 2 else data
    return np.ascontiguousarray(np.moveaxis(data, 0, -1))


def read_fits_stack(path, hdu=None) -> FitsImage:
    """Read a stack written by :func:`write_fits` as ``(n, h, w, bands)`` float32.

    A 4-D HDU ``(n, bands, h, w)`` becomes ``(n, h, w, bands)``; a 2-D or 3-D HDU
    is read as by :func:`read_fits` and given a leading axis of length 1.

    Args:
      path: FITS file.
      hdu: HDU index or EXTNAME; default the first HDU holding image data.

    Returns:
      :class:`FitsImage` with ``data`` shaped ``(n, h, w, bands)``.

    >>> stack = read_fits_stack("stamps.fits")  # doctest: +SKIP
    >>> stack.data.shape  # doctest: +SKIP
    (100, 64, 64, 1)
    """
    data, header, index = _read_array(path, hdu)
    if data.ndim <= 3:
        data = _to_hwc(data, path, index)[None]
    elif data.ndim == 4:
        data = np.ascontiguousarray(np.moveaxis(data, 1, -1))
    else:
        raise ValueError(f"hdu: HDU {index!r} of {str(path)!r} has shape {data.shape}")
    return FitsImage(data, header, celestial_wcs(header))


def _clean_header(header) -> fits.Header:
    if header is None:
        return fits.Header()
    if not isinstance(header, fits.Header):
        try:
            header = fits.Header(header)
        except Exception as err:  # astropy raises many types for an unusable header
            raise TypeError(
                f"header: expected an astropy Header or dict, got {type(header).__name__}"
            ) from err
    header = header.copy()
    for keyword in list(header.keys()):
        base = keyword.rstrip("0123456789") if keyword.startswith("NAXIS") else keyword
        if base in _STRUCTURAL:
            header.remove(keyword, ignore_missing=True, remove_all=True)
    return header


def _extra_hdu(i: int, item):
    if isinstance(item, fits.PrimaryHDU):
        return fits.ImageHDU(item.data, item.header)
    if isinstance(item, fits.ImageHDU | fits.BinTableHDU | fits.TableHDU | fits.CompImageHDU):
        return item
    if isinstance(item, Table):
        return fits.table_to_hdu(item)
    raise TypeError(f"extra_hdus[{i}]: expected an astropy HDU or Table, got {type(item).__name__}")


def write_fits(path, image, header=None, wcs=None, overwrite: bool = True, extra_hdus=None):
    """Write an image or a stack of images to FITS, atomically.

    Layout on disk (numpy order, i.e. reversed NAXIS order): ``(h, w, 1)`` ->
    2-D ``(h, w)``; ``(h, w, bands)`` -> cube ``(bands, h, w)``; ``(n, h, w,
    bands)`` -> 4-D ``(n, bands, h, w)``. Data are stored as float32 (float64
    input is kept as float64).

    Args:
      path: destination file; its folder must exist.
      image: ``(h, w, bands)`` image or ``(n, h, w, bands)`` stack.
      header: optional header (Header or dict) copied into the primary HDU;
        structural keywords (``NAXIS*``, ``BITPIX``, ``BSCALE``...) are dropped.
      wcs: optional celestial :class:`~astropy.wcs.WCS` for the x/y axes; its
        keywords override those in ``header``.
      overwrite: replace an existing file (otherwise FileExistsError).
      extra_hdus: optional sequence of astropy HDUs or Tables appended after the
        primary HDU.

    Returns:
      The written path.

    >>> write_fits("out.fits", jnp.zeros((8, 8, 3)))  # doctest: +SKIP
    PosixPath('out.fits')
    """
    arr = np.asarray(check_image("image", image, min_ndim=3))
    if arr.ndim > 4:
        raise ValueError(
            f"image: expected (h, w, bands) or (n, h, w, bands), got shape {arr.shape}"
        )
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    if arr.ndim == 4:
        data = np.moveaxis(arr, -1, 1)
    elif arr.shape[-1] == 1:
        data = arr[..., 0]
    else:
        data = np.moveaxis(arr, -1, 0)
    hdr = _clean_header(header)
    if wcs is not None:
        if not isinstance(wcs, WCS):
            raise TypeError(f"wcs: expected an astropy WCS, got {type(wcs).__name__}")
        hdr.update(wcs.to_header())
    if extra_hdus is not None and not isinstance(extra_hdus, Sequence):
        raise TypeError(f"extra_hdus: expected a sequence, got {type(extra_hdus).__name__}")
    hdus = [fits.PrimaryHDU(np.ascontiguousarray(data), header=hdr)]
    hdus += [_extra_hdu(i, item) for i, item in enumerate(extra_hdus or ())]
    hdul = fits.HDUList(hdus)
    return atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True), overwrite)


def _table_format(path: Path, format):
    if format is not None:
        return format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _TABLE_FORMATS.get(suffixes[-1] if suffixes else "")


def read_table(path, format=None) -> Table:
    """Read a catalogue (ECSV, CSV, FITS table, or any astropy format) as a Table.

    Args:
      path: table file.
      format: astropy format name (e.g. ``"ascii.sextractor"``); default from the
        extension (``.ecsv``, ``.csv``, ``.fits``) or astropy's guess.

    Returns:
      :class:`astropy.table.Table` with units and metadata as stored.

    >>> cat = read_table("catalogue.ecsv")  # doctest: +SKIP
    """
    path = _existing_file(path)
    try:
        return Table.read(path, format=_table_format(path, format))
    except Exception as err:  # astropy raises many types for bad files
        raise ValueError(f"path: cannot read a table from {str(path)!r} ({err})") from err


def write_table(path, table, overwrite: bool = True, format=None):
    """Write a table atomically (ECSV keeps units, dtypes and metadata).

    Args:
      path: destination; the format follows the extension (``.ecsv``, ``.csv``,
        ``.fits``) unless ``format`` is given.
      table: :class:`~astropy.table.Table`, or anything ``Table()`` accepts (dict
        of columns, structured array).
      overwrite: replace an existing file (otherwise FileExistsError).
      format: astropy format name overriding the extension.

    Returns:
      The written path.

    >>> write_table("cat.ecsv", {"x": [1.0], "y": [2.0]})  # doctest: +SKIP
    PosixPath('cat.ecsv')
    """
    path = Path(path)
    fmt = _table_format(path, format)
    if fmt is None:
        raise ValueError(
            f"path: cannot tell the table format from {str(path)!r}; use one of "
            f"{sorted(_TABLE_FORMATS)} or pass format="
        )
    if not isinstance(table, Table):
        try:
            table = Table(table)
        except Exception as err:  # anything Table() refuses
            raise TypeError(
                f"table: expected an astropy Table or columns, got {type(table).__name__}"
            ) from err
    return atomic_write(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True), overwrite)


def _cutout_size(size):
    """``size`` as astropy wants it: int, ``(ny, nx)`` ints, or angular Quantities."""
    if hasattr(size, "unit"):
        return size
    sizes = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(sizes) != 2 or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(f"size: expected a positive int or (height, width) ints, got {size!r}")
    return tuple(int(s) for s in sizes)


def cutout(image, position, size, wcs=None) -> Cutout:
    """Cut a ``size`` stamp centred on ``position`` from every band, with Cutout2D.

    Uses :class:`astropy.nddata.Cutout2D` in ``mode="partial"``: the stamp always
    has the requested size, pixels outside the image are 0 and ``mask`` marks the
    valid ones. The centre is rounded to the nearest pixel, as Cutout2D does.

    Args:
      image: ``(h, w, bands)`` image.
      position: ``(x, y)`` in 0-based pixels (x = column), or a
        :class:`~astropy.coordinates.SkyCoord` (then ``wcs`` is required).
      size: int (square), ``(height, width)`` in pixels, or astropy angular
        Quantity/Quantities (needs ``wcs``).
      wcs: optional celestial WCS of ``image``; the cutout's WCS is returned.

    Returns:
      :class:`Cutout` ``(data, mask, wcs, origin, position)``.

    >>> c = cutout(np.ones((10, 10, 2)), (0, 0), 4)
    >>> c.data.shape, float(c.mask.sum())
    ((4, 4, 2), 8.0)
    """
    arr = np.asarray(check_image("image", image), dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"image: expected one image (h, w, bands), got shape {arr.shape}")
    if wcs is not None and not isinstance(wcs, WCS):
        raise TypeError(f"wcs: expected an astropy WCS or None, got {type(wcs).__name__}")
    if isinstance(position, SkyCoord):
        if wcs is None:
            raise ValueError("wcs: a SkyCoord position needs the image's WCS")
    else:
        pos = np.asarray(position, dtype=np.float64)
        if pos.shape != (2,) or not np.all(np.isfinite(pos)):
            raise ValueError(f"position: expected finite (x, y) pixels, got {position!r}")
        position = (float(pos[0]), float(pos[1]))
    size = _cutout_size(size)
    if hasattr(size, "unit") and wcs is None:
        raise ValueError("wcs: an angular size needs the image's WCS")
    # Cut a map of ones to learn the geometry once; the same slices serve every band.
    ones = np.ones(arr.shape[:2], dtype=np.float32)
    try:
        geometry = Cutout2D(ones, position, size, wcs=wcs, mode="partial", fill_value=0.0)
    except NoOverlapError as err:
        raise ValueError(
            f"position: stamp at {position!r} does not overlap the {arr.shape[:2]} image"
        ) from err
    data = np.zeros(geometry.shape + (arr.shape[-1],), dtype=np.float32)
    data[geometry.slices_cutout] = arr[geometry.slices_original]
    mask = np.broadcast_to(geometry.data[..., None], data.shape).astype(np.float32)
    # origin_original locates the overlap; step back to the cutout's own pixel (0, 0).
    origin = tuple(
        int(o - c) for o, c in zip(geometry.origin_original, geometry.origin_cutout, strict=True)
    )
    position_cutout = tuple(float(v) for v in geometry.position_cutout)
    return Cutout(data, mask, geometry.wcs if wcs is not None else None, origin, position_cutout)


def write_mask_fits(path, bits, class_names: Sequence[str], thresholds=None, header=None) -> Path:
    """Write an integer bit mask as a FITS image (int16 for <= 15 classes, else int32).

    The header names each bit (``MASKBn = class``) and its threshold (``MASKTn``).
    Written atomically. :func:`write_fits` stores float32 only, so this writes the
    integer HDU with astropy directly.

    Args:
      path: output file.
      bits: ``(h, w)`` integer mask, bit ``i`` for class ``i`` (e.g. from
        :func:`galjax.detect.masks.mask_bits`).
      class_names: the name of each bit, e.g.
        :data:`galjax.sim.contaminants.MASK_CLASSES`.
      thresholds: optional per-class (or one) probability thresholds to record.
      header: optional extra header cards (dict or ``Header``), e.g. the image's WCS;
        structural keywords are skipped.

    Returns:
      The path written.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "mask.fits")
    >>> _ = write_mask_fits(path, np.array([[0, 1], [2, 3]]), ["a", "b"], [0.5, 0.7])
    >>> hdr = fits.getheader(path)
    >>> hdr["MASKB1"], hdr["MASKT1"], fits.getdata(path).dtype.name
    ('b', 0.7, 'int16')
    """
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
