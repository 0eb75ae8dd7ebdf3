"""Variational autoencoder of galaxy images with a per-pixel Gaussian likelihood.

Regier, McAuliffe & Prabhat (VAE galaxy model): ``z ~ N(0, I)``,
``x | z ~ N(f_mu(z), diag f_sigma(z)^2)``, ``q(z | x) = N(g_mu(x), diag g_sigma(x)^2)``,
trained on the evidence lower bound

    ELBO(x) = E_q[log N(x; f_mu(z), f_sigma(z)^2)] - beta KL(q(z|x) || N(0, I)),

with the reparameterisation ``z = g_mu + g_sigma * eps`` and the closed-form KL
``KL = 1/2 sum(g_mu^2 + g_sigma^2 - 1 - 2 log g_sigma)``.

Two likelihoods: ``"learned"`` (the decoder also outputs ``log f_sigma``, the
talk's model) and ``"fixed"`` (known per-pixel noise, sky plus Poisson; with a
noiseless target this is MADNESS's denoising training). With ``psf_explicit``
the decoder draws the galaxy before the PSF and the likelihood convolves it with
the field's PSF, so one model serves fields with different PSFs.

Linen modules hold only the architectures; ``encode``, ``decode``, ``elbo`` and
``sample`` are pure functions of ``params``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ..sim.psf import convolve_fft

__all__ = [
    "VAEConfig",
    "VAE",
    "init_vae",
    "encode",
    "decode",
    "reconstruct",
    "elbo",
    "kl_normal",
    "gaussian_loglik",
    "sample",
    "traverse",
    "ElboTerms",
    "canonical_conv",
    "REGIER_MLP",
    "LSST_CONV",
]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture and likelihood of a galaxy VAE.

    Attributes:
      arch: ``"conv"`` (strided-conv encoder, dense + transposed-conv decoder) or
        ``"mlp"`` (two hidden ReLU layers each way, as in Regier et al.).
      stamp_size: stamp side in pixels (odd).
      bands: number of bands.
      latent_dim: dimension of ``z``.
      hidden: MLP hidden widths (``arch="mlp"``, and the dense layer of conv nets).
      enc_channels: conv encoder channels, one stride-2 3x3 conv per entry.
      dec_channels: decoder channels, one stride-2 transposed conv per entry,
        starting from a ``dec_start x dec_start`` grid.
      dec_start: side of the decoder's first feature map.
      likelihood: ``"learned"`` (decoder outputs ``log f_sigma``) or ``"fixed"``.
      scale: flux units per network unit: images are divided by ``scale`` on the
        way in and decoder outputs multiplied by it on the way out.
      psf_explicit: the decoder models the galaxy before the PSF.
      min_log_sigma: floor of the learned ``log f_sigma`` (in flux units, log).
      positive: pass ``f_mu`` through a ReLU, so the model is exactly zero where
        the galaxy has no light. Without it a decoder leaves a faint pedestal
        (~1e-2 sigma per pixel) that the MAP can use to fit noise, biasing faint
        fluxes high.
    """

    arch: str = "conv"
    stamp_size: int = 45
    bands: int = 1
    latent_dim: int = 16
    hidden: tuple[int, ...] = (256,)
    enc_channels: tuple[int, ...] = (16, 32, 64, 64)
    dec_channels: tuple[int, ...] = (32, 16, 8)
    dec_start: int = 6
    likelihood: str = "fixed"
    scale: float = 100.0
    psf_explicit: bool = False
    min_log_sigma: float = -5.0
    positive: bool = False

    def __post_init__(self):
        if self.arch not in ("conv", "mlp"):
            raise ValueError(f"arch: expected 'conv' or 'mlp', got {self.arch!r}")
        if self.likelihood not in ("learned", "fixed"):
            raise ValueError(f"likelihood: expected 'learned' or 'fixed', got {self.likelihood!r}")
        if self.latent_dim < 1 or self.bands < 1 or self.stamp_size < 4:
            raise ValueError("latent_dim and bands must be >= 1 and stamp_size >= 4")
        if self.arch == "conv" and self.dec_start * 2 ** len(self.dec_channels) < self.stamp_size:
            side = self.dec_start * 2 ** len(self.dec_channels)
            raise ValueError(
                f"dec_start * 2**len(dec_channels) = {side} must cover stamp_size = "
                f"{self.stamp_size}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        d = dict(d)
        for k in ("hidden", "enc_channels", "dec_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


#: The talk's model: 69x69 stamps, two hidden layers of 128 ReLU units, 8-d latent.
REGIER_MLP = VAEConfig(
    arch="mlp", stamp_size=69, latent_dim=8, hidden=(128, 128), likelihood="learned"
)

#: Default deblending model: 45x45 LSST-like stamps, 16-d latent, convolutional.
LSST_CONV = VAEConfig()


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _conv(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation):
    """NHWC/HWIO ``lax.conv_general_dilated`` whose input gradient keeps an HWIO kernel.

    Reverse mode transposes the tangent map ``dx -> dx * K``: the input gradient
    is ``g`` convolved with ``K`` flipped in space and with its feature axes swapped.
    JAX expresses that swap through the kernel's dimension labels (``01oi``), and
    XLA's CPU backend runs such a convolution on a slow generic path when it sits
    inside a ``while`` loop, as in the MAP loop of ``deblend`` (about 2x slower per
    step). Here the tangent map convolves with the kernel materialised with its
    feature axes swapped (``HWOI``), so that its transpose, the input gradient, is a
    canonical ``HWIO`` convolution. The same numbers; forward mode works as usual.
    """
    return lax.conv_general_dilated(
        lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers=_NHWC
    )


def _conv_jvp(strides, padding, lhs_dilation, rhs_dilation, primals, tangents):
    lhs, rhs = primals
    d_lhs, d_rhs = tangents
    conv = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation)  # fmt: skip
    out = conv(lhs, rhs, dimension_numbers=_NHWC)
    d_out = jnp.zeros_like(out)
    if not isinstance(d_lhs, SymbolicZero):
        rhs_t = jnp.swapaxes(rhs, 2, 3)  # (h, w, out, in)
        d_out = d_out + conv(d_lhs, rhs_t, dimension_numbers=("NHWC", "HWOI", "NHWC"))
    if not isinstance(d_rhs, SymbolicZero):  # the kernel's tangent (training)
        d_out = d_out + conv(lhs, d_rhs, dimension_numbers=_NHWC)
    return out, d_out


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, precision=None):  # fmt: skip
    """``lax.conv_general_dilated`` for Flax's NHWC/HWIO convolutions, fast inside loops.

    Pass it as ``nn.Conv(..., conv_general_dilated=canonical_conv)``. The values and
    both derivatives equal lax's; only the input gradient is written with an
    explicitly transposed kernel (see :func:`_conv`), which XLA's CPU backend runs
    about 2x faster inside a ``while`` loop such as the MAP loop of ``deblend``.
    """
    if feature_group_count != 1:
        raise ValueError("feature_group_count: only 1 is supported")
    nd = lhs.ndim - 2
    tup = lambda v: tuple(int(a) for a in (v if v is not None else (1,) * nd))
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tup(window_strides), pads, tup(lhs_dilation), tup(rhs_dilation))


