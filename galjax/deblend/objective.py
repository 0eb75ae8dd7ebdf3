"""The MAP objective of one field, its per-source prior weights and the flux refit.

Biswas et al. (MADNESS): with a decoder ``f`` and a flow prior ``p(z)``, the
sources ``Z = (z_1, ..., z_n)`` of a field ``y`` minimise

    L(Z) = 1/2 sum_p w_p (y_p - sum_i place(f(z_i), x_i)_p)^2 - sum_i lambda_i log p(z_i),

``w_p = 1 / sigma_p^2`` the inverse variance (0 on masked pixels), ``place`` the
drawing of :func:`~galjax.deblend.render.render_sources` and ``lambda_i`` each
source's prior weight (:func:`prior_weights`).
"""

from __future__ import annotations

import jax.numpy as jnp

from galjax.deblend.config import DeblendConfig, DeblendHyper, traced_settings
from galjax.deblend.render import render_sources
from galjax.models.flow import log_prior
from galjax.models.store import GalaxyModel

__all__ = ["objective", "prior_weights", "refit_amplitudes"]

_REFIT_RIDGE = 1e-3


def objective(z, model: GalaxyModel, field, positions, mask, ivar, psf, config: DeblendConfig,
              weights=None, point=None):  # fmt: skip
    """The MAP objective ``L(Z)`` of one field (module docstring): a scalar.

    Args:
      z: ``(n_max, latent_dim)`` latents.
      model: the :class:`~galjax.models.GalaxyModel` (its flow is the prior; none: no
        prior term).
      field: ``(h, w, bands)`` image.
      positions: ``(n_max, 2)`` ``(x, y)`` pixels.
      mask: ``(n_max,)`` bool, real sources.
      ivar: ``(h, w, bands)`` inverse variance ``w_p``.
      psf: ``(ph, pw, bands)`` effective PSF for explicit-PSF models, or None.
      config: its ``prior_weight`` and ``prior_weight_faint`` both 0 (or None) drop
        the prior term; ``prior_weight`` is the default weight.
      weights: ``(n_max,)`` per-source prior weights ``lambda_i`` (default
        ``config.prior_weight`` for all).
      point: ``(n_max,)`` bool, point sources (no prior term), or None.
    """
    h, w = field.shape[0], field.shape[1]
    models = render_sources(model.vae_params, model.vae_config, z, positions, mask, h, w, psf,
                            point)  # fmt: skip
    resid = field - jnp.sum(models, axis=0)
    chi2 = 0.5 * jnp.sum(ivar * resid**2)
    if model.flow_params is None or (config.prior_weight == 0 and not config.prior_weight_faint):
        return chi2
    galaxy = mask if point is None else mask & ~point
    lp = log_prior(model.flow_params, model.flow_config, jnp.where(galaxy[:, None], z, 0.0))
    weights = config.prior_weight if weights is None else weights
    return chi2 - jnp.sum(jnp.where(galaxy, weights * lp, 0.0))


def prior_weights(model: GalaxyModel, z0, field, positions, mask, ivar, psf,
                  config: DeblendConfig, hyper: DeblendHyper | None = None):  # fmt: skip
    """Per-source prior weights ``lambda_i`` from the initial models' SNR: ``(n_max,)``.

    The matched-filter SNR of source ``i``'s initial (encoder) model ``m_i`` is
    ``s_i = sqrt(sum_p w_p m_ip^2)``; with ``t = clip((log s_i - log lo) / (log hi - log lo),
    0, 1)`` and ``(lo, hi) = faint_snr``,

        lambda_i = prior_weight_faint + t (prior_weight - prior_weight_faint).

    With ``prior_weight_faint`` None every source gets ``prior_weight``.

    Args:
      model: the model; z0: ``(n_max, latent_dim)`` initial latents.
      field, positions, mask, ivar, psf: as for :func:`objective`.
      config: :class:`~galjax.deblend.DeblendConfig`.
      hyper: the float settings as traced values (None: read from ``config``).
    """
    hp = traced_settings(config, field.dtype) if hyper is None else hyper
    if config.prior_weight_faint is None:
        return jnp.full(mask.shape, hp.prior_weight, field.dtype)
    h, w = field.shape[0], field.shape[1]
    m0 = render_sources(model.vae_params, model.vae_config, z0, positions, mask, h, w, psf)
    snr = jnp.sqrt(jnp.sum(m0**2 * ivar[None], axis=(1, 2, 3)))
    lo, hi = jnp.log(hp.faint_snr[0]), jnp.log(hp.faint_snr[1])
    t = jnp.clip((jnp.log(jnp.maximum(snr, 1e-6)) - lo) / (hi - lo), 0.0, 1.0)
    return hp.prior_weight_faint + t * (hp.prior_weight - hp.prior_weight_faint)


def refit_amplitudes(models, field, ivar, mask, ridge: float = _REFIT_RIDGE):
    """Per-source, per-band amplitudes of fixed model shapes by weighted least squares.

    Minimises ``sum_p w_p (y_p - sum_i a_ib m_ip)^2 + ridge sum_i G_ii (a_ib - 1)^2``
    band by band, with ``G_ij = sum_p w_p m_ip m_jp``: the normal equations
    ``(G + ridge diag G) a = r + ridge diag G`` (``r_i = sum_p w_p m_ip y_p``). The small
    ridge towards 1 keeps nearly degenerate pairs (sources on top of each other)
    from trading flux wildly; amplitudes are clipped at 0. Sources that are masked
    or have an empty model keep ``a = 1``. Pure; one field (vmap for many).

    Args:
      models: ``(n_max, h, w, bands)`` source models in the field.
      field: ``(h, w, bands)`` data.
      ivar: ``(h, w, bands)`` weights ``w_p``.
      mask: ``(n_max,)`` real sources.
      ridge: relative weight of the pull towards ``a = 1``, >= 0; default 1e-3.

    Returns:
      ``(n_max, bands)`` amplitudes.

    >>> import jax.numpy as jnp
    >>> m = jnp.zeros((1, 4, 4, 1)).at[0, 1, 1, 0].set(1.0)
    >>> a = refit_amplitudes(m, 3.0 * m[0], jnp.ones((4, 4, 1)), jnp.array([True]), ridge=0.0)
    >>> round(float(a[0, 0]), 4)
    3.0
    """
    m = models * mask.astype(models.dtype)[:, None, None, None]
    gram = jnp.einsum("ihwb,jhwb,hwb->bij", m, m, ivar)
    rhs = jnp.einsum("ihwb,hwb->bi", m, ivar * field)
    diag = jnp.diagonal(gram, axis1=-2, axis2=-1)  # (b, n_max)
    empty = diag <= 1e-12 * jnp.maximum(jnp.max(diag), 1e-30)
    reg = ridge * diag + empty.astype(diag.dtype)  # empty sources: a = 1 exactly
    eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)[None]
    a = jnp.linalg.solve(gram + reg[..., None] * eye, (rhs + reg)[..., None])[..., 0]
    return jnp.maximum(a, 0.0).T
