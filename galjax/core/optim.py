"""One optimiser loop over optax, shared by every fit in galjax.

:func:`minimise` runs ``n_steps`` updates of an optax transformation on
``fun(params)``, either for a fixed number of steps (``lax.scan``) or with a
per-call stopping rule (``lax.while_loop``): stop after ``patience`` steps without
a relative improvement of ``tol``,

    improved_t = (t == 0) or f_t < best_t - tol |best_t|.

It is pure, so it ``vmap``s over fields or images (each lane stops on its own
only in the sense that its parameters freeze; under ``vmap`` the loop runs until
every lane has stopped). Used by the deblender, the parametric scene fits and the
Sersic archetype fits.

>>> import jax.numpy as jnp, optax
>>> from galjax.core.optim import minimise
>>> x, info = minimise(lambda x: jnp.sum((x - 3.0) ** 2), jnp.zeros(2), optax.adam(0.1), 500)
>>> [round(float(v), 3) for v in x]
[3.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["MinimiseInfo", "minimise"]


class MinimiseInfo(NamedTuple):
    """What :func:`minimise` did.

    Attributes:
      n_steps: int32 scalar, updates taken.
      converged: bool scalar, stopped by the patience rule (always False without one).
      history: ``(n_steps,)`` objective before each update; entries after the last
        update repeat the last value.
    """

    n_steps: jax.Array
    converged: jax.Array
    history: jax.Array


class _Loop(NamedTuple):
    step: jax.Array
    params: Any
    opt: optax.OptState
    best: jax.Array
    since: jax.Array
    history: jax.Array


def minimise(
    fun: Callable[[Any], jax.Array],
    params,
    optimizer: optax.GradientTransformation,
    n_steps: int,
    *,
    tol=None,
    patience: int | None = None,
    value_and_grad: Callable | None = None,
) -> tuple[Any, MinimiseInfo]:
    """Minimise the scalar ``fun(params)`` over a pytree with an optax optimiser.

    Args:
      fun: objective, a scalar function of ``params`` (close over data).
      params: starting pytree.
      optimizer: any optax transformation; ``GradientTransformationExtraArgs`` (L-BFGS's
        line search) receive ``value``, ``grad`` and ``value_fn``.
      n_steps: most updates (static).
      tol: relative improvement that resets the patience count (may be traced);
        with ``patience``, switches to the stopping rule above.
      patience: updates without improvement before stopping (static).
      value_and_grad: ``(params, opt_state) -> (value, grad)``; default
        ``jax.value_and_grad(fun)(params)`` (``optax.value_and_grad_from_state`` reuses
        L-BFGS's line-search evaluations).

    Returns:
      ``(params, MinimiseInfo)``.
    """
    if (tol is None) != (patience is None):
        raise ValueError("tol and patience: give both (stopping rule) or neither (fixed steps)")
    if value_and_grad is None:
        vg = jax.value_and_grad(fun)
        value_and_grad = lambda p, _: vg(p)  # noqa: E731
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def update(params, opt):
        value, grad = value_and_grad(params, opt)
        kw = {"value": value, "grad": grad, "value_fn": fun} if extra else {}
        updates, opt = optimizer.update(grad, opt, params, **kw)
        return value, optax.apply_updates(params, updates), opt

    # optax's bias corrections and schedules mix int32 counts with float scalars.
    with jax.numpy_dtype_promotion("standard"):
        opt0 = optimizer.init(params)
        if patience is None:

            def scan_step(carry, _):
                value, p, opt = update(*carry)
                return (p, opt), value

            (params, _), hist = jax.lax.scan(scan_step, (params, opt0), None, length=n_steps)
            info = MinimiseInfo(jnp.asarray(n_steps, jnp.int32), jnp.asarray(False), hist)
            return params, info

        dtype = jax.eval_shape(fun, params).dtype

        def cond(st):
            return (st.step < n_steps) & (st.since < patience)

        def body(st):
            value, p, opt = update(st.params, st.opt)
            # The first step always counts (best starts at inf, and inf - tol * inf is NaN).
            improved = (st.step == 0) | (value < st.best - tol * jnp.abs(st.best))
            return _Loop(
                st.step + 1,
                p,
                opt,
                jnp.where(improved, value, st.best),
                jnp.where(improved, 0, st.since + 1),
                st.history.at[st.step].set(value),
            )

        st0 = _Loop(
            jnp.array(0, jnp.int32),
            params,
            opt0,
            jnp.array(jnp.inf, dtype),
            jnp.array(0, jnp.int32),
            jnp.zeros((n_steps,), dtype),
        )
        st = jax.lax.while_loop(cond, body, st0)
    last = st.history[jnp.maximum(st.step - 1, 0)]
    hist = jnp.where(jnp.arange(n_steps) < st.step, st.history, last)
    return st.params, MinimiseInfo(st.step, st.since >= patience, hist)
