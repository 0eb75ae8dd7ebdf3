"""The contaminant-mask network: a dilated fully convolutional per-pixel classifier.

:class:`MaskNet` (Paillard, Bertin et al. 2019, "MaxiMask and MaxiTrack", in
miniature) gives per-pixel per-class logits for the classes of
:data:`galjax.sim.contaminants.MASK_CLASSES`; probabilities are independent sigmoids
and the loss :func:`mask_loss` their binary cross-entropy. Its input is the stretch
:func:`stretch_for_mask` ``arcsinh((image - background) / sigma)``. Model folders
(``mask.msgpack`` + ``model.json``, the packaged ones in ``galjax/weights/mask``) are
written by :func:`save_mask_model` and read by :func:`load_mask_model`.

Training: :func:`galjax.train.recipes.masknet.train_mask_net`; tiled inference over
any image: :func:`galjax.detect.masks.predict_mask`.
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import check_image
from galjax.core.files import atomic_write
from galjax.image.transforms import arcsinh_stretch
from galjax.sim.contaminants import MASK_CLASSES

__all__ = [
    "MASK_FORMAT",
    "MaskNet",
    "receptive_radius",
    "mask_loss",
    "stretch_for_mask",
    "default_mask_dir",
    "save_mask_model",
    "load_mask_model",
]

_N = len(MASK_CLASSES)


def stretch_for_mask(image, background, sigma):
    """Network input ``arcsinh((image - background) / sigma)``.

    Args:
      image: ``(..., h, w, 1)`` image in counts.
      background: scalar sky level (counts).
      sigma: scalar sky noise standard deviation (counts, > 0).

    Returns:
      The stretched image, same shape (:func:`galjax.image.transforms.arcsinh_stretch`).

    >>> import numpy as np
    >>> y = stretch_for_mask(np.full((2, 2, 1), 110.0), 100.0, 10.0)
    >>> bool(np.allclose(y, np.arcsinh(1.0)))
    True
    """
    image = check_image("image", image)
    return arcsinh_stretch(image - jnp.asarray(background, image.dtype), sigma)


class MaskNet(nn.Module):
    """Fully convolutional per-pixel classifier (dilated 3x3 convolutions, no pooling).

    Each layer is ``relu(conv3x3(x, dilation=d))``; the input is concatenated to
    the last hidden layer and a 1x1 convolution gives one logit per class. The
    receptive field reaches ``sum(dilations)`` pixels from the centre
    (:func:`receptive_radius`); with no pooling the network commutes with
    integer translations, which makes tiled inference exact.

    Attributes:
      n_classes: number of output classes.
      features: channels of every hidden layer.
      dilations: dilation of each 3x3 layer.

    ``__call__(x)``: ``(..., h, w, 1)`` stretched image -> logits ``(..., h, w, n_classes)``.

    >>> import jax, jax.numpy as jnp
    >>> net = MaskNet(features=4, dilations=(1, 2))
    >>> v = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    >>> net.apply(v, jnp.zeros((2, 20, 24, 1))).shape
    (2, 20, 24, 5)
    """

    n_classes: int = _N
    features: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1)

    @nn.compact
    def __call__(self, x):
        h = x
        for d in self.dilations:
            h = nn.relu(nn.Conv(self.features, (3, 3), kernel_dilation=(d, d), padding="SAME")(h))
        h = jnp.concatenate([h, x], axis=-1)
        return nn.Conv(self.n_classes, (1, 1))(h)


def receptive_radius(model: MaskNet) -> int:
    """Pixels from the centre that can change one output pixel of ``model``: ``sum(dilations)``."""
    return int(sum(model.dilations))


def mask_loss(logits, labels, pos_weight=None):
    """Mean per-pixel binary cross-entropy of independent class sigmoids.

    ``L = -mean[w_c y log s(z) + (1 - y) log(1 - s(z))]`` with ``w_c`` the
    positive weight of class ``c`` (rare classes: ``w_c > 1``).

    Args:
      logits: ``(..., h, w, n_classes)``.
      labels: same shape, 0/1.
      pos_weight: ``(n_classes,)`` or None (all 1).
    """
    # log_sigmoid keeps log s(z) finite for large |z| (log(sigmoid) would hit log 0)
    log_p = jax.nn.log_sigmoid(logits)
    log_q = jax.nn.log_sigmoid(-logits)
    wpos = (
        1.0
        if pos_weight is None
        else jnp.broadcast_to(jnp.asarray(pos_weight, logits.dtype), logits.shape)
    )
    return -jnp.mean(wpos * labels * log_p + (1 - labels) * log_q)


# --------------------------------------------------------------------------- storage
_WEIGHTS_NAME = "mask.msgpack"
_CONFIG_NAME = "model.json"
MASK_FORMAT = 1


def default_mask_dir() -> Path:
    """Folder of the packaged mask-network weights (``galjax/weights/mask``)."""
    return Path(__file__).resolve().parents[1] / "weights" / "mask"


def save_mask_model(directory, model: MaskNet, params, thresholds=None, meta=None) -> Path:
    """Write ``mask.msgpack`` (flax msgpack) and ``model.json`` (architecture, thresholds, meta)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = flax.serialization.to_bytes(jax.device_get(params))
    atomic_write(d / _WEIGHTS_NAME, lambda tmp: tmp.write_bytes(data))
    thr = (
        None
        if thresholds is None
        else [float(t) for t in np.broadcast_to(thresholds, (model.n_classes,))]
    )
    cfg = {
        "format": MASK_FORMAT,
        "classes": list(MASK_CLASSES[: model.n_classes]),
        "model": {
            "n_classes": model.n_classes,
            "features": model.features,
            "dilations": list(model.dilations),
        },
        "thresholds": thr,
        "meta": meta or {},
    }
    text = json.dumps(cfg, indent=2, default=str)
    atomic_write(d / _CONFIG_NAME, lambda tmp: tmp.write_text(text + "\n"))
    return d


