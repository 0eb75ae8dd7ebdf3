"""Data parallelism through JAX sharding: one mesh axis ``"data"`` over all devices.

The state is replicated on every device and each batch is split along its leading
(example) axis; ``jax.jit`` then partitions the step and inserts the gradient
all-reduce itself, so the same ``train_step`` runs on one device or many.

Multi-host (several processes, e.g. a TPU pod or several GPU nodes): call
``jax.distributed.initialize()`` in every process *before* any other JAX call.
Each process then passes its own slice of the data (``batch_size //
jax.process_count()`` examples per step); :func:`shard_batch` assembles the
global array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "data_mesh",
    "shard_batch",
    "replicate",
    "check_divisible",
    "set_cpu_device_count",
    "COUNT_FLAG",
]

#: Name of the mesh axis the batch is split along.
DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a 1-D device mesh with axis ``"data"``.

    Args:
      devices: devices to use, all of ``jax.devices()`` (every process's) by default.

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(n_devices,)``.

    >>> data_mesh().axis_names
    ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got none")
    return Mesh(np.asarray(devices), axis_names=(DATA_AXIS,))


def check_divisible(name: str, batch_size: int, mesh: Mesh) -> None:
    """Raise a ValueError unless ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{name}: batch size {batch_size} is not divisible by the number of devices "
            f"({n}); choose a multiple of {n}"
        )


def shard_batch(batch, mesh: Mesh):
    """Split every leaf of ``batch`` along its leading axis over the mesh.

    Args:
      batch: pytree of arrays with a common leading example axis. In a multi-host
        run, each process passes its process-local slice.
      mesh: from :func:`data_mesh`.

    Returns:
      The same pytree of global ``jax.Array`` s sharded as ``P("data")``.

    >>> import jax.numpy as jnp
    >>> x = shard_batch(jnp.ones((8, 3)), data_mesh())
    >>> x.shape
    (8, 3)
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    n_procs = jax.process_count()
    for leaf in jax.tree.leaves(batch):
        if np.ndim(leaf) == 0:
            raise ValueError(
                "batch: every leaf needs a leading example axis to be sharded, got a scalar"
            )
        check_divisible("batch", np.shape(leaf)[0] * n_procs, mesh)
    if n_procs == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def replicate(tree, mesh: Mesh):
    """Place a full copy of every leaf of ``tree`` on each device of the mesh.

    In a multi-host run every process must pass the same values.

    >>> import jax.numpy as jnp
    >>> replicate({"w": jnp.ones(3)}, data_mesh())["w"].sharding.is_fully_replicated
    True
    """
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), global_shape=np.shape(x)
        ),
        tree,
    )


#: The XLA flag that sets the number of CPU devices.
COUNT_FLAG = "--xla_force_host_platform_device_count"


def set_cpu_device_count(n: int | None = None) -> int:
    """Expose ``n`` CPU devices to JAX; by default one per CPU core this process may use.

    XLA runs each CPU program on one device. A deblending field's small convolutions
    gain nothing from a second thread, so with several CPU devices
    :func:`galjax.deblend.deblend` runs one worker thread per device, each solving its
    own fields (about 1.9x the fields per second on 2 cores). This sets
    ``--xla_force_host_platform_device_count=n`` in ``XLA_FLAGS`` (replacing an
    earlier value) and must run before JAX's first computation; accelerators are
    unaffected. :func:`galjax.train.fit` shards its batches over every device, so this
    is for deblending, not for training on a CPU. The ``galjax deblend`` command calls
    it (``GALJAX_CPU_DEVICES`` sets ``n``).

    Args:
      n: number of CPU devices (positive); None: ``len(os.sched_getaffinity(0))``.

    Returns:
      ``n``.

    Raises:
      RuntimeError: JAX already runs with another number of CPU devices.
    """
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    from jax._src import xla_bridge

    if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
        have = len(jax.devices("cpu"))
        if have != n:
            raise RuntimeError(
                f"n: JAX already runs with {have} CPU device(s); call set_cpu_device_count "
                "before the first JAX computation"
            )
        return n
    flags = re.sub(rf"{COUNT_FLAG}=\S*", "", os.environ.get("XLA_FLAGS", "")).split()
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{COUNT_FLAG}={n}"])
    return n
