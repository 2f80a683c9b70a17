"""PRID-2011 multi-shot builder (registered as `prid2011`)."""

from vreid_jax.datasets.prid2011.prid2011 import Prid2011

__all__ = ["Prid2011"]
