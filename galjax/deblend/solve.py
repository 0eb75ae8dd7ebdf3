"""The MAP solve of one field (:func:`deblend_field`) and of a chunk of fields in one
compiled call (:func:`deblend_chunk`).

Each field starts from the encoder's latents, is optimised by optax Adam with the
stopping rule of :class:`~galjax.deblend.DeblendConfig` (the loop is
:func:`galjax.core.optim.minimise`; under ``vmap`` a converged field is frozen
while the others go on), then gets the linear flux refit. Each field's
:class:`~galjax.deblend.DeblendStatus` is set here: ``NO_DATA`` (no pixel with
``w > 0``: not fitted, its objective held at 0 so that it stops after ``patience``
steps), ``NONFINITE`` (the objective, the parameters or an output became
non-finite) or ``NOT_CONVERGED``; the outputs of the first two are blanked
(:func:`~galjax.deblend.config.blank_failed`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from galjax.core.optim import minimise
from galjax.deblend.config import (
    DeblendConfig,
    DeblendHyper,
    DeblendResult,
    DeblendStatus,
    blank_failed,
    traced_settings,
)
from galjax.deblend.objective import objective, prior_weights, refit_amplitudes
from galjax.deblend.point import point_latents
from galjax.deblend.render import render_sources
from galjax.image.transforms import cutouts
from galjax.models.store import GalaxyModel
from galjax.models.vae import encode
from galjax.scores.metrics import chi2_per_pixel

__all__ = ["deblend_field", "deblend_chunk", "Z0_MAX"]

#: The encoder's starting latents are clipped to ``[-Z0_MAX, Z0_MAX]``. The prior is about
#: ``N(0, 1)`` per latent and galjax's own fields give ``|z| < 14``; a source far outside
#: the training set (1e4x brighter) can encode to ``|z| ~ 1e4``, where the decoder and the
#: flow are meaningless and the Laplace Hessian overflows.
Z0_MAX = 20.0


def deblend_field(model: GalaxyModel, field, positions, mask, ivar, psf=None,
                  config: DeblendConfig = DeblendConfig(),
                  hyper: DeblendHyper | None = None, point=None) -> DeblendResult:  # fmt: skip
    """Deblend one field (pure; ``vmap`` it or use :func:`~galjax.deblend.deblend`).

    Args:
      model: :class:`~galjax.models.GalaxyModel` (VAE + flow).
      field: ``(h, w, bands)`` image.
      positions: ``(n_max, 2)`` source positions ``(x, y)`` (0-based pixels).
      mask: ``(n_max,)`` bool, real sources.
      ivar: ``(h, w, bands)`` inverse variance (0 on bad pixels).
      psf: ``(ph, pw, bands)`` effective PSF for explicit-PSF models.
      config: :class:`~galjax.deblend.DeblendConfig`.
      hyper: the config's float settings as traced values (how
        :func:`~galjax.deblend.deblend` keeps one compiled solve across prior
        weights, tolerances and learning rates); None reads them from ``config``.
      point: ``(n_max,)`` bool, sources modelled as point sources (the PSF times a
        flux per band, at a fitted sub-pixel offset;
        :func:`~galjax.deblend.point_stamps`) instead of galaxies: stars. They have no
        prior; explicit-PSF models only. None: none.

    Returns:
      :class:`~galjax.deblend.DeblendResult` without the leading field axis; its
      ``status`` has ``NO_DATA``, ``NONFINITE`` or ``NOT_CONVERGED`` set (module
      docstring), never ``MASKED_PIXELS`` (:func:`~galjax.deblend.deblend` adds it).
    """
    cfg = config
    hp = traced_settings(cfg, field.dtype) if hyper is None else hyper
    vcfg = model.vae_config
    init = model.init_params if (cfg.use_init_encoder and model.init_params is not None) else None
    enc_params = model.vae_params if init is None else init
    z0, _ = encode(enc_params, vcfg, cutouts(field, positions, vcfg.stamp_size))
    z0 = jnp.where(mask[:, None], jnp.clip(z0, -Z0_MAX, Z0_MAX), 0.0)
    weights = jax.lax.stop_gradient(
        prior_weights(model, z0, field, positions, mask, ivar, psf, cfg, hp)
    )
    if point is not None:
        z0 = jnp.where((mask & point)[:, None], point_latents(field, positions, psf, z0.shape[-1]),
                       z0)  # fmt: skip
        weights = jnp.where(point, 0.0, weights)

    has_data = jnp.any(ivar > 0)

    def loss(z):
        # A field without data is not fitted: a constant objective stops it at once.
        value = objective(z, model, field, positions, mask, ivar, psf, cfg, weights, point)
        return jnp.where(has_data, value, 0.0)

    # lr_t = learning_rate * decay^(t / n_steps) (optax.exponential_decay, with traced values)
    tx = optax.adam(lambda t: hp.learning_rate * hp.decay ** (t / cfg.n_steps))
    z, info = minimise(loss, z0, tx, cfg.n_steps, tol=hp.tol, patience=cfg.patience)
    h, w = field.shape[0], field.shape[1]
    models = render_sources(model.vae_params, vcfg, z, positions, mask, h, w, psf, point)
    amp = jnp.ones((mask.shape[0], field.shape[-1]), field.dtype)
    if cfg.refit_fluxes:
        amp = refit_amplitudes(models, field, ivar, mask)
        models = models * amp[:, None, None, :]
    resid = field - jnp.sum(models, axis=0)
    res = DeblendResult(
        models=models,
        latents=z,
        fluxes=jnp.sum(models, axis=(1, 2)),
        residual=resid,
        chi2=chi2_per_pixel(resid, ivar=ivar),
        loss_history=info.history,
        converged=info.converged,
        n_iter=info.n_steps,
        mask=mask,
        amplitudes=amp,
        prior_weights=jnp.where(mask, weights, 0.0),
        point=jnp.zeros_like(mask) if point is None else mask & point,
        status=jnp.zeros((), jnp.int32),
    )
    outputs = (res.models, res.latents, res.fluxes, res.residual, res.chi2, res.amplitudes)
    finite = info.finite & jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in outputs]))
    flag = lambda c, f: jnp.where(c, jnp.int32(f), jnp.int32(0))  # noqa: E731
    status = jnp.where(
        has_data,
        flag(~finite, DeblendStatus.NONFINITE)
        | flag(finite & ~info.converged, DeblendStatus.NOT_CONVERGED),
        jnp.int32(DeblendStatus.NO_DATA),
    )
    return blank_failed(res._replace(status=status), field)


@functools.partial(jax.jit, static_argnames=("config", "group"))
def deblend_chunk(model: GalaxyModel, fields, positions, mask, ivar, psf,
                  config: DeblendConfig, group: int | None = None,
                  hyper: DeblendHyper | None = None, point=None) -> DeblendResult:  # fmt: skip
    """All fields of a chunk in one compiled call: vmapped, in groups of ``group``.

    With ``group`` smaller than the chunk the groups run one after another
    (``lax.map``): each group's intermediates stay small enough for a CPU's cache,
    and each group stops with its own slowest field. One compilation per model
    structure (its configs are static), array shapes, ``config`` (use
    :func:`~galjax.deblend.config.static_config`) and ``group``.

    Args:
      model: :class:`~galjax.models.GalaxyModel`, traced (its configs static).
      fields: ``(m, h, w, bands)``; positions: ``(m, k, 2)``; mask: ``(m, k)``;
        ivar: ``(m, h, w, bands)``.
      psf: ``(ph, pw, bands)`` shared, ``(m, ph, pw, bands)`` per field, or None.
      config: static :class:`~galjax.deblend.DeblendConfig`.
      group: fields per vmapped group (None: the whole chunk).
      hyper: traced float settings (:class:`~galjax.deblend.config.DeblendHyper`);
        None takes them from ``config`` as constants.
      point: ``(m, k)`` bool point sources, or None.

    Returns:
      :class:`~galjax.deblend.DeblendResult` with leading axis ``m``.
    """
    fn = lambda f, p, m, iv, ps, pt: deblend_field(model, f, p, m, iv, ps, config, hyper, pt)
    per_field_psf = psf is not None and psf.ndim == 4
    if group is None or group >= fields.shape[0]:
        psf_axis = 0 if per_field_psf else None
        pt_axis = None if point is None else 0
        return jax.vmap(fn, in_axes=(0, 0, 0, 0, psf_axis, pt_axis))(
            fields, positions, mask, ivar, psf, point
        )
    xs = (fields, positions, mask, ivar, psf if per_field_psf else None, point)

    def one(a):
        f, p, m, iv, ps, pt = a
        return fn(f, p, m, iv, ps if per_field_psf else psf, pt)

    return jax.lax.map(one, xs, batch_size=group)
