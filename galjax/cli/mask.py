"""``galjax mask IMAGE.fits --out MASK.fits``: contaminant bit mask of a FITS image.

Bit ``i`` of the output marks class ``i`` of :data:`galjax.sim.contaminants.MASK_CLASSES`
(cosmic_ray=1, hot=2, bad=4, trail=8, saturated=16); the header names the bits.
Non-finite pixels (NaN, inf) are not fed to the network (they are replaced by the
background level) and get the ``bad`` bit.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from galjax.cli.runtime import INPUT_ERRORS, positive_int, probability, report_error

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``mask`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "mask", help="per-pixel contaminant mask (cosmic rays, hot/bad pixels, trails, saturation)"
    )
    p.add_argument("image", help="input FITS image (single band, or pick one with --band)")
    p.add_argument("--out", required=True, help="output FITS bit mask (int16)")
    p.add_argument("--model", help="mask model directory (default: the packaged weights)")
    p.add_argument(
        "--threshold",
        type=probability,
        nargs="+",
        help="probability threshold, one value or one per class (default: the model's)",
    )
    p.add_argument("--band", type=int, default=0, help="band index of a multi-band image")
    p.add_argument("--hdu", type=int, help="HDU to read (default: first with image data)")
    p.add_argument("--tile", type=positive_int, default=256, help="tile size in pixels (inference)")
    p.add_argument("--probs", help="also write the per-class probabilities (cube) here")
    p.set_defaults(func=_mask)


def _mask(args) -> int:
    # Errors are reported here too (not only by galjax.cli.main), for direct calls.
    try:
        return _run(args)
    except INPUT_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        return report_error("mask", err)


def _run(args) -> int:
    from galjax.core.files import clean_stale_tmp
    from galjax.detect.masks import mask_bits, predict_mask
    from galjax.io import read_fits, write_fits, write_mask_fits
    from galjax.models.masknet import load_mask_model, receptive_radius
    from galjax.sim.contaminants import MASK_CLASSES

    t0 = time.perf_counter()
    try:
        model, params, cfg = load_mask_model(args.model)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model: {err}") from err
    margin = receptive_radius(model)
    if args.tile <= 2 * margin:
        raise ValueError(
            f"--tile: expected more than 2 * {margin} = {2 * margin} pixels (twice the mask "
            f"network's receptive radius), got {args.tile}"
        )
    n = model.n_classes
    thr = args.threshold if args.threshold is not None else cfg.get("thresholds") or [0.5]
    if len(thr) not in (1, n):
        raise ValueError(f"--threshold: expected 1 or {n} values, got {len(thr)}")
    thr = np.broadcast_to(np.asarray(thr, np.float32), (n,))
    with warnings.catch_warnings():
        # non-standard header cards (e.g. ESO "ESO-LOG") are harmless here
        warnings.filterwarnings("ignore", message="The following header keyword is invalid")
        img = read_fits(args.image, args.hdu)
    data = np.asarray(img.data, np.float32)
    if not -data.shape[-1] <= args.band < data.shape[-1]:
        raise ValueError(f"--band: {args.band} out of range for {data.shape[-1]} band(s)")
    data = data[..., args.band : args.band + 1 if args.band != -1 else None]
    finite = np.isfinite(data[..., 0])
    if not finite.any():
        raise ValueError(f"image: {args.image} has no finite pixel in band {args.band}")
    # any image size: shrink the tile to the image (it must exceed 2 * margin)
    tile = min(args.tile, *data.shape[:2])
    if tile <= 2 * margin:
        raise ValueError(
            f"image: {data.shape[0]}x{data.shape[1]} is too small for the mask network "
            f"(needs more than {2 * margin} pixels per side)"
        )
    # Non-finite pixels: the network sees the median instead, and they get the "bad" bit.
    clean = np.where(finite[..., None], data, np.median(data[..., 0][finite]))
    probs = predict_mask(model, params, clean, tile=tile)
    bits = np.asarray(mask_bits(probs, thr))
    names = list(MASK_CLASSES if cfg.get("classes") is None else cfg["classes"])
    n_nonfinite = int(np.sum(~finite))
    if n_nonfinite:
        if "bad" not in names:
            raise ValueError(f"--model: the mask model has no 'bad' class to flag "
                             f"{n_nonfinite} non-finite pixel(s)")  # fmt: skip
        bits = np.where(finite, bits, bits | (1 << names.index("bad"))).astype(bits.dtype)
    header = img.wcs.to_header() if img.wcs is not None else None
    clean_stale_tmp(Path(args.out).parent)  # temporary files of a killed earlier run
    write_mask_fits(args.out, bits, names, thr, header)
    if args.probs:
        write_fits(args.probs, probs)
    counts = {c: int(np.sum(bits & (1 << i) > 0)) for i, c in enumerate(names)}
    print(
        f"galjax mask: {bits.shape[0]}x{bits.shape[1]} pixels in "
        f"{time.perf_counter() - t0:.1f}s -> {args.out}; flagged pixels {counts}"
        + (f" ({n_nonfinite} non-finite, flagged bad)" if n_nonfinite else "")
    )
    return 0
