"""Shared pytest settings: strict JAX promotion rules and a PRNG key fixture.

Run the suite in float64 with ``JAX_ENABLE_X64=1 pytest``.
"""

import os
from pathlib import Path

import jax
import pytest

# The command line's persistent compilation cache stays off in tests (no files outside
# the tests' temporary folders); test_cli turns it on in a subprocess.
os.environ["GALJAX_CACHE_DIR"] = "off"

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

#: The shared real-data folder (``../shared/data`` beside the checkout).
DATA_DIR = Path(
    os.environ.get("GALJAX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def key():
    """A fresh PRNG key; tests split it rather than reuse it."""
    return jax.random.key(0)


@pytest.fixture
def data_dir():
    """Path to ``../shared/data``; tests needing it are skipped when it is absent."""
    if not DATA_DIR.exists():
        pytest.skip(f"shared data folder not found at {DATA_DIR}")
    return DATA_DIR
