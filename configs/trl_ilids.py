r"""TRL + ST²N (Dai et al., IEEE TIP 2019) on iLIDS-VID, one of 10 trials.

Stage 1 is MARS's (`configs/trl_mars.py:stage1`, as the paper writes; this
file's `:stage1` is the same config). Stage 2 on each trial (cam1 probe,
cam2 gallery of the trial's 150 test ids), then the mean over the trials:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/trl_ilids.py \
      --workdir=$W/trl_ilids_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t --config.init_from.checkpoint=$W/trl_mars_s1
  done
  python -m vreid_jax.aggregate_trials $W/trl_ilids_t*
  python -m vreid_jax.main --config=configs/trl_ilids.py:runlocal \
    --workdir=/tmp/trl_ilids_local --config.data_dir=$TFDS

Paper (Table III, R1 / R5 / R20, mean of 10 splits): full 57.7 / 81.7 /
94.1; Baseline (`bilstm_g`) 52.7 / 80.7 / 93.9; Fig. 4: main stream alone
R1 52.1. 8,000 stage-2 iterations. Rows and recipe: configs/trl_common.py.
"""

from configs import trl_common

VARIANTS = trl_common.VARIANTS


def get_config(arg=None):
  return trl_common.trl_config("ilids_vid", arg, steps=8_000, trial=0,
                               protocol="given", ap="trapezoid")
