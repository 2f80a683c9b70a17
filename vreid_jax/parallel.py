"""Device mesh and shardings for data parallelism.

One mesh axis, "data", spans every device of every process. Batches are
sharded along their leading axis on "data"; the train state is replicated.
`jax.jit` with these shardings is what `pmap` became: one program on global
arrays, with the gradient all-reduce (and BatchNorm statistics over the whole
global batch) inserted by XLA. Multi-host runs call `initialize_distributed`
first, and every process feeds its own rows of the global batch
(`global_batch`).
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA = "data"


def initialize_distributed(cfg) -> None:
  """Calls jax.distributed.initialize when config.distributed asks for it.

  With `initialize=True` and empty fields, JAX auto-detects the cluster
  (SLURM, Cloud TPU, ...); otherwise the coordinator address, number of
  processes and process id are passed explicitly.
  """
  if not cfg.initialize:
    return
  kwargs = {}
  if cfg.coordinator_address:
    kwargs["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes > 0:
    kwargs["num_processes"] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs["process_id"] = cfg.process_id
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d", jax.process_index(),
               jax.process_count())


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (or the given) devices, with an Auto axis."""
  devices = jax.devices() if devices is None else list(devices)
  try:
    from jax.sharding import AxisType  # pylint: disable=g-import-not-at-top
    return jax.make_mesh((len(devices),), (DATA,), devices=devices,
                         axis_types=(AxisType.Auto,))
  except (ImportError, TypeError):  # Older jax: no axis types.
    return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Assembles every process's local rows into global, data-sharded arrays."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}


def replicate(tree, mesh: Mesh):
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def fetch(tree):
  """Brings (possibly multi-host) global arrays back as NumPy on each host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
