"""The command's runtime settings: the persistent XLA compilation cache, one CPU device
per core for deblending, and the ``argparse`` types of the numeric options."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

__all__ = [
    "compilation_cache_dir",
    "enable_compilation_cache",
    "use_cpu_cores",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "finite_float",
    "nonnegative_float",
    "probability",
    "INPUT_ERRORS",
    "report_error",
]

#: The exceptions that mean bad input: reported in one line, exit status 2.
INPUT_ERRORS = (ValueError, TypeError, OSError, KeyError)


def report_error(command: str, err: BaseException) -> int:
    """Print ``galjax <command>: error: <message>`` on stderr; return the exit status 2."""
    if isinstance(err, SystemExit):
        message = str(err.code)
    elif isinstance(err, KeyError) and len(err.args) == 1:
        message = str(err.args[0])  # str(KeyError) adds quotes
    else:
        message = str(err) or type(err).__name__
    print(f"galjax {command}: error: {message}", file=sys.stderr)
    return 2


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1 (``--steps``, ``--batch``, ``--n-stamps``, ...)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """``argparse`` type: an integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """``argparse`` type: a finite number (no nan or inf)."""
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0 (``--sigma``, ``--lr``, ...)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """``argparse`` type: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """``argparse`` type: a finite number in [0, 1] (``--threshold``)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def compilation_cache_dir(environ=None) -> Path | None:
    """Where the command keeps XLA compilations between runs, or None for nowhere.

    ``$GALJAX_CACHE_DIR`` (``off``, ``0`` or empty: none), else
    ``$XDG_CACHE_HOME/galjax/xla``, else ``~/.cache/galjax/xla``.
    """
    env = os.environ if environ is None else environ
    value = env.get("GALJAX_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none") else Path(value)
    base = env.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "galjax" / "xla"


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache for this process (see
    :func:`compilation_cache_dir`), unless one is already configured.

    Compiling the simulator and the deblender's solves takes most of a short run on a
    CPU (the simulator alone about 15 s); with the cache a second run loads them.
    Only compilations over one second are stored.
    """
    import jax

    path = compilation_cache_dir()
    if path is None or jax.config.jax_compilation_cache_dir:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache folder only costs the speed-up
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def use_cpu_cores() -> None:
    """One CPU device per core for ``galjax deblend`` (see :func:`galjax.set_cpu_device_count`).

    ``GALJAX_CPU_DEVICES=n`` chooses the count (1 turns it off); a device count already
    in ``XLA_FLAGS`` is kept. In a process where JAX already runs (a test, a notebook)
    nothing changes.
    """
    from galjax.train.parallel import COUNT_FLAG, set_cpu_device_count

    if COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    value = os.environ.get("GALJAX_CPU_DEVICES", "").strip()
    try:
        n = int(value) if value else None
    except ValueError:
        msg = f"GALJAX_CPU_DEVICES: expected a positive integer, got {value!r}"
        raise ValueError(msg) from None
    try:
        set_cpu_device_count(n)
    except ValueError as err:
        raise ValueError(f"GALJAX_CPU_DEVICES: {err}") from err
    except RuntimeError:
        pass  # JAX is already running in this process: keep its devices
