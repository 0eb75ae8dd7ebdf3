"""galjax: a JAX functional research library for deep generative models of galaxy images.

Subpackages, from the bottom layer up (``docs/architecture.md``; a layer imports only
from layers below it):

- :mod:`galjax.core`: boundary checks, atomic files, the cache policy, the optax loop,
  chunked maps.
- :mod:`galjax.image`: array transforms and background estimation.
- :mod:`galjax.io`, :mod:`galjax.sim`: FITS/tables/data sets; the differentiable simulator.
- :mod:`galjax.scores`: metrics, calibration, PDFs, histograms, scores against the truth.
- :mod:`galjax.models`: VAE, flow prior, PixelCNN++, WGAN, classifiers, mask network.
- :mod:`galjax.train`: the training loop shared by every model, and the recipes.
- :mod:`galjax.fit`, :mod:`galjax.detect`: parametric fits; detection and masks.
- :mod:`galjax.deblend`, :mod:`galjax.ood`: MAP deblending; out-of-distribution scores.
- :mod:`galjax.experiments`: the radio-galaxy study.
- :mod:`galjax.plot`: figures; :mod:`galjax.cli`: the ``galjax`` command.

Subpackages above ``train`` load on first access (``galjax.deblend``), not on
``import galjax``. Images are float32 arrays shaped ``(..., height, width, bands)``;
positions are ``(x, y)`` pixels, 0-based, x = column, pixel centres at integers.
"""

from importlib import metadata as _metadata

from . import core, image, io, scores, sim, train
from .train.parallel import set_cpu_device_count

try:
    __version__ = _metadata.version("galjax")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

_LAZY = ("models", "fit", "detect", "deblend", "ood", "experiments", "plot", "cli")

__all__ = [
    "core",
    "image",
    "io",
    "scores",
    "sim",
    "train",
    *_LAZY,
    "set_cpu_device_count",
    "__version__",
]


def __getattr__(name):
    # Heavier subpackages (distrax, matplotlib) load on first access, not on `import galjax`.
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'galjax' has no attribute {name!r}")
