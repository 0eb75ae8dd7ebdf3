"""Loaders for the real data sets galjax is tested and benchmarked on.

Each loader takes paths (nothing here assumes where the data live) and returns a
NamedTuple of host numpy arrays in galjax's conventions: images float32
``(..., h, w, bands)``, PSFs ``(psf_h, psf_w, bands)`` normalised to unit sum,
positions ``(x, y)`` in 0-based pixels (x = column, pixel centres at integers).
Missing files raise FileNotFoundError and unreadable ones ValueError, both naming
the path.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table, join
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning

from galjax.io.fits import read_fits, read_table

__all__ = [
    "HSC_FILTERS",
    "HSC_PIXEL_SCALE",
    "CosmosSample",
    "FirstSample",
    "FitsFolder",
    "Scene",
    "SepField",
    "load_cosmos",
    "load_first",
    "load_fits_folder",
    "load_hsc_fits",
    "load_hsc_npz",
    "load_sep_field",
]

#: HSC coadd pixel scale in arcsec/px.
HSC_PIXEL_SCALE = 0.168
#: HSC broad-band filters in the order of the scarlet files.
HSC_FILTERS = ("g", "r", "i", "z", "y")


class CosmosSample(NamedTuple):
    """COSMOS HST galaxies from a GalSim RealGalaxyCatalog (see :func:`load_cosmos`).

    Attributes:
      images: float32 ``(n, s, s, 1)`` with ``stamp_size``, else a list of
        ``(m_i, m_i, 1)`` stamps; flux in counts/s per pixel.
      psfs: float32 ``(n, psf_h, psf_w, 1)``, each normalised to unit sum.
      noise_variance: float32 ``(n,)`` per-stamp pixel noise variance
        ((counts/s)^2); the noise is spatially correlated (see the catalogue's
        ``NOISE_FILENAME``).
      pixel_scale: arcsec/px (0.03 for ACS).
      catalog: the RealGalaxyCatalog table joined on ``IDENT`` with the
        ``*_fits.fits`` table (photo-z, sizes, HSC magnitudes) where present.
    """

    images: np.ndarray | list[np.ndarray]
    psfs: np.ndarray
    noise_variance: np.ndarray
    pixel_scale: float
    catalog: Table


class Scene(NamedTuple):
    """One multi-band scene to deblend (see :func:`load_hsc_npz`).

    Attributes:
      images: float32 ``(h, w, bands)`` as stored; non-finite pixels are set to 0
        (and masked).
      psfs: float32 ``(psf_h, psf_w, bands)``, unit sum per band.
      variance: float32 ``(h, w, bands)`` pixel noise variance; ``inf`` where the
        pixel carries no information (``mask == 0``), so ``1 / variance`` is a
        valid weight map.
      mask: float32 ``(h, w, bands)``, 1 for usable pixels.
      positions: float32 ``(n, 2)`` source positions ``(x, y)``; ``(0, 2)`` when
        the file has none.
      filters: band names, one per band.
      wcs: celestial WCS or None.
      pixel_scale: arcsec/px.
      variance_source: ``"variance"``, ``"weights"`` (inverse variance in the
        file) or ``"estimated"`` (constant per band, sigma-clipped rms of the
        image; the file had no noise information).
      mask_bits: int32 ``(h, w, bands)`` raw HSC mask planes, or None.
    """

    images: np.ndarray
    psfs: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    filters: tuple[str, ...]
    wcs: WCS | None
    pixel_scale: float
    variance_source: str
    mask_bits: np.ndarray | None


class FirstSample(NamedTuple):
    """FIRST radio galaxies (see :func:`load_first`).

    Attributes:
      images: uint8 ``(n, 300, 300)``, or float32 ``(n, 300, 300, 1)`` in [0, 1].
      labels: int32 ``(n,)`` class index into ``class_names``.
      split: str ``(n,)``: ``"train"``, ``"valid"`` or ``"test"``.
      class_names: ``("FRI", "FRII", "Compact", "Bent")``.
      ra: float64 ``(n,)`` degrees.
      dec: float64 ``(n,)`` degrees.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: tuple[str, ...]
    ra: np.ndarray
    dec: np.ndarray


class FitsFolder(NamedTuple):
    """Same-shaped FITS cutouts from one folder (see :func:`load_fits_folder`).

    Attributes:
      images: float32 ``(n, h, w, bands)``.
      names: file names, sorted, one per image.
      wcs: the celestial WCS of each file (None where absent).
    """

    images: np.ndarray
    names: tuple[str, ...]
    wcs: tuple[WCS | None, ...]


