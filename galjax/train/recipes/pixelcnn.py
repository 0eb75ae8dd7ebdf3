"""Training recipe for :mod:`galjax.models.pixelcnn` on the shared loop :func:`galjax.train.fit`.

Salimans et al. (2017) train with Adam and an exponentially decaying learning
rate and evaluate with a Polyak (exponential moving) average of the parameters;
here the optimiser is ``optax.chain(clip_by_global_norm(clip), adam(schedule))``
with ``schedule(t) = lr * lr_decay ** (t / n_steps)`` and the average is the
loop's EMA (``state.ema_params``), which is what :func:`train_pixelcnn` returns
for evaluation.
"""

from __future__ import annotations

import jax
import optax

from galjax.models.pixelcnn import PixelCNNConfig, check_input, init_pixelcnn, make_loss_fn
from galjax.train.config import TrainConfig
from galjax.train.loop import fit
from galjax.train.state import TrainState, init_state, make_eval_step, make_train_step

__all__ = ["pixelcnn_optimizer", "train_pixelcnn"]


def pixelcnn_optimizer(lr: float, n_steps: int, lr_decay: float = 0.1, clip: float = 1.0):
    """``clip_by_global_norm(clip)`` then Adam with ``lr * lr_decay ** (t / n_steps)``.

    Args:
      lr: initial learning rate (> 0).
      n_steps: steps over which the rate falls by the factor ``lr_decay``.
      lr_decay: total decay factor in (0, 1] (the paper's 0.999995 per step is
        0.0067 over 1e6 steps).
      clip: global gradient norm limit (> 0): a rare huge gradient from an
        unlikely pixel (log p ~ -1e3) would otherwise throw Adam's moments off.
    """
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr!r}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay: expected a factor in (0, 1], got {lr_decay!r}")
    if not clip > 0:
        raise ValueError(f"clip: expected > 0, got {clip!r}")
    schedule = optax.exponential_decay(
        lr, transition_steps=max(int(n_steps), 1), decay_rate=lr_decay
    )
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule))


def train_pixelcnn(
    key,
    config: PixelCNNConfig,
    data,
    train_config: TrainConfig | None = None,
    *,
    lr: float = 2e-3,
    lr_decay: float = 0.1,
    clip: float = 1.0,
    eval_data=None,
    params=None,
    workdir=None,
    progress: bool = False,
) -> tuple[TrainState, dict]:
    """Train a PixelCNN++ on images (or a batch sampler) by minimising bits/dim.

    Args:
      key: PRNG key (split into initialisation and training keys).
      config: the :class:`~galjax.models.pixelcnn.PixelCNNConfig`.
      data: ``(n, h, w, bands)`` images in the head's range (checked once), or a
        callable ``sample_batch(key) -> (batch_size, h, w, bands)`` such as
        :func:`galjax.ood.likelihood.perturbed_sampler` (Ren et al.'s background model).
      train_config: loop settings; default ``TrainConfig(n_steps=1000,
        batch_size=16, ema_decay=0.995, eval_every=1000)``. ``ema_decay`` must be
        set (it is the Polyak average).
      lr, lr_decay, clip: see :func:`pixelcnn_optimizer`.
      eval_data: held-out images (evaluated with the EMA parameters), or None.
      params: initial parameters (default: :func:`init_pixelcnn`).
      workdir: folder for metrics and checkpoints (see :func:`galjax.train.fit`).
      progress: show a progress bar.

    Returns:
      ``(state, history)``; use ``state.ema_params`` for evaluation and sampling.
    """
    tc = train_config or TrainConfig(n_steps=1000, batch_size=16, ema_decay=0.995, eval_every=1000)
    if not isinstance(tc, TrainConfig):
        raise TypeError(f"train_config: expected a TrainConfig, got {type(tc).__name__}")
    if tc.ema_decay is None:
        raise ValueError(
            "train_config.ema_decay: expected a decay for the Polyak average, got None"
        )
    if not callable(data):
        data = check_input("data", data, config)
    if eval_data is not None:
        eval_data = check_input("eval_data", eval_data, config)
    k_init, k_fit = jax.random.split(key)
    if params is None:
        params = init_pixelcnn(k_init, config)
    tx = pixelcnn_optimizer(lr, tc.n_steps, lr_decay, clip)
    state = init_state(params, tx, ema=True)
    step = make_train_step(make_loss_fn(config), tx, ema_decay=tc.ema_decay)
    eval_fn = None
    if eval_data is not None:
        eval_fn = make_eval_step(make_loss_fn(config, train=False), use_ema=True)
    return fit(
        k_fit, state, step, data, tc, eval_fn=eval_fn, eval_data=eval_data, workdir=workdir,
        progress=progress,
    )  # fmt: skip
