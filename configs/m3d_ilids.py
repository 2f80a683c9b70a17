r"""M3D (Li, Zhang, Huang, IEEE TIP 2020) on iLIDS-VID, one of 10 trials.

The protocol is the mean over 10 random 50/50 identity splits (query = cam1,
gallery = cam2 of the trial's test ids): run each trial, then aggregate:

  for t in 0 1 2 3 4 5 6 7 8 9; do
    python -m vreid_jax.main --config=configs/m3d_ilids.py \
      --workdir=$W/m3d_ilids_t$t --config.data_dir=$TFDS \
      --config.dataset.trial=$t \
      --config.init_from.backbone_weights=resnet50-0676ba61.pth
  done
  python -m vreid_jax.aggregate_trials $W/m3d_ilids_t*
  python -m vreid_jax.main --config=configs/m3d_ilids.py:m3d,runlocal \
    --workdir=/tmp/m3d_ilids_local --config.data_dir=$TFDS

Paper: the TIP Table V body is not in our copy of the text; the AAAI
version reports R1 74.00, R5 94.33. The paper states no recipe for the
small datasets: the MARS recipe per split. Rows: m3d_common.py.
"""

from configs import m3d_common

VARIANTS = m3d_common.VARIANTS


def get_config(arg=None):
  # 300 ids x 2 cameras, 23-192 frames per tracklet (~73 on average).
  return m3d_common.m3d_config("ilids_vid", arg, frames_per_tracklet=73,
                               trial=0, protocol="given", ap="trapezoid")
