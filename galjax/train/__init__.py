"""Training loop shared by every galjax model.

A model supplies ``loss_fn(params, key, batch) -> (loss, metrics)``; this
package turns it into a pure step kernel (:func:`make_train_step`), drives it
with :func:`fit` (minibatches or a simulator, evaluation, early stopping, JSON
lines logging, atomic checkpoints, exact resume) and spreads it over all
devices with JAX sharding (:mod:`galjax.train.parallel`).

>>> import jax, jax.numpy as jnp, optax
>>> from galjax.train import TrainConfig, fit, init_state, make_train_step
>>> loss_fn = lambda p, key, b: (jnp.mean((b["x"] * p - b["y"]) ** 2), {})
>>> tx = optax.adam(0.05)
>>> x = jnp.linspace(-1, 1, 32)
>>> state, history = fit(jax.random.key(0), init_state(jnp.zeros(()), tx),
...                      make_train_step(loss_fn, tx), {"x": x, "y": 2 * x},
...                      TrainConfig(n_steps=300, batch_size=8), progress=False)
>>> round(float(state.params), 2)
2.0
"""

from galjax.train.checkpoint import load_checkpoint_metadata, restore_checkpoint, save_checkpoint
from galjax.train.config import TrainConfig
from galjax.train.loop import fit
from galjax.train.parallel import data_mesh, replicate, set_cpu_device_count, shard_batch
from galjax.train.state import TrainState, init_state, make_eval_step, make_train_step

__all__ = [
    "TrainConfig",
    "TrainState",
    "data_mesh",
    "fit",
    "init_state",
    "load_checkpoint_metadata",
    "make_eval_step",
    "make_train_step",
    "replicate",
    "restore_checkpoint",
    "save_checkpoint",
    "shard_batch",
    "set_cpu_device_count",
]
