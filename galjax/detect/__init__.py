"""Source detection: matched filtering, peak finding, matching to a reference catalogue.

- :mod:`galjax.detect.filtering`: the PSF-matched filter as a detection SNR map
  (:func:`matched_filter`; :func:`matched_filter_fourier` for coloured noise) and the
  merge of bands (:func:`combine_snr`).
- :mod:`galjax.detect.peaks`: peaks above a threshold with non-maximum suppression
  (:func:`find_peaks`) and the whole pipeline :func:`detect`.
- :mod:`galjax.detect.match`: one-to-one matching of two position lists
  (:func:`match_positions`: completeness and purity).
- :mod:`galjax.detect.masks`: per-pixel contaminant masks of real images (tiled
  inference of :class:`galjax.models.masknet.MaskNet`, :func:`predict_mask`; bit masks,
  :func:`mask_bits`).

The sky background is estimated by :func:`galjax.image.background.estimate_background`
(``method="mesh"``: SExtractor's) and passed to :func:`detect`. Positions are
``(x, y)`` = (column, row) in 0-based pixels with pixel centres at integers.
"""

from galjax.detect import filtering, masks, match, peaks
from galjax.detect.filtering import (
    COMBINE_METHODS,
    combine_snr,
    matched_filter,
    matched_filter_fourier,
    noise_power_spectrum,
)
from galjax.detect.masks import mask_bits, predict_mask
from galjax.detect.match import Matches, match_positions
from galjax.detect.peaks import Detections, Peaks, detect, find_peaks

__all__ = [
    "filtering",
    "masks",
    "match",
    "peaks",
    "COMBINE_METHODS",
    "Detections",
    "Matches",
    "Peaks",
    "combine_snr",
    "detect",
    "find_peaks",
    "mask_bits",
    "predict_mask",
    "match_positions",
    "matched_filter",
    "matched_filter_fourier",
    "noise_power_spectrum",
]
