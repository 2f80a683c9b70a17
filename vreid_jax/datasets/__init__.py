"""TFDS builders of vreid_jax. Importing this package registers them all.

Registered names: `synthetic_video_reid`, `mars`, `duke_video_reid`,
`ilids_vid`, `prid2011`, `ls_vid` and `sdu_vid`.
"""

import importlib

_BUILDERS = ("synthetic_video_reid", "mars", "duke_video_reid", "ilids_vid",
             "prid2011", "ls_vid", "sdu_vid")

for _name in _BUILDERS:
  try:
    importlib.import_module(f"vreid_jax.datasets.{_name}")
  except ModuleNotFoundError as _e:  # A builder package not written yet.
    if _e.name != f"vreid_jax.datasets.{_name}":
      raise
