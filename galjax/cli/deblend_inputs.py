"""The inputs of ``galjax deblend``, read and checked before anything is written: the
model (a folder or a shipped name), the fields, the noise, the PSF and the positions.

Every error is a ``ValueError`` (or ``FileNotFoundError``) whose message starts with
the option it is about (``--sigma: ...``), reported by :mod:`galjax.cli.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = [
    "resolve_model_dir",
    "load_deblend_model",
    "read_positions",
    "read_noise",
    "read_psf",
    "read_input",
]


def _shipped_models() -> list[str]:
    from galjax.models import default_model_dir

    root = default_model_dir("lsst_r").parent
    return sorted(p.name for p in root.iterdir() if (p / "vae.msgpack").is_file())


def resolve_model_dir(name: str | None) -> Path:
    """``--model``: a model folder, or the name of a model shipped with galjax (``lsst_r``)."""
    from galjax.models import default_model_dir

    if name is None:
        return default_model_dir("lsst_r")
    path = Path(name)
    if path.exists():
        return path
    shipped = _shipped_models()
    if name in shipped:
        return default_model_dir(name)
    raise FileNotFoundError(
        f"--model: no model folder {name!r}, and galjax ships no model of that name "
        f"(shipped: {', '.join(shipped)})"
    )


def load_deblend_model(name: str | None):
    """``(model, folder)`` for ``--model``; errors name ``--model``."""
    from galjax.models import load_model

    folder = resolve_model_dir(name)
    try:
        return load_model(folder), folder
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--model: {str(err).removeprefix('model: ')}") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"--model: {str(err).removeprefix('model: ')}") from err


def read_input(option: str, reader, path):
    """``reader(path)`` with its errors (missing file, not FITS, ...) naming ``option``."""
    try:
        return reader(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{option}: {str(err).removeprefix('path: ')}") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{option}: {path}: {err}") from err


def _numeric(t, col: str, path) -> np.ndarray:
    """Column ``col`` of table ``t`` as float64 (masked entries NaN); text is refused."""
    c = t[col]
    if c.dtype.kind not in "biuf":
        example = next((v for v in np.asarray(c).ravel() if _not_number(v)), c[0] if len(c) else "")
        raise ValueError(
            f"--positions: column {col!r} of {path} holds text, not numbers (e.g. {str(example)!r})"
        )
    return np.ma.filled(np.ma.asarray(c, dtype=float), np.nan)


def _not_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return True
    return False


def read_positions(path, n_fields: int, max_sources: int):
    """Positions table (ECSV/FITS: columns x, y, optionally field and point) -> padded
    ``(positions, mask, point)`` (``point`` None without the column).

    Refused: a missing x or y column, text in a numeric column, NaN or infinite
    positions, field indices that are not whole numbers or out of range, more
    sources in a field than ``max_sources``.
    """
    from galjax.io import read_table

    t = read_input("--positions", read_table, path)
    for col in ("x", "y"):
        if col not in t.colnames:
            raise ValueError(f"--positions: table {path} has no column {col!r}")
    xs, ys = _numeric(t, "x", path), _numeric(t, "y", path)
    for col, v in (("x", xs), ("y", ys)):
        if not np.all(np.isfinite(v)):
            bad = int(np.flatnonzero(~np.isfinite(v))[0])
            raise ValueError(
                f"--positions: column {col!r} of {path} has a non-finite value (row {bad}: "
                f"{v[bad]})"
            )
    if "field" in t.colnames:
        fv = _numeric(t, "field", path)
        whole = np.isfinite(fv) & (fv == np.round(fv))
        if not np.all(whole):
            bad = int(np.flatnonzero(~whole)[0])
            raise ValueError(
                f"--positions: column 'field' of {path} must hold whole field indices, got "
                f"{fv[bad]} (row {bad})"
            )
        field = fv.astype(np.int64)
    else:
        field = np.zeros(len(t), np.int64)
    if len(t) and (field.min() < 0 or field.max() >= n_fields):
        raise ValueError(
            f"--positions: column 'field' of {path}: indices must be in [0, {n_fields - 1}] "
            f"for {n_fields} field(s), got [{field.min()}, {field.max()}]"
        )
    if "point" in t.colnames:
        pt = t["point"]
        values = np.ma.filled(np.ma.asarray(pt), 0) if pt.dtype.kind in "biu" else None
        if values is None or not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"--positions: column 'point' of {path} must be boolean (or 0/1)")
        is_point = values.astype(bool)
    else:
        is_point = np.zeros(len(t), bool)
    counts = np.bincount(field, minlength=n_fields)
    n_max = max(int(counts.max()) if len(t) else 1, 1)
    if n_max > max_sources:
        raise ValueError(
            f"--positions: a field has {n_max} sources, more than --max-sources={max_sources}"
        )
    pos = np.zeros((n_fields, n_max, 2), np.float32)
    mask = np.zeros((n_fields, n_max), bool)
    point = np.zeros((n_fields, n_max), bool)
    slot = np.zeros(n_fields, int)
    for f, x, y, p in zip(field, xs, ys, is_point, strict=True):
        pos[f, slot[f]] = (x, y)
        mask[f, slot[f]] = True
        point[f, slot[f]] = p
        slot[f] += 1
    return pos, mask, (point if "point" in t.colnames else None)


def read_noise(fields, variance_path, sigma):
    """``ivar`` (float64, 0 = masked pixel) from ``--variance`` or ``--sigma``.

    Pixels whose variance is not positive and finite are masked (a note on stderr
    says how many); a map without one usable pixel is refused. The inverse variance
    is formed in float64, so tiny noise levels (``--sigma 1e-30``) do not overflow.
    """
    if variance_path:
        from galjax.io import read_fits_stack

        var = np.asarray(read_input("--variance", read_fits_stack, variance_path).data, np.float64)
        if var.shape != fields.shape:
            raise ValueError(f"--variance: shape {var.shape} differs from fields {fields.shape}")
        good = np.isfinite(var) & (var > 0)
        if not good.any():
            raise ValueError("--variance: no pixel has a positive finite variance")
        n_bad = int(np.sum(~good))
        if n_bad:
            print(
                f"galjax deblend: warning: --variance: {n_bad} pixel(s) with a variance <= 0 or "
                "not finite are masked",
                file=sys.stderr,
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    if sigma is None:
        raise ValueError("--sigma/--variance: give the noise (std or a variance FITS)")
    if not (np.isfinite(sigma) and sigma > 0):  # argparse checks it too
        raise ValueError(f"--sigma: expected a finite noise std > 0, got {sigma}")
    return np.full(fields.shape, np.float64(sigma) ** -2)


def read_psf(path, bands: int):
    """``--psf`` as ``(ph, pw, bands)``: odd sizes, finite, positive sum, centred."""
    from galjax.core.checks import check_odd_psf, check_psf_centred
    from galjax.io import read_fits

    psf = np.asarray(read_input("--psf", read_fits, path).data, np.float32)
    if psf.shape[-1] not in (1, bands):
        raise ValueError(
            f"--psf: {path} has {psf.shape[-1]} band(s), the fields {bands}: expected 1 or {bands}"
        )
    psf = np.asarray(check_odd_psf("--psf", psf))
    check_psf_centred("--psf", psf)
    return psf
