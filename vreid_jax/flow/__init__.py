"""Optical flow in JAX: TV-L1 (`tvl1`), run over many pairs and devices
(`batching`), and frame pairs of known motion to check it (`known_motion`)."""

from vreid_jax.flow.tvl1 import DualTVL1
from vreid_jax.flow.tvl1 import TVL1Params
from vreid_jax.flow.tvl1 import tvl1_flow
from vreid_jax.flow.tvl1 import tvl1_flow_batch

__all__ = ["DualTVL1", "TVL1Params", "tvl1_flow", "tvl1_flow_batch"]
