"""iLIDS-VID builder (registered as `ilids_vid`)."""

from vreid_jax.datasets.ilids_vid.ilids_vid import IlidsVid

__all__ = ["IlidsVid"]
