"""Input complexity of images (Serra et al. 2020): compressed length and the complexity score.

Serra et al.'s score corrects a generative model's likelihood for the complexity of
the input, ``S(x) = -log2 p(x) - L(x)``, with ``L`` the length in bits of the
losslessly compressed quantised image. Host numpy, outside ``jit``.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

import numpy as np

from galjax.core.checks import check_image

__all__ = ["COMPRESSORS", "compressed_bits", "complexity_score"]

#: Lossless compressors of :func:`compressed_bits`: ``bytes -> bytes``.
COMPRESSORS = {
    "zlib": lambda b: zlib.compress(b, 9),
    "bz2": lambda b: bz2.compress(b, 9),
    "lzma": lambda b: lzma.compress(b, preset=9),
}


def compressed_bits(
    images, lo: float = -1.0, hi: float = 1.0, n_bits: int = 8, compressor: str = "zlib"
):
    """Compressed length ``L(x)`` in bits of each quantised image (Serra et al. 2020).

    Each image is quantised to ``n_bits`` (``n_bits <= 8``: one byte per value,
    rows in raster order, bands interleaved) on ``[lo, hi]`` and compressed with a
    standard-library lossless compressor. Runs on the host (not jit-able:
    compression is sequential byte-level code).

    Args:
      images: ``(n, h, w, bands)``.
      lo, hi: value range mapped to the quantisation levels (values are clipped).
      n_bits: bits per value, 1 to 8.
      compressor: ``"zlib"`` (deflate, as in PNG), ``"bz2"`` or ``"lzma"``.

    Returns:
      ``(n,)`` float64 numpy array of compressed lengths in bits.

    >>> import numpy as np
    >>> noise = np.random.default_rng(0).uniform(-1.0, 1.0, (1, 16, 16, 1))
    >>> flat = np.zeros((1, 16, 16, 1))
    >>> bits = compressed_bits(np.concatenate([flat, noise]))
    >>> bool(bits[0] < bits[1])  # noise does not compress
    True
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor: expected one of {sorted(COMPRESSORS)}, got {compressor!r}")
    if not (isinstance(n_bits, int) and 1 <= n_bits <= 8):
        raise ValueError(f"n_bits: expected an integer in [1, 8], got {n_bits!r}")
    x = check_image("images", images)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, h, w, bands), got shape {x.shape}")
    a = np.asarray(x, np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("images: expected finite values, found NaN/inf")
    if not hi > lo:
        raise ValueError(f"lo, hi: expected hi > lo, got lo={lo}, hi={hi}")
    q = np.round((np.clip(a, lo, hi) - lo) / (hi - lo) * (2**n_bits - 1)).astype(np.uint8)
    comp = COMPRESSORS[compressor]
    return np.array([8.0 * len(comp(img.tobytes())) for img in q])


def complexity_score(log_p, bits):
    """Serra et al.'s score ``S(x) = -log2 p(x) - L(x)`` in bits (larger = more anomalous).

    Args:
      log_p: ``(n,)`` model log-likelihoods in nats (:func:`~galjax.models.pixelcnn.log_prob`).
      bits: ``(n,)`` compressed lengths in bits (:func:`compressed_bits`).

    Returns:
      ``(n,)`` float64 numpy array in bits: the model's code length minus the
      compressor's.

    >>> complexity_score([-100.0 * 0.6931471805599453], [60.0]).tolist()
    [40.0]
    """
    lp = np.asarray(log_p, np.float64)
    b = np.asarray(bits, np.float64)
    if lp.shape != b.shape:
        raise ValueError(f"log_p, bits: expected equal shapes, got {lp.shape} and {b.shape}")
    return -lp / np.log(2.0) - b
