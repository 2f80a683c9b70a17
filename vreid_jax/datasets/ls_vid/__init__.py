"""LS-VID builder (registered as `ls_vid`)."""

from vreid_jax.datasets.ls_vid.ls_vid import LsVid

__all__ = ["LsVid"]
