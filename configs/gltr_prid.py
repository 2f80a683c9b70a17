r"""GLTR on PRID-2011 (Li et al., ICCV 2019), one of 10 trials.

The protocol is the mean over the 10 published trials (query = cam_a,
gallery = cam_b of the trial's 89 test ids); run each trial and aggregate:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/gltr_prid.py:stage1 \
      --workdir=$W/gltr_prid_s1_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t \
      --config.init_from.backbone_weights=resnet50-0676ba61.pth
    python -m vreid_jax.main --config=configs/gltr_prid.py \
      --workdir=$W/gltr_prid_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t --config.init_from.checkpoint=$W/gltr_prid_s1_t$t
  done
  python -m vreid_jax.aggregate_trials $W/gltr_prid_t*
  # A few minutes on a CPU (trial 0):
  python -m vreid_jax.main --config=configs/gltr_prid.py:runlocal \
    --workdir=/tmp/gltr_prid_local --config.data_dir=$TFDS

Paper (Tables 2 and 6, rank-1/rank-5 only): R1 95.50, R5 100.00.
"""

from configs import gltr_common

VARIANTS = gltr_common.VARIANTS


def get_config(arg=None):
  # 178 ids x 2 cameras, 25-675 frames per tracklet (~100 on average).
  return gltr_common.gltr_config("prid2011", arg, frames_per_tracklet=100,
                                trial=0, protocol="given", ap="trapezoid")
