"""Class-conditional Wasserstein GAN with gradient penalty (WGAN-GP) for radio galaxies.

Rustige et al. (2023, RASTI 2, 264, "Morphological classification of radio galaxies
with wGAN-supported augmentation"), after Gulrajani et al. (2017, "Improved training
of Wasserstein GANs"). The critic ``D(x, y)`` and the generator ``G(z, y)`` are both
conditioned on the class ``y`` (one-hot). With ``x~ = G(z, y)`` and the interpolate
``x^ = eps x + (1 - eps) x~``, ``eps ~ U(0, 1)`` per image, the losses are

    L_D = E[D(x~, y)] - E[D(x, y)] + lambda E[(||grad_x^ D(x^, y)||_2 - 1)^2]
    L_G = -E[D(G(z, y), y)]

with ``lambda = 10``, ``n_critic = 5`` critic updates per generator update and Adam
(learning rate 1e-4, ``b1 = 0``, ``b2 = 0.9``) from optax for both networks.

Architecture (DCGAN style): the generator maps ``[z, onehot(y)]`` through a dense
layer to a ``start x start`` feature map, then stride-2 transposed convolutions
(sub-pixel form; batch or layer normalisation, ReLU) up to ``image_size``; a final 3x3 convolution
gives one band. The output ``G = clip(smear(a(raw)))`` (or ``smear(clip(a(raw)))``)
where ``a`` is ``tanh`` or the identity and ``smear`` an optional Gaussian blur
(:func:`galjax.image.transforms.gaussian_smear`, 3x3 kernel) -- the smearing that the
talk proposes to apply inside the generator, before the clipping to [-1, 1]. The
critic is a CNN of stride-2 convolutions with layer normalisation (never batch
normalisation: the gradient penalty is per image) and LeakyReLU, the class given
as extra constant input channels; or a fully connected network (``critic="fcn"``)
on the flattened image concatenated with the one-hot class.

Linen modules hold only the architectures; the losses, :func:`generate` and the
training kernel from :func:`make_gan_step` are pure functions of parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from galjax.image.transforms import gaussian_smear

__all__ = [
    "GANConfig",
    "GANState",
    "Generator",
    "CNNCritic",
    "FCNCritic",
    "make_generator",
    "make_critic",
    "init_gan",
    "make_optimizer",
    "generator_forward",
    "postprocess",
    "generate",
    "critic_scores",
    "gradient_penalty",
    "critic_loss",
    "generator_loss",
    "make_gan_step",
]


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """Architecture and training hyperparameters of the conditional WGAN-GP.

    Attributes:
      image_size: side of the square images in pixels (64 by default on CPU, 128 as
        in the paper); must be ``gen_start * 2**k``.
      bands: number of image bands (1 for FIRST).
      n_classes: number of classes (4: FRI, FRII, Compact, Bent).
      latent_dim: dimension of the noise ``z`` (100 in the paper).
      gen_start: side of the generator's first feature map.
      gen_features: channels of the generator's last transposed convolution; each
        earlier one has twice as many (capped at ``8 * gen_features``).
      gen_norm: ``"batch"`` (DCGAN, running averages used when sampling),
        ``"layer"`` or ``"none"``.
      final_activation: ``"tanh"`` or ``"linear"`` (identity) before smearing and
        clipping.
      critic: ``"cnn"`` (convolutions with layer norm) or ``"fcn"`` (dense layers).
      critic_features: channels of the CNN critic's first convolution (doubled at
        each stride-2 level down to ``4 x 4``, capped at ``8 * critic_features``).
      critic_hidden: widths of the FCN critic's hidden layers.
      smear_sigma: standard deviation (pixels) of the Gaussian smearing of the
        generator output; 0 switches it off.
      smear_where: ``"before_clip"`` (the talk's proposal) or ``"after_clip"``.
      gp_weight: gradient-penalty weight ``lambda``.
      n_critic: critic updates per generator update.
      learning_rate, b1, b2: Adam hyperparameters (both networks).
    """

    image_size: int = 64
    bands: int = 1
    n_classes: int = 4
    latent_dim: int = 100
    gen_start: int = 4
    gen_features: int = 32
    gen_norm: str = "batch"
    final_activation: str = "tanh"
    critic: str = "cnn"
    critic_features: int = 32
    critic_hidden: tuple[int, ...] = (512, 256)
    smear_sigma: float = 0.0
    smear_where: str = "before_clip"
    gp_weight: float = 10.0
    n_critic: int = 5
    learning_rate: float = 1e-4
    b1: float = 0.0
    b2: float = 0.9

    def __post_init__(self):
        for name in (
            "image_size",
            "bands",
            "n_classes",
            "latent_dim",
            "gen_start",
            "gen_features",
            "critic_features",
            "n_critic",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        n_up = math.log2(self.image_size / self.gen_start)
        if n_up < 1 or n_up != int(n_up):
            raise ValueError(
                f"image_size: expected gen_start * 2**k with k >= 1 (gen_start={self.gen_start}), "
                f"got {self.image_size}"
            )
        if self.image_size < 8:
            raise ValueError(f"image_size: expected >= 8, got {self.image_size}")
        if self.gen_norm not in ("batch", "layer", "none"):
            raise ValueError(
                f"gen_norm: expected 'batch', 'layer' or 'none', got {self.gen_norm!r}"
            )
        if self.final_activation not in ("tanh", "linear"):
            raise ValueError(
                f"final_activation: expected 'tanh' or 'linear', got {self.final_activation!r}"
            )
        if self.critic not in ("cnn", "fcn"):
            raise ValueError(f"critic: expected 'cnn' or 'fcn', got {self.critic!r}")
        if self.smear_where not in ("before_clip", "after_clip"):
            raise ValueError(
                f"smear_where: expected 'before_clip' or 'after_clip', got {self.smear_where!r}"
            )
        if not (self.smear_sigma >= 0 and math.isfinite(self.smear_sigma)):
            raise ValueError(f"smear_sigma: expected a finite value >= 0, got {self.smear_sigma!r}")
        if not self.gp_weight >= 0:
            raise ValueError(f"gp_weight: expected >= 0, got {self.gp_weight!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate!r}")
        if any(int(h) < 1 for h in self.critic_hidden) or not self.critic_hidden:
            raise ValueError(f"critic_hidden: expected positive widths, got {self.critic_hidden!r}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(image_size, image_size, bands)``."""
        return (self.image_size, self.image_size, self.bands)

    def replace(self, **changes) -> GANConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GANConfig:
        d = dict(d)
        if "critic_hidden" in d:
            d["critic_hidden"] = tuple(d["critic_hidden"])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"d: unknown GANConfig fields {sorted(unknown)}")
        return cls(**d)


