"""MARS builder (registered as `mars`)."""

from vreid_jax.datasets.mars.mars import Mars

__all__ = ["Mars"]
