"""PixelCNN++ configuration and architecture (Flax Linen), parameters and inputs.

:class:`PixelCNNConfig` (architecture and output head), the two-stream U-Net of
shifted convolutions :class:`PixelCNN` (Salimans, Karpathy, Chen & Kingma 2017),
:func:`init_pixelcnn` / :func:`apply_pixelcnn`, the input check :func:`check_input`
and :func:`quantise` onto the discrete head's grid. The likelihood of the outputs is
in :mod:`galjax.models.pixelcnn.likelihood`, sampling in
:mod:`galjax.models.pixelcnn.sampling`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import check_image, is_concrete

__all__ = [
    "HEADS",
    "PixelCNNConfig",
    "PixelCNN",
    "init_pixelcnn",
    "apply_pixelcnn",
    "check_input",
    "quantise",
]

HEADS = ("logistic_mixture", "gaussian", "logistic")


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig:
    """Architecture and output head of a PixelCNN++ (the defaults are a small CPU model).

    Attributes:
      height, width: image size in pixels; both divisible by ``2**(n_scales - 1)``.
      bands: number of image bands (channels).
      n_filters: feature maps in every layer (Salimans et al.: 160; Zanisi et al.: 64).
      n_resnet: gated residual blocks per resolution in the up pass (the down
        pass has one more per resolution below the top, as in the paper).
      n_scales: number of resolutions of the U-Net (3 in the paper: 32, 16, 8).
      dropout: dropout rate inside the residual blocks (0.5 in the paper; used
        only in training mode).
      weight_norm: weight-normalised convolutions ``w = g v / ||v||`` (Salimans &
        Kingma 2016), initialised so that ``w`` equals the plain initialisation
        (no data-dependent initialisation).
      n_classes: > 0 for class conditioning (labels ``y`` in ``[0, n_classes)``
        enter every residual block through a learned per-class bias).
      head: ``"logistic_mixture"`` (discrete, ``2**n_bits`` levels on [-1, 1]),
        ``"gaussian"`` or ``"logistic"`` (continuous, any real values).
      n_mix: mixture components per pixel.
      n_bits: bit depth of the discrete head.
      min_log_scale: floor of the per-pixel log scale (the paper's -7): without
        it a continuous density can collapse onto a training value and go to
        +inf, and the discrete head loses precision in ``exp(-log_s)``.
    """

    height: int = 32
    width: int = 32
    bands: int = 1
    n_filters: int = 16
    n_resnet: int = 1
    n_scales: int = 3
    dropout: float = 0.0
    weight_norm: bool = False
    n_classes: int = 0
    head: str = "logistic_mixture"
    n_mix: int = 5
    n_bits: int = 8
    min_log_scale: float = -7.0

    def __post_init__(self):
        for name in ("height", "width", "bands", "n_filters", "n_resnet", "n_scales", "n_mix"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        step = 2 ** (self.n_scales - 1)
        if self.height % step or self.width % step:
            raise ValueError(
                f"height, width: expected multiples of 2**(n_scales - 1) = {step}, got "
                f"{self.height} x {self.width}"
            )
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {self.dropout!r}")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int):
            raise ValueError(f"n_classes: expected an integer >= 0, got {self.n_classes!r}")
        if self.n_classes < 0:
            raise ValueError(f"n_classes: expected an integer >= 0, got {self.n_classes!r}")
        if not (isinstance(self.n_bits, int) and 1 <= self.n_bits <= 16):
            raise ValueError(f"n_bits: expected an integer in [1, 16], got {self.n_bits!r}")

    @property
    def discrete(self) -> bool:
        """True for the discretised logistic mixture head."""
        return self.head == "logistic_mixture"

    @property
    def n_coeffs(self) -> int:
        """Linear band-coupling coefficients per component, ``B (B - 1) / 2``."""
        return self.bands * (self.bands - 1) // 2

    @property
    def n_outputs(self) -> int:
        """Network outputs per pixel: ``K (1 + 2 B + B (B - 1) / 2)`` (100 for K=10, RGB)."""
        return self.n_mix * (1 + 2 * self.bands + self.n_coeffs)

    @property
    def n_dims(self) -> int:
        """Dimensions per image, ``h * w * bands``."""
        return self.height * self.width * self.bands

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PixelCNNConfig:
        if not isinstance(d, dict):
            raise TypeError(f"d: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"d: unknown PixelCNNConfig field(s) {unknown}")
        return cls(**d)


# -- shifted convolutions --------------------------------------------------------------


class _Conv(nn.Module):
    """2-D convolution (or stride-``s`` transposed convolution), optional weight norm.

    Written on ``lax.conv_general_dilated`` so that the transposed version is
    exactly the dilated-input convolution whose causal support is analysed in
    :func:`_down_shifted_deconv`.
    """

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    transpose: bool = False
    weight_norm: bool = False
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel
        cin = x.shape[-1]
        init = nn.initializers.variance_scaling(self.init_scale, "fan_in", "truncated_normal")
        w = self.param("kernel", init, (kh, kw, cin, self.features), jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if self.weight_norm:
            norm0 = lambda key, shape, dtype: jnp.sqrt(jnp.sum(w**2, axis=(0, 1, 2)))
            g = self.param("scale", norm0, (self.features,), jnp.float32)
            w = w * (g / jnp.sqrt(jnp.sum(w**2, axis=(0, 1, 2)) + 1e-12))[None, None, None, :]
        w = w.astype(x.dtype)
        dn = ("NHWC", "HWIO", "NHWC")
        if self.transpose:
            s = self.stride
            y = jax.lax.conv_general_dilated(
                x, w, (1, 1), ((kh - 1, kh - 1), (kw - 1, kw - 1)), lhs_dilation=(s, s),
                dimension_numbers=dn,
            )  # fmt: skip
        else:
            y = jax.lax.conv_general_dilated(
                x, w, (self.stride, self.stride), "VALID", dimension_numbers=dn
            )
        return y + b.astype(x.dtype)[None, None, None, :]


def _nin(features: int, weight_norm: bool, init_scale: float = 1.0, name=None):
    """A 1x1 convolution ("network in network")."""
    return _Conv(features, (1, 1), weight_norm=weight_norm, init_scale=init_scale, name=name)


def _down_shift(x):
    """Shift rows down by one (zero row on top): output row r sees input row r - 1."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def _right_shift(x):
    """Shift columns right by one: output column c sees input column c - 1."""
    return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _down_shifted_conv(conv: _Conv, x):
    """Pad ``kh - 1`` rows on top and ``(kw - 1) / 2`` columns each side, VALID conv.

    Output row ``r`` then sees input rows ``r - kh + 1 .. r`` (and with stride 2,
    coarse row ``i`` sees fine rows ``2i - 1, 2i``).
    """
    kh, kw = conv.kernel
    p = (kw - 1) // 2
    return conv(jnp.pad(x, ((0, 0), (kh - 1, 0), (p, p), (0, 0))))


def _down_right_shifted_conv(conv: _Conv, x):
    """Pad ``kh - 1`` rows on top and ``kw - 1`` columns on the left, VALID conv."""
    kh, kw = conv.kernel
    return conv(jnp.pad(x, ((0, 0), (kh - 1, 0), (kw - 1, 0), (0, 0))))


def _down_shifted_deconv(conv: _Conv, x):
    """Stride-2 transposed conv of a (2, 3) kernel, cropped to ``(2h, 2w)``.

    The dilated-input convolution gives fine row ``o`` from coarse rows ``i``
    with ``2i in [o - 1, o]``, i.e. ``i = floor(o / 2)``; coarse row ``i`` only
    knows fine rows ``< 2i <= o``, so causality is kept. Columns are cropped
    symmetrically (``(kw - 1) / 2`` each side).
    """
    h, w = x.shape[1:3]
    kh, kw = conv.kernel
    y = conv(x)  # (2h + kh - 2, 2w + kw - 2)
    p = (kw - 1) // 2
    return y[:, : 2 * h, p : p + 2 * w]


def _down_right_shifted_deconv(conv: _Conv, x):
    """Stride-2 transposed conv of a (2, 2) kernel, cropped to the first ``(2h, 2w)``."""
    h, w = x.shape[1:3]
    return conv(x)[:, : 2 * h, : 2 * w]


def _concat_elu(x):
    """concat-ELU: ``elu([x, -x])`` along the channel axis (doubles the channels)."""
    return jax.nn.elu(jnp.concatenate([x, -x], axis=-1))


class _GatedResnet(nn.Module):
    """Gated residual block ``x + a * sigmoid(b)``.

    ``[a, b] = conv(concat_elu(conv(concat_elu(x)) + nin(concat_elu(aux))))`` (+ a
    class bias), with dropout before the second convolution.
    """

    features: int
    stream: str  # "down" or "down_right"
    dropout: float
    weight_norm: bool

    @nn.compact
    def __call__(self, x, aux=None, h=None, train: bool = False):
        f, wn = self.features, self.weight_norm
        if self.stream == "down":
            shifted = _down_shifted_conv
            kernel = (2, 3)
        else:
            shifted = _down_right_shifted_conv
            kernel = (2, 2)
        c = shifted(_Conv(f, kernel, weight_norm=wn, name="conv_in"), _concat_elu(x))
        if aux is not None:
            c = c + _nin(f, wn, name="nin_aux")(_concat_elu(aux))
        c = _concat_elu(c)
        c = nn.Dropout(self.dropout, deterministic=not train)(c)
        # A small initial scale keeps the residual branches near zero at the
        # start, so the stacked blocks begin close to the identity.
        c = shifted(_Conv(2 * f, kernel, weight_norm=wn, init_scale=0.1, name="conv_out"), c)
        if h is not None:
            c = c + nn.Dense(2 * f, use_bias=False, name="cond")(h)[:, None, None, :]
        a, b = jnp.split(c, 2, axis=-1)
        return x + a * jax.nn.sigmoid(b)


class PixelCNN(nn.Module):
    """The PixelCNN++ network: ``x (n, h, w, bands) -> (n, h, w, n_outputs)`` raw outputs.

    Output at pixel ``(r, c)`` depends only on the pixels before it in raster
    order (rows ``< r``, or row ``r`` and columns ``< c``), for every band. Use
    :func:`head_log_prob` to read the outputs as a distribution.
    """

    config: PixelCNNConfig

    @nn.compact
    def __call__(self, x, y=None, train: bool = False):
        cfg = self.config
        nf, wn = cfg.n_filters, cfg.weight_norm
        h = None
        if cfg.n_classes:
            if y is None:
                raise ValueError("y: this PixelCNN is class-conditional (n_classes > 0)")
            h = jax.nn.one_hot(y, cfg.n_classes, dtype=x.dtype)
        # A channel of ones tells the zero-padded border apart from zero pixels.
        xp = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)
        u_list = [_down_shift(_down_shifted_conv(_Conv(nf, (2, 3), weight_norm=wn), xp))]
        ul_list = [
            _down_shift(_down_shifted_conv(_Conv(nf, (1, 3), weight_norm=wn), xp))
            + _right_shift(_down_right_shifted_conv(_Conv(nf, (2, 1), weight_norm=wn), xp))
        ]
        block = lambda stream: _GatedResnet(nf, stream, cfg.dropout, wn)
        # Up pass.
        for s in range(cfg.n_scales):
            for _ in range(cfg.n_resnet):
                u_list.append(block("down")(u_list[-1], h=h, train=train))
                ul_list.append(block("down_right")(ul_list[-1], u_list[-1], h=h, train=train))
            if s < cfg.n_scales - 1:
                u_list.append(_down_shifted_conv(_Conv(nf, (2, 3), 2, weight_norm=wn), u_list[-1]))
                ul_list.append(
                    _down_right_shifted_conv(_Conv(nf, (2, 2), 2, weight_norm=wn), ul_list[-1])
                )
        # Down pass, consuming the skip connections.
        u, ul = u_list.pop(), ul_list.pop()
        for s in range(cfg.n_scales):
            for _ in range(cfg.n_resnet + (1 if s > 0 else 0)):
                u = block("down")(u, u_list.pop(), h=h, train=train)
                ul = block("down_right")(
                    ul, jnp.concatenate([u, ul_list.pop()], axis=-1), h=h, train=train
                )
            if s < cfg.n_scales - 1:
                u = _down_shifted_deconv(_Conv(nf, (2, 3), 2, True, wn), u)
                ul = _down_right_shifted_deconv(_Conv(nf, (2, 2), 2, True, wn), ul)
        assert not u_list and not ul_list
        return _nin(cfg.n_outputs, wn, name="head")(jax.nn.elu(ul))


