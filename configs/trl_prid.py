r"""TRL + ST²N (Dai et al., IEEE TIP 2019) on PRID-2011, one of 10 trials.

Stage 1 is MARS's (`configs/trl_mars.py:stage1`, as the paper writes; this
file's `:stage1` is the same config). Stage 2 on each trial (cam_a probe,
cam_b gallery of the trial's test ids), then the mean over the trials:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/trl_prid.py \
      --workdir=$W/trl_prid_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t --config.init_from.checkpoint=$W/trl_mars_s1
  done
  python -m vreid_jax.aggregate_trials $W/trl_prid_t*
  # Seconds on a CPU (trial 0, any row):
  python -m vreid_jax.main --config=configs/trl_prid.py:runlocal \
    --workdir=/tmp/trl_prid_local --config.data_dir=$TFDS

Paper (Table III, R1 / R5 / R20, mean of 10 splits): full 87.8 / 97.4 /
99.3; Baseline (`bilstm_g`) 74.2 / 93.3 / 98.9; Fig. 4: main stream alone
R1 83.5. 8,000 stage-2 iterations. Rows and recipe: configs/trl_common.py.
"""

from configs import trl_common

VARIANTS = trl_common.VARIANTS


def get_config(arg=None):
  # The paper keeps the 178 persons with more than 27 frames (the builder's
  # split file decides the ids of each trial).
  return trl_common.trl_config("prid2011", arg, steps=8_000, trial=0,
                               protocol="given", ap="trapezoid")
