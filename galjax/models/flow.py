"""Normalizing-flow prior on the VAE's latent space (distrax, coupling layers).

Biswas et al.: the flow models the distribution of the encoder's posterior means
of isolated galaxies and gives ``log p(z)`` for the MAP objective (galjax fits it to
draws from each ``q(z | x)`` by default, which smooths the sheet the means lie on;
see ``galjax train flow --posterior-samples``). The flow is a
``distrax.Transformed`` standard normal through a chain of affine coupling layers
(RealNVP): each layer keeps a fixed random half of the coordinates and maps the
other half by ``y = x * exp(s(x_keep)) + t(x_keep)``. The conditioners' last
layers are zero-initialised, so training starts from the identity.
"""

from __future__ import annotations

import contextlib
import dataclasses

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FlowConfig", "FlowPrior", "init_flow", "log_prior", "sample_prior", "flow_distribution"]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Coupling-flow hyperparameters.

    Attributes:
      dim: latent dimension.
      n_layers: coupling layers (MADNESS uses 6 MAF layers).
      hidden: conditioner MLP widths.
      max_log_scale: bound on ``|s|`` through ``tanh`` (keeps early training stable).
      seed: seed of the fixed random masks.
    """

    dim: int = 16
    n_layers: int = 6
    hidden: tuple[int, ...] = (128, 128)
    max_log_scale: float = 3.0
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FlowConfig:
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)

    def masks(self) -> np.ndarray:
        """``(n_layers, dim)`` boolean masks: True coordinates condition the others."""
        rng = np.random.default_rng(self.seed)
        out = []
        for i in range(self.n_layers):
            if i % 2 == 0:
                m = np.zeros(self.dim, bool)
                m[rng.permutation(self.dim)[: self.dim // 2]] = True
            else:
                m = ~out[-1]
            out.append(m)
        return np.stack(out)


class _Conditioner(nn.Module):
    dim: int
    hidden: tuple[int, ...]
    max_log_scale: float

    @nn.compact
    def __call__(self, x):
        h = x
        for w in self.hidden:
            h = nn.gelu(nn.Dense(w)(h))
        out = nn.Dense(2 * self.dim, kernel_init=nn.initializers.zeros)(h)
        out = out.reshape(x.shape[:-1] + (self.dim, 2))
        shift = out[..., 0]
        log_scale = self.max_log_scale * jnp.tanh(out[..., 1] / self.max_log_scale)
        return jnp.stack([shift, log_scale], axis=-1)


def _affine(params):
    return distrax.ScalarAffine(shift=params[..., 0], log_scale=params[..., 1])


class FlowPrior(nn.Module):
    """Linen module holding the conditioners; ``__call__(z)`` returns ``log p(z)``."""

    cfg: FlowConfig

    def setup(self):
        c = self.cfg
        self.conditioners = [
            _Conditioner(c.dim, c.hidden, c.max_log_scale) for _ in range(c.n_layers)
        ]

    def distribution(self) -> distrax.Transformed:
        layers = [
            distrax.MaskedCoupling(mask=jnp.asarray(m), conditioner=cond, bijector=_affine)
            for m, cond in zip(self.cfg.masks(), self.conditioners, strict=True)
        ]
        base = distrax.MultivariateNormalDiag(
            jnp.zeros(self.cfg.dim, jnp.float32), jnp.ones(self.cfg.dim, jnp.float32)
        )
        return distrax.Transformed(base, distrax.Chain(layers))

    def __call__(self, z):
        return self.distribution().log_prob(z)

    def sample(self, key, n: int):
        return self.distribution().sample(seed=key, sample_shape=(n,))


@contextlib.contextmanager
def _distrax_rules():
    # distrax broadcasts implicitly and mixes Python floats with int32; galjax's tests
    # make both errors, so relax them for the third-party code only.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def init_flow(key, config: FlowConfig):
    """Initialise flow parameters (the flow is the identity at initialisation)."""
    with _distrax_rules():
        return FlowPrior(config).init(key, jnp.zeros((1, config.dim), jnp.float32))["params"]


def log_prior(params, config: FlowConfig, z):
    """``log p(z)`` of latents ``(..., dim)`` under the flow, shape ``z.shape[:-1]``.

    >>> cfg = FlowConfig(dim=4, n_layers=2, hidden=(8,))
    >>> p = init_flow(jax.random.key(0), cfg)
    >>> float(log_prior(p, cfg, jnp.zeros(4)))  # identity flow: standard normal
    -3.67...
    """
    with _distrax_rules():
        return FlowPrior(config).apply({"params": params}, z)


def sample_prior(key, params, config: FlowConfig, n: int):
    """Draw ``n`` latents ``(n, dim)`` from the flow."""
    with _distrax_rules():
        return FlowPrior(config).apply({"params": params}, key, n, method=FlowPrior.sample)


def flow_distribution(params, config: FlowConfig) -> distrax.Transformed:
    """The bound ``distrax.Transformed`` distribution (for ``log_prob``/``sample`` calls)."""
    return FlowPrior(config).bind({"params": params}).distribution()
