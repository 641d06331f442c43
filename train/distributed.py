"""What the trainer does differently when it runs as several processes (hosts), in one place.

One process per host, started with `python -m train --distributed ...` (`jax.distributed`); each
drives its local devices through `jax.pmap`, whose collectives span the devices of all processes.
The rest of the trainer sees host-local arrays only (a leading axis of the local devices, as in a
single-process run) and calls these functions where processes must agree:

* `is_main()`: process 0 alone writes logs, pictures and run info, and prints (`report`).
* `global_view` / `local_view`: an executable compiled ahead of time (`config.compiler_options`)
  takes and returns global arrays over the devices of all processes, not host-local ones.
* `replicated_global` / `replicated_local`: orbax saves and restores, in a multi-process run, only
  arrays that span all processes; the train state is saved as one fully replicated global array
  per leaf, and each process reads it back onto its own devices.
* `gather`: per-process numpy results (the evaluation's detections) concatenated over processes in
  process order, the same on every process.
* `pmean`: the steps' cross-device means as one all-reduce per dtype, which the collectives
  between processes run an order of magnitude faster than one per leaf.
* `lost_peer`: whether an error is a collective's whose peer process is gone.
* `main_decides`: process 0's answer to a question whose answer could differ between processes
  (the wall-clock time since the last checkpoint), so that all act on the same one.
* `barrier`: all processes wait for each other (e.g. while process 0 prepares the data set).
* `wait_for_every_process`: the same through the coordination service, with no collective over
  the devices: before the first run of a freshly compiled step, so that no process reaches the
  step's first collective long after another (Gloo gives a process 30 s to join it).

With one process every function is the identity or close to it, so single- and multi-process runs
take the same code path.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost as orbax_multihost
from tqdm import tqdm

# The device axis of the trainer's pmapped steps: the devices of all processes.
AXIS_NAME = "batch"


def report(message: str) -> None:
    """Prints `message` above the progress bar, on process 0 only."""
    if is_main():
        tqdm.write(message)


def is_main() -> bool:
    """True on process 0, which writes the run's files and prints its progress."""
    return jax.process_index() == 0


def main_decides(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a broadcast over the devices of all processes, which
    must all call it at the same point); `flag` itself with one process."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.bool_)))


def barrier(name: str) -> None:
    """Returns once every process has called `barrier(name)`; at once with one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def wait_for_every_process(name: str, *, timeout_s: int = 1800) -> None:
    """Returns once every process has called it with `name` (unique per call); at once with one
    process. A barrier of JAX's coordination service (through orbax's
    `multihost.get_barrier_sync_fn`), not a collective: it creates no collective context, so it
    can come before the first one. A process still compiling after `timeout_s`, or lost, fails
    it."""
    if jax.process_count() > 1:
        orbax_multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def global_view(tree: Any, mesh: Mesh, axis_name: str) -> Any:
    """Host-local arrays `[local devices, ...]` -> global arrays `[all devices, ...]` over `mesh`
    (no copy: each process contributes its shards). The identity with one process."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.host_local_array_to_global_array(tree, mesh, PartitionSpec(axis_name))


