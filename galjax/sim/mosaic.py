"""Large simulated survey images (mosaics) with their truth, made by galjax's simulator.

:func:`simulate_mosaic` scatters thousands of galaxies of a :class:`Survey`'s
population uniformly over a large image (e.g. 4096 x 4096 pixels): each galaxy is a
``survey.stamp_size`` stamp drawn by :func:`~galjax.sim.sample_galaxy` and rendered with
the survey PSF by :func:`~galjax.sim.render_galaxy` (its sub-pixel offset in the
render, as :func:`~galjax.sim.simulate_field` does), in jit-compiled vmapped batches of
one compiled shape; the stamps are added into a host numpy canvas at their integer
offsets and cut at the image edges, so overlapping galaxies make natural blends. Noise
is galjax's model, as :func:`~galjax.sim.add_noise` draws it in the Gaussian
approximation: the variance map is :func:`~galjax.sim.noise_variance` of the noiseless
image (sky plus Poisson over gain) and the noise is Gaussian with that variance, drawn
by numpy generators seeded from the key (no compilation per image shape).
:func:`write_mosaic` writes the image, variance, PSF and truth for the command line and
the end-to-end benchmarks.

Image units are the simulator's flux units (``sky_sigma`` per pixel; a total of 1 is
``survey.zeropoint`` AB mag; ``survey.gain`` counts per unit), written as BUNIT ``adu``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.cache import bounded_cache

from .galaxy import half_light_ellipse, render_galaxy
from .noise import noise_variance
from .survey import LSST_R, Survey, sample_galaxy

__all__ = ["Mosaic", "DEFAULT_DENSITY", "mosaic_count", "simulate_mosaic", "write_mosaic"]

#: Galaxies per square arcminute when neither ``n_galaxies`` nor ``density`` is given.
DEFAULT_DENSITY = 25.0

# Rows of the image given noise per call (bounds the memory of the noise draws).
_NOISE_ROWS = 512


class Mosaic(NamedTuple):
    """A simulated survey image and its truth.

    Attributes:
      image: ``(h, w, bands)`` float32 noisy, sky-subtracted image [flux units / pixel].
      variance: ``(h, w, bands)`` float32 per-pixel noise variance,
        ``sky_sigma^2 + max(noiseless, 0) / gain`` (:func:`~galjax.sim.noise_variance`).
      noiseless: ``(h, w, bands)`` float32 sum of the galaxies.
      truth: dict of numpy arrays, one row per galaxy (``n`` galaxies):

        * ``id`` ``(n,)`` int64, 0..n-1;
        * ``x``, ``y`` ``(n,)`` centre [pixels, 0-based, x = column, pixel centres at
          integers], inside ``[-0.5, w - 0.5) x [-0.5, h - 0.5)``;
        * ``flux`` ``(n, bands)`` noiseless flux of the galaxy inside the image (the
          sum of its stamp over the image pixels it covers);
        * ``flux_model`` ``(n, bands)`` the galaxy's model total flux (``params.flux``,
          what :class:`~galjax.sim.Field` reports; the stamp and the image edges cut a
          little of it);
        * ``mag`` ``(n, bands)`` AB magnitude of ``flux``: ``zeropoint - 2.5 log10 flux``;
        * ``hlr`` ``(n,)`` disk half-light radius [arcsec] (the size of the survey's
          population, :attr:`Survey.hlr_median`);
        * ``a``, ``b``, ``theta`` ``(n,)`` half-light ellipse of the larger of bulge and
          disk (:func:`~galjax.sim.half_light_ellipse`, reference band) [pixels, rad];
        * ``snr`` ``(n,)`` matched-filter SNR of the galaxy alone in the reference band
          (band 2 when there are three or more bands, else the last), as
          :func:`~galjax.sim.simulate_field` defines it: ``sqrt(sum s^2 / var(s))``
          over the image pixels of the galaxy's noiseless stamp ``s``, ``var`` from
          :func:`~galjax.sim.noise_variance` of ``s``;
        * ``snr_bands`` ``(n, bands)`` the same per band.
    """

    image: np.ndarray
    variance: np.ndarray
    noiseless: np.ndarray
    truth: dict


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_shape(shape) -> tuple[int, int]:
    try:
        items = tuple(shape)
    except TypeError:
        items = ()
    if len(items) != 2 or not all(_is_int(v) and v >= 1 for v in items):
        raise ValueError(f"shape: expected two integers (height, width) >= 1, got {shape!r}")
    return int(items[0]), int(items[1])


def mosaic_count(
    survey: Survey = LSST_R, shape=(4096, 4096), density: float = DEFAULT_DENSITY
) -> int:
    """Number of galaxies at ``density`` per arcmin^2 in an image of ``shape`` pixels.

    ``round(density * h w (pixel_scale / 60)^2)``; e.g. 25 per arcmin^2 at 4096 x 4096
    and 0.2"/pixel (186.4 arcmin^2) gives 4660.

    >>> mosaic_count(LSST_R, (4096, 4096), 25.0)
    4660
    """
    if not isinstance(survey, Survey):
        raise TypeError(f"survey: expected a galjax.sim.Survey, got {type(survey).__name__}")
    h, w = _check_shape(shape)
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise ValueError(f"density: expected a number >= 0 [per arcmin^2], got {density!r}")
    if not (math.isfinite(density) and density >= 0):
        raise ValueError(f"density: expected a finite number >= 0 [per arcmin^2], got {density}")
    area = h * w * (survey.pixel_scale / 60.0) ** 2
    return int(round(density * area))


def _ref_band(survey: Survey) -> int:
    # The reference (detection) band of the simulator: band 2 (r of ugrizy), else the last.
    return min(2, survey.n_bands - 1)


@bounded_cache(maxsize=8)
def _compiled_renderer(survey: Survey, size: int):
    """Jitted, vmapped render of ``size`` galaxies; image shape passed as data (one compile)."""
    psf = survey.psf()
    s = survey.stamp_size
    c = (s - 1) // 2  # stamp pixel placed on the galaxy's integer pixel
    sky = jnp.asarray(survey.sky_sigma, jnp.float32)

    def one(k_gal, index, frac, origin, hw):
        key = jax.random.fold_in(k_gal, index)
        cx = jnp.float32(c) + frac[0]
        cy = jnp.float32(c) + frac[1]
        p = sample_galaxy(key, survey, x=cx, y=cy)
        stamp = render_galaxy(p, s, s, psf, survey.render.oversample, survey.render, survey.n_arms)
        rows = origin[1] + jnp.arange(s, dtype=jnp.int32)
        cols = origin[0] + jnp.arange(s, dtype=jnp.int32)
        inside = ((rows >= 0) & (rows < hw[0]))[:, None] & ((cols >= 0) & (cols < hw[1]))[None]
        m = inside.astype(stamp.dtype)[:, :, None]
        flux = jnp.sum(stamp * m, axis=(0, 1))
        var = noise_variance(stamp, sky, survey.gain)
        snr = jnp.sqrt(jnp.sum(m * stamp**2 / var, axis=(0, 1)))
        return stamp, flux, snr, p

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, None)))


def _numpy_rng(key) -> np.random.Generator:
    """A numpy generator seeded by 128 bits drawn from a JAX key (one compiled shape)."""
    return np.random.default_rng(np.asarray(jax.random.bits(key, (4,), jnp.uint32)))


def simulate_mosaic(
    key,
    survey: Survey = LSST_R,
    shape=(4096, 4096),
    *,
    density: float | None = None,
    n_galaxies: int | None = None,
    batch: int = 512,
    progress: bool = True,
) -> Mosaic:
    """Simulate a large survey image of uniformly scattered galaxies, with its truth.

    Galaxy ``i`` takes its parameters from ``fold_in(k_gal, i)``; positions and noise come
    from numpy generators seeded by ``key``, so the result depends on ``key``, ``survey``,
    ``shape`` and the count only, not on ``batch``.

    Args:
      key: PRNG key.
      survey: the :class:`Survey` (population, PSF, noise, stamp size; all bands).
      shape: ``(height, width)`` of the image [pixels].
      density: galaxies per arcmin^2 (``pixel_scale`` gives the area); the count is
        :func:`mosaic_count`. Give ``density`` or ``n_galaxies``, not both; with neither,
        :data:`DEFAULT_DENSITY` = 25 per arcmin^2: 4660 galaxies at the default 4096 x
        4096 pixels of 0.2" (LSST_R).
      n_galaxies: exact number of galaxies (>= 0).
      batch: stamps rendered per compiled call (>= 1; bounds memory: LSST_R peaks near
        2.3 GB of host memory at 512, 1.4 GB at 128, at the same speed). Calls have one
        compiled shape: ``batch``, or the next power of two >= ``n`` when all galaxies
        fit in one batch; the last batch is padded.
      progress: tqdm bar over the batches.

    Returns:
      :class:`Mosaic` of numpy arrays (image, variance, noiseless ``(h, w, bands)``
      float32 and the truth dict).

    Centres are uniform over the image (``[-0.5, w - 0.5) x [-0.5, h - 0.5)``), with no
    minimum separation: galaxies overlap into blends as in a real survey. Each stamp is
    cut at the image edges; ``truth["flux"]`` and ``truth["snr"]`` count what falls in.
    On 2 CPU cores LSST_R renders ~100 galaxies/s after a compilation of ~25 s: 5000
    galaxies at 4096 x 4096 take ~85 s in all.

    >>> m = simulate_mosaic(jax.random.key(0), shape=(64, 48), n_galaxies=0, progress=False)
    >>> m.image.shape, m.truth["flux"].shape  # an empty sky: noise only
    ((64, 48, 1), (0, 1))
    >>> mosaic_count(LSST_R, (4096, 4096), DEFAULT_DENSITY)  # the default count
    4660
    """
    if not isinstance(survey, Survey):
        raise TypeError(f"survey: expected a galjax.sim.Survey, got {type(survey).__name__}")
    h, w = _check_shape(shape)
    if n_galaxies is not None and density is not None:
        raise ValueError(
            f"n_galaxies: give n_galaxies or density, not both (got {n_galaxies} and {density})"
        )
    if n_galaxies is not None:
        if not _is_int(n_galaxies) or n_galaxies < 0:
            raise ValueError(f"n_galaxies: expected an integer >= 0, got {n_galaxies!r}")
        n = int(n_galaxies)
    else:
        n = mosaic_count(survey, (h, w), DEFAULT_DENSITY if density is None else density)
    if not _is_int(batch) or batch < 1:
        raise ValueError(f"batch: expected an integer >= 1, got {batch!r}")

    nb = survey.n_bands
    s = survey.stamp_size
    c = (s - 1) // 2
    k_pos, k_gal, k_noise = jax.random.split(key, 3)
    # Uniform centres in [-0.5, size - 0.5), float32 (the render's precision) and kept
    # below the upper edge, where rounding to float32 could otherwise land.
    hi = np.array([w - 0.5, h - 0.5], np.float32)
    xy = (_numpy_rng(k_pos).random((n, 2)) * (hi + 0.5) - 0.5).astype(np.float32)
    xy = np.minimum(xy, np.nextafter(hi, np.float32(-np.inf)))
    ixy = np.rint(xy).astype(np.int64)
    frac = (xy - ixy).astype(np.float32)  # exact: a float32 minus its nearest integer
    origin = (ixy - c).astype(np.int32)  # image pixel of the stamp's pixel (0, 0)

    noiseless = np.zeros((h, w, nb), np.float32)
    flux = np.zeros((n, nb), np.float64)
    snr = np.zeros((n, nb), np.float64)
    params = []
    if n:
        size = batch if n > batch else min(1 << (n - 1).bit_length(), batch)
        fn = _compiled_renderer(survey, size)
        hw = jnp.array([h, w], jnp.int32)
        starts = range(0, n, size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="mosaic", unit="batch")
        for i in starts:
            j = min(i + size, n)
            idx = np.arange(i, i + size, dtype=np.int32)
            idx[j - i :] = i  # pad with the first galaxy of the batch (one compiled shape)
            out = fn(k_gal, jnp.asarray(idx), jnp.asarray(frac[idx]), jnp.asarray(origin[idx]), hw)
            stamps, f_in, snr_in, p = jax.tree.map(lambda a, m=j - i: np.asarray(a[:m]), out)
            flux[i:j], snr[i:j] = f_in, snr_in
            params.append(p)
            for g in range(j - i):
                _add_stamp(noiseless, stamps[g], origin[i + g])
        params = jax.tree.map(lambda *a: np.concatenate(a), *params)

    image, variance = _noisy(k_noise, noiseless, survey)
    return Mosaic(image, variance, noiseless, _truth(survey, xy, flux, snr, params, n))


def _add_stamp(canvas: np.ndarray, stamp: np.ndarray, origin) -> None:
    """Add ``stamp`` with its pixel (0, 0) on image pixel ``origin = (x0, y0)``, cut at edges."""
    h, w = canvas.shape[:2]
    s_h, s_w = stamp.shape[:2]
    x0, y0 = int(origin[0]), int(origin[1])
    ya, yb = max(y0, 0), min(y0 + s_h, h)
    xa, xb = max(x0, 0), min(x0 + s_w, w)
    if ya < yb and xa < xb:
        canvas[ya:yb, xa:xb] += stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]


def _noisy(key, noiseless: np.ndarray, survey: Survey):
    """Noisy image and variance by row blocks: galjax's :func:`noise_variance` (sky plus
    Poisson over gain) and Gaussian draws from a numpy generator seeded by ``key``."""
    sky = jnp.asarray(survey.sky_sigma, jnp.float32)
    rng = _numpy_rng(key)
    image = np.empty_like(noiseless)
    variance = np.empty_like(noiseless)
    for r0 in range(0, noiseless.shape[0], _NOISE_ROWS):
        rows = slice(r0, r0 + _NOISE_ROWS)
        block = noiseless[rows]
        var = np.asarray(noise_variance(jnp.asarray(block), sky, survey.gain))
        noise = rng.standard_normal(block.shape, dtype=np.float32)
        image[rows] = block + np.sqrt(var) * noise
        variance[rows] = var
    return image, variance


def _truth(survey: Survey, xy, flux, snr, params, n: int) -> dict:
    nb = survey.n_bands
    ref = _ref_band(survey)
    zp = np.asarray(survey.zeropoint, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, zp - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    if n:
        a, b, theta = (np.asarray(v, np.float64) for v in half_light_ellipse(params, ref))
        hlr = np.asarray(params.disk_hlr, np.float64) * survey.pixel_scale
        flux_model = np.asarray(params.flux, np.float64)
    else:
        a = b = theta = hlr = np.zeros(0)
        flux_model = np.zeros((0, nb))
    return {
        "id": np.arange(n, dtype=np.int64),
        "x": xy[:, 0].astype(np.float64),
        "y": xy[:, 1].astype(np.float64),
        "flux": flux,
        "flux_model": flux_model,
        "mag": mag,
        "hlr": hlr,
        "a": a,
        "b": b,
        "theta": theta,
        "snr": snr[:, ref].copy(),
        "snr_bands": snr,
    }


def _mosaic_wcs(shape, pixel_scale: float, ra: float, dec: float):
    from astropy.wcs import WCS

    h, w = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]  # 1-based: the image centre
    wcs.wcs.cdelt = [-pixel_scale / 3600.0, pixel_scale / 3600.0]  # east to the left
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.radesys = "ICRS"
    return wcs


def write_mosaic(directory, mosaic: Mosaic, survey: Survey, *, ra: float = 150.0,
                 dec: float = 2.0) -> dict[str, Path]:  # fmt: skip
    """Write a mosaic as FITS images and an ECSV truth table, atomically.

    Files in ``directory`` (created if missing):

    * ``image.fits``: the image, 2-D ``(h, w)`` for one band, else a cube
      ``(bands, h, w)``, with a TAN WCS centred on ``(ra, dec)`` at
      ``survey.pixel_scale`` (north up, east left), ``BUNIT = 'adu'`` (the
      simulator's flux units), ``MAGZERO`` and ``FILTER`` of band 0 (``MAGZPi`` and
      ``FILTERi`` per band when there are several), ``GAIN`` [counts / adu], ``SURVEY``;
    * ``variance.fits``: the variance, same layout and WCS, ``BUNIT = 'adu2'``;
    * ``psf.fits``: ``survey.pixel_psf()`` (unit sum), 2-D or ``(bands, ph, pw)``;
    * ``truth.ecsv``: one row per galaxy: ``id, x, y, ra, dec`` (pixels 0-based;
      degrees from the same WCS), per band ``flux_<band>``, ``flux_model_<band>``,
      ``mag_<band>``, ``snr_<band>``, and ``hlr`` [arcsec], ``a``, ``b`` [pixels],
      ``theta`` [rad], ``snr``; units in the column metadata, the survey in the meta.

    Args:
      directory: output folder.
      mosaic: :class:`Mosaic` from :func:`simulate_mosaic` with this ``survey``.
      survey: the :class:`Survey` it was made with.
      ra, dec: sky position of the image centre [degrees].

    Returns:
      ``{"image", "variance", "psf", "truth"}`` -> written paths.
    """
    from astropy.io import fits
    from astropy.table import Table

    from galjax.core.files import atomic_write, clean_stale_tmp

    if not isinstance(survey, Survey):
        raise TypeError(f"survey: expected a galjax.sim.Survey, got {type(survey).__name__}")
    if not isinstance(mosaic, Mosaic):
        raise TypeError(f"mosaic: expected a Mosaic, got {type(mosaic).__name__}")
    image = np.asarray(mosaic.image, np.float32)
    if image.ndim != 3 or image.shape[-1] != survey.n_bands:
        raise ValueError(
            f"mosaic: expected an image (h, w, {survey.n_bands}) for survey {survey.name!r}, "
            f"got shape {image.shape}"
        )
    variance = np.asarray(mosaic.variance, np.float32)
    if variance.shape != image.shape:
        raise ValueError(
            f"mosaic: variance shape {variance.shape} differs from image shape {image.shape}"
        )
    for name, v, lo, hi in (("ra", ra, -360.0, 360.0), ("dec", dec, -90.0, 90.0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not lo <= v <= hi:
            raise ValueError(f"{name}: expected degrees in [{lo:g}, {hi:g}], got {v!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)  # temporary files of a killed earlier writer

    h, w, nb = image.shape
    wcs = _mosaic_wcs((h, w), survey.pixel_scale, float(ra), float(dec))
    header = fits.Header()
    header.update(wcs.to_header())
    header["SURVEY"] = survey.name
    header["PIXSCALE"] = (survey.pixel_scale, "arcsec / pixel")
    header["FILTER"] = survey.bands[0]
    header["MAGZERO"] = (survey.zeropoint[0], "AB mag of a total of 1 adu")
    if nb > 1:
        header["BANDS"] = ",".join(survey.bands)
        for i, (band, zp) in enumerate(zip(survey.bands, survey.zeropoint, strict=True)):
            header[f"FILTER{i + 1}"] = band
            header[f"MAGZP{i + 1}"] = (zp, f"AB zeropoint of plane {i + 1}")
    if survey.gain is not None:
        header["GAIN"] = (survey.gain, "counts / adu (Poisson term)")
    header["ORIGIN"] = "galjax simulate_mosaic"
    to_fits = lambda a: np.ascontiguousarray(
        a[..., 0] if a.shape[-1] == 1 else np.moveaxis(a, -1, 0)
    )

    def write_image(path, data, unit):
        hdr = header.copy()
        hdr["BUNIT"] = unit
        hdu = fits.PrimaryHDU(to_fits(data), header=hdr)
        return atomic_write(path, lambda tmp: hdu.writeto(tmp, overwrite=True))

    paths = {
        "image": write_image(out / "image.fits", image, "adu"),
        "variance": write_image(out / "variance.fits", variance, "adu2"),
    }
    psf_hdr = fits.Header()
    psf_hdr["SURVEY"] = survey.name
    psf_hdr["PIXSCALE"] = (survey.pixel_scale, "arcsec / pixel")
    psf_hdr["BANDS"] = ",".join(survey.bands)
    psf_hdu = fits.PrimaryHDU(to_fits(np.asarray(survey.pixel_psf(), np.float32)), psf_hdr)
    paths["psf"] = atomic_write(out / "psf.fits", lambda t: psf_hdu.writeto(t, overwrite=True))

    t = mosaic.truth
    sky_ra, sky_dec = wcs.pixel_to_world_values(np.asarray(t["x"]), np.asarray(t["y"]))
    table = Table()
    table["id"] = np.asarray(t["id"])
    table["x"] = np.asarray(t["x"])
    table["y"] = np.asarray(t["y"])
    table["ra"] = np.asarray(sky_ra, np.float64)
    table["dec"] = np.asarray(sky_dec, np.float64)
    units = {"x": "pix", "y": "pix", "ra": "deg", "dec": "deg"}
    for i, band in enumerate(survey.bands):
        for col, unit in (("flux", "adu"), ("flux_model", "adu"), ("mag", "mag"), ("snr", "")):
            name = f"{col}_{band}"
            table[name] = np.asarray(t["snr_bands" if col == "snr" else col])[:, i]
            units[name] = unit
    for col, unit in (("hlr", "arcsec"), ("a", "pix"), ("b", "pix"), ("theta", "rad")):
        table[col] = np.asarray(t[col])
        units[col] = unit
    table["snr"] = np.asarray(t["snr"])
    for col, unit in units.items():
        if unit:
            table[col].unit = unit
    table.meta.update(
        {
            "survey": survey.to_dict(),
            "shape": [h, w],
            "centre_radec_deg": [float(ra), float(dec)],
            "conventions": "x, y: 0-based pixels, x = column; flux: inside the image, "
            "noiseless; mag: AB of flux with the survey zeropoint; flux_model: model total; "
            "hlr: disk half-light radius; a, b, theta: half-light ellipse; snr: isolated "
            f"matched-filter SNR in band {survey.bands[_ref_band(survey)]!r}",
        }
    )
    paths["truth"] = atomic_write(
        out / "truth.ecsv", lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True)
    )
    return paths
