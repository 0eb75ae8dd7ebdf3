"""The training driver :func:`fit` shared by every galjax model."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from galjax.core.files import atomic_write
from galjax.train.checkpoint import (
    load_checkpoint_metadata,
    restore_checkpoint,
    save_checkpoint,
    to_host,
)
from galjax.train.config import TrainConfig
from galjax.train.parallel import check_divisible, data_mesh, replicate, shard_batch
from galjax.train.state import TrainState

__all__ = ["fit", "CHECKPOINT_NAME", "BEST_NAME", "METRICS_NAME"]

#: File names inside ``workdir``.
CHECKPOINT_NAME = "checkpoint.msgpack"
BEST_NAME = "best.msgpack"
METRICS_NAME = "metrics.jsonl"

_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def _check_key(key) -> None:
    if not isinstance(key, jax.Array):
        raise TypeError(f"key: expected a jax.random key, got {type(key).__name__}")
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if not (typed and key.ndim == 0) and not (key.dtype == jnp.uint32 and key.ndim == 1):
        raise TypeError(
            f"key: expected a single jax.random key (jax.random.key(seed)), got dtype "
            f"{key.dtype} and shape {key.shape}"
        )


def _leading_size(name: str, tree) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(
            f"{name}: expected a callable sample_batch(key) or a non-empty pytree of arrays"
        )
    sizes = set()
    for leaf in leaves:
        if np.ndim(leaf) == 0:
            raise ValueError(f"{name}: every array needs a leading example axis, got a scalar")
        sizes.add(np.shape(leaf)[0])
    if len(sizes) > 1:
        raise ValueError(f"{name}: arrays disagree on the number of examples: {sorted(sizes)}")
    return sizes.pop()


def _make_sampler(data, key, batch_size: int) -> Callable[[int, jax.Array], Any]:
    """Return ``sample(step, batch_key) -> batch`` that depends on ``step`` only.

    Arrays are visited once per epoch in the order of
    ``permutation(fold_in(key, epoch))`` (the incomplete last batch is dropped), so
    the batch of any step can be recomputed after a restart.
    """
    if data is None:  # the train step draws its own batches
        return lambda step, batch_key: None
    if callable(data):
        return lambda step, batch_key: data(batch_key)
    n = _leading_size("data", data)
    if n < batch_size:
        raise ValueError(f"data: holds {n} examples, fewer than one batch of {batch_size}")
    steps_per_epoch = n // batch_size
    cache: dict[str, Any] = {"epoch": None, "perm": None}

    def sample(step, batch_key):
        del batch_key
        epoch, i = divmod(step, steps_per_epoch)
        if cache["epoch"] != epoch:
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
            cache["epoch"], cache["perm"] = epoch, np.asarray(perm)
        idx = cache["perm"][i * batch_size : (i + 1) * batch_size]
        return jax.tree.map(lambda x: x[idx], data)

    return sample


def _to_python(x):
    arr = np.asarray(to_host(x))
    return float(arr) if arr.ndim == 0 else arr.tolist()


def _load_history(path: Path, upto_step: int, keep: bool) -> dict[str, list]:
    """Read ``metrics.jsonl`` up to ``upto_step`` and rewrite it without later lines."""
    history: dict[str, list] = {"train": [], "eval": []}
    lines = []
    if keep and path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a partial last line from a crash
                continue
            if rec.get("step", math.inf) <= upto_step and rec.get("split") in history:
                history[rec["split"]].append(rec)
                lines.append(line)
    if jax.process_index() == 0:
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in lines)))
    return history


def fit(
    key: jax.Array,
    state: TrainState,
    train_step: Callable,
    data,
    config: TrainConfig,
    eval_fn: Callable | None = None,
    eval_data=None,
    workdir=None,
    resume: bool = True,
    progress: bool = True,
    step_keys: Callable[[int], tuple[jax.Array, jax.Array]] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Run ``train_step`` from ``state.step`` to ``config.n_steps``.

    Randomness: ``key`` is split once into training, data and evaluation keys;
    step ``t`` uses ``fold_in(train_key, t)`` (split into a batch key and a step
    key), so a run restarted from a checkpoint at step ``t`` continues exactly as
    an uninterrupted one would. Array data is shuffled once per epoch with
    ``permutation(fold_in(data_key, epoch))``.

    Devices: with more than one device, the state is replicated and each batch
    is split along its leading axis over a 1-D mesh (:mod:`galjax.train.parallel`);
    ``config.batch_size`` must be divisible by ``jax.device_count()``. Multi-host
    runs call ``jax.distributed.initialize()`` first and pass process-local data.

    Files in ``workdir`` (when given): ``metrics.jsonl`` (one JSON object per
    line: ``step``, ``split`` ("train" or "eval"), metrics, ``elapsed_s``),
    ``checkpoint.msgpack`` (every ``config.checkpoint_every`` steps, at the end
    and on early stopping) and ``best.msgpack`` (lowest eval loss), each with a
    ``.json`` sidecar.

    Args:
      key: a ``jax.random`` key.
      state: initial (or restored) :class:`TrainState`, or another NamedTuple
        pytree with an int32 scalar ``step`` field that ``train_step`` advances by
        one (e.g. :class:`galjax.models.gan.GANState`).
      train_step: ``train_step(key, state, batch) -> (state, metrics)``, e.g. from
        :func:`make_train_step`; ``fit`` jits it. ``metrics["loss"]`` is required.
      data: a pytree of arrays with a leading example axis ``(n, ...)``, or a
        callable ``sample_batch(key) -> batch`` (e.g. a simulator) returning
        ``config.batch_size`` examples (per process in multi-host runs), or None
        when ``train_step`` draws its own batches inside the jitted step (it is then
        called with ``batch=None``; e.g. the GAN's ``n_critic`` batches).
      config: :class:`TrainConfig`.
      eval_fn: ``eval_fn(key, state, batch) -> metrics`` with a ``"loss"`` entry
        (e.g. :func:`make_eval_step`), or None. Its keys are the same at every
        evaluation, so successive eval losses differ only through the state.
      eval_data: like ``data``. Arrays are evaluated in full, in chunks of
        ``config.batch_size`` (metrics averaged with chunk-size weights; in
        multi-host runs a smaller last chunk is skipped); a callable is asked for
        ``config.eval_batches`` batches.
      workdir: folder for metrics and checkpoints, or None for none.
      resume: when ``workdir`` holds a checkpoint ahead of ``state``, continue
        from it (and from its early-stopping bookkeeping: a run that stopped
        early returns at once); otherwise start from ``state`` and overwrite
        ``metrics.jsonl``.
      progress: show a tqdm progress bar.
      step_keys: optional ``step_keys(step) -> (batch_key, step_key)`` replacing the
        default ``split(fold_in(train_key, step))``, for a recipe that keeps the key
        stream of its earlier loop (:func:`galjax.train.recipes.gan.train_gan`). It
        must depend on ``step`` only, so that resumed runs stay exact.

    Returns:
      ``(state, history)``: the final state (not the best one: restore
      ``workdir/best.msgpack`` for that) and a dict with ``"train"`` and
      ``"eval"`` lists of the records written to ``metrics.jsonl``,
      ``"best_step"``, ``"best_loss"`` and ``"stopped_early"``.

    Raises:
      FloatingPointError: the training loss became NaN or infinite (checked every
        ``log_every`` steps; no checkpoint of the bad state is written).

    >>> import jax, jax.numpy as jnp, optax
    >>> from galjax.train import TrainConfig, init_state, make_train_step
    >>> x = jnp.linspace(-1, 1, 64)[:, None]
    >>> data = {"x": x, "y": 3 * x}
    >>> loss_fn = lambda p, k, b: (jnp.mean((b["x"] @ p - b["y"]) ** 2), {})
    >>> tx = optax.adam(0.1)
    >>> state, hist = fit(jax.random.key(0), init_state(jnp.zeros((1, 1)), tx),
    ...                   make_train_step(loss_fn, tx), data,
    ...                   TrainConfig(n_steps=200, batch_size=16), progress=False)
    >>> round(float(state.params[0, 0]), 2)
    3.0
    """
    _check_key(key)
    if not isinstance(state, TrainState) and not (
        isinstance(state, tuple) and hasattr(state, "_fields") and "step" in state._fields
    ):
        raise TypeError(
            "state: expected a TrainState (init_state) or a NamedTuple with a step field, "
            f"got {type(state).__name__}"
        )
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if not callable(train_step):
        raise TypeError(f"train_step: expected a callable, got {type(train_step).__name__}")
    if config.ema_decay is not None and getattr(state, "ema_params", None) is None:
        raise ValueError(
            "state: config.ema_decay is set but state.ema_params is None; use "
            "init_state(params, tx, ema=True) and make_train_step(..., ema_decay=config.ema_decay)"
        )
    if (eval_fn is None) != (eval_data is None):
        raise ValueError("eval_fn, eval_data: give both or neither")

    n_procs, is_main = jax.process_count(), jax.process_index() == 0
    if config.batch_size % n_procs:
        raise ValueError(
            f"config.batch_size: {config.batch_size} is not divisible by the number of "
            f"processes ({n_procs})"
        )
    local_batch = config.batch_size // n_procs
    mesh = data_mesh() if jax.device_count() > 1 else None
    if mesh is not None:
        check_divisible("config.batch_size", config.batch_size, mesh)

    train_key, data_key, eval_key = jax.random.split(key, 3)
    if n_procs > 1:  # each process shuffles its own slice of the data
        data_key = jax.random.fold_in(data_key, jax.process_index())
    sample = _make_sampler(data, data_key, local_batch)
    if eval_data is not None and not callable(eval_data):
        _leading_size("eval_data", eval_data)

    # -- resume ------------------------------------------------------------------
    book = {"best_loss": None, "best_step": None, "bad_evals": 0, "stopped_early": False}
    metrics_path = None
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt_path = workdir / CHECKPOINT_NAME
        if resume and ckpt_path.is_file():
            meta = load_checkpoint_metadata(ckpt_path)
            if int(meta.get("step", -1)) > int(state.step):
                state = restore_checkpoint(ckpt_path, state)
                book.update(meta.get("fit", {}))
        metrics_path = workdir / METRICS_NAME
        history = _load_history(metrics_path, int(state.step), keep=resume)
    else:
        history = {"train": [], "eval": []}

    # -- placement ---------------------------------------------------------------
    if mesh is not None:
        replicated = NamedSharding(mesh, P())
        state = replicate(state, mesh)
        step_fn = jax.jit(train_step, out_shardings=replicated)
        eval_jit = None if eval_fn is None else jax.jit(eval_fn, out_shardings=replicated)

        def place(batch, size):
            if size % mesh.devices.size == 0:
                return shard_batch(batch, mesh)
            return replicate(batch, mesh)  # an odd-sized last eval chunk
    else:
        step_fn = jax.jit(train_step)
        eval_jit = None if eval_fn is None else jax.jit(eval_fn)

        def place(batch, size):
            return batch

    t0 = time.perf_counter()

    def write(split, step, metrics):
        rec = {"step": int(step), "split": split, **metrics}
        rec["elapsed_s"] = round(time.perf_counter() - t0, 4)
        history[split].append(rec)
        if metrics_path is not None and is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def evaluate(state):
        step_key, sample_key = jax.random.split(eval_key)
        if callable(eval_data):
            chunks = (
                (i, eval_data(jax.random.fold_in(sample_key, i)))
                for i in range(config.eval_batches)
            )
        else:
            n = _leading_size("eval_data", eval_data)
            starts = range(0, n, local_batch)
            chunks = (
                (i, jax.tree.map(lambda x, s=s: x[s : s + local_batch], eval_data))
                for i, s in enumerate(starts)
            )
        total, weight = None, 0
        for i, batch in chunks:
            size = _leading_size("eval_data", batch) * n_procs
            if n_procs > 1 and size != config.batch_size:
                continue  # uneven last chunks cannot be assembled across processes
            out = eval_jit(jax.random.fold_in(step_key, i), state, place(batch, size))
            out = jax.tree.map(lambda v, size=size: v * size, out)
            total = out if total is None else _tree_add(total, out)
            weight += size
        if total is None or "loss" not in total:
            raise ValueError("eval_fn: expected a metrics dict with a 'loss' entry")
        return {k: _to_python(v / weight) for k, v in total.items()}

    def checkpoint(path, state):
        save_checkpoint(path, state, {"config": config, "fit": book})

    # A run that stopped early stays stopped when resumed (resume=False restarts).
    stopped = bool(book["stopped_early"])
    start = config.n_steps if stopped else int(state.step)
    acc, n_acc = None, 0
    bar = tqdm(
        total=config.n_steps,
        initial=min(start, config.n_steps),
        disable=not (progress and is_main),
        desc="fit",
        dynamic_ncols=True,
    )
    try:
        for step in range(start, config.n_steps):
            if step_keys is None:
                batch_key, step_key = jax.random.split(jax.random.fold_in(train_key, step))
            else:
                batch_key, step_key = step_keys(step)
            batch = place(sample(step, batch_key), config.batch_size)
            state, metrics = step_fn(step_key, state, batch)
            if "loss" not in metrics:
                raise ValueError("train_step: expected a metrics dict with a 'loss' entry")
            acc = metrics if acc is None else _tree_add(acc, metrics)
            n_acc += 1
            done = step + 1
            last = done == config.n_steps
            bar.update(1)

            if done % config.log_every == 0 or last:
                rec = write("train", done, {k: _to_python(v / n_acc) for k, v in acc.items()})
                acc, n_acc = None, 0
                if not math.isfinite(rec["loss"]):
                    raise FloatingPointError(
                        f"training loss is {rec['loss']} at step {done}; lower the learning "
                        "rate or clip gradients (optax.clip_by_global_norm)"
                    )
                bar.set_postfix(loss=f"{rec['loss']:.4g}")

            if eval_jit is not None and (done % config.eval_every == 0 or last):
                rec = evaluate(state)
                loss = rec["loss"]
                best = book["best_loss"]
                improved = math.isfinite(loss) and (best is None or loss < best - config.min_delta)
                if improved:
                    book.update(best_loss=loss, best_step=done, bad_evals=0)
                    if workdir is not None:
                        checkpoint(workdir / BEST_NAME, state)
                else:
                    book["bad_evals"] += 1
                    stopped = config.patience is not None and book["bad_evals"] >= config.patience
                    book["stopped_early"] = stopped
                write("eval", done, rec)

            if stopped and n_acc:
                write("train", done, {k: _to_python(v / n_acc) for k, v in acc.items()})
            if workdir is not None and (done % config.checkpoint_every == 0 or last or stopped):
                checkpoint(workdir / CHECKPOINT_NAME, state)
            if stopped:
                break
    finally:
        bar.close()

    history.update(best_step=book["best_step"], best_loss=book["best_loss"], stopped_early=stopped)
    return state, history
