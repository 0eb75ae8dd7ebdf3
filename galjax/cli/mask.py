"""``galjax mask IMAGE.fits --out MASK.fits``: contaminant bit mask of a FITS image.

Bit ``i`` of the output marks class ``i`` of :data:`galjax.sim.contaminants.MASK_CLASSES`
(cosmic_ray=1, hot=2, bad=4, trail=8, saturated=16); the header names the bits.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

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
        type=float,
        nargs="+",
        help="probability threshold, one value or one per class (default: the model's)",
    )
    p.add_argument("--band", type=int, default=0, help="band index of a multi-band image")
    p.add_argument("--hdu", type=int, help="HDU to read (default: first with image data)")
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels (inference)")
    p.add_argument("--probs", help="also write the per-class probabilities (cube) here")
    p.set_defaults(func=_mask)


def _mask(args) -> int:
    from galjax.detect.masks import mask_bits, predict_mask
    from galjax.io import read_fits, write_fits, write_mask_fits
    from galjax.models.masknet import load_mask_model, receptive_radius
    from galjax.sim.contaminants import MASK_CLASSES

    t0 = time.perf_counter()
    try:
        model, params, cfg = load_mask_model(args.model)
        with warnings.catch_warnings():
            # non-standard header cards (e.g. ESO "ESO-LOG") are harmless here
            warnings.filterwarnings("ignore", message="The following header keyword is invalid")
            img = read_fits(args.image, args.hdu)
        data = np.asarray(img.data, np.float32)
        if not -data.shape[-1] <= args.band < data.shape[-1]:
            raise ValueError(f"--band: {args.band} out of range for {data.shape[-1]} band(s)")
        data = data[..., args.band : args.band + 1 if args.band != -1 else None]
        thr = args.threshold if args.threshold is not None else cfg.get("thresholds") or [0.5]
        n = model.n_classes
        if len(thr) not in (1, n):
            raise ValueError(f"--threshold: expected 1 or {n} values, got {len(thr)}")
        thr = np.broadcast_to(np.asarray(thr, np.float32), (n,))
        # any image size: shrink the tile to the image (it must exceed 2 * margin)
        margin = receptive_radius(model)
        tile = min(args.tile, *data.shape[:2])
        if tile <= 2 * margin:
            raise ValueError(
                f"image: {data.shape[0]}x{data.shape[1]} is too small for the mask network "
                f"(needs more than {2 * margin} pixels per side)"
            )
        probs = predict_mask(model, params, data, tile=tile)
        bits = np.asarray(mask_bits(probs, thr))
        header = img.wcs.to_header() if img.wcs is not None else None
        names = MASK_CLASSES if cfg.get("classes") is None else cfg["classes"]
        write_mask_fits(args.out, bits, names, thr, header)
        if args.probs:
            write_fits(args.probs, probs)
    except (OSError, ValueError, TypeError) as err:
        print(f"galjax mask: error: {err}", file=sys.stderr)
        return 2
    counts = {c: int(np.sum(bits & (1 << i) > 0)) for i, c in enumerate(cfg["classes"])}
    print(
        f"galjax mask: {bits.shape[0]}x{bits.shape[1]} pixels in "
        f"{time.perf_counter() - t0:.1f}s -> {args.out}; flagged pixels {counts}"
    )
    return 0
