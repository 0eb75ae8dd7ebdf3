"""Training state and the pure train/eval step kernels.

A step is a blackjax-style kernel ``train_step(key, state, batch) -> (state,
metrics)``: pure, with the optimiser given as an ``optax.GradientTransformation``.
The caller (or :func:`galjax.train.fit`) decides when to ``jax.jit`` it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "init_state", "make_train_step", "make_eval_step"]

Params = Any
Batch = Any
Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree).

    Attributes:
      step: int32 scalar, number of optimiser updates applied so far.
      params: the model parameters (any pytree, e.g. a flax ``variables["params"]``).
      opt_state: the optax optimiser state for ``params``.
      ema_params: exponential moving average of ``params`` (same structure), or
        None when no average is kept.
      model_state: non-trainable collections updated by the forward pass (e.g.
        flax ``batch_stats``), or None.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    ema_params: Params | None = None
    model_state: Any | None = None


def init_state(
    params: Params,
    tx: optax.GradientTransformation,
    ema: bool = False,
    model_state: Any | None = None,
) -> TrainState:
    """Build the initial :class:`TrainState` at step 0.

    Args:
      params: initial parameters (pytree of arrays).
      tx: the optax optimiser, e.g. ``optax.chain(optax.clip_by_global_norm(1.0),
        optax.adam(1e-3))``.
      ema: keep an exponential moving average of the parameters, started at
        ``params`` (use with ``make_train_step(..., ema_decay=...)``).
      model_state: optional non-trainable collections (e.g. ``batch_stats``).

    Returns:
      A ``TrainState`` with ``step == 0`` and ``opt_state = tx.init(params)``.

    >>> import jax.numpy as jnp, optax
    >>> state = init_state({"w": jnp.zeros(3)}, optax.sgd(0.1), ema=True)
    >>> int(state.step), state.ema_params["w"].shape
    (0, (3,))
    """
    if not hasattr(tx, "init") or not hasattr(tx, "update"):
        raise TypeError(f"tx: expected an optax.GradientTransformation, got {type(tx).__name__}")
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=_opt_init(tx, params),
        ema_params=params if ema else None,
        model_state=model_state,
    )


def _opt_init(tx, params):
    with jax.numpy_dtype_promotion("standard"):  # see the note in make_train_step
        return tx.init(params)


def _check_ema_decay(ema_decay: float | None) -> None:
    if ema_decay is not None and not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"ema_decay: expected a value in [0, 1) or None, got {ema_decay}")


def _call_loss(loss_fn, has_model_state, params, state, key, batch):
    """Call ``loss_fn`` and normalise its output to ``(loss, (metrics, model_state))``."""
    if has_model_state:
        out = loss_fn(params, state.model_state, key, batch)
    else:
        out = loss_fn(params, key, batch)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "loss_fn: expected it to return (loss, metrics_dict)"
            + (
                " with metrics_dict replaced by (metrics_dict, new_model_state)"
                if has_model_state
                else ""
            )
            + f", got {type(out).__name__}"
        )
    loss, aux = out
    if has_model_state:
        if not (isinstance(aux, tuple) and len(aux) == 2):
            raise TypeError(
                "loss_fn: with has_model_state=True it must return "
                f"(loss, (metrics_dict, new_model_state)), got aux of type {type(aux).__name__}"
            )
        metrics, new_model_state = aux
    else:
        metrics, new_model_state = aux, state.model_state
    if jnp.ndim(loss) != 0:
        raise ValueError(f"loss_fn: expected a scalar loss, got shape {jnp.shape(loss)}")
    return loss, (dict(metrics), new_model_state)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    ema_decay: float | None = None,
    has_model_state: bool = False,
) -> Callable[[jax.Array, TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build a pure training kernel ``train_step(key, state, batch) -> (state, metrics)``.

    One step computes ``(loss, aux), g = value_and_grad(loss_fn, has_aux=True)``,
    applies the optax update ``params <- params + tx.update(g, opt_state, params)``
    and, with ``ema_decay = d``, the moving average
    ``ema <- d * ema + (1 - d) * params``.

    Args:
      loss_fn: ``loss_fn(params, key, batch) -> (loss, metrics_dict)`` with a
        scalar loss (mean over the batch, so that data-parallel steps agree with
        single-device ones). With ``has_model_state=True`` the signature is
        ``loss_fn(params, model_state, key, batch) -> (loss, (metrics_dict,
        new_model_state))``.
      tx: the optax optimiser (the same one given to :func:`init_state`).
      ema_decay: EMA decay ``d`` in ``[0, 1)``, or None for no average. The state
        must then come from ``init_state(..., ema=True)``.
      has_model_state: see ``loss_fn``.

    Returns:
      ``train_step(key, state, batch) -> (new_state, metrics)`` where ``metrics``
      holds ``loss``, ``grad_norm`` (global L2 norm of the gradient) and the
      entries of ``metrics_dict``. Not jitted: wrap it in ``jax.jit``.

    >>> import jax, jax.numpy as jnp, optax
    >>> loss_fn = lambda p, key, b: (jnp.mean((b["x"] * p["w"] - b["y"]) ** 2), {})
    >>> tx = optax.sgd(0.1)
    >>> step = jax.jit(make_train_step(loss_fn, tx))
    >>> state = init_state({"w": jnp.zeros(())}, tx)
    >>> batch = {"x": jnp.ones(4), "y": 2 * jnp.ones(4)}
    >>> state, metrics = step(jax.random.key(0), state, batch)
    >>> round(float(state.params["w"]), 6)  # 0 - 0.1 * d/dw (w - 2)^2 at w = 0
    0.4
    """
    _check_ema_decay(ema_decay)
    if not hasattr(tx, "update"):
        raise TypeError(f"tx: expected an optax.GradientTransformation, got {type(tx).__name__}")

    def train_step(key, state: TrainState, batch):
        def objective(params):
            return _call_loss(loss_fn, has_model_state, params, state, key, batch)

        (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        # optax's own arithmetic (e.g. adam's bias correction decay**count, a float
        # raised to an int32) is refused by strict dtype promotion; run it under
        # standard promotion so users and tests may keep strict mode for their code.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            if ema_params is None:
                raise ValueError(
                    "state: make_train_step(ema_decay=...) needs ema_params; build the state "
                    "with init_state(params, tx, ema=True)"
                )
            # optax.incremental_update(new, old, s) = s * new + (1 - s) * old
            ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - ema_decay)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        new_state = TrainState(state.step + 1, params, opt_state, ema_params, model_state)
        return new_state, metrics

    return train_step


