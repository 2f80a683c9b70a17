"""The synthetic video ReID benchmark (`synthetic_video_reid`)."""

from vreid_jax.datasets.synthetic_video_reid.synthetic_video_reid import (
    SyntheticConfig,
    SyntheticVideoReid,
)

__all__ = ["SyntheticConfig", "SyntheticVideoReid"]
