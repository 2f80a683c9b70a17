"""TFDS builders of vreid_jax. Importing this package registers them all.

`NAMES` lists the registered names (the one list every CLI and message
uses); all builders share the feature spec of `features.py` and the
machinery of `base.py`.
"""

NAMES = ("synthetic_video_reid", "mars", "duke_video_reid", "ilids_vid",
         "prid2011", "ls_vid", "sdu_vid")

# pylint: disable=unused-import
from vreid_jax.datasets import duke_video_reid
from vreid_jax.datasets import ilids_vid
from vreid_jax.datasets import ls_vid
from vreid_jax.datasets import mars
from vreid_jax.datasets import prid2011
from vreid_jax.datasets import sdu_vid
from vreid_jax.datasets import synthetic_video_reid
