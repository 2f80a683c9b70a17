r"""STAR (Wu, Zhu, Gong, BMVC 2019) on PRID-2011, one of 10 trials.

The paper uses the 200 identities seen by both cameras (spec 4.12) and
averages 10 random splits (query = cam_a, gallery = cam_b of the trial's
test ids; the builder's split file decides the ids of each trial); run
each trial and aggregate:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/star_prid.py \
      --workdir=$W/star_prid_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t \
      --config.init_from.backbone_weights=resnet50-0676ba61.pth
  done
  python -m vreid_jax.aggregate_trials $W/star_prid_t*
  # Seconds on a CPU (trial 0, any row):
  python -m vreid_jax.main --config=configs/star_prid.py:full,runlocal \
    --workdir=/tmp/star_prid_local --config.data_dir=$TFDS

Paper, Table 1 (R1 / R5 / R10 / R20): STAR 93.4 / 98.3 / 100 / 100
(ResNet-50 backbone 86.3 / 97.8 / 99.3 / 99.8). Table 3 (R1 / R5):
resnet_id 86.3 / 97.8, cbam 83.9 / 95.6, lsta 91.2 / 98.2, no_rpr 92.2 /
99.1, full 93.4 / 98.3. Rows and recipe: configs/star_common.py (the flow:
data_prep/flow.py --dataset=prid2011).
"""

from configs import star_common

VARIANTS = star_common.VARIANTS


def get_config(arg=None):
  return star_common.star_config("prid2011", arg, variants=VARIANTS,
                                 trial=0, protocol="given", ap="trapezoid")