def _conv_transpose(features: int, name: str):
    """``nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME")`` with
    :func:`canonical_conv`: the same parameters (kernel ``(3, 3, in, out)``, bias),
    the same output (lax's SAME transpose padding for k = 3, s = 2 is (2, 1))."""
    return nn.Conv(features, (3, 3), padding=((2, 1), (2, 1)), input_dilation=(2, 2),
                   conv_general_dilated=canonical_conv, name=name)  # fmt: skip


class _Encoder(nn.Module):
    cfg: VAEConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        lead = x.shape[:-3]
        h = x.reshape((-1,) + x.shape[-3:])
        if cfg.arch == "conv":
            for c in cfg.enc_channels:
                h = nn.leaky_relu(nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME")(h))
            h = h.reshape(h.shape[0], -1)
            for w in cfg.hidden:
                h = nn.leaky_relu(nn.Dense(w)(h))
        else:
            h = h.reshape(h.shape[0], -1)
            for w in cfg.hidden:
                h = nn.relu(nn.Dense(w)(h))
        mu = nn.Dense(cfg.latent_dim)(h)
        log_sigma = nn.Dense(cfg.latent_dim)(h)
        return mu.reshape(lead + (-1,)), log_sigma.reshape(lead + (-1,))


class _Decoder(nn.Module):
    cfg: VAEConfig

    @nn.compact
    def __call__(self, z):
        cfg = self.cfg
        s, b = cfg.stamp_size, cfg.bands
        n_out = 2 * b if cfg.likelihood == "learned" else b
        lead = z.shape[:-1]
        h = z.reshape(-1, z.shape[-1])
        if cfg.arch == "conv":
            for w in cfg.hidden:
                h = nn.leaky_relu(nn.Dense(w)(h))
            c0 = cfg.dec_channels[0]
            h = nn.leaky_relu(nn.Dense(cfg.dec_start**2 * c0)(h))
            h = h.reshape(-1, cfg.dec_start, cfg.dec_start, c0)
            for i, c in enumerate(cfg.dec_channels):
                h = nn.leaky_relu(_conv_transpose(c, f"ConvTranspose_{i}")(h))
            h = nn.Conv(n_out, (3, 3), padding=((1, 1), (1, 1)), name="Conv_0",
                        conv_general_dilated=canonical_conv)(h)  # fmt: skip
            off = (h.shape[1] - s) // 2
            h = h[:, off : off + s, off : off + s, :]
        else:
            for w in reversed(cfg.hidden):
                h = nn.relu(nn.Dense(w)(h))
            h = nn.Dense(s * s * n_out)(h).reshape(-1, s, s, n_out)
        return h.reshape(lead + (s, s, n_out))


class VAE(nn.Module):
    """Encoder and decoder of a galaxy VAE (architecture only; maths in functions)."""

    cfg: VAEConfig

    def setup(self):
        self.encoder = _Encoder(self.cfg)
        self.decoder = _Decoder(self.cfg)

    def __call__(self, x):
        mu, _ = self.encoder(x)
        return self.decoder(mu)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def init_vae(key, config: VAEConfig):
    """Initialise VAE parameters for ``config``.

    >>> params = init_vae(jax.random.key(0), VAEConfig(stamp_size=21, latent_dim=4))
    """
    x = jnp.zeros((1, config.stamp_size, config.stamp_size, config.bands), jnp.float32)
    return VAE(config).init(key, x)["params"]


def encode(params, config: VAEConfig, x):
    """Posterior ``q(z | x)``: ``(g_mu, g_log_sigma)``, each ``(..., latent_dim)``.

    Args:
      x: ``(..., s, s, bands)`` images in flux units (divided by ``config.scale``
        inside).
    """
    return VAE(config).apply({"params": params}, x / config.scale, method=VAE.encode)


def decode(params, config: VAEConfig, z):
    """Decoder ``(f_mu, f_log_sigma)`` in flux units, each ``(..., s, s, bands)``.

    ``f_log_sigma`` is None for the fixed-noise likelihood. With ``psf_explicit``
    ``f_mu`` is the galaxy before the PSF.
    """
    out = VAE(config).apply({"params": params}, z, method=VAE.decode)
    b = config.bands
    f_mu = out[..., :b] * config.scale
    if config.positive:
        f_mu = jax.nn.relu(f_mu)
    if config.likelihood == "learned":
        # softplus-free floor keeps sigma > 0 and the log-likelihood bounded.
        log_sigma = jnp.log(config.scale) + out[..., b:]
        return f_mu, jnp.maximum(log_sigma, config.min_log_sigma)
    return f_mu, None


def reconstruct(params, config: VAEConfig, x, psf=None):
    """Reconstruction ``f_mu(g_mu(x))`` (convolved with ``psf`` for explicit-PSF models)."""
    mu, _ = encode(params, config, x)
    f_mu, _ = decode(params, config, mu)
    if config.psf_explicit:
        f_mu = convolve_fft(f_mu, _require_psf(psf))
    return f_mu


def _require_psf(psf):
    if psf is None:
        raise ValueError("psf: this model has psf_explicit=True and needs the field's PSF")
    return psf


def kl_normal(mu, log_sigma):
    """``KL(N(mu, sigma^2) || N(0, 1))`` summed over the last axis."""
    return 0.5 * jnp.sum(mu**2 + jnp.exp(2.0 * log_sigma) - 1.0 - 2.0 * log_sigma, axis=-1)


def gaussian_loglik(x, mean, log_sigma=None, sigma=None, mask=None):
    """``sum log N(x; mean, sigma^2)`` over the last three axes ``(h, w, bands)``.

    Give ``log_sigma`` (learned) or ``sigma`` (known noise); ``mask`` (0/1)
    removes pixels from the sum.
    """
    if log_sigma is None:
        log_sigma = jnp.log(sigma)
    r = (x - mean) * jnp.exp(-log_sigma)
    ll = -0.5 * r**2 - log_sigma - 0.5 * jnp.log(2.0 * jnp.pi)
    if mask is not None:
        ll = ll * mask
    return jnp.sum(ll, axis=(-3, -2, -1))


class ElboTerms(NamedTuple):
    """Per-image ELBO terms: ``elbo = loglik - kl_weight * kl``."""

    elbo: jax.Array
    loglik: jax.Array
    kl: jax.Array


def elbo(key, params, config: VAEConfig, x, target=None, sigma=None, psf=None, kl_weight=1.0,
         mask=None):  # fmt: skip
    """Evidence lower bound per image, one reparameterised sample.

    Args:
      key: PRNG key for ``eps``.
      params: VAE parameters.
      config: :class:`VAEConfig`.
      x: ``(..., s, s, bands)`` encoder input (noisy images).
      target: image the likelihood scores; ``x`` when None (the talk's VAE),
        the noiseless galaxy for denoising training (MADNESS).
      sigma: per-pixel noise std, required for ``likelihood="fixed"``.
      psf: ``(ph, pw, bands)`` effective PSF for ``psf_explicit`` models.
      kl_weight: ``beta`` in front of the KL term.
      mask: optional ``(..., s, s, bands)`` 0/1 pixel weights of the likelihood
        (e.g. 0 on padding around a stamp smaller than ``s``).

    Returns:
      :class:`ElboTerms` with shape ``x.shape[:-3]``.
    """
    target = x if target is None else target
    mu, log_sigma = encode(params, config, x)
    z = mu + jnp.exp(log_sigma) * jax.random.normal(key, mu.shape, mu.dtype)
    f_mu, f_log_sigma = decode(params, config, z)
    if config.psf_explicit:
        f_mu = convolve_fft(f_mu, _require_psf(psf))
    if config.likelihood == "learned":
        ll = gaussian_loglik(target, f_mu, log_sigma=f_log_sigma, mask=mask)
    else:
        if sigma is None:
            raise ValueError("sigma: the fixed-noise likelihood needs the per-pixel noise std")
        ll = gaussian_loglik(target, f_mu, sigma=sigma, mask=mask)
    kl = kl_normal(mu, log_sigma)
    return ElboTerms(ll - kl_weight * kl, ll, kl)


def sample(key, params, config: VAEConfig, n: int, psf=None):
    """Draw ``n`` galaxies ``f_mu(z)``, ``z ~ N(0, I)``: ``(n, s, s, bands)``."""
    z = jax.random.normal(key, (n, config.latent_dim))
    f_mu, _ = decode(params, config, z)
    if config.psf_explicit:
        f_mu = convolve_fft(f_mu, _require_psf(psf))
    return f_mu


def traverse(params, config: VAEConfig, z=None, dims=None, n_steps: int = 7, span: float = 3.0,
             psf=None):  # fmt: skip
    """Latent traversals: decode ``z + t e_d`` for ``t`` in ``[-span, span]`` (prior sigmas).

    Args:
      params: VAE parameters; config: :class:`VAEConfig`.
      z: ``(latent_dim,)`` starting point (default the prior mean, 0).
      dims: latent dimensions to traverse (default all).
      n_steps: values of ``t`` per dimension (odd keeps ``t = 0`` in the middle).
      span: largest ``|t|`` in units of the prior's standard deviation (1).
      psf: effective PSF for explicit-PSF models.

    Returns:
      ``(len(dims), n_steps, s, s, bands)`` decoded means ``f_mu``, one row per dimension.
    """
    d = config.latent_dim
    z = jnp.zeros((d,), jnp.float32) if z is None else jnp.asarray(z, jnp.float32)
    if z.shape != (d,):
        raise ValueError(f"z: expected shape ({d},), got {z.shape}")
    dims = list(range(d)) if dims is None else [int(i) for i in dims]
    if any(not 0 <= i < d for i in dims):
        raise ValueError(f"dims: expected indices in [0, {d}), got {dims}")
    if n_steps < 2 or not span > 0:
        raise ValueError("n_steps must be >= 2 and span > 0")
    t = jnp.linspace(-span, span, n_steps, dtype=jnp.float32)
    eye = jnp.eye(d, dtype=jnp.float32)[jnp.asarray(dims)]  # (k, d)
    zs = z[None, None, :] + t[None, :, None] * eye[:, None, :]
    f_mu, _ = decode(params, config, zs.reshape(-1, d))
    if config.psf_explicit:
        f_mu = convolve_fft(f_mu, _require_psf(psf))
    return f_mu.reshape((len(dims), n_steps) + f_mu.shape[1:])
