"""Sources of a survey image: sky background, detection with deblending, blends.

The first step of deblending a real image: find the sources and group them into
blends, the units of work of the deblender. Three host functions (numpy, outside
``jit``; the number of sources is data-dependent):

* :func:`sky_background`: SExtractor's background and rms maps (``sep.Background``).
* :func:`detect_sources`: thresholding of the filtered, background-subtracted image,
  multi-threshold deblending and a segmentation map (``sep.extract``), returned as
  :class:`DetectedSources`.
* :func:`group_blends` and :func:`blend_boxes`: sources whose footprints touch or
  nearly touch form one blend; each blend gets a bounding box to cut it out at a
  size that fits it.

Why sep (Barbary 2016, JOSS 1, 58) rather than a new hand-written SExtractor or
photutils: it is SExtractor's own C code as a library, so that

* it is fast and lean on large mosaics: the image is scanned line by line, with
  only the pixels above threshold on a bounded stack (``pixstack``), and the
  background is a coarse mesh interpolated on demand; photutils' segmentation and
  deblending are Python/scipy per object and far slower on crowded fields;
* thresholds (``DETECT_THRESH`` in units of the rms, ``DETECT_MINAREA``, the
  filter) and deblending (``DEBLEND_NTHRESH``, ``DEBLEND_MINCONT``) mean what they
  mean in SExtractor, so settings and catalogues carry over (its test field, the
  ESO NTT/EMMI image, is reproduced);
* it returns the segmentation map (footprints) that blends are made from.

The deblending contrast is what keeps a big galaxy's own light in one source: a
branch of the multi-threshold tree becomes a separate source only if it holds at
least ``deblend_contrast`` of the total flux (SExtractor's ``DEBLEND_MINCONT``).

sep keeps two limits in global state: the pixel stack (pixels above threshold
in the active scan lines, default 300000) and the number of sub-objects of one
deblended object (default 1024). When either is hit, :func:`detect_sources` raises
a ``ValueError`` saying which and how to raise it (``pixstack=``,
``sub_object_limit=``); nothing is truncated silently.

Images are 2-D ``(h, w)`` arrays in any float (or int) dtype and byte order (FITS
data is big-endian; sep needs native C-contiguous float32/64, converted here).
Positions are ``(x, y)`` = (column, row) in 0-based pixels with pixel centres at
integers, as in the rest of :mod:`galjax.detect`. Masks follow galjax's weight
convention: > 0 (or True) marks a usable pixel, 0 (or False) a bad one.

>>> import numpy as np
>>> yy, xx = np.mgrid[:64, :64]
>>> img = 100.0 + 50.0 * np.exp(-((xx - 20.0) ** 2 + (yy - 30.0) ** 2) / 8.0)
>>> img += np.random.default_rng(0).normal(0.0, 1.0, img.shape)
>>> src = detect_sources(img, threshold=3.0)
>>> len(src.x), round(float(src.x[0])), round(float(src.y[0]))
(1, 20, 30)
>>> group_blends(src.segmentation)
(array([0], dtype=int32), 1)
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import sep
from scipy import ndimage

from galjax.image.background import Background

__all__ = [
    "DEFAULT_KERNEL",
    "FILTER_TYPES",
    "DetectedSources",
    "sky_background",
    "detect_sources",
    "group_blends",
    "blend_boxes",
]

#: SExtractor's ``default.conv``: 3x3 "all-ground" kernel, a Gaussian of FWHM 2 px.
DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])

#: ``"conv"``: SExtractor's filtering (threshold x rms on the convolved image);
#: ``"matched"``: sep's matched filter (threshold in units of the filtered noise).
FILTER_TYPES = ("conv", "matched")


class DetectedSources(NamedTuple):
    """Sources found by :func:`detect_sources`, one entry per source (``n`` of them).

    Attributes:
      x, y: ``(n,)`` float64 barycentres in 0-based pixels, ``(x, y)`` = (column, row).
      flux: ``(n,)`` float64 sum of the background-subtracted pixels of the footprint
        (image units; SExtractor's ``FLUX_ISO``).
      a, b: ``(n,)`` float64 semi-major and semi-minor rms of the light (pixels).
      theta: ``(n,)`` float64 position angle of ``a``, radians counter-clockwise from
        the x axis, in ``[-pi/2, pi/2]``.
      npix: ``(n,)`` int32 footprint area in pixels.
      peak: ``(n,)`` float64 highest background-subtracted pixel value.
      flags: ``(n,)`` int32 sep/SExtractor flags (``sep.OBJ_MERGED`` = 1: deblended
        from a blend; ``sep.OBJ_TRUNC`` = 2: touches a masked pixel or the edge;
        ``sep.OBJ_SINGU`` = 8: singular moments).
      segment: ``(n,)`` int32 id of the source in ``segmentation`` (index + 1).
      segmentation: ``(h, w)`` int32 map: 0 = sky, ``k`` = pixel of source ``k - 1``.
      background: the :class:`~galjax.image.background.Background` used: the
        ``level`` subtracted (as given, or float32 ``(h, w)`` maps when estimated
        here) and the ``rms`` that set the threshold (given ``rms``, the square
        root of ``variance``, or the background's rms).
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    npix: np.ndarray
    peak: np.ndarray
    flags: np.ndarray
    segment: np.ndarray
    segmentation: np.ndarray
    background: Background


# ---------------------------------------------------------------- checks


def _image_2d(image) -> np.ndarray:
    """The image as native-endian C-contiguous float32 (float64 kept), 2-D, non-empty."""
    if isinstance(image, str | bytes) or image is None:
        raise TypeError(f"image: expected a 2-D numeric array, got {type(image).__name__}")
    arr = np.asarray(image)
    if arr.ndim != 2:
        hint = "; pass image[..., 0] for a one-band (h, w, 1) image" if arr.ndim == 3 else ""
        raise ValueError(f"image: expected a 2-D array (h, w), got shape {arr.shape}{hint}")
    if arr.size == 0:
        raise ValueError(f"image: image is empty, shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"image: expected a real numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"image: expected a real numeric array, got dtype {arr.dtype}")
    # np.float32/np.float64 are native-endian: this also byte-swaps FITS (big-endian) data.
    dtype = np.float64 if arr.dtype.kind == "f" and arr.dtype.itemsize == 8 else np.float32
    return np.ascontiguousarray(arr, dtype=dtype)


def _good_pixels(image: np.ndarray, mask) -> np.ndarray:
    """Usable pixels: finite, and weight > 0 in ``mask``; NaN/inf masked with a warning."""
    good = np.isfinite(image)
    n_bad = int(good.size - np.count_nonzero(good))
    if n_bad:
        warnings.warn(
            f"image: {n_bad} non-finite pixel(s) were masked", RuntimeWarning, stacklevel=3
        )
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != image.shape:
            raise ValueError(
                f"mask: expected weights of the image's shape {image.shape}, got {m.shape}"
            )
        with np.errstate(invalid="ignore"):
            good &= m > 0
    return good


def _int_option(name: str, value, lo: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}{what}, got {value!r}")
    return int(value)


def _map(name: str, value, shape, dtype) -> np.ndarray | float:
    """A scalar or an ``(h, w)`` map of the image's shape, as float of ``dtype``."""
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name}: expected a number or an array, got dtype {arr.dtype}")
    if arr.ndim == 0:
        return float(arr)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected a scalar or the image's shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _noise(name: str, value, shape, dtype, variance: bool):
    """rms (or variance -> rms) checked: NaN or <= 0 (< 0 for a variance) refused."""
    arr = _map(name, value, shape, dtype)
    a = np.asarray(arr)
    if np.isnan(a).any():
        raise ValueError(f"{name}: expected values > 0, found {int(np.isnan(a).sum())} NaN")
    bad = a < 0 if variance else a <= 0
    if bad.any():
        rel = ">= 0" if variance else "> 0"
        raise ValueError(
            f"{name}: expected values {rel} (inf marks an unusable pixel), got min "
            f"{float(a.min()):.6g} ({int(bad.sum())} offending pixel(s))"
        )
    return np.sqrt(arr) if variance else arr


# ---------------------------------------------------------------- background


def sky_background(image, *, mask=None, box: int = 64, filter_size: int = 3) -> Background:
    """SExtractor's sky background and rms maps of a 2-D image (``sep.Background``).

    Per ``box x box`` mesh the background is the sigma-clipped mode
    ``2.5 median - 1.5 mean`` (the median in crowded meshes) and the rms the clipped
    standard deviation; both mesh grids are median-filtered over ``filter_size``
    meshes and interpolated to every pixel with a bicubic spline (Bertin & Arnouts
    1996, sec. 3.1). The same algorithm as
    ``galjax.image.background.estimate_background(method="mesh")``, in sep's C code
    (fast and lean on large mosaics).

    Args:
      image: ``(h, w)`` image in flux units, any float/int dtype or byte order.
        Non-finite pixels are masked with a ``RuntimeWarning``.
      mask: optional ``(h, w)`` weights: pixels with weight <= 0 (or False) are
        left out of the statistics.
      box: mesh side in pixels, int >= 1, default 64 (``BACK_SIZE``).
      filter_size: median-filter size in meshes, odd int >= 1, default 3
        (``BACK_FILTERSIZE``; 1 = no filter).

    Returns:
      :class:`~galjax.image.background.Background` of float32 ``(h, w)`` maps
      ``level`` and ``rms`` in the image's units.

    Raises:
      ValueError: an image that is not 2-D, a mask of another shape, ``box`` or
        ``filter_size`` out of range.

    >>> import numpy as np
    >>> img = np.random.default_rng(0).normal(100.0, 5.0, (128, 128))
    >>> bkg = sky_background(img, box=32)
    >>> bkg.level.shape, bkg.level.dtype
    ((128, 128), dtype('float32'))
    >>> round(float(bkg.level.mean())), round(float(bkg.rms.mean()))
    (100, 5)
    """
    data = _image_2d(image)
    good = _good_pixels(data, mask)
    return _sep_background(data, good, box, filter_size)


def _sep_background(data, good, box, filter_size) -> Background:
    box = _int_option("box", box, 1, " (pixels)")
    filter_size = _int_option("filter_size", filter_size, 1, " (meshes)")
    if filter_size % 2 != 1:
        raise ValueError(f"filter_size: expected an odd int >= 1 (meshes), got {filter_size!r}")
    if not good.any():
        raise ValueError("image: no usable pixel (all masked or non-finite)")
    bad = None if good.all() else ~good
    # sep reads masked pixels too: zero them so that NaN cannot leak into a mesh.
    clean = data if bad is None else np.where(good, data, 0).astype(data.dtype)
    bkg = sep.Background(clean, mask=bad, bw=box, bh=box, fw=filter_size, fh=filter_size)
    return Background(bkg.back(dtype=np.float32), bkg.rms(dtype=np.float32))


# ---------------------------------------------------------------- detection


def _sep_limit_error(err: Exception, pixstack: int, sub_limit: int) -> Exception:
    """sep's limit exceptions turned into ``ValueError`` naming the option that lifts them."""
    msg = str(err)
    if "pixel buffer full" in msg:
        return ValueError(
            f"pixstack: more than {pixstack} pixels above the threshold were active at once "
            "(sep's pixel stack, SExtractor's MEMORY_PIXSTACK); no source was returned. "
            f"Pass a larger pixstack (e.g. pixstack={4 * pixstack}), raise threshold, or "
            "check that the background is right"
        )
    if "deblending overflow" in msg:
        return ValueError(
            f"sub_object_limit: one object split into more than {sub_limit} sub-objects "
            "while deblending (sep's sub-object limit); no source was returned. Pass a "
            f"larger sub_object_limit (e.g. sub_object_limit={4 * sub_limit}), fewer "
            "deblend_levels, or a higher threshold"
        )
    return RuntimeError(f"sep.extract failed: {msg}")


def _extract(sub, threshold, err, bad, kwargs, pixstack, sub_object_limit):
    """``sep.extract`` with the global limits set for this call and restored after it."""
    old_stack, old_limit = sep.get_extract_pixstack(), sep.get_sub_object_limit()
    stack = old_stack if pixstack is None else pixstack
    limit = old_limit if sub_object_limit is None else sub_object_limit
    try:
        sep.set_extract_pixstack(stack)
        sep.set_sub_object_limit(limit)
        return sep.extract(sub, threshold, err=err, mask=bad, segmentation_map=True, **kwargs)
    except Exception as e:  # sep raises a bare Exception for its limits
        raise _sep_limit_error(e, stack, limit) from e
    finally:
        sep.set_extract_pixstack(old_stack)
        sep.set_sub_object_limit(old_limit)


def detect_sources(
    image,
    *,
    rms=None,
    variance=None,
    mask=None,
    background: Background | None = None,
    threshold: float = 1.5,
    min_area: int = 5,
    deblend_contrast: float = 0.005,
    deblend_levels: int = 32,
    filter_kernel=DEFAULT_KERNEL,
    filter_type: str = "conv",
    border: int = 0,
    max_sources: int | None = None,
    pixstack: int | None = None,
    sub_object_limit: int | None = None,
) -> DetectedSources:
    """Detect and deblend the sources of a 2-D image with SExtractor's algorithm (sep).

    The background ``B`` is subtracted, the image filtered with ``filter_kernel``
    (normalised to unit sum), and a pixel is *above threshold* when
    ``filtered(image - B) > threshold * rms`` (SExtractor's ``DETECT_THRESH`` in
    sigmas, with ``FILTER_TYPE``-like ``"conv"`` filtering). Connected groups of at
    least ``min_area`` such pixels are objects; each is split over
    ``deblend_levels`` exponentially spaced sub-thresholds, a branch becoming its
    own source when it holds at least ``deblend_contrast`` of the object's flux.
    Pixels are then assigned to sources in the segmentation map.

    Args:
      image: ``(h, w)`` image in flux units (any float/int dtype or byte order).
        Non-finite pixels are masked with a ``RuntimeWarning``.
      rms: noise standard deviation, a scalar or an ``(h, w)`` map, > 0 (``inf``
        marks an unusable pixel). Default: ``background.rms``, or the rms map of
        :func:`sky_background`. At most one of ``rms`` and ``variance``.
      variance: noise variance instead of ``rms``, >= 0 (0 masks the pixel).
      mask: optional ``(h, w)`` weights, > 0 (or True) = usable, 0 = bad pixel
        (treated as sky with infinite noise, before filtering).
      background: a :class:`~galjax.image.background.Background` whose ``level``
        (scalar or ``(h, w)``; non-finite entries mask their pixel) is subtracted;
        default :func:`sky_background` with the mask (``box=64``, ``filter_size=3``).
      threshold: detection threshold in units of ``rms``, finite > 0; default 1.5
        (``default.sex``).
      min_area: minimum footprint in pixels above threshold, int >= 1, default 5.
      deblend_contrast: minimum flux fraction of a deblended branch, in ``[0, 1]``;
        default 0.005 (SExtractor's default; 1 = no deblending).
      deblend_levels: number of deblending sub-thresholds, int >= 1, default 32.
      filter_kernel: 2-D detection filter; default the 3x3 ``default.conv``
        (:data:`DEFAULT_KERNEL`); ``None`` for no filtering.
      filter_type: ``"conv"`` (default, SExtractor's: threshold x rms on the
        convolved image) or ``"matched"`` (sep's matched filter: the threshold is
        in units of the filtered image's noise, which detects more faint sources).
      border: drop sources whose centre is less than ``border`` pixels from the
        image edge (``x < border`` or ``x > w - 1 - border``, same for ``y``);
        int >= 0, default 0 (keep all).
      max_sources: if given, raise when more sources than this are found (after
        the border cut); never truncates.
      pixstack: sep's pixel stack for this call (default: sep's current setting,
        300000 unless changed by ``sep.set_extract_pixstack``).
      sub_object_limit: sep's sub-object limit for this call (default sep's, 1024).

    Returns:
      :class:`DetectedSources`, sources in sep's order; empty ``(0,)`` arrays and
      an all-zero segmentation when nothing is above threshold.

    Raises:
      ValueError: an image that is not 2-D; ``rms``/``variance``/``mask``/
        ``background`` of another shape; both ``rms`` and ``variance``; a negative
        variance or rms <= 0; ``threshold`` not finite > 0; ``min_area`` < 1 or any
        other option out of range; sep's pixel stack or sub-object limit reached
        (the message names ``pixstack`` or ``sub_object_limit``); more than
        ``max_sources`` sources.

    sep's limits are process-wide: do not call this from several threads at once
    with different ``pixstack``/``sub_object_limit``.

    >>> import numpy as np
    >>> yy, xx = np.mgrid[:48, :64]
    >>> blob = lambda x0, y0: 40.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 6.0)
    >>> img = blob(15.0, 20.0) + blob(45.0, 30.0)
    >>> img += np.random.default_rng(1).normal(0.0, 1.0, img.shape)
    >>> src = detect_sources(img, rms=1.0, background=Background(0.0, 1.0), threshold=3.0)
    >>> np.round(src.x).tolist(), np.round(src.y).tolist(), src.segmentation.shape
    ([15.0, 45.0], [20.0, 30.0], (48, 64))
    """
    data = _image_2d(image)
    shape, dtype = data.shape, data.dtype
    good = _good_pixels(data, mask)
    if rms is not None and variance is not None:
        raise ValueError("variance: give rms or variance, not both")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise ValueError(f"threshold: expected a finite number > 0 (sigmas), got {threshold!r}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold: expected a finite number > 0 (sigmas), got {threshold!r}")
    min_area = _int_option("min_area", min_area, 1, " (pixels)")
    deblend_levels = _int_option("deblend_levels", deblend_levels, 1)
    border = _int_option("border", border, 0, " (pixels)")
    if not (isinstance(deblend_contrast, int | float | np.number) and 0 <= deblend_contrast <= 1):
        raise ValueError(f"deblend_contrast: expected a number in [0, 1], got {deblend_contrast!r}")
    if max_sources is not None:
        max_sources = _int_option("max_sources", max_sources, 0)
    if pixstack is not None:
        pixstack = _int_option("pixstack", pixstack, 1, " (pixels)")
    if sub_object_limit is not None:
        sub_object_limit = _int_option("sub_object_limit", sub_object_limit, 1)
    if filter_type not in FILTER_TYPES:
        raise ValueError(f"filter_type: expected one of {FILTER_TYPES}, got {filter_type!r}")
    kernel = None
    if filter_kernel is not None:
        kernel = np.asarray(filter_kernel, np.float64)
        if kernel.ndim != 2 or kernel.size == 0 or not np.isfinite(kernel).all():
            raise ValueError(
                f"filter_kernel: expected a finite 2-D array or None, got shape {kernel.shape}"
            )
        kernel = np.ascontiguousarray(kernel)

    # Noise first (explicit rms/variance), then the background with the usable pixels.
    if rms is not None:
        noise = _noise("rms", rms, shape, dtype, variance=False)
    elif variance is not None:
        noise = _noise("variance", variance, shape, dtype, variance=True)
    else:
        noise = None
    if background is None:
        background = _sep_background(data, good, 64, 3)
    elif not (isinstance(background, tuple) and len(background) == 2):
        raise ValueError(
            f"background: expected a Background(level, rms), got {type(background).__name__}"
        )
    level = _map("background", background[0], shape, dtype)
    if noise is None:
        noise = _map("background", background[1], shape, dtype)
        # A zero rms (a constant region, padding) has no noise estimate: mask it.
        bad_rms = ~(np.asarray(noise) > 0)
        if bad_rms.any():
            warnings.warn(
                f"background: rms <= 0 or NaN at {int(bad_rms.sum())} pixel(s); masked",
                RuntimeWarning,
                stacklevel=2,
            )
            good &= ~bad_rms
    good &= np.isfinite(level)  # a non-finite background level leaves the pixel unusable
    err = noise
    if np.ndim(noise):
        good &= np.isfinite(noise) & (noise > 0)  # inf or a 0 variance: unusable pixel
        err = np.ascontiguousarray(np.where(good, noise, 1.0), dtype=dtype)
    elif not (0 < noise < np.inf):
        good[...] = False
        err = 1.0
    sub = np.where(good, data - np.asarray(level, dtype), 0).astype(dtype, copy=False)
    sub = np.ascontiguousarray(sub)
    bad = None if good.all() else ~good

    kwargs = dict(
        minarea=min_area,
        filter_kernel=kernel,
        filter_type=filter_type,
        deblend_nthresh=deblend_levels,
        deblend_cont=float(deblend_contrast),
    )
    objects, segmap = _extract(sub, float(threshold), err, bad, kwargs, pixstack, sub_object_limit)
    segmap = np.asarray(segmap, np.int32)
    h, w = shape
    x, y = objects["x"].astype(np.float64), objects["y"].astype(np.float64)
    keep = (x >= border) & (x <= w - 1 - border) & (y >= border) & (y <= h - 1 - border)
    n = int(np.count_nonzero(keep))
    if max_sources is not None and n > max_sources:
        raise ValueError(
            f"max_sources: found {n} sources, more than max_sources={max_sources}; pass a "
            "larger max_sources (or None), or raise threshold/min_area"
        )
    if not keep.all():  # renumber the kept segments 1..n; dropped ones become sky
        relabel = np.zeros(len(objects) + 1, np.int32)
        relabel[1:][keep] = np.arange(1, n + 1, dtype=np.int32)
        segmap = relabel[segmap]
        objects = objects[keep]
    return DetectedSources(
        x=objects["x"].astype(np.float64),
        y=objects["y"].astype(np.float64),
        flux=objects["flux"].astype(np.float64),
        a=objects["a"].astype(np.float64),
        b=objects["b"].astype(np.float64),
        theta=objects["theta"].astype(np.float64),
        npix=objects["npix"].astype(np.int32),
        peak=objects["peak"].astype(np.float64),
        flags=objects["flag"].astype(np.int32),
        segment=np.arange(1, n + 1, dtype=np.int32),
        segmentation=segmap,
        background=Background(background[0], noise),
    )


# ---------------------------------------------------------------- blends


def _segmentation(segmentation) -> np.ndarray:
    seg = np.asarray(segmentation)
    if seg.ndim != 2:
        raise ValueError(f"segmentation: expected a 2-D (h, w) map, got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segmentation: expected integer source ids, got dtype {seg.dtype}")
    if seg.size and seg.min() < 0:
        raise ValueError(f"segmentation: expected ids >= 0, got min {int(seg.min())}")
    return seg


def group_blends(segmentation, *, gap: int = 2) -> tuple[np.ndarray, int]:
    """Group sources into blends: footprints that touch or nearly touch.

    The footprint mask (``segmentation > 0``) is dilated by ``gap`` pixels (3x3
    square structuring element, ``gap`` times) and its 8-connected components
    (``scipy.ndimage.label``) are the blends: two sources are in one blend when a
    chain of footprints links them with at most ``2 * gap`` sky pixels between
    neighbours (chessboard distance); ``gap=0`` joins touching footprints only.

    Args:
      segmentation: ``(h, w)`` int map, 0 = sky, ``k`` = source ``k - 1`` (as
        :attr:`DetectedSources.segmentation`); ``n = segmentation.max()`` sources.
      gap: dilation in pixels, int >= 0, default 2.

    Returns:
      ``(blend_id, n_blends)``: ``blend_id`` ``(n,)`` int32 in ``[0, n_blends)``,
      numbered in order of each blend's first source; a source id with no pixel
      gets a blend of its own.

    >>> seg = np.zeros((8, 12), np.int32)
    >>> seg[1:3, 1:3], seg[1:3, 4:6], seg[5:7, 9:11] = 1, 2, 3
    >>> group_blends(seg, gap=1)
    (array([0, 0, 1], dtype=int32), 2)
    >>> group_blends(seg, gap=0)[1]
    3
    """
    seg = _segmentation(segmentation)
    gap = _int_option("gap", gap, 0, " (pixels)")
    n = int(seg.max()) if seg.size else 0
    if n == 0:
        return np.zeros(0, np.int32), 0
    footprint = seg > 0
    square = np.ones((3, 3), bool)
    grown = ndimage.binary_dilation(footprint, square, iterations=gap) if gap else footprint
    labels, _ = ndimage.label(grown, square)
    raw = np.full(n + 1, -1, np.int64)
    raw[seg[footprint]] = labels[footprint]  # every pixel of a segment has one label
    raw = raw[1:]
    empty = raw < 0
    raw[empty] = labels.max() + 1 + np.arange(int(empty.sum()))  # no pixel: own blend
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    return rank[inverse.reshape(-1)], len(first)


def blend_boxes(
    segmentation, blend_id, shape=None, *, margin: int = 4, min_size=None
) -> np.ndarray:
    """Bounding box of each blend, grown by a margin, to cut the blend out.

    Args:
      segmentation: ``(h, w)`` int map, 0 = sky, ``k`` = source ``k - 1``.
      blend_id: ``(n,)`` int blend of each source (:func:`group_blends`), ``n >=
        segmentation.max()``.
      shape: the image's shape ``(h, w)`` or ``(h, w, bands)``; must match the
        segmentation (default: the segmentation's).
      margin: pixels added on each side of the footprints' box, int >= 0, default 4.
      min_size: optional int or ``(min_h, min_w)``: each box is grown symmetrically
        to at least this size and then moved inside the image, so that it keeps
        that size whenever the image is big enough.

    Returns:
      ``(n_blends, 4)`` int64 ``(y0, y1, x0, x1)``, ``y1``/``x1`` exclusive
      (``image[y0:y1, x0:x1]``), clipped to the image; ``n_blends = blend_id.max()
      + 1``. A blend without any pixel gets the empty box ``(0, 0, 0, 0)``.

    >>> seg = np.zeros((20, 30), np.int32)
    >>> seg[5:8, 5:9], seg[6:9, 10:12] = 1, 2
    >>> blend_boxes(seg, np.array([0, 0]), seg.shape, margin=2).tolist()
    [[3, 11, 3, 14]]
    >>> blend_boxes(seg, np.array([0, 0]), margin=0, min_size=16).tolist()
    [[0, 16, 1, 17]]
    """
    seg = _segmentation(segmentation)
    h, w = seg.shape
    if shape is not None and tuple(shape)[:2] != (h, w):
        raise ValueError(f"shape: expected the segmentation's (h, w) = {(h, w)}, got {shape}")
    margin = _int_option("margin", margin, 0, " (pixels)")
    ids = np.asarray(blend_id)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise ValueError(f"blend_id: expected (n,) ints >= 0, got {ids.dtype} shape {ids.shape}")
    n = int(seg.max()) if seg.size else 0
    if len(ids) < n:
        raise ValueError(f"blend_id: expected {n} entries (segmentation.max()), got {len(ids)}")
    if min_size is not None:
        sizes = np.broadcast_to(np.asarray(min_size), (2,))
        if not np.issubdtype(sizes.dtype, np.integer) or sizes.min() < 1:
            raise ValueError(f"min_size: expected an int >= 1 or (min_h, min_w), got {min_size!r}")
    n_blends = int(ids.max()) + 1 if ids.size else 0
    lo = np.full((n_blends, 2), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n_blends, 2), -1, np.int64)
    for k, sl in enumerate(ndimage.find_objects(seg, max_label=n)):
        if sl is None:
            continue
        b = ids[k]
        lo[b] = np.minimum(lo[b], (sl[0].start, sl[1].start))
        hi[b] = np.maximum(hi[b], (sl[0].stop, sl[1].stop))
    empty = hi[:, 0] < 0  # blends without pixels
    lo[empty], hi[empty] = 0, 0
    lo, hi = lo - margin, hi + margin
    limit = np.array([h, w], np.int64)
    if min_size is not None:
        need = np.maximum(sizes.astype(np.int64) - (hi - lo), 0)
        lo, hi = lo - need // 2, hi + need - need // 2
        shift = np.maximum(-lo, 0) - np.maximum(hi + np.maximum(-lo, 0) - limit, 0)
        lo, hi = lo + shift, hi + shift  # moved inside the image where it fits
    out = np.concatenate([np.clip(lo, 0, limit), np.clip(hi, 0, limit)], axis=1)
    out[empty] = 0
    return out[:, [0, 2, 1, 3]]
