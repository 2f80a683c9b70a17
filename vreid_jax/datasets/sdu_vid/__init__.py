"""SDU-VID builder (registered as `sdu_vid`)."""

from vreid_jax.datasets.sdu_vid.sdu_vid import SduVid

__all__ = ["SduVid"]
