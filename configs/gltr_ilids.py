r"""GLTR on iLIDS-VID (Li et al., ICCV 2019), one of 10 trials.

The protocol is the mean over the 10 published trials (query = cam1,
gallery = cam2 of the trial's 150 test ids); run each trial and aggregate:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/gltr_ilids.py:stage1 \
      --workdir=$W/gltr_ilids_s1_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t \
      --config.init_from.backbone_weights=resnet50-0676ba61.pth
    python -m vreid_jax.main --config=configs/gltr_ilids.py \
      --workdir=$W/gltr_ilids_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t --config.init_from.checkpoint=$W/gltr_ilids_s1_t$t
  done
  python -m vreid_jax.aggregate_trials $W/gltr_ilids_t*
  python -m vreid_jax.main --config=configs/gltr_ilids.py:runlocal \
    --workdir=/tmp/gltr_ilids_local --config.data_dir=$TFDS

Paper (Tables 2 and 6, rank-1/rank-5 only): R1 86.00, R5 98.00.
"""

from configs import gltr_common

VARIANTS = gltr_common.VARIANTS


def get_config(arg=None):
  # 300 ids x 2 cameras, 23-192 frames per tracklet (~73 on average).
  return gltr_common.gltr_config("ilids_vid", arg, frames_per_tracklet=73,
                                trial=0, protocol="given", ap="trapezoid")
