"""The FIRST radio-galaxy images of Rustige et al. (2023): loading, preparation, augmentation.

Rustige, Kummer, Griese, Borras, Brueggen, Connor, Gaede, Kasieczka, Knopp &
Schleper (2023, RASTI 2, 264), "Morphological classification of radio galaxies with
wGAN-supported augmentation", on the FIRST FRI/FRII/Compact/Bent set of Griese et
al. (2023). :func:`prepare_images` centre-crops, resizes and scales the cutouts to
[-1, 1] (-1 is empty sky); :func:`load_radio` does so for the set read by
:func:`galjax.io.load_first`; :func:`augment_images` draws random flips and
rotations; :func:`check_gan_images` and :func:`check_classes_present` are the
boundary checks of the radio pipeline (:mod:`galjax.train.recipes.gan`,
:mod:`galjax.scores.histograms`, :mod:`galjax.experiments.radio`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galjax.image.transforms import crop_or_pad, random_dihedral, rotate
from galjax.io.datasets import load_first

__all__ = [
    "CLASS_NAMES",
    "RadioData",
    "class_index",
    "prepare_images",
    "load_radio",
    "check_gan_images",
    "check_classes_present",
    "augment_images",
]

#: The FIRST classes of Griese et al. (2023), in label order.
CLASS_NAMES = ("FRI", "FRII", "Compact", "Bent")


class RadioData(NamedTuple):
    """Prepared radio images.

    Attributes:
      images: float32 ``(n, size, size, 1)`` in [-1, 1] (-1 is empty sky).
      labels: int32 ``(n,)`` class indices into ``class_names``.
      split: str ``(n,)``: ``"train"``, ``"valid"`` or ``"test"``.
      class_names: class names in label order.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: tuple[str, ...]


def class_index(name: str, class_names: Sequence[str] = CLASS_NAMES) -> int:
    """Label of a class name (case-insensitive); ``ValueError`` listing the names otherwise.

    >>> class_index("bent")
    3
    """
    lower = [c.lower() for c in class_names]
    if not isinstance(name, str) or name.lower() not in lower:
        raise ValueError(f"class: unknown class {name!r}; expected one of {list(class_names)}")
    return lower.index(name.lower())


def prepare_images(images, size: int = 64, crop: int = 128):
    """Centre-crop, resize and scale radio cutouts to [-1, 1].

    ``x = 2 * resize(crop(u)) - 1`` with ``u`` in [0, 1] (``uint8 / 255``); the
    resize is antialiased linear interpolation (:func:`jax.image.resize`), which
    averages over the larger output pixels when downsampling.

    Args:
      images: uint8 ``(n, h, w)`` or ``(n, h, w, 1)``, or float ``(n, h, w, 1)``
        in [0, 1] (as :func:`galjax.io.load_first` returns them).
      size: output side in pixels (64 default, 128 as in the paper).
      crop: side of the central crop, in input pixels, before resizing
        (``crop <= h, w``).

    Returns:
      float32 ``(n, size, size, 1)`` in [-1, 1].

    >>> prepare_images(np.zeros((2, 300, 300), np.uint8), size=32).shape
    (2, 32, 32, 1)
    """
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                "images: expected float values in [0, 1] (or uint8 0-255), got range "
                f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
            )
    else:
        raise TypeError(f"images: expected uint8 or float images, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] != 1:
        raise ValueError(f"images: expected shape (n, h, w) or (n, h, w, 1), got {arr.shape}")
    for name, v in (("size", size), ("crop", crop)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name}: expected an integer >= 2, got {v!r}")
    if crop > min(arr.shape[1:3]):
        raise ValueError(f"crop: {crop} exceeds the image size {arr.shape[1:3]}")
    out = []
    for start in range(0, arr.shape[0], 256):  # bounded memory for 2,000 x 300 x 300
        chunk = crop_or_pad(jnp.asarray(arr[start : start + 256]), crop, crop)
        chunk = jax.image.resize(chunk, (chunk.shape[0], size, size, 1), "linear", antialias=True)
        out.append(np.asarray(chunk))
    x = np.concatenate(out) if out else np.zeros((0, size, size, 1), np.float32)
    return np.clip(2 * x - 1, -1, 1).astype(np.float32)


def load_radio(path, size: int = 64, crop: int = 128, split: str | None = None) -> RadioData:
    """Load the FIRST set with :func:`galjax.io.load_first` and :func:`prepare_images` it.

    >>> data = load_radio("first_fr_4class.npz", size=64)  # doctest: +SKIP
    """
    first = load_first(path, split=split)
    return RadioData(
        prepare_images(first.images, size, crop),
        first.labels.astype(np.int32),
        first.split,
        tuple(first.class_names),
    )


def check_gan_images(name: str, images, size: int | None = None, bands: int = 1) -> np.ndarray:
    """Check ``(n, size, size, bands)`` float images in [-1, 1]; return them as float32.

    Raises:
      TypeError: not a floating-point array.
      ValueError: wrong shape or size, values outside [-1, 1], NaN.
    """
    arr = np.asarray(images)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name}: expected float images in [-1, 1] (see prepare_images), got dtype {arr.dtype}"
        )
    want = f"(n, {size or 'size'}, {size or 'size'}, {bands})"
    if arr.ndim != 4 or arr.shape[-1] != bands or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if size is not None and arr.shape[1] != size:
        raise ValueError(f"{name}: expected images of size {size}x{size}, got {arr.shape[1:3]}")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < -1 - 1e-5 or arr.max() > 1 + 1e-5):
        raise ValueError(
            f"{name}: expected finite values in [-1, 1], got range "
            f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
        )
    return arr.astype(np.float32)


def augment_images(key, images, rotation: bool = True):
    """Random flips and rotations of ``(n, h, w, bands)`` images in [-1, 1].

    Each image gets one of the 8 symmetries of the square
    (:func:`galjax.image.transforms.random_dihedral`) and, with ``rotation``, a further
    uniform rotation in [0, pi/2) (bilinear, :func:`galjax.image.transforms.rotate`;
    the empty sky value -1 fills the corners). Works under ``jit``.

    >>> augment_images(jax.random.key(0), -jnp.ones((2, 8, 8, 1))).shape
    (2, 8, 8, 1)
    """
    k1, k2 = jax.random.split(key)
    x = random_dihedral(k1, images)
    if not rotation:
        return x
    angles = jax.random.uniform(k2, (x.shape[0],), x.dtype, 0.0, math.pi / 2)
    # rotate() fills with 0, so rotate the non-negative (x + 1) and shift back.
    return jax.vmap(rotate)(x + 1.0, angles) - 1.0


def check_classes_present(labels, n_classes: int, what: str = "labels") -> None:
    """Raise a ``ValueError`` naming the classes with no example in ``labels``."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=n_classes)[:n_classes]
    empty = np.nonzero(counts == 0)[0]
    if empty.size:
        raise ValueError(
            f"{what}: class(es) {empty.tolist()} have no example (counts {counts.tolist()}); "
            "use fewer folds or a larger data set"
        )