def make_eval_step(
    loss_fn: Callable,
    use_ema: bool = False,
    has_model_state: bool = False,
) -> Callable[[jax.Array, TrainState, Batch], Metrics]:
    """Build a pure evaluation kernel ``eval_step(key, state, batch) -> metrics``.

    Args:
      loss_fn: same signature as for :func:`make_train_step`. Models whose
        forward pass differs at evaluation (batch norm running averages, dropout)
        pass an evaluation-mode loss here.
      use_ema: evaluate ``state.ema_params`` instead of ``state.params``.
      has_model_state: see :func:`make_train_step`; the returned model state is
        discarded.

    Returns:
      ``eval_step(key, state, batch) -> metrics`` with ``metrics["loss"]`` and the
      entries of ``loss_fn``'s metrics dict. Not jitted.

    >>> import jax, jax.numpy as jnp, optax
    >>> loss_fn = lambda p, key, b: (jnp.mean((b - p) ** 2), {})
    >>> state = init_state(jnp.zeros(()), optax.sgd(0.1))
    >>> float(make_eval_step(loss_fn)(jax.random.key(0), state, jnp.ones(3))["loss"])
    1.0
    """

    def eval_step(key, state: TrainState, batch):
        params = state.params
        if use_ema:
            if state.ema_params is None:
                raise ValueError(
                    "state: make_eval_step(use_ema=True) needs ema_params; build the state "
                    "with init_state(params, tx, ema=True)"
                )
            params = state.ema_params
        loss, (metrics, _) = _call_loss(loss_fn, has_model_state, params, state, key, batch)
        return {**metrics, "loss": loss}

    return eval_step
