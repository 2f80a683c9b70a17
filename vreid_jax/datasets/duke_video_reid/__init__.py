"""DukeMTMC-VideoReID builder (registered as `duke_video_reid`)."""

from vreid_jax.datasets.duke_video_reid.duke_video_reid import DukeVideoReid

__all__ = ["DukeVideoReid"]