def load_mask_model(directory=None):
    """Load ``(model, params, config_dict)`` written by :func:`save_mask_model`.

    Args:
      directory: model folder, default :func:`default_mask_dir`.

    Raises:
      FileNotFoundError: no weights there (train them with ``scripts/train_mask_weights.py``).
      ValueError: ``model.json`` unreadable, of another format, without a valid ``model``
        entry; corrupt weights, or weights whose shapes disagree with ``model.json``.
    """
    d = default_mask_dir() if directory is None else Path(directory)
    if not (d / _WEIGHTS_NAME).is_file() or not (d / _CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"directory: no mask model ({_WEIGHTS_NAME} + {_CONFIG_NAME}) in {str(d)!r}; train one "
            "with scripts/train_mask_weights.py"
        )
    meta_path = d / _CONFIG_NAME
    try:
        cfg = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"directory: {meta_path} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict) or cfg.get("format") != MASK_FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(f"directory: {meta_path}: mask model format {got!r} != {MASK_FORMAT}")
    try:
        m = cfg["model"]
        model = MaskNet(
            int(m["n_classes"]), int(m["features"]), tuple(int(x) for x in m["dilations"])
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"directory: {meta_path}: 'model' must hold n_classes, features and dilations "
            f"({type(err).__name__}: {err})"
        ) from err
    target = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1))), jax.random.key(0))
    target = target["params"]
    try:
        params = flax.serialization.from_bytes(target, (d / _WEIGHTS_NAME).read_bytes())
    except Exception as err:  # msgpack/flax raise several types for corrupt data
        raise ValueError(f"directory: cannot read weights {d / _WEIGHTS_NAME} ({err})") from err
    want = jax.tree_util.tree_flatten_with_path(target)[0]
    for (where, t), leaf in zip(want, jax.tree.leaves(params), strict=True):
        if tuple(t.shape) != np.shape(leaf):
            raise ValueError(
                f"directory: {meta_path}: 'model' ({m}) does not match the weights in "
                f"{_WEIGHTS_NAME}: {jax.tree_util.keystr(where)} has shape {np.shape(leaf)} "
                f"in the file, {tuple(t.shape)} by 'model'"
            )
    return model, params, cfg