def local_view(tree: Any, mesh: Mesh, axis_name: str) -> Any:
    """The inverse of `global_view`: this process's shards of global arrays."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.global_array_to_host_local_array(tree, mesh, PartitionSpec(axis_name))


def pmean(tree: Any, axis_name: str) -> Any:
    """`lax.pmean(tree, axis_name)` inside a pmapped function, as one all-reduce per dtype.

    XLA combines the all-reduces of a tree into one, but over the CPU collectives across
    processes (gloo) its operands, one per leaf, cost far more than one buffer: with one buffer,
    the train step of 2 processes x 2 CPU devices took 3.7x the time of 1 process x 4 devices
    instead of 8.9x (benchmarks/multihost_bench.py, BENCHMARKS.md). The leaves of each dtype are
    concatenated into one vector, reduced, and split back; each element is the mean of the same
    values as with `lax.pmean`.
    """
    leaves, treedef = jax.tree.flatten(tree)
    by_dtype: dict[Any, list[int]] = {}
    for index, leaf in enumerate(leaves):
        by_dtype.setdefault(jnp.result_type(leaf), []).append(index)
    means = list(leaves)
    for indices in by_dtype.values():
        flat = lax.pmean(jnp.concatenate([jnp.ravel(leaves[i]) for i in indices]), axis_name)
        offsets = np.cumsum([np.size(leaves[i]) for i in indices])[:-1]
        for i, part in zip(indices, jnp.split(flat, offsets), strict=True):
            means[i] = part.reshape(np.shape(leaves[i]))
    return jax.tree.unflatten(treedef, means)


# What JAX's runtime says when a collective or barrier lost its peer (gloo, the coordination
# service), as opposed to any other runtime error.
PEER_LOST = re.compile(r"gloo|unavailable|heartbeat|connection|barrier|deadline", re.IGNORECASE)


def lost_peer(error: BaseException) -> str | None:
    """The first line of the runtime error of a lost process behind `error`: itself, or what it
    was raised from or during (orbax's checkpoint barrier fails after a step's collective);
    None if there is none. A collective whose peer is gone fails at once, before the heartbeats
    time out, and `python -m train` then says so in one line."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, jax.errors.JaxRuntimeError) and PEER_LOST.search(str(error)):
            return str(error).strip().splitlines()[0]
        error = error.__cause__ or error.__context__
    return None


def device_mesh(axis_name: str) -> Mesh:
    """The devices of all processes along one axis, in `jax.devices()` order (pmap's order)."""
    return Mesh(np.array(jax.devices()), (axis_name,))


def local_sharding(axis_name: str, devices: Any = None) -> NamedSharding:
    """pmap's layout on this process: the leading axis over `devices` (default: the local
    devices), a mesh axis named `axis_name`, as pmap names the sharding of its outputs."""
    devices = np.array(devices or jax.local_devices())
    return NamedSharding(Mesh(devices, (axis_name,)), PartitionSpec(axis_name))


def replicated_sharding() -> NamedSharding:
    """A whole copy on every device of every process."""
    return NamedSharding(device_mesh("devices"), PartitionSpec())


def replicated_global(tree: Any) -> Any:
    """Per-device copies `[local devices, ...]` (pmap's replicated layout) -> one global array per
    leaf, fully replicated over the devices of all processes, which orbax saves from every
    process (each process contributes its devices' copies; nothing is transferred).

    orbax has the same conversion (`orbax.checkpoint.utils.
    fully_replicated_host_local_array_to_global_array`), on a mesh of its own (axis "x" over
    `jax.devices()`); this one puts the arrays on `replicated_sharding()`, the sharding that the
    checkpoints are restored to and that `replicated_local`, its inverse, reads, so that saving,
    restoring and going back to pmap's layout agree on one mesh."""
    sharding = replicated_sharding()

    def one(x):
        by_device = {shard.device: shard.data.reshape(x.shape[1:])
                     for shard in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(
            x.shape[1:], sharding, [by_device[d] for d in list(sharding.addressable_devices)]
        )

    return jax.tree.map(one, tree)


def replicated_local(tree: Any, axis_name: str) -> Any:
    """The inverse of `replicated_global`: each process's copies, in pmap's replicated layout
    (`[local devices, ...]`, sharded over a mesh of the local devices named `axis_name`)."""
    local = jax.local_devices()
    sharding = local_sharding(axis_name, local)

    def one(x):
        by_device = {shard.device: shard.data for shard in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(
            (len(local), *x.shape), sharding, [by_device[d][None] for d in local]
        )

    return jax.tree.map(one, tree)


def abstract_replicated(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `replicated_global(tree)`, the target of an orbax restore."""
    sharding = replicated_sharding()
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding), tree
    )


def gather(tree: Any) -> Any:
    """Numpy arrays of this process -> the concatenation along the first axis of every process's
    arrays, in process order, on every process (the same shapes on every process)."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
