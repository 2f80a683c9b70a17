"""TV-L1 flow of many frame pairs, batched and sharded over local devices.

`PairFlow(params)(pairs)` takes any number of (I0, I1) grey uint8 pairs,
groups them by image size, and runs fixed-size batches of
`per_device_batch x number of devices` pairs through one jitted program per
size: `jax.shard_map` over a 1-D mesh of the local devices, each device
running `vmap` of the single-pair TV-L1 on its rows. Each device's
`while_loop`s stop on its own rows' convergence (no cross-device traffic).
A short last batch is padded with blank pairs, which converge at once.

`dispatch` starts every batch and returns at once (JAX's asynchronous
dispatch); `collect` fetches the results. data_prep/flow.py dispatches the
next chunk of a split before it encodes the previous one, so the host's
PNG encoding overlaps the devices' work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from vreid_jax.flow import tvl1

AXIS = "pairs"


def default_per_device_batch(device: jax.Device) -> int:
  """Pairs per device and call: 1 on CPU (no vmap: converged pairs do not
  wait for slow ones, and one pair's arrays stay in cache), 128 otherwise
  (an H100 at 256x128: 115 pairs/s with 32, 192 with 128, 196 with 256)."""
  return 1 if device.platform == "cpu" else 128


@functools.lru_cache(maxsize=None)
def _sharded_fn(params: tvl1.TVL1Params, devices: tuple[jax.Device, ...]):
  mesh = Mesh(np.asarray(devices), (AXIS,))

  def local(i0, i1):
    return tvl1.flow_batch(i0, i1, None, params)

  # check_vma=False: the loop carries start as constants (zeros) and become
  # per-device values; every device runs its own loops (no collectives).
  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
                     out_specs=(P(AXIS), P(AXIS)), check_vma=False)
  return jax.jit(fn), NamedSharding(mesh, P(AXIS))


class PairFlow:
  """Computes the TV-L1 flow of grey frame pairs on every local device.

  Attributes:
    params: the TV-L1 parameters.
    devices: the devices the batch is sharded over.
    batch_size: pairs per call (a multiple of the number of devices).
  """

  def __init__(self, params: tvl1.TVL1Params = tvl1.TVL1Params(),
               per_device_batch: int | None = None,
               devices: Sequence[jax.Device] | None = None):
    if params.use_initial_flow:
      raise ValueError("PairFlow computes flow from scratch "
                       "(use_initial_flow=False)")
    self.params = params
    self.devices = tuple(devices if devices is not None
                         else jax.local_devices())
    if per_device_batch is None:
      per_device_batch = default_per_device_batch(self.devices[0])
    if per_device_batch < 1:
      raise ValueError(f"per_device_batch must be >= 1, got "
                       f"{per_device_batch}")
    self.batch_size = per_device_batch * len(self.devices)
    self._fn, self._sharding = _sharded_fn(params, self.devices)

  def _dispatch_batch(self, i0: np.ndarray,
                      i1: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Starts one padded batch; returns its (not yet computed) flow and
    inner iterations per level."""
    n = i0.shape[0]
    if n < self.batch_size:
      pad = ((0, self.batch_size - n), (0, 0), (0, 0))
      i0, i1 = np.pad(i0, pad), np.pad(i1, pad)
    return self._fn(jax.device_put(i0, self._sharding),
                    jax.device_put(i1, self._sharding))

  def dispatch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]
               ) -> tuple[int, list[tuple[list[int], jax.Array]]]:
    """Starts computing the flow of every pair; `collect` fetches it.

    Args:
      pairs: grey images, uint8 (or float in 0..255), I1 of I0's size.

    Returns:
      A handle for `collect`.
    """
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k, (a, b) in enumerate(pairs):
      if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"pair {k}: need two (H, W) grey images of one "
                         f"size, got {a.shape} and {b.shape}")
      by_shape.setdefault(a.shape, []).append(k)
    pending = []
    for ids in by_shape.values():
      dtype = np.result_type(*(pairs[k][0].dtype for k in ids))
      for s in range(0, len(ids), self.batch_size):
        part = ids[s:s + self.batch_size]
        i0 = np.stack([pairs[k][0] for k in part]).astype(dtype, copy=False)
        i1 = np.stack([pairs[k][1] for k in part]).astype(dtype, copy=False)
        pending.append((part, self._dispatch_batch(i0, i1)))
    return len(pairs), pending

  def collect(self, handle, progress: Callable[[int], Any] | None = None,
              with_counts: bool = False):
    """The flows of a `dispatch`ed list, in order.

    Args:
      handle: what `dispatch` returned.
      progress: called with n as each batch of n pairs arrives.
      with_counts: also return the inner iterations each pair ran per
        pyramid level (finest first).

    Returns:
      The (H, W, 2) float32 flows in pixels, or (flows, counts).
    """
    count, pending = handle
    out: list[np.ndarray | None] = [None] * count
    counts: list[np.ndarray | None] = [None] * count
    for part, (flow, iters) in pending:
      flow, iters = np.asarray(flow), np.asarray(iters)
      for j, k in enumerate(part):
        out[k], counts[k] = flow[j], iters[j]
      if progress is not None:
        progress(len(part))
    return (out, counts) if with_counts else out

  def __call__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]
               ) -> list[np.ndarray]:
    """Flow of each (I0, I1) grey pair, in order (see `dispatch`)."""
    return self.collect(self.dispatch(pairs))


def flow_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]],
               params: tvl1.TVL1Params = tvl1.TVL1Params()
               ) -> list[np.ndarray]:
  """One-shot `PairFlow(params)(pairs)`."""
  return PairFlow(params)(pairs)

