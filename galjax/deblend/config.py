"""Deblender settings and output: :class:`DeblendConfig`, :class:`DeblendResult`.

The float settings of a config travel into the compiled solve as traced scalars
(:class:`DeblendHyper`, :func:`traced_settings`); the rest of the config is the
solve's static key (:func:`static_config`), so that sweeping a learning rate, a
tolerance or a prior weight does not recompile.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "DeblendConfig",
    "DeblendResult",
    "DeblendStatus",
    "status_text",
    "FAILED",
    "blank_failed",
    "DeblendHyper",
    "traced_settings",
    "static_config",
]


class DeblendStatus(enum.IntFlag):
    """Bit flags of :attr:`DeblendResult.status`, one set per field.

    Attributes:
      OK: 0, nothing to report.
      NOT_CONVERGED: 1, the stopping rule did not fire within ``n_steps``.
      NONFINITE: 2, the objective or the parameters became non-finite during the
        solve, or an output was non-finite: the field's numbers are not reported
        (:func:`blank_failed`).
      NO_DATA: 4, the field had no usable pixel (every weight 0 after masking): not
        fitted, its numbers not reported.
      MASKED_PIXELS: 8, some pixels were masked as non-finite or absurd
        (``|y| sqrt(w) > 1e8``); informational.

    >>> DeblendStatus(9)
    <DeblendStatus.NOT_CONVERGED|MASKED_PIXELS: 9>
    """

    OK = 0
    NOT_CONVERGED = 1
    NONFINITE = 2
    NO_DATA = 4
    MASKED_PIXELS = 8


#: The flags of a field whose numbers are not reported (NaN fluxes and chi^2).
FAILED = DeblendStatus.NONFINITE | DeblendStatus.NO_DATA


def status_text(code: int) -> str:
    """A status code as text: ``"ok"`` or the names of its flags, lower case, joined by ``|``.

    >>> status_text(0), status_text(DeblendStatus.NOT_CONVERGED | DeblendStatus.MASKED_PIXELS)
    ('ok', 'not_converged|masked_pixels')
    """
    code = int(code)
    names = [f.name.lower() for f in DeblendStatus if f.value and code & f.value]
    return "|".join(names) or "ok"


@dataclasses.dataclass(frozen=True)
class DeblendConfig:
    """Settings of the MAP optimisation of :func:`~galjax.deblend.deblend`.

    The solve minimises, per field, the objective of :mod:`galjax.deblend.objective`

        L(Z) = 1/2 sum_p w_p (y_p - sum_i m_i(z_i)_p)^2 - sum_i lambda_i log p(z_i)

    (``w_p`` the inverse variance, ``m_i(z) = place(f(z), x_i)`` source ``i``'s image
    decoded by ``f`` and placed at its position, ``p`` the flow prior, ``lambda_i`` the
    per-source prior weight) by Adam with the learning rate
    ``lr_t = learning_rate * decay^(t / n_steps)`` (``t`` the step), stopping after
    ``patience`` steps in a row without a relative improvement of ``tol``: a step
    improves when ``L_t < L_best - tol |L_best|`` (:func:`galjax.core.optim.minimise`).
    The measured effect of each default (accuracy, speed) is in
    ``benchmarks/README.md``, sections "Deblending quality" and "Deblending speed".

    Attributes:
      n_steps: most Adam steps per field, >= 1; default 200 (MADNESS's count).
      learning_rate: Adam step size at ``t = 0``, in latent units (the prior is
        about ``N(0, 1)`` per latent), > 0; default 0.05 (MADNESS's).
      decay: factor of the learning rate reached at ``t = n_steps`` (exponential
        decay), in (0, 1]; default 0.1.
      tol: relative loss improvement that counts as progress, >= 0; default 1e-3.
      patience: steps without progress after which a field has converged, >= 1;
        default 8.
      prior_weight: ``lambda`` of bright sources, >= 0 (1: the posterior of Biswas et
        al.; 0 with ``prior_weight_faint`` 0 or None: maximum likelihood, no prior
        term); default 0.01, a weak prior on the directions the data leave free.
      prior_weight_faint: ``lambda`` of faint sources, >= 0, or None for
        ``prior_weight`` on every source; default 1.0. A source's weight is set
        from the matched-filter SNR ``s = sqrt(sum_p w_p m_p^2)`` of its initial
        (encoder) model ``m``: ``prior_weight_faint`` below ``faint_snr[0]``,
        ``prior_weight`` above ``faint_snr[1]``, linear in ``log s`` between
        (:func:`galjax.deblend.objective.prior_weights`). :func:`~galjax.deblend.laplace`
        uses the same per-source weights.
      faint_snr: ``(low, high)`` SNRs of that interpolation, ``0 < low < high``;
        default ``(30.0, 100.0)``.
      use_init_encoder: start from the encoder retrained on blends
        (``model.init_params``) when the model has one; default True.
      chunk: fields per compiled call (bounds memory; the last chunk is padded to
        the same shape), >= 1 or None; None (default) picks 1 on CPU and 256 on an
        accelerator. A vmapped chunk runs until its slowest field stops, which a
        CPU pays for (its calls are compute-bound); an accelerator gains from the
        large batch.
      group: fields optimised together (vmapped) inside a compiled call; a chunk
        larger than this runs its groups one after another (``lax.map``), >= 1 or
        None; None (default) picks 1 on CPU and the whole chunk on an
        accelerator. Ignored when a chunk is sharded over several devices.
      refit_fluxes: after the MAP, rescale each source's model per band by its
        weighted least-squares amplitude ``a_ib`` with the shapes fixed
        (:func:`~galjax.deblend.refit_amplitudes`), correcting the decoder's
        flux scale; default True (``a = 1`` without it).
      debias: divide each flux by ``1 + b(s)``, the noise bias at the measured SNR
        ``s`` calibrated for the model on simulations (``model.meta["flux_bias"]``,
        written by ``galjax train calibrate``; :func:`~galjax.deblend.debias_fluxes`);
        ignored for models without a table; default True.

    >>> cfg = DeblendConfig(n_steps=50, prior_weight_faint=None)
    >>> DeblendConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    n_steps: int = 200
    learning_rate: float = 0.05
    decay: float = 0.1
    tol: float = 1e-3
    patience: int = 8
    prior_weight: float = 0.01
    prior_weight_faint: float | None = 1.0
    faint_snr: tuple[float, float] = (30.0, 100.0)
    use_init_encoder: bool = True
    chunk: int | None = None
    group: int | None = None
    refit_fluxes: bool = True
    debias: bool = True

    def __post_init__(self):
        for name in ("n_steps", "patience", "chunk", "group"):
            v = getattr(self, name)
            if v is None and name in ("chunk", "group"):
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}: expected an integer, got {v!r}")
            if v < 1:
                raise ValueError(f"{name}: must be >= 1, got {v}")
        try:
            snr = tuple(float(v) for v in self.faint_snr)
        except (TypeError, ValueError) as err:
            msg = f"faint_snr: expected two numbers (low, high), got {self.faint_snr!r}"
            raise TypeError(msg) from err
        object.__setattr__(self, "faint_snr", snr)
        if len(snr) != 2 or not all(map(math.isfinite, snr)) or not 0 < snr[0] < snr[1]:
            raise ValueError(f"faint_snr: expected finite 0 < low < high, got {self.faint_snr}")
        _check_float("learning_rate", self.learning_rate, "> 0", lambda v: v > 0)
        _check_float("decay", self.decay, "in (0, 1]", lambda v: 0 < v <= 1)
        _check_float("tol", self.tol, ">= 0", lambda v: v >= 0)
        _check_float("prior_weight", self.prior_weight, ">= 0", lambda v: v >= 0)
        if self.prior_weight_faint is not None:
            _check_float("prior_weight_faint", self.prior_weight_faint, ">= 0", lambda v: v >= 0)

    def to_dict(self) -> dict:
        """The settings as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DeblendConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def _check_float(name: str, v, want: str, ok) -> None:
    """Refuse a setting that is not a finite real number satisfying ``ok``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a finite number {want}, got {v!r}")
    if not math.isfinite(v) or not ok(v):
        raise ValueError(f"{name}: expected a finite number {want}, got {v}")


class DeblendResult(NamedTuple):
    """Deblending output, leading axis ``n`` fields (none from ``deblend_field``).

    Fluxes and images are in the units of the field.

    Attributes:
      models: ``(n, n_max, h, w, bands)`` each source's model image in the field.
      latents: ``(n, n_max, latent_dim)`` MAP latents.
      fluxes: ``(n, n_max, bands)`` model flux inside the field (sum of ``models``).
      residual: ``(n, h, w, bands)`` field minus the sum of the models.
      chi2: ``(n,)`` residual ``sum_p w_p r_p^2`` per usable (``w_p > 0``) pixel value
        (:func:`galjax.scores.metrics.chi2_per_pixel` with ``ivar``).
      loss_history: ``(n, n_steps)`` objective before each step (the last value
        repeated after convergence).
      converged: ``(n,)`` True if the stopping rule fired before ``n_steps``.
      n_iter: ``(n,)`` steps taken.
      mask: ``(n, n_max)`` the source mask that was given.
      amplitudes: ``(n, n_max, bands)`` factors applied to the decoded sources by the
        flux refit and the noise-bias correction (1 without them):
        ``models = amplitudes * render(latents)``.
      prior_weights: ``(n, n_max)`` each source's weight ``lambda_i`` of
        ``-log p(z_i)`` in the objective (:class:`DeblendConfig`); :func:`~galjax.deblend.laplace`
        uses the same weights (0 for point sources and masked slots).
      point: ``(n, n_max)`` True for the sources modelled as point sources; their
        ``latents`` hold the log fluxes and offsets of :func:`~galjax.deblend.point_stamps`.
      status: ``(n,)`` int32 bit flags of :class:`DeblendStatus` (``status_text`` reads
        them). A field flagged ``NONFINITE`` or ``NO_DATA`` has NaN ``fluxes`` and
        ``chi2``, zero ``models`` and ``latents``, unit ``amplitudes``, ``converged``
        False and ``residual`` equal to the (cleaned) field.
    """

    models: jax.Array
    latents: jax.Array
    fluxes: jax.Array
    residual: jax.Array
    chi2: jax.Array
    loss_history: jax.Array
    converged: jax.Array
    n_iter: jax.Array
    mask: jax.Array
    amplitudes: jax.Array
    prior_weights: jax.Array
    point: jax.Array
    status: jax.Array


def blank_failed(result: DeblendResult, field=None) -> DeblendResult:
    """The outputs of fields flagged ``NONFINITE`` or ``NO_DATA`` (:data:`FAILED`) replaced.

    Such a field gets NaN ``fluxes`` and ``chi2``, zero ``models`` and ``latents``, unit
    ``amplitudes``, ``converged`` False and ``residual = field``; the others are
    unchanged. Pure (jnp); one field or many (leading axes of ``result.status``).

    Args:
      result: :class:`DeblendResult`.
      field: ``(..., h, w, bands)`` the fields; None: ``residual + sum(models)``.
    """
    bad = (jnp.asarray(result.status) & int(FAILED)) != 0

    def put(a, value):
        a = jnp.asarray(a)
        b = bad.reshape(bad.shape + (1,) * (a.ndim - bad.ndim))
        return jnp.where(b, jnp.asarray(value, a.dtype), a)

    if field is None:
        field = jnp.asarray(result.residual) + jnp.sum(jnp.asarray(result.models), axis=-4)
    dt = jnp.asarray(result.residual).dtype
    return result._replace(
        models=put(result.models, 0.0),
        latents=put(result.latents, 0.0),
        fluxes=put(result.fluxes, jnp.nan),
        residual=jnp.where(bad[..., None, None, None], jnp.asarray(field, dt), result.residual),
        chi2=put(result.chi2, jnp.nan),
        converged=put(result.converged, False),
        amplitudes=put(result.amplitudes, 1.0),
    )


class DeblendHyper(NamedTuple):
    """The float settings of a :class:`DeblendConfig` as traced scalars.

    Passed to the compiled solve, so that changing them (a prior-weight sweep, a
    tolerance) does not recompile; the rest of the config is static
    (:func:`static_config`).
    """

    learning_rate: jax.Array
    decay: jax.Array
    tol: jax.Array
    prior_weight: jax.Array
    prior_weight_faint: jax.Array  # 0 when the config's is None (not used then)
    faint_snr: jax.Array  # (2,)


def traced_settings(cfg: DeblendConfig, dtype) -> DeblendHyper:
    """The float settings of ``cfg`` as ``dtype`` arrays (:class:`DeblendHyper`)."""
    faint = 0.0 if cfg.prior_weight_faint is None else cfg.prior_weight_faint
    scalars = (cfg.learning_rate, cfg.decay, cfg.tol, cfg.prior_weight, faint)
    return DeblendHyper(
        *(jnp.asarray(v, dtype) for v in scalars), jnp.asarray(cfg.faint_snr, dtype)
    )


def static_config(cfg: DeblendConfig) -> DeblendConfig:
    """``cfg`` as the compiled solve's static key.

    The float settings (which travel in :class:`DeblendHyper`) and those used
    outside the solve (``debias``, ``chunk``, ``group``) are set to the defaults,
    keeping what changes the program: whether there is a prior term
    (``prior_weight`` and ``prior_weight_faint`` zero or not) and whether the
    faint-source weights are drawn (``prior_weight_faint`` None or not).
    """
    d = DeblendConfig()
    reset = {f: getattr(d, f) for f in (*DeblendHyper._fields, "debias", "chunk", "group")}
    faint = cfg.prior_weight_faint
    reset["prior_weight"] = 0.0 if cfg.prior_weight == 0 else d.prior_weight
    reset["prior_weight_faint"] = None if faint is None else (0.0 if faint == 0 else 1.0)
    return dataclasses.replace(cfg, **reset)
