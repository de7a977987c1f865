"""Devices and hosts: distributed initialisation, the groups mesh, replication, sharded losses.

A run splits the C*K groups of every step over all the devices JAX sees: the per-group losses
run under `jax.shard_map` on a one-axis ('groups') mesh with the K (cluster) axis of the groups
split over it. Every device gathers and augments only its own real batches and computes their
losses, while the synthetic set, the network and the optimiser states stay replicated (they
are small next to C*K*m real images). `jax.grad` through `shard_map` sums every device's
contribution to the synthetic-set gradient (no extra `pmean`, which would multiply it by the
device count). Results equal the single-device step up to float reassociation (tested on 4
forced CPU devices).

Across hosts every process runs the same command with its own `distributed.process_id`; all of
them compute the same data, groups and initial state from the seed, each device computes its
share of the groups, and process 0 writes the run's files (checkpoints are written by all, as
orbax requires, into a workdir they share). Tested with two processes of one CPU device each
(cross-process collectives over gloo, JAX's CPU default): their sets equal, bit for bit, one
process's on two devices (tests/multihost_test.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "groups"


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize` from `config.distributed` (multi-host runs), once."""
    settings = config.distributed
    if not settings.coordinator_address or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes,
        process_id=settings.process_id,
    )


def create_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """A one-axis ('groups') mesh over `distributed.num_devices` devices (0 = all of them)."""
    devices = jax.devices()
    wanted = config.distributed.num_devices or len(devices)
    if wanted > len(devices):
        raise ValueError(
            f"config.distributed.num_devices={wanted} exceeds the {len(devices)} devices JAX "
            f"sees ({devices[0].platform}); lower it or use 0 for all of them."
        )
    return Mesh(np.asarray(devices[:wanted]), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s arrays replicated on every device of `mesh` (also across hosts).

    Every process must pass the same values (as every process of a run computes them from
    the same config and seed).
    """
    sharding = NamedSharding(mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                put(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def _to_varying(tree: Any, axis: str) -> Any:
    """Marks replicated values as per-device inside `shard_map` (`pcast`; `pvary` before it)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(tree, axis, to="varying")
    return jax.lax.pvary(tree, axis)  # pragma: no cover - jax < 0.8


def compute_group_losses(
    losses_fn: Callable[..., jax.Array],
    params: Any,
    syn_images: jax.Array,
    *,
    labels: jax.Array,
    images: jax.Array,
    index: jax.Array,
    key: jax.Array,
    mesh: Mesh | None = None,
    learning_rate: jax.Array | None = None,
    ce_accuracy: jax.Array | None = None,
) -> jax.Array:
    """The (C, K) losses of the real groups `images[index]` against `syn_images`.

    Args:
      losses_fn: a `jaxdd.matching.FAMILIES` entry with its hyperparameters bound.
      params: the network matched through. syn_images: (C, ipc, H, W, Ch). labels: (C, ipc).
      images: (N, H, W, Ch) the real training images. index: (C, K, m) rows of every group.
      key: the matching key (augmentation draws).
      mesh: a one-axis mesh; the K axis of `index` is split over its devices, padded to a
        multiple of the device count with repeated groups whose losses are dropped. None: one
        device, no `shard_map`.
      learning_rate: the risk family's learned unroll learning rate (a () array,
        differentiated like the labels); None: the one bound into `losses_fn`.
      ce_accuracy: the matched network's running accuracy (%, a () array) that weighs the
        distribution family's regulariser (IDM's); None: each group's own.

    Returns:
      (C, K) losses.
    """
    rate = {} if learning_rate is None else {"learning_rate": learning_rate}
    if ce_accuracy is not None:
        rate["ce_accuracy"] = ce_accuracy
    if mesh is None:
        return losses_fn(params, syn_images, labels=labels, real=images[index], key=key, **rate)
    (axis,) = mesh.axis_names
    num_clusters = index.shape[1]
    padded = -(-num_clusters // mesh.size) * mesh.size
    if padded != num_clusters:
        index = index[:, jnp.arange(padded) % num_clusters]

    def local(params, syn_images, labels, rate, images, index, key):
        # Replicated inputs enter as device-invariant; differentiating an invariant value
        # inside shard_map would psum its gradient over devices, so the per-group real
        # gradients (w.r.t. params) and this device's share of the synthetic-set gradient
        # are taken w.r.t. per-device copies. shard_map's transpose sums the latter.
        # Learned (soft) labels and unroll lr are differentiated too: per-device copies also.
        params, syn_images, labels, rate = _to_varying((params, syn_images, labels, rate), axis)
        return losses_fn(params, syn_images, labels=labels, real=images[index], key=key, **rate)

    losses = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(), P(None, axis), P()),
        out_specs=P(None, axis),
    )(params, syn_images, labels, rate, images, index, key)
    return losses[:, :num_clusters]
