"""`train.distributed` in one process; its multi-process paths: tests/train/test_multihost.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from train import distributed


def _tree(num_devices: int) -> dict:
    """A tree of the kinds a train step averages: several float32 shapes, a bfloat16 array, an
    int32 count and an empty collection, different on every device."""
    rng = np.random.default_rng(0)

    def draw(*shape):
        return rng.normal(size=(num_devices, *shape)).astype(np.float32)

    return {
        "params": {"kernel": draw(3, 3, 4, 8), "bias": draw(8), "scale": draw()},
        "batch_stats": {"mean": jnp.asarray(draw(5), jnp.bfloat16)},
        "count": rng.integers(0, 100, size=(num_devices,)).astype(np.int32),
        "loss_state": {},
    }


def test_pmean_is_lax_pmean_of_every_leaf():
    num_devices = jax.local_device_count()
    assert num_devices == 4
    tree = _tree(num_devices)
    fused = jax.pmap(lambda t: distributed.pmean(t, "i"), axis_name="i")(tree)
    per_leaf = jax.pmap(lambda t: lax.pmean(t, "i"), axis_name="i")(tree)
    assert jax.tree.structure(fused) == jax.tree.structure(per_leaf)
    for got, expected, original in zip(
        jax.tree.leaves(fused), jax.tree.leaves(per_leaf), jax.tree.leaves(tree), strict=True
    ):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))
        if got.dtype == jnp.float32:  # And NumPy's mean over the devices, on every replica.
            mean = np.mean(np.asarray(original, np.float64), axis=0)
            for replica in np.asarray(got):
                np.testing.assert_allclose(replica, mean, rtol=1e-6, atol=1e-7)


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def test_lost_peer_finds_the_runtime_error_of_a_lost_process_behind_an_error():
    # What the survivor of a 2-process run saw (tests/train/test_multihost.py): the train step's
    # collective, or orbax's checkpoint barrier, which raises a TimeoutError from it.
    gloo = jax.errors.JaxRuntimeError(
        "UNKNOWN: Gloo all-reduce failed: [pair.cc:538] Read error [127.0.0.1]:36573: Connection "
        "reset by peer"
    )
    assert distributed.lost_peer(gloo) == gloo.args[0]
    barrier = jax.errors.JaxRuntimeError(
        "INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat "
        "timeout.\n\nRPC: /xla.coordination.CoordinationService/Barrier"
    )
    timeout = _raised_from(TimeoutError("Timed out while waiting for a barrier."), barrier)
    assert distributed.lost_peer(timeout) == (
        "INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat "
        "timeout."
    )
    # Any other error, a runtime error of this process included, is not a lost peer.
    assert distributed.lost_peer(ValueError("config.batch_size is 6")) is None
    out_of_memory = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating")
    assert distributed.lost_peer(_raised_from(RuntimeError("step failed"), out_of_memory)) is None
