"""Shared helpers for the benchmarks: machine description, timing and JSON output.

Benchmarks separate compile time from run time (STYLE.md, principle 13): a jitted
function is lowered and compiled explicitly, called once to warm up, and then
timed as the best of a few repeats with ``jax.block_until_ready``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, or None where unavailable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(**versions: str) -> dict:
    """Describe the machine and software a benchmark ran on.

    Args:
      **versions: extra package versions to record, e.g. ``galsim="2.8.5"``.
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": affinity,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
        **versions,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
    }


def compile_jitted(fn, *args) -> tuple[Callable, float]:
    """Lower and compile a ``jax.jit`` function for ``args``; return (executable, seconds)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def best_time(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best wall time in seconds of ``call()`` over ``repeats`` runs after ``warmup`` runs.

    ``call`` must block until its result is ready (e.g. end in ``block_until_ready``).
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)


def cost_analysis(compiled) -> dict:
    """XLA's flop and byte estimates for a compiled executable (empty if unavailable)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not all backends implement it
        return {}
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    return {k: float(ca[k]) for k in ("flops", "transcendentals", "bytes accessed") if k in ca}


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table: ``columns`` are ``(key, header, format spec)``."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], fmt)) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic | np.ndarray) or hasattr(x, "__array__"):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (numpy/JAX scalars converted) as indented JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    return path
