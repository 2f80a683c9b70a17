r"""GLTR on LS-VID (Li et al., ICCV 2019, the paper that introduced LS-VID).

  python -m vreid_jax.main --config=configs/gltr_lsvid.py:stage1 \
    --workdir=$W/gltr_lsvid_s1 --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  python -m vreid_jax.main --config=configs/gltr_lsvid.py \
    --workdir=$W/gltr_lsvid --config.data_dir=$TFDS \
    --config.init_from.checkpoint=$W/gltr_lsvid_s1
  python -m vreid_jax.main --config=configs/gltr_lsvid.py:runlocal \
    --workdir=/tmp/gltr_lsvid_local --config.data_dir=$TFDS

Paper (Tables 2 and 4): mAP 44.32, R1 63.07, R5 77.22, R10 83.81,
R20 88.41. Protocol: LS-VID's query rows of the test list against the other
test tracklets, trapezoid AP.
"""

from configs import gltr_common

VARIANTS = gltr_common.VARIANTS


def get_config(arg=None):
  # About 2.98M frames / 14,943 tracklets overall (~200 per tracklet).
  return gltr_common.gltr_config("ls_vid", arg, frames_per_tracklet=200,
                                protocol="given", ap="trapezoid")
