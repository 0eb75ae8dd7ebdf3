"""Source detection: matched filtering, peak finding, matching to a reference catalogue.

- :mod:`galjax.detect.filtering`: the PSF-matched filter as a detection SNR map
  (:func:`matched_filter`; :func:`matched_filter_fourier` for coloured noise) and the
  merge of bands (:func:`combine_snr`).
- :mod:`galjax.detect.peaks`: peaks above a threshold with non-maximum suppression
  (:func:`find_peaks`) and the whole pipeline :func:`detect`.
- :mod:`galjax.detect.match`: one-to-one matching of two position lists
  (:func:`match_positions`: completeness and purity).
- :mod:`galjax.detect.sources`: survey images with sep (SExtractor's algorithms):
  background maps (:func:`sky_background`), thresholding with deblending and a
  segmentation map (:func:`detect_sources`), blends of touching footprints
  (:func:`group_blends`) and the boxes that cut them out (:func:`blend_boxes`).
- :mod:`galjax.detect.masks`: per-pixel contaminant masks of real images (tiled
  inference of :class:`galjax.models.masknet.MaskNet`, :func:`predict_mask`; bit masks,
  :func:`mask_bits`).

The sky background is estimated by :func:`galjax.image.background.estimate_background`
(``method="mesh"``: SExtractor's) and passed to :func:`detect`. Positions are
``(x, y)`` = (column, row) in 0-based pixels with pixel centres at integers.
"""

from galjax.detect import filtering, masks, match, peaks, sources
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
from galjax.detect.sources import (
    DEFAULT_KERNEL,
    FILTER_TYPES,
    DetectedSources,
    blend_boxes,
    detect_sources,
    group_blends,
    sky_background,
)

__all__ = [
    "filtering",
    "masks",
    "match",
    "peaks",
    "sources",
    "COMBINE_METHODS",
    "DEFAULT_KERNEL",
    "FILTER_TYPES",
    "DetectedSources",
    "Detections",
    "Matches",
    "Peaks",
    "blend_boxes",
    "combine_snr",
    "detect",
    "detect_sources",
    "find_peaks",
    "group_blends",
    "mask_bits",
    "predict_mask",
    "match_positions",
    "matched_filter",
    "matched_filter_fourier",
    "noise_power_spectrum",
    "sky_background",
]
