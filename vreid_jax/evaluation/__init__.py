"""Evaluation toolkit: distances, CMC / mAP / mINP, protocols, re-ranking.

`evaluate(query_features, query_pids, query_camids, gallery_features,
gallery_pids, gallery_camids, ...)` is the one call the trainer makes; it
returns plain-Python metrics. Submodules: `metrics` (pure NumPy maths),
`distances`, `evaluator`, `protocols` (MARS variants, Duke, LS-VID, 10-trial
datasets), `rerank` (k-reciprocal), `aggregation` (test-time frame indices),
`plots` (matplotlib, imported lazily). Importing this package loads NumPy
only: no JAX, SciPy or matplotlib until a function needs them.
"""

from vreid_jax.evaluation.evaluator import evaluate
from vreid_jax.evaluation.evaluator import evaluate_split
from vreid_jax.evaluation.metrics import AP_DEFINITIONS
from vreid_jax.evaluation.metrics import evaluate_distances
from vreid_jax.evaluation.protocols import load_mars_protocol
from vreid_jax.evaluation.protocols import mars_split
from vreid_jax.evaluation.protocols import mean_std_over_trials
from vreid_jax.evaluation.protocols import Split

__all__ = [
    "AP_DEFINITIONS",
    "Split",
    "evaluate",
    "evaluate_distances",
    "evaluate_split",
    "load_mars_protocol",
    "mars_split",
    "mean_std_over_trials",
]
