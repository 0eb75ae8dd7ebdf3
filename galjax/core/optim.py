"""One optimiser loop over optax, shared by every fit in galjax.

:func:`minimise` runs ``n_steps`` updates of an optax transformation on
``fun(params)``, either for a fixed number of steps (``lax.scan``) or with a
per-call stopping rule (``lax.while_loop``): stop after ``patience`` steps without
a relative improvement of ``tol``,

    improved_t = (t == 0) or f_t < best_t - tol |best_t|.

When the objective or the updated parameters become non-finite, the parameters go
back to the last ones whose objective was finite, the loop stops (``lax.scan``: the
remaining steps leave them there) and :attr:`MinimiseInfo.finite` is False.

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
      converged: bool scalar, stopped by the patience rule (always False without one,
        and False when the objective or the parameters became non-finite).
      history: ``(n_steps,)`` objective before each update; entries after the last
        update repeat the last value.
      finite: bool scalar, False when the objective or the parameters became
        non-finite (the parameters returned are then the last ones with a finite
        objective).
    """

    n_steps: jax.Array
    converged: jax.Array
    history: jax.Array
    finite: jax.Array


class _Loop(NamedTuple):
    step: jax.Array
    params: Any
    prev: Any
    opt: optax.OptState
    best: jax.Array
    since: jax.Array
    history: jax.Array
    finite: jax.Array


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

    def update(params, prev, opt, finite):
        """One step from ``params`` (``prev`` the step before), taken only while everything
        is finite: ``(value, params, prev, opt, finite)``."""
        value, grad = value_and_grad(params, opt)
        kw = {"value": value, "grad": grad, "value_fn": fun} if extra else {}
        updates, new_opt = optimizer.update(grad, opt, params, **kw)
        new = optax.apply_updates(params, updates)
        finite_new = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(new)]))
        ok_value = finite & jnp.isfinite(value)
        ok = ok_value & finite_new
        # A non-finite step would poison every later one: go back to the last parameters
        # whose objective was finite (params if only the update failed, else prev).
        where = lambda c, a, b: jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)  # noqa: E731
        back = where(ok_value, params, prev)
        return value, where(ok, new, back), where(ok, params, back), where(ok, new_opt, opt), ok

    # optax's bias corrections and schedules mix int32 counts with float scalars.
    with jax.numpy_dtype_promotion("standard"):
        opt0 = optimizer.init(params)
        if patience is None:

            def scan_step(carry, _):
                value, p, prev, opt, ok = update(*carry)
                return (p, prev, opt, ok), value

            (params, _, _, ok), hist = jax.lax.scan(
                scan_step, (params, params, opt0, jnp.asarray(True)), None, length=n_steps
            )
            info = MinimiseInfo(jnp.asarray(n_steps, jnp.int32), jnp.asarray(False), hist, ok)
            return params, info

        dtype = jax.eval_shape(fun, params).dtype

        def cond(st):
            return (st.step < n_steps) & (st.since < patience) & st.finite

        def body(st):
            value, p, prev, opt, ok = update(st.params, st.prev, st.opt, st.finite)
            # The first step always counts (best starts at inf, and inf - tol * inf is NaN).
            improved = (st.step == 0) | (value < st.best - tol * jnp.abs(st.best))
            return _Loop(
                st.step + 1,
                p,
                prev,
                opt,
                jnp.where(improved, value, st.best),
                jnp.where(improved, 0, st.since + 1),
                st.history.at[st.step].set(value),
                ok,
            )

        st0 = _Loop(
            jnp.array(0, jnp.int32),
            params,
            params,
            opt0,
            jnp.array(jnp.inf, dtype),
            jnp.array(0, jnp.int32),
            jnp.zeros((n_steps,), dtype),
            jnp.asarray(True),
        )
        st = jax.lax.while_loop(cond, body, st0)
    last = st.history[jnp.maximum(st.step - 1, 0)]
    hist = jnp.where(jnp.arange(n_steps) < st.step, st.history, last)
    return st.params, MinimiseInfo(st.step, (st.since >= patience) & st.finite, hist, st.finite)