class GANState(NamedTuple):
    """Everything that changes while training a GAN (a pytree).

    Attributes:
      step: int32 scalar, number of generator updates so far.
      gen_params: generator parameters.
      gen_stats: generator batch-norm running statistics (``{}`` without batch norm).
      gen_opt_state: optax state of the generator's optimiser.
      critic_params: critic parameters.
      critic_opt_state: optax state of the critic's optimiser.
    """

    step: jax.Array
    gen_params: Any
    gen_stats: Any
    gen_opt_state: Any
    critic_params: Any
    critic_opt_state: Any


def _depth_to_space(h):
    """``(..., H, W, 4c) -> (..., 2H, 2W, c)``."""
    *lead, hh, ww, c4 = h.shape
    c = c4 // 4
    h = h.reshape((*lead, hh, ww, 2, 2, c))
    h = jnp.moveaxis(h, -3, -4)  # (..., H, 2, W, 2, c)
    return h.reshape((*lead, 2 * hh, 2 * ww, c))


def _space_to_depth(h):
    """``(..., 2H, 2W, c) -> (..., H, W, 4c)`` (inverse of :func:`_depth_to_space`)."""
    *lead, hh, ww, c = h.shape
    h = h.reshape((*lead, hh // 2, 2, ww // 2, 2, c))
    h = jnp.moveaxis(h, -4, -3)  # (..., H, W, 2, 2, c)
    return h.reshape((*lead, hh // 2, ww // 2, 4 * c))


def _one_hot(labels, n_classes: int):
    return jax.nn.one_hot(labels, n_classes, dtype=jnp.float32)


class Generator(nn.Module):
    """``G(z, y) -> raw image (n, size, size, bands)`` (before activation, smear, clip)."""

    image_size: int = 64
    bands: int = 1
    n_classes: int = 4
    start: int = 4
    features: int = 32
    norm: str = "batch"

    @nn.compact
    def __call__(self, z, labels, train: bool = False):
        n_up = int(round(math.log2(self.image_size / self.start)))
        chans = [min(self.features * 2 ** (n_up - 1 - i), 8 * self.features) for i in range(n_up)]
        h = jnp.concatenate([z, _one_hot(labels, self.n_classes)], axis=-1)
        h = nn.Dense(self.start * self.start * chans[0])(h)
        h = h.reshape(h.shape[:-1] + (self.start, self.start, chans[0]))
        h = nn.relu(self._norm(h, train))
        for c in chans:
            # Stride-2 transposed convolution written as a sub-pixel convolution (Shi et
            # al. 2016): a 3x3 convolution to 4c channels, then depth-to-space. It spans
            # the stride-2 transposed convolutions with 6x6 kernels, and XLA:CPU computes
            # its gradient ~7x faster than that of nn.ConvTranspose.
            h = _depth_to_space(nn.Conv(4 * c, (3, 3), padding="SAME")(h))
            h = nn.relu(self._norm(h, train))
        return nn.Conv(self.bands, (3, 3), padding="SAME")(h)

    def _norm(self, h, train):
        if self.norm == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        if self.norm == "layer":
            return nn.LayerNorm()(h)
        return h


class CNNCritic(nn.Module):
    """``D(x, y) -> (n,)``: stride-2 convolutions with layer norm, class as input channels."""

    n_classes: int = 4
    features: int = 32

    @nn.compact
    def __call__(self, x, labels):
        y = _one_hot(labels, self.n_classes)[..., None, None, :]
        y = jnp.broadcast_to(y, x.shape[:-1] + (self.n_classes,))
        h = jnp.concatenate([x, y], axis=-1)
        c, level = self.features, 0
        while h.shape[-2] > 4:
            # A stride-2 4x4 convolution written as space-to-depth + 2x2 convolution
            # (same function class); its double gradient (the penalty) is ~3x faster
            # on XLA:CPU than that of the strided convolution.
            h = nn.Conv(c, (2, 2), padding="SAME")(_space_to_depth(h))
            if level > 0:  # no normalisation on the first layer (DCGAN / WGAN-GP)
                h = nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1)(h)
            h = nn.leaky_relu(h, 0.2)
            c, level = min(2 * c, 8 * self.features), level + 1
        h = h.reshape(h.shape[:-3] + (-1,))
        return nn.Dense(1)(h)[..., 0]


class FCNCritic(nn.Module):
    """``D(x, y) -> (n,)``: dense layers (layer norm, LeakyReLU) on ``[flatten(x), onehot(y)]``."""

    n_classes: int = 4
    hidden: tuple[int, ...] = (512, 256)

    @nn.compact
    def __call__(self, x, labels):
        h = jnp.concatenate(
            [x.reshape(x.shape[:-3] + (-1,)), _one_hot(labels, self.n_classes)], axis=-1
        )
        for i, width in enumerate(self.hidden):
            h = nn.Dense(width)(h)
            if i > 0:
                h = nn.LayerNorm()(h)
            h = nn.leaky_relu(h, 0.2)
        return nn.Dense(1)(h)[..., 0]


def make_generator(config: GANConfig) -> Generator:
    """The generator module of ``config``."""
    return Generator(
        config.image_size,
        config.bands,
        config.n_classes,
        config.gen_start,
        config.gen_features,
        config.gen_norm,
    )


def make_critic(config: GANConfig) -> nn.Module:
    """The critic module of ``config`` (:class:`CNNCritic` or :class:`FCNCritic`)."""
    if config.critic == "cnn":
        return CNNCritic(config.n_classes, config.critic_features)
    return FCNCritic(config.n_classes, tuple(int(h) for h in config.critic_hidden))


def make_optimizer(config: GANConfig) -> optax.GradientTransformation:
    """Adam(``learning_rate``, ``b1``, ``b2``) -- (1e-4, 0, 0.9) as in the paper."""
    return optax.adam(config.learning_rate, b1=config.b1, b2=config.b2)


def _check_config(config) -> GANConfig:
    if not isinstance(config, GANConfig):
        raise TypeError(f"config: expected a GANConfig, got {type(config).__name__}")
    return config


def init_gan(key, config: GANConfig) -> GANState:
    """Initialise both networks and their optimisers.

    Args:
      key: PRNG key.
      config: :class:`GANConfig`.

    Returns:
      :class:`GANState` at step 0.

    >>> state = init_gan(jax.random.key(0), GANConfig(image_size=16, latent_dim=8))
    >>> int(state.step)
    0
    """
    config = _check_config(config)
    kg, kc = jax.random.split(key)
    z = jnp.zeros((2, config.latent_dim), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    gvars = make_generator(config).init(kg, z, y, train=False)
    gen_params = gvars["params"]
    gen_stats = gvars.get("batch_stats", {})
    x = jnp.zeros((2,) + config.image_shape, jnp.float32)
    critic_params = make_critic(config).init(kc, x, y)["params"]
    tx = make_optimizer(config)
    with jax.numpy_dtype_promotion("standard"):  # optax's count arithmetic (see train/state)
        g_opt, c_opt = tx.init(gen_params), tx.init(critic_params)
    return GANState(jnp.zeros((), jnp.int32), gen_params, gen_stats, g_opt, critic_params, c_opt)


def postprocess(raw, config: GANConfig):
    """Activation, optional Gaussian smearing and clipping of the raw generator output.

    ``before_clip``: ``clip(smear(a(raw)), -1, 1)``; ``after_clip``:
    ``smear(clip(a(raw), -1, 1))``; ``a`` is ``tanh`` or the identity and
    ``smear(x) = G_sigma * (x + 1) - 1`` (3x3 normalised Gaussian kernel, zero
    padding of the brightness ``x + 1``, so empty sky stays empty).

    Args:
      raw: ``(..., h, w, bands)`` generator output.
      config: :class:`GANConfig` (``final_activation``, ``smear_sigma``, ``smear_where``).

    Returns:
      Images in [-1, 1], same shape.
    """
    x = jnp.tanh(raw) if config.final_activation == "tanh" else raw
    # Clipping zeroes the gradient of saturated pixels; with "linear" the generator
    # can thus produce an exactly empty (-1) background, as the real images have.
    clip = lambda a: jnp.clip(a, -1.0, 1.0)
    if config.smear_sigma == 0:
        return clip(x)
    # Smear the brightness a + 1 (empty sky = 0): gaussian_smear pads with zeros, and
    # padding the [-1, 1] image with 0 would light up its border as a fake source.
    smear = lambda a: gaussian_smear(a + 1.0, config.smear_sigma, 3) - 1.0
    if config.smear_where == "before_clip":
        return clip(smear(x))
    return smear(clip(x))


def generator_forward(config: GANConfig, gen_params, gen_stats, z, labels, train: bool = False):
    """Images ``G(z, y)`` in [-1, 1] and the (possibly updated) batch statistics.

    Args:
      config: :class:`GANConfig`.
      gen_params, gen_stats: generator parameters and batch statistics.
      z: noise ``(n, latent_dim)``.
      labels: int classes ``(n,)``.
      train: batch norm uses (and updates) the batch's statistics.

    Returns:
      ``(images (n, size, size, bands), gen_stats)``.
    """
    gen = make_generator(config)
    variables = {"params": gen_params}
    if config.gen_norm == "batch":
        variables["batch_stats"] = gen_stats
    if train and config.gen_norm == "batch":
        raw, upd = gen.apply(variables, z, labels, train=True, mutable=["batch_stats"])
        gen_stats = upd["batch_stats"]
    else:
        raw = gen.apply(variables, z, labels, train=False)
    return postprocess(raw, config), gen_stats


def generate(key, config: GANConfig, gen_params, gen_stats, labels):
    """Draw one image per label with the generator (running batch statistics).

    Args:
      key: PRNG key for the noise ``z ~ N(0, I)``.
      config: :class:`GANConfig`.
      gen_params, gen_stats: from a :class:`GANState`.
      labels: int classes ``(n,)`` in ``[0, n_classes)``.

    Returns:
      ``(n, image_size, image_size, bands)`` float32 images in [-1, 1].

    >>> cfg = GANConfig(image_size=16, latent_dim=8)
    >>> s = init_gan(jax.random.key(0), cfg)
    >>> generate(jax.random.key(1), cfg, s.gen_params, s.gen_stats, jnp.arange(4)).shape
    (4, 16, 16, 1)
    """
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels: expected a 1-d integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    z = jax.random.normal(key, (labels.shape[0], config.latent_dim), jnp.float32)
    return generator_forward(config, gen_params, gen_stats, z, labels, train=False)[0]


def critic_scores(config: GANConfig, critic_params, images, labels):
    """``D(x, y)`` for a batch: ``(n,)`` float32."""
    return make_critic(config).apply({"params": critic_params}, images, labels)


def gradient_penalty(critic_fn: Callable, real, fake, eps):
    """WGAN-GP penalty ``mean_i (||grad_x D(x^_i)||_2 - 1)^2`` (Gulrajani et al. 2017, eq. 3).

    The interpolates are ``x^_i = eps_i x_i + (1 - eps_i) x~_i``. Because
    ``critic_fn`` treats images independently (no batch norm), the gradient of
    ``sum_i D(x^_i)`` with respect to ``x^`` holds every per-image gradient.

    Args:
      critic_fn: ``critic_fn(images (n, h, w, c)) -> (n,)`` scores (class bound).
      real: real images ``(n, h, w, c)``.
      fake: generated images, same shape.
      eps: mixing weights ``(n,)`` in [0, 1].

    Returns:
      Scalar penalty (without the weight ``lambda``).

    >>> x = jnp.ones((2, 4, 4, 1))
    >>> float(gradient_penalty(lambda a: jnp.sum(a, axis=(1, 2, 3)), x, -x, jnp.full(2, 0.5)))
    9.0
    """
    eps = eps.astype(real.dtype)[:, None, None, None]
    x_hat = eps * real + (1.0 - eps) * fake
    grads = jax.grad(lambda a: jnp.sum(critic_fn(a)))(x_hat)
    # The epsilon keeps the norm's gradient finite where a gradient is exactly zero.
    norms = jnp.sqrt(jnp.sum(grads**2, axis=(1, 2, 3)) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def critic_loss(key, config: GANConfig, critic_params, real, fake, labels):
    """``L_D = mean D(fake) - mean D(real) + lambda * GP`` and its parts.

    Args:
      key: PRNG key for the interpolation weights ``eps ~ U(0, 1)``.
      config: :class:`GANConfig` (critic type, ``gp_weight``).
      critic_params: critic parameters.
      real, fake: ``(n, h, w, bands)`` images of the classes ``labels``.
      labels: int classes ``(n,)``.

    Returns:
      ``(loss, {"wasserstein": mean D(real) - mean D(fake), "gp": GP})``.
    """
    d = lambda x: critic_scores(config, critic_params, x, labels)
    eps = jax.random.uniform(key, (real.shape[0],), jnp.float32)
    gp = gradient_penalty(d, real, fake, eps)
    w = jnp.mean(d(real)) - jnp.mean(d(fake))
    return -w + config.gp_weight * gp, {"wasserstein": w, "gp": gp}


def generator_loss(key, config: GANConfig, gen_params, gen_stats, critic_params, labels):
    """``L_G = -mean D(G(z, y), y)`` with fresh noise; returns ``(loss, new gen_stats)``."""
    z = jax.random.normal(key, (labels.shape[0], config.latent_dim), jnp.float32)
    fake, gen_stats = generator_forward(config, gen_params, gen_stats, z, labels, train=True)
    return -jnp.mean(critic_scores(config, critic_params, fake, labels)), gen_stats


def make_gan_step(config: GANConfig) -> Callable:
    """Build the pure training kernel ``step(key, state, real, labels) -> (state, metrics)``.

    One call makes ``n_critic`` critic updates (a ``lax.scan`` over the leading
    axis of ``real``, one real batch each, fakes from the current generator) and
    then one generator update on the labels of the last batch. The caller jits it.

    Args:
      config: :class:`GANConfig`.

    Returns:
      ``step`` with ``real (n_critic, batch, h, w, bands)`` float32 in [-1, 1] and
      ``labels (n_critic, batch)`` int; metrics ``critic_loss``, ``wasserstein``,
      ``gp`` (means over the critic updates) and ``gen_loss``.

    >>> cfg = GANConfig(image_size=8, gen_start=4, latent_dim=4, n_critic=1,
    ...                 gen_features=4, critic_features=4)
    >>> step = jax.jit(make_gan_step(cfg))
    >>> s = init_gan(jax.random.key(0), cfg)
    >>> s, m = step(jax.random.key(1), s, jnp.zeros((1, 2, 8, 8, 1)), jnp.zeros((1, 2), int))
    >>> int(s.step)
    1
    """
    config = _check_config(config)
    tx = make_optimizer(config)

    def update(grads, opt_state, params):
        with jax.numpy_dtype_promotion("standard"):  # optax's count arithmetic
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def step(key, state: GANState, real, labels):
        if real.ndim != 5 or real.shape[0] != config.n_critic:
            raise ValueError(
                f"real: expected shape (n_critic={config.n_critic}, batch, h, w, bands), "
                f"got {real.shape}"
            )
        if real.shape[-3:] != config.image_shape:
            raise ValueError(f"real: expected images {config.image_shape}, got {real.shape[-3:]}")
        labels = labels.astype(jnp.int32)
        k_critic, k_gen = jax.random.split(key)

        def critic_update(carry, xs):
            params, opt_state, stats = carry
            k, x, y = xs
            kz, kgp = jax.random.split(k)
            z = jax.random.normal(kz, (x.shape[0], config.latent_dim), jnp.float32)
            # Batch statistics of these critic-step forward passes are discarded.
            fake, _ = generator_forward(config, state.gen_params, stats, z, y, train=True)
            fake = jax.lax.stop_gradient(fake)
            (loss, aux), grads = jax.value_and_grad(
                lambda p: critic_loss(kgp, config, p, x, fake, y), has_aux=True
            )(params)
            params, opt_state = update(grads, opt_state, params)
            return (params, opt_state, stats), {"critic_loss": loss, **aux}

        keys = jax.random.split(k_critic, config.n_critic)
        (c_params, c_opt, _), cm = jax.lax.scan(
            critic_update,
            (state.critic_params, state.critic_opt_state, state.gen_stats),
            (keys, real.astype(jnp.float32), labels),
            # Unrolled: XLA:CPU runs convolutions inside a while loop ~20x slower.
            unroll=True,
        )
        (g_loss, gen_stats), g_grads = jax.value_and_grad(
            lambda p: generator_loss(k_gen, config, p, state.gen_stats, c_params, labels[-1]),
            has_aux=True,
        )(state.gen_params)
        g_params, g_opt = update(g_grads, state.gen_opt_state, state.gen_params)
        new = GANState(state.step + 1, g_params, gen_stats, g_opt, c_params, c_opt)
        metrics = {k: jnp.mean(v) for k, v in cm.items()}
        metrics["gen_loss"] = g_loss
        return new, metrics

    return step
