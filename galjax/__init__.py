"""galjax: a JAX functional research library for deep generative models of galaxy images.

Subpackages, from the bottom layer up:

- :mod:`galjax.sim`: differentiable galaxy simulator (profiles, PSFs, noise, blends).
- :mod:`galjax.io`, :mod:`galjax.image.transforms`: FITS/tables/cutouts, data-set loaders,
  jit-safe image transforms.
- :mod:`galjax.models`: VAE, flow prior, model directories (imported on first use).
- :mod:`galjax.train`: the training loop shared by every model, and the recipes.
- :mod:`galjax.deblend`, :mod:`galjax.detect`, :mod:`galjax.fit`: MAP deblending,
  detection, baseline methods (imported on first use).
- :mod:`galjax.scores.metrics`: MSE, SSIM, flux errors, bits/dim, ROC/AUC.
- :mod:`galjax.plot`: figures; :mod:`galjax.cli`: the ``galjax`` command.

Images are float32 arrays shaped ``(..., height, width, bands)``; positions are
``(x, y)`` pixels, 0-based, x = column, pixel centres at integers.
"""

from importlib import metadata as _metadata

from . import core, image, io, scores, sim, train
from .train.parallel import set_cpu_device_count

try:
    __version__ = _metadata.version("galjax")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

_LAZY = ("models", "deblend", "detect", "fit", "plot")

__all__ = [
    "io",
    "core",
    "image",
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
