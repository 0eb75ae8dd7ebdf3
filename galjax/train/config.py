"""Hyperparameters of the training loop."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`galjax.train.fit` (all counts are in optimiser steps).

    Attributes:
      n_steps: total number of optimiser steps (a resumed run stops at this step).
      batch_size: examples per step, over all devices; with several devices it
        must be divisible by ``jax.device_count()``.
      eval_every: evaluate every this many steps (and after the last step).
      eval_batches: batches drawn per evaluation when ``eval_data`` is a sampler
        callable (array data is always evaluated in full).
      log_every: average the training metrics over this many steps and write them
        to ``metrics.jsonl`` and the progress bar.
      checkpoint_every: save ``checkpoint.msgpack`` every this many steps (and
        after the last one) when a ``workdir`` is given.
      patience: stop after this many evaluations without an improvement of the
        eval loss by more than ``min_delta``; None disables early stopping.
      min_delta: smallest decrease of the eval loss that counts as improvement.
      ema_decay: decay of the parameter moving average, or None. ``fit`` does not
        build the step: pass ``make_train_step(loss_fn, tx, ema_decay=config.ema_decay)``;
        ``fit`` checks that the state carries ``ema_params`` when this is set.
      seed: seed for scripts and the command line (``jax.random.key(config.seed)``);
        ``fit`` itself uses the key it is given.

    >>> cfg = TrainConfig(n_steps=100, batch_size=16)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    n_steps: int = 1000
    batch_size: int = 32
    eval_every: int = 100
    eval_batches: int = 1
    log_every: int = 10
    checkpoint_every: int = 1000
    patience: int | None = None
    min_delta: float = 0.0
    ema_decay: float | None = None
    seed: int = 0

    def __post_init__(self):
        for name in (
            "n_steps",
            "batch_size",
            "eval_every",
            "eval_batches",
            "log_every",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.patience is not None and (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 1
        ):
            raise ValueError(
                f"patience: expected a positive integer or None, got {self.patience!r}"
            )
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta: expected a value >= 0, got {self.min_delta!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"ema_decay: expected a value in [0, 1) or None, got {self.ema_decay!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are refused."""
        if not isinstance(d, dict):
            raise TypeError(f"d: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"d: unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