# -- parameters, inputs --------------------------------------------------------------


def init_pixelcnn(key, config: PixelCNNConfig):
    """Initial parameters (the ``params`` collection) for ``config``."""
    x = jnp.zeros((1, config.height, config.width, config.bands), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if config.n_classes else None
    return PixelCNN(config).init(key, x, y)["params"]


def check_input(name: str, x, config: PixelCNNConfig, y=None):
    """Validate images (and labels) for ``config``; return ``x`` as float32 ``(n, h, w, b)``.

    Raises ``ValueError`` naming ``name`` for a wrong shape or band count, NaN/inf,
    values outside ``[-1, 1]`` or off the ``2**n_bits`` grid (discrete head), and
    for missing or out-of-range labels. Value checks are skipped for traced arrays.
    """
    x = check_image(name, x, bands=None)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{name}: expected (n, h, w, bands) or (h, w, bands), got {x.shape}")
    want = (config.height, config.width, config.bands)
    if x.shape[-1] != config.bands:
        raise ValueError(
            f"{name}: expected {config.bands} band(s) on the last axis (config.bands), got "
            f"shape {x.shape}"
        )
    if x.shape[1:] != want:
        raise ValueError(f"{name}: expected images of shape {want}, got {x.shape[1:]}")
    x = x.astype(jnp.float32)
    if is_concrete(x):
        a = np.asarray(x)
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"{name}: expected finite values, found {int(np.sum(~np.isfinite(a)))} NaN/inf"
            )
        if config.discrete:
            if a.min() < -1.0 - 1e-6 or a.max() > 1.0 + 1e-6:
                raise ValueError(
                    f"{name}: the logistic_mixture head needs values in [-1, 1], got range "
                    f"[{a.min():.4g}, {a.max():.4g}]; map images with quantise()"
                )
            levels = 2**config.n_bits - 1
            k = (a + 1.0) * (levels / 2.0)
            if np.max(np.abs(k - np.round(k))) > 1e-3:
                raise ValueError(
                    f"{name}: the logistic_mixture head needs values quantised to "
                    f"{levels + 1} levels on [-1, 1] (n_bits={config.n_bits}); use quantise()"
                )
    if config.n_classes:
        if y is None:
            raise ValueError("y: labels are required (config.n_classes > 0)")
        y = jnp.asarray(y)
        if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"y: expected integer labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}"
            )
        if is_concrete(y) and (int(jnp.min(y)) < 0 or int(jnp.max(y)) >= config.n_classes):
            raise ValueError(f"y: expected labels in [0, {config.n_classes}), got {np.unique(y)}")
    elif y is not None:
        raise ValueError("y: labels given but config.n_classes == 0")
    return x


