r"""STAR (Wu, Zhu, Gong, BMVC 2019) on iLIDS-VID, one of 10 trials.

The protocol is the mean over the 10 random 50/50 splits (query = cam1,
gallery = cam2 of the trial's 150 test ids); run each trial and aggregate:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/star_ilids.py \
      --workdir=$W/star_ilids_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t \
      --config.init_from.backbone_weights=resnet50-0676ba61.pth
  done
  python -m vreid_jax.aggregate_trials $W/star_ilids_t*
  # Seconds on a CPU (trial 0, any row):
  python -m vreid_jax.main --config=configs/star_ilids.py:full,runlocal \
    --workdir=/tmp/star_ilids_local --config.data_dir=$TFDS

Paper, Table 1 (R1 / R5 / R10 / R20): STAR 85.9 / 97.1 / 98.9 / 99.7
(ResNet-50 backbone 69.0 / 89.1 / 94.1 / 97.3). Table 3 (R1 / R5):
resnet_id 69.0 / 89.1, cbam 74.7 / 92.8, lsta 84.3 / 96.6, no_rpr 85.1 /
96.4, full 85.9 / 97.1. Rows and recipe: configs/star_common.py (the flow:
data_prep/flow.py --dataset=ilids_vid).
"""

from configs import star_common

VARIANTS = star_common.VARIANTS


def get_config(arg=None):
  return star_common.star_config("ilids_vid", arg, variants=VARIANTS,
                                 trial=0, protocol="given", ap="trapezoid")