class SepField(NamedTuple):
    """A CCD field with SExtractor reference products (see :func:`load_sep_field`).

    Attributes:
      image: float32 ``(h, w, 1)`` in ADU.
      background: float32 ``(h, w, 1)`` SExtractor background map.
      rms: float32 ``(h, w, 1)`` SExtractor background rms map.
      catalog: SExtractor catalogue; columns as in the file (1-based
        ``X_IMAGE``...) plus 0-based ``x``, ``y``, ``xwin``, ``ywin``.
    """

    image: np.ndarray
    background: np.ndarray
    rms: np.ndarray
    catalog: Table


def _existing(path, name: str = "path", folder: bool = False) -> Path:
    path = Path(path)
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        what = "folder" if folder else "file"
        raise FileNotFoundError(f"{name}: no such {what} {str(path)!r}")
    return path


def _load_npz(path, name: str = "path") -> dict:
    """All arrays of an ``.npz`` file, without pickles."""
    path = _existing(path, name)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{name}: {str(path)!r} is not a readable .npz file ({err})") from err


def _require(arrays: dict, key: str, path, name: str = "path"):
    if key not in arrays:
        raise ValueError(f"{name}: {str(path)!r} has no {key!r} array (has {sorted(arrays)})")
    return arrays[key]


def _crop_or_pad_np(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop/zero-pad the first two axes; same centring as transforms.crop_or_pad.

    Index ``n // 2`` goes to ``target // 2``, so a stamp centred on its centre
    pixel stays centred. (numpy here: stamps have many shapes, and eager JAX would
    compile once per shape.)
    """
    out = np.zeros((height, width) + a.shape[2:], dtype=a.dtype)
    src, dst = [], []
    for n, t in zip(a.shape[:2], (height, width), strict=True):
        shift = t // 2 - n // 2  # destination index of source index 0
        lo, hi = max(0, -shift), min(n, t - shift)
        src.append(slice(lo, hi))
        dst.append(slice(lo + shift, hi + shift))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _normalised_psf(psf: np.ndarray, name: str) -> np.ndarray:
    """``(psf_h, psf_w, bands)`` float32 with unit sum per band."""
    psf = np.asarray(psf, dtype=np.float64)
    total = psf.sum(axis=(0, 1))
    if not np.all(np.isfinite(psf)) or np.any(total <= 0):
        raise ValueError(f"{name}: PSF must be finite with a positive sum, got sums {total}")
    return (psf / total).astype(np.float32)


def _cosmos_catalog(directory: Path, catalog) -> Path:
    if catalog is not None:
        return _existing(directory / catalog, "catalog")
    found = sorted(
        p for p in directory.glob("real_galaxy_catalog*.fits") if not p.name.endswith("_fits.fits")
    )
    if len(found) != 1:
        raise ValueError(
            f"directory: expected one real_galaxy_catalog*.fits in {str(directory)!r}, found "
            f"{[p.name for p in found]}; pass catalog="
        )
    return found[0]


def _join_photometry(cat: Table, cat_path: Path) -> Table:
    """Join the ``*_fits.fits`` companion table on IDENT, keeping the catalogue order."""
    phot_path = cat_path.with_name(cat_path.stem + "_fits.fits")
    if not phot_path.is_file():
        return cat
    phot = read_table(phot_path)
    if "IDENT" not in phot.colnames:
        return cat
    cat = cat.copy()
    cat["_row"] = np.arange(len(cat))
    joined = join(cat, phot, keys="IDENT", join_type="left")
    joined.sort("_row")
    del joined["_row"]
    return joined


def load_cosmos(directory, stamp_size: int | None = None, catalog=None) -> CosmosSample:
    """Load COSMOS HST galaxies stored in GalSim's RealGalaxyCatalog layout.

    Reads the catalogue ``real_galaxy_catalog*.fits`` (and its ``*_fits.fits``
    companion with photo-z and sizes), then each galaxy's stamp and PSF from the
    files and HDUs it names (``GAL_FILENAME``/``GAL_HDU``,
    ``PSF_FILENAME``/``PSF_HDU``).

    Args:
      directory: folder holding the catalogue and image files.
      stamp_size: if given, centre-crop or zero-pad every stamp to
        ``(stamp_size, stamp_size)`` and stack them; else return a list.
      catalog: catalogue file name inside ``directory``; default the only
        ``real_galaxy_catalog*.fits`` that is not a ``*_fits.fits`` file.

    Returns:
      :class:`CosmosSample` ``(images, psfs, noise_variance, pixel_scale,
      catalog)``. PSFs of different sizes are zero-padded to the largest.

    >>> s = load_cosmos("cosmos_hst_f814w_100", stamp_size=64)  # doctest: +SKIP
    >>> s.images.shape, s.psfs.shape  # doctest: +SKIP
    ((100, 64, 64, 1), (100, 65, 51, 1))
    """
    directory = _existing(directory, "directory", folder=True)
    if stamp_size is not None and (
        isinstance(stamp_size, bool) or not isinstance(stamp_size, int) or stamp_size <= 0
    ):
        raise ValueError(f"stamp_size: expected a positive int or None, got {stamp_size!r}")
    cat_path = _cosmos_catalog(directory, catalog)
    cat = read_table(cat_path)
    needed = {"GAL_FILENAME", "GAL_HDU", "PSF_FILENAME", "PSF_HDU", "NOISE_VARIANCE"}
    if missing := needed - set(cat.colnames):
        raise ValueError(f"catalog: {str(cat_path)!r} lacks columns {sorted(missing)}")
    cat = _join_photometry(cat, cat_path)

    opened: dict[str, fits.HDUList] = {}

    def hdu_data(file_column: str, hdu_column: str, row) -> np.ndarray:
        name = str(row[file_column]).strip()
        path = _existing(directory / name, file_column)
        if name not in opened:
            try:
                opened[name] = fits.open(path, memmap=False)
            except OSError as err:
                raise ValueError(f"{file_column}: {str(path)!r} is not readable FITS") from err
        hdul, hdu = opened[name], int(row[hdu_column])
        if hdu >= len(hdul) or hdul[hdu].data is None or hdul[hdu].data.ndim != 2:
            raise ValueError(f"{hdu_column}: {str(path)!r} has no 2-D image in HDU {hdu}")
        return np.asarray(hdul[hdu].data, dtype=np.float32)

    try:
        stamps = [hdu_data("GAL_FILENAME", "GAL_HDU", row)[..., None] for row in cat]
        psfs = [
            _normalised_psf(hdu_data("PSF_FILENAME", "PSF_HDU", row)[..., None], "PSF_HDU")
            for row in cat
        ]
    finally:
        for hdul in opened.values():
            hdul.close()

    psf_h = max(p.shape[0] for p in psfs)
    psf_w = max(p.shape[1] for p in psfs)
    psf_stack = np.stack([_crop_or_pad_np(p, psf_h, psf_w) for p in psfs])
    if stamp_size is not None:
        images = np.stack([_crop_or_pad_np(s, stamp_size, stamp_size) for s in stamps])
    else:
        images = stamps
    scales = np.unique(np.asarray(cat["PIXEL_SCALE"])) if "PIXEL_SCALE" in cat.colnames else []
    if len(scales) != 1:
        raise ValueError(f"catalog: expected one PIXEL_SCALE in {str(cat_path)!r}, got {scales}")
    noise_variance = np.asarray(cat["NOISE_VARIANCE"], dtype=np.float32)
    return CosmosSample(images, psf_stack, noise_variance, float(scales[0]), cat)


def _estimated_variance(images: np.ndarray) -> np.ndarray:
    """Constant per-band variance from the sigma-clipped (MAD) rms of the image."""
    var = np.empty(images.shape[-1], dtype=np.float32)
    for b in range(images.shape[-1]):
        band = images[..., b]
        _, _, std = sigma_clipped_stats(band[np.isfinite(band)], sigma=3.0, stdfunc="mad_std")
        var[b] = std**2
    return np.broadcast_to(var, images.shape).copy()


def _scene(images, psfs, variance, source, positions, filters, wcs, mask_bits, bad_bits):
    """Assemble a :class:`Scene` from on-disk ``(bands, h, w)`` arrays."""
    images = np.moveaxis(np.asarray(images, dtype=np.float32), 0, -1)
    psfs = _normalised_psf(np.moveaxis(np.asarray(psfs), 0, -1), "psfs")
    if variance is None:
        variance = _estimated_variance(images)
    else:
        variance = np.moveaxis(np.asarray(variance, dtype=np.float32), 0, -1)
    good = np.isfinite(images) & np.isfinite(variance) & (variance > 0)
    if mask_bits is not None:
        mask_bits = np.moveaxis(np.asarray(mask_bits, dtype=np.int32), 0, -1)
        good &= (mask_bits & np.int32(bad_bits)) == 0
    images = np.where(np.isfinite(images), images, np.float32(0))
    variance = np.where(good, variance, np.float32(np.inf))
    bands = images.shape[-1]
    if filters is None:
        filters = HSC_FILTERS if bands == len(HSC_FILTERS) else tuple(f"b{i}" for i in range(bands))
    return Scene(
        images=images,
        psfs=psfs,
        variance=variance,
        mask=good.astype(np.float32),
        positions=np.asarray(positions, dtype=np.float32).reshape(-1, 2),
        filters=tuple(str(f) for f in filters),
        wcs=wcs,
        pixel_scale=HSC_PIXEL_SCALE,
        variance_source=source,
        mask_bits=mask_bits,
    )


def load_hsc_npz(path, bad_bits: int = 0) -> Scene:
    """Load a scarlet-format HSC scene (``.npz`` with bands on axis 0).

    Noise comes from ``variance``, else from ``weights`` (inverse variance; zero
    weight -> infinite variance, masked), else it is estimated per band as the
    sigma-clipped rms of the image. Positions come from ``catalog`` (fields
    ``x``, ``y``) or from ``peaks``.

    Note on ``peaks``: scarlet's real-data file stores them in the same
    ``(x, y)`` = (column, row) order as the catalogue, not ``[y, x]``: its peaks
    coincide with the sep catalogue of the identical pixels in
    ``hsc_cosmos.npz`` and with local maxima at ``image[y, x]``. They are used
    as ``(x, y)`` unchanged.

    Args:
      path: ``.npz`` file with ``images`` ``(bands, h, w)`` and ``psfs``
        ``(bands, ph, pw)``; optional ``variance``, ``weights``, ``mask`` (HSC
        mask bits), ``catalog``, ``peaks``, ``filters``, ``wcs_header``.
      bad_bits: HSC mask planes (bitwise OR) that make a pixel unusable; default
        none, as the bit assignment differs between coadds.

    Returns:
      :class:`Scene`.

    >>> scene = load_hsc_npz("hsc_cosmos_35.npz")  # doctest: +SKIP
    >>> scene.images.shape, scene.positions.shape  # doctest: +SKIP
    ((58, 48, 5), (7, 2))
    """
    arrays = _load_npz(path)
    images = _require(arrays, "images", path)
    psfs = _require(arrays, "psfs", path)
    if images.ndim != 3 or psfs.ndim != 3 or len(images) != len(psfs):
        raise ValueError(
            f"path: expected images (bands, h, w) and psfs (bands, ph, pw) in {str(path)!r}, "
            f"got {images.shape} and {psfs.shape}"
        )
    if "variance" in arrays:
        variance, source = arrays["variance"], "variance"
    elif "weights" in arrays:
        w = np.asarray(arrays["weights"], dtype=np.float32)
        with np.errstate(divide="ignore"):
            variance = np.where(w > 0, 1.0 / w, np.float32(np.inf)).astype(np.float32)
        source = "weights"
    else:
        variance, source = None, "estimated"
    if "catalog" in arrays:
        catalog = arrays["catalog"]
        positions = np.stack([catalog["x"], catalog["y"]], axis=-1)
    elif "peaks" in arrays:
        positions = arrays["peaks"]  # (x, y) already: see the docstring
    else:
        positions = np.zeros((0, 2))
    wcs = None
    if "wcs_header" in arrays:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(fits.Header.fromstring(str(arrays["wcs_header"]))).celestial
    return _scene(
        images,
        psfs,
        variance,
        source,
        positions,
        arrays.get("filters"),
        wcs,
        arrays.get("mask"),
        bad_bits,
    )


def load_hsc_fits(cube_path, psf_path) -> Scene:
    """Load an HSC scene stored as a FITS cube ``(bands, h, w)`` plus a PSF cube.

    The files carry no noise map, so the variance is estimated per band (see
    :class:`Scene`); there is no source list (``positions`` is ``(0, 2)``).

    Args:
      cube_path: image cube with a celestial WCS.
      psf_path: PSF cube ``(bands, ph, pw)``.

    Returns:
      :class:`Scene` with the cube's WCS.

    >>> scene = load_hsc_fits("hsc.fits", "psf_hsc.fits")  # doctest: +SKIP
    """
    cube = read_fits(cube_path)
    psf = read_fits(psf_path)
    if psf.data.shape[-1] != cube.data.shape[-1]:
        raise ValueError(
            f"psf_path: {cube.data.shape[-1]} bands in the image but {psf.data.shape[-1]} in "
            f"{str(psf_path)!r}"
        )
    return _scene(
        np.moveaxis(cube.data, -1, 0),
        np.moveaxis(psf.data, -1, 0),
        None,
        "estimated",
        np.zeros((0, 2)),
        None,
        cube.wcs,
        None,
        0,
    )


def load_first(path, as_float: bool = False, split: str | None = None) -> FirstSample:
    """Load the FIRST FRI/FRII/Compact/Bent radio-galaxy set (Griese et al. 2023).

    Args:
      path: ``first_fr_4class.npz``.
      as_float: return float32 ``(n, 300, 300, 1)`` in [0, 1] (``uint8 / 255``)
        instead of uint8 ``(n, 300, 300)``.
      split: keep only ``"train"``, ``"valid"`` or ``"test"``; default all.

    Returns:
      :class:`FirstSample`.

    >>> first = load_first("first_fr_4class.npz", split="test")  # doctest: +SKIP
    >>> first.images.shape  # doctest: +SKIP
    (200, 300, 300)
    """
    if split not in (None, "train", "valid", "test"):
        raise ValueError(f"split: expected None, 'train', 'valid' or 'test', got {split!r}")
    arrays = _load_npz(path)
    images = _require(arrays, "images", path)
    labels = _require(arrays, "label", path).astype(np.int32)
    splits = _require(arrays, "split", path).astype(str)
    keep = slice(None) if split is None else splits == split
    images = images[keep]
    if as_float:
        images = (images.astype(np.float32) / np.float32(255))[..., None]
    class_names = tuple(str(c) for c in _require(arrays, "class_names", path))
    ra = arrays.get("ra", np.full(len(labels), np.nan))[keep]
    dec = arrays.get("dec", np.full(len(labels), np.nan))[keep]
    return FirstSample(images, labels[keep], splits[keep], class_names, ra, dec)


def load_fits_folder(directory, pattern: str = "*.fits", hdu=None) -> FitsFolder:
    """Stack every FITS image matching ``pattern`` in ``directory``.

    Args:
      directory: folder to search (not recursive unless ``pattern`` has ``**``).
      pattern: glob pattern, e.g. ``"*.fits"`` or ``"Cut_HST*.fits"``.
      hdu: HDU to read from each file (default the first with image data).

    Returns:
      :class:`FitsFolder` ``(images (n, h, w, bands), names, wcs)``, sorted by
      file name.

    Raises:
      FileNotFoundError: no folder, or no file matches.
      ValueError: the files' images differ in shape (the message lists them).

    >>> stack = load_fits_folder("cutouts", "*.fits")  # doctest: +SKIP
    """
    directory = _existing(directory, "directory", folder=True)
    paths = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not paths:
        raise FileNotFoundError(f"pattern: no file matches {pattern!r} in {str(directory)!r}")
    read = [read_fits(p, hdu) for p in paths]
    shapes = {p.name: r.data.shape for p, r in zip(paths, read, strict=True)}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"directory: images in {str(directory)!r} differ in shape, cannot stack: {shapes}; "
            "narrow the pattern or crop them (galjax.image.transforms.crop_or_pad)"
        )
    images = np.stack([r.data for r in read])
    return FitsFolder(images, tuple(p.name for p in paths), tuple(r.wcs for r in read))


def load_sep_field(directory) -> SepField:
    """Load the ESO NTT/EMMI field with its SExtractor background, rms and catalogue.

    The catalogue's ``X_IMAGE``/``Y_IMAGE`` are 1-based (FITS); 0-based ``x``,
    ``y`` (and ``xwin``, ``ywin``) columns are added in galjax's convention.

    Args:
      directory: folder with ``image.fits``, ``back.fits``, ``rms.fits`` and
        ``image.cat`` (SExtractor ASCII_HEAD).

    Returns:
      :class:`SepField`.

    >>> field = load_sep_field("field_eso_ntt_emmi_sep")  # doctest: +SKIP
    >>> field.image.shape, len(field.catalog)  # doctest: +SKIP
    ((256, 256, 1), 65)
    """
    directory = _existing(directory, "directory", folder=True)
    with warnings.catch_warnings():
        # The ESO headers hold non-standard "ESO-LOG" cards that astropy flags; harmless.
        warnings.filterwarnings(
            "ignore", message="The following header keyword is invalid", category=AstropyUserWarning
        )
        image = read_fits(directory / "image.fits").data
        background = read_fits(directory / "back.fits").data
        rms = read_fits(directory / "rms.fits").data
    if not image.shape == background.shape == rms.shape:
        raise ValueError(
            f"directory: image, back and rms in {str(directory)!r} differ in shape: "
            f"{image.shape}, {background.shape}, {rms.shape}"
        )
    catalog = read_table(directory / "image.cat", format="ascii.sextractor")
    catalog["x"] = catalog["X_IMAGE"] - 1.0
    catalog["y"] = catalog["Y_IMAGE"] - 1.0
    catalog["xwin"] = catalog["XWIN_IMAGE"] - 1.0
    catalog["ywin"] = catalog["YWIN_IMAGE"] - 1.0
    return SepField(image, background, rms, catalog)