def quantise(x, lo, hi, n_bits: int = 8):
    """Map real images onto the discrete head's grid of ``2**n_bits`` levels on [-1, 1].

    ``q = round((clip(x, lo, hi) - lo) / (hi - lo) * L)`` with ``L = 2**n_bits - 1``;
    returns ``2 q / L - 1`` in ``[-1, 1]`` (float32, same shape).

    >>> quantise(jnp.array([0.0, 0.75, 2.0]), 0.0, 1.0, 1).tolist()
    [-1.0, 1.0, 1.0]
    """
    if not float(hi) > float(lo):
        raise ValueError(f"lo, hi: expected hi > lo, got lo={lo}, hi={hi}")
    levels = 2**n_bits - 1
    x = jnp.asarray(x, jnp.float32)
    q = jnp.round((jnp.clip(x, lo, hi) - lo) / (hi - lo) * levels)
    return 2.0 * q / levels - 1.0


def apply_pixelcnn(params, config: PixelCNNConfig, x, y=None, key=None):
    """Raw network outputs ``(n, h, w, n_outputs)``; ``key`` given = training mode (dropout)."""
    train = key is not None
    rngs = {"dropout": key} if train else None
    return PixelCNN(config).apply({"params": params}, x, y, train=train, rngs=rngs)
