"""The deblender's boundary: input checks, pixel masking and noise normalisation.

:func:`prepare_inputs` turns what a caller gives :func:`~galjax.deblend.deblend`
into the arrays the compiled solve takes, on the host (numpy, float64 while it
computes). Bad arguments raise a ``ValueError``/``TypeError`` whose message starts
with the argument's name; bad pixels are masked (weight 0) with a
``RuntimeWarning``:

- non-finite field pixels, and absurd ones with ``|y_p| sqrt(w_p) > 1e8``
  (:data:`ABSURD`: a value no noise explains, e.g. a saturated or corrupted pixel);
- ``sigma = +inf`` is a masked pixel (weight 0), like ``ivar = 0``; ``sigma`` NaN,
  ``-inf`` or ``<= 0`` and ``ivar`` NaN, infinite or negative are refused.

The solve then runs in noise units: per field ``i`` and band ``b``

    s_ib = ref_b / median_{p : w_p > 0} sigma_p,        y' = s y,   w' = w / s^2,

``ref_b`` the model's survey sky sigma (``model.meta["survey"]["sky_sigma"]``, else 1)
and ``sigma_p = w_p^(-1/2)``: the decoder and encoder see the signal-to-noise they
were trained on whatever the data's units, and results are invariant (to float32
rounding) when fields and sigma are scaled together. :func:`noise_scales` computes
``s``; :func:`~galjax.deblend.laplace_flux_errors` uses the same.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from galjax.core.checks import check_odd_psf, check_psf_centred
from galjax.models.store import GalaxyModel

__all__ = [
    "prepare_psf",
    "half_maximum_width",
    "model_psf",
    "ABSURD",
    "DeblendInputs",
    "prepare_inputs",
    "check_psfs",
    "check_noise",
    "noise_scales",
    "reference_sigma",
    "as_numeric",
]

#: ``|y| sqrt(w)`` above which a pixel is masked as absurd (a 1e8-sigma value).
ABSURD = 1e8

_BLOCK = 256  # fields converted at a time: bounds the float64 copies


class DeblendInputs(NamedTuple):
    """The checked inputs of :func:`~galjax.deblend.deblend` (numpy).

    Attributes:
      fields: ``(n, h, w, bands)`` float32 fields in noise units (``s y``), masked
        pixels 0.
      ivar: ``(n, h, w, bands)`` float32 inverse variance in noise units (``w / s^2``).
      positions: ``(n, n_max, 2)`` float32 ``(x, y)``; masked slots at the centre.
      mask: ``(n, n_max)`` bool real sources.
      psf: ``(ph, pw, bands)`` or ``(n, ph, pw, bands)`` float32 unit-sum PSF, or None.
      scale: ``(n, bands)`` float64 ``s`` (module docstring).
      clean: ``(n, h, w, bands)`` float32 fields in the caller's units, masked pixels 0.
      masked: ``(n,)`` bool, fields with pixels masked as non-finite or absurd.
    """

    fields: np.ndarray
    ivar: np.ndarray
    positions: np.ndarray
    mask: np.ndarray
    psf: np.ndarray | None
    scale: np.ndarray
    clean: np.ndarray
    masked: np.ndarray


def as_numeric(name: str, x) -> np.ndarray:
    """``x`` as a real numeric numpy array (its own dtype), refusing anything else.

    >>> as_numeric("sigma", "1.0")
    Traceback (most recent call last):
    ...
    TypeError: sigma: expected a numeric array, got str
    """
    if x is None or isinstance(x, str | bytes):
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}")
    try:
        a = np.asarray(x)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(f"{name}: expected a rectangular numeric array ({err})") from err
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or
                               np.issubdtype(a.dtype, np.integer)):  # fmt: skip
        raise TypeError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    return a


def reference_sigma(model: GalaxyModel, bands: int) -> np.ndarray:
    """``(bands,)`` float64 noise sigma the model was trained at (its survey's sky sigma
    per band, ``model.meta["survey"]["sky_sigma"]``), or ones."""
    ref = ((model.meta or {}).get("survey") or {}).get("sky_sigma")
    try:
        ref = np.asarray(ref, np.float64).reshape(-1)
    except (TypeError, ValueError):
        ref = None
    if ref is None or ref.shape != (bands,) or not np.all(np.isfinite(ref) & (ref > 0)):
        return np.ones(bands)
    return ref


def noise_scales(ivar, ref) -> np.ndarray:
    """``s = ref_b / median(sigma over usable pixels)`` per field and band: ``(n, bands)``.

    Args:
      ivar: ``(n, h, w, bands)`` inverse variance (0: unusable), converted to float64.
      ref: ``(bands,)`` reference sigma (:func:`reference_sigma`).

    Returns:
      float64 ``s``; 1 for a band of a field without a usable pixel.

    >>> noise_scales(np.full((1, 2, 2, 1), 0.25), np.ones(1)).tolist()
    [[0.5]]
    """
    iv = np.asarray(ivar, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no usable pixel
        med = np.nanmedian(np.where(iv > 0, 1.0 / np.sqrt(iv), np.nan), axis=(1, 2))
        s = np.asarray(ref, np.float64)[None] / med
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def check_noise(sigma, ivar, shape) -> tuple[str, np.ndarray]:
    """Check ``sigma`` or ``ivar`` (exactly one) against the fields' ``shape``.

    Returns ``(name, array)``: the given argument's name and its numpy array (not yet
    broadcast, own dtype). Values are checked block by block in :func:`prepare_inputs`.
    """
    if (sigma is None) == (ivar is None):
        raise ValueError("sigma/ivar: give exactly one of the noise std or inverse variance")
    name, x = ("sigma", sigma) if sigma is not None else ("ivar", ivar)
    a = as_numeric(name, x)
    try:
        np.broadcast_shapes(a.shape, shape)
    except ValueError as err:
        raise ValueError(
            f"{name}: expected a shape broadcastable to the fields' {tuple(shape)}, got {a.shape}"
        ) from err
    if np.broadcast_shapes(a.shape, shape) != tuple(shape):
        raise ValueError(
            f"{name}: expected a shape broadcastable to the fields' {tuple(shape)}, got {a.shape}"
        )
    return name, a


def _weights(name: str, a) -> np.ndarray:
    """float64 inverse variance from a block of ``sigma`` or ``ivar``, values checked."""
    a = np.asarray(a, np.float64)
    if name == "sigma":
        bad = np.isnan(a) | (a <= 0)
        want = "values > 0 (+inf for a masked pixel)"
    else:
        bad = ~np.isfinite(a) | (a < 0)
        want = "finite values >= 0 (0 for a masked pixel)"
    if np.any(bad):
        first = a[bad].flat[0]
        raise ValueError(f"{name}: expected {want}, got {first:g} ({int(bad.sum())} entries)")
    if name == "ivar":
        return a
    with np.errstate(over="ignore", divide="ignore"):
        return np.where(np.isinf(a), 0.0, 1.0 / a**2)


def check_psfs(psf, n: int, bands: int, name: str = "psf"):
    """One PSF ``(ph, pw, bands)`` for all fields or one per field ``(n, ph, pw, bands)``:
    finite, positive sum per band, odd sizes, centroid within 1 pixel of the central
    pixel; returned normalised to unit sum (float32 numpy). ``name`` names the
    argument in messages."""
    arr = as_numeric(name, psf)
    if arr.ndim == 4:
        if arr.shape[0] != n:
            raise ValueError(
                f"{name}: expected {n} per-field PSFs on axis 0, got shape {arr.shape}"
            )
        return np.stack([_one_psf(f"{name}[{i}]", p, bands) for i, p in enumerate(arr)])
    if arr.ndim != 3:
        raise ValueError(
            f"{name}: expected (ph, pw, bands) or (n_fields, ph, pw, bands), got shape {arr.shape}"
        )
    return _one_psf(name, arr, bands)


def _one_psf(name: str, p, bands: int) -> np.ndarray:
    out = np.asarray(check_odd_psf(name, np.asarray(p, np.float32), bands=bands), np.float32)
    check_psf_centred(name, out)
    return out


def _mask(mask, n: int, n_max: int) -> np.ndarray:
    if mask is None:
        return np.ones((n, n_max), bool)
    m = np.asarray(mask)
    if m.shape != (n, n_max):
        raise ValueError(f"mask: expected shape {(n, n_max)}, got {m.shape}")
    if m.dtype != bool:
        m = as_numeric("mask", m)
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("mask: expected True/False (or 0/1) per source, got other values")
    return m.astype(bool)


def prepare_inputs(model: GalaxyModel, fields, positions, mask, sigma, ivar, psf,
                   max_sources: int | None) -> DeblendInputs:  # fmt: skip
    """Boundary checks of :func:`~galjax.deblend.deblend` and conversion to noise units.

    Args: as for :func:`~galjax.deblend.deblend`.

    Returns:
      :class:`DeblendInputs`.
    """
    vcfg = model.vae_config
    f_in = as_numeric("fields", fields)
    if f_in.ndim != 4:
        raise ValueError(
            f"fields: expected (n_fields, h, w, bands) with 4 dimensions, got shape {f_in.shape}"
            + ("; add a leading field axis with fields[None]" if f_in.ndim == 3 else "")
        )
    n, h, w, b = f_in.shape
    if n == 0:
        raise ValueError(f"fields: expected at least one field, got shape {f_in.shape}")
    if h == 0 or w == 0:
        raise ValueError(f"fields: fields are empty, shape {f_in.shape}")
    if b != vcfg.bands:
        raise ValueError(f"fields: expected {vcfg.bands} band(s) on the last axis, got {b}")
    positions = np.asarray(as_numeric("positions", positions), np.float32)
    if positions.ndim == 2 and n == 1:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[0] != n or positions.shape[-1] != 2:
        raise ValueError(
            f"positions: expected (n_fields={n}, n_max, 2) (x, y) pixels, got {positions.shape}"
        )
    n_max = positions.shape[1]
    if max_sources is not None and n_max > max_sources:
        raise ValueError(f"positions: {n_max} sources per field exceed max_sources={max_sources}")
    mask = _mask(mask, n, n_max)
    if not np.all(np.isfinite(positions[mask])):
        raise ValueError("positions: non-finite positions for unmasked sources")
    px, py = positions[..., 0][mask], positions[..., 1][mask]
    if np.any((px < -0.5) | (px > w - 0.5) | (py < -0.5) | (py > h - 0.5)):
        raise ValueError(
            f"positions: sources outside the field (x in [-0.5, {w - 0.5}], y in "
            f"[-0.5, {h - 0.5}] required); got x in [{px.min():.1f}, {px.max():.1f}], "
            f"y in [{py.min():.1f}, {py.max():.1f}]"
        )
    positions = np.where(mask[..., None], positions, (w - 1) / 2.0).astype(np.float32)
    noise_name, noise = check_noise(sigma, ivar, f_in.shape)
    psf = _model_psf(vcfg, psf, n, b)
    ref = reference_sigma(model, b)
    out = np.empty((n, h, w, b), np.float32)
    out_iv, clean = np.empty_like(out), np.empty_like(out)
    scale, masked = np.ones((n, b)), np.zeros(n, bool)
    n_nonfinite = n_absurd = 0
    for start in range(0, n, _BLOCK):
        sl = slice(start, min(start + _BLOCK, n))
        f = np.asarray(f_in[sl], np.float64)
        iv = _weights(noise_name, np.broadcast_to(noise, f_in.shape)[sl])
        finite = np.isfinite(f)
        with np.errstate(invalid="ignore", over="ignore"):
            absurd = finite & (np.abs(np.where(finite, f, 0.0)) * np.sqrt(iv) > ABSURD)
        bad = ~finite | absurd
        n_nonfinite += int((~finite).sum())
        n_absurd += int(absurd.sum())
        masked[sl] = bad.any(axis=(1, 2, 3))
        f, iv = np.where(bad, 0.0, f), np.where(bad, 0.0, iv)
        s = noise_scales(iv, ref)  # (m, b)
        clean[sl] = f
        out[sl] = f * s[:, None, None, :]
        out_iv[sl] = iv / (s**2)[:, None, None, :]
        scale[sl] = s
    if n_nonfinite:
        warnings.warn(f"fields: {n_nonfinite} non-finite pixel(s) were masked (weight 0)",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
    if n_absurd:
        warnings.warn(
            f"fields: {n_absurd} pixel(s) with |value| sqrt(ivar) > {ABSURD:g} were masked "
            f"(weight 0) in {int(masked.sum())} field(s)",
            RuntimeWarning,
            stacklevel=3,
        )
    return DeblendInputs(out, out_iv, positions, mask, psf, scale, clean, masked)


def _model_psf(vcfg, psf, n: int, b: int):
    """The PSF an explicit-PSF model needs (checked); None for a built-in-PSF model."""
    if vcfg.psf_explicit:
        if psf is None:
            raise ValueError("psf: this model draws galaxies before the PSF; give the field PSF")
        return check_psfs(psf, n, b)
    if psf is not None:
        warnings.warn("psf: ignored, the model's PSF is built in", stacklevel=4)
    return None


def prepare_psf(model: GalaxyModel, psf, bands: int):
    """The PSF as ``(ph, pw, bands)`` float32 with unit sum per band, or None.

    Required (and checked: odd, centred) for explicit-PSF models; for models with
    the PSF baked in, a PSF whose half-maximum width differs from the model's
    training PSF by more than 20 % gives a ``UserWarning``.
    """
    from galjax.core.checks import check_odd_psf, check_psf_centred

    explicit = model.vae_config.psf_explicit
    if psf is None:
        if explicit:
            raise ValueError("psf: this model draws sources before the PSF; give the image's PSF")
        return None
    p = np.asarray(psf, np.float32)
    if p.ndim == 2:
        p = p[..., None]
    if p.ndim != 3 or p.shape[-1] not in (1, bands):
        raise ValueError(f"psf: expected (ph, pw) or (ph, pw, {bands}), got shape {p.shape}")
    p = np.asarray(check_odd_psf("psf", p))
    check_psf_centred("psf", p)
    p = np.broadcast_to(p, p.shape[:2] + (bands,)).astype(np.float32)
    p = p / p.sum(axis=(0, 1), keepdims=True)
    if not explicit:
        _check_baked_psf(model, p)
        return None
    return p


def half_maximum_width(p) -> float:
    """Half-maximum width of a 2-D PSF in pixels: ``2 sqrt(A / pi)``, ``A`` the area
    (pixels) at or above half the peak; the FWHM of a well-sampled round PSF. Host
    numpy (a data-dependent count: not for ``jit``).

    >>> from galjax.sim.psf import gaussian_psf
    >>> round(half_maximum_width(np.asarray(gaussian_psf(6.0, size=41))[..., 0]), 1)
    6.1
    """
    return float(2.0 * np.sqrt(np.count_nonzero(p >= 0.5 * p.max()) / np.pi))


def model_psf(model: GalaxyModel):
    """The PSF a model was trained with, ``(ph, pw, bands)`` at pixel sampling, from its
    survey (``model.meta["survey"]``); None for a model without one."""
    survey = (model.meta or {}).get("survey")
    if not survey:
        return None
    from galjax.sim.survey import Survey

    ref = np.asarray(Survey.from_dict(survey).pixel_psf())
    return ref[..., None] if ref.ndim == 2 else ref


def _check_baked_psf(model: GalaxyModel, p) -> None:
    ref = model_psf(model)
    if ref is None:
        return
    for b in range(p.shape[-1]):
        w_user = half_maximum_width(p[..., b])
        w_ref = half_maximum_width(ref[..., min(b, ref.shape[-1] - 1)])
        if abs(w_user / w_ref - 1.0) > 0.2:
            warnings.warn(
                f"psf: band {b} has a half-maximum width of {w_user:.2f} px, the model was "
                f"trained with {w_ref:.2f} px (its PSF is baked in); use an explicit-PSF model "
                "or resample the image",
                UserWarning,
                stacklevel=3,
            )
