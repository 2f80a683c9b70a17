r"""GLTR on DukeMTMC-VideoReID (Li et al., ICCV 2019).

  python -m vreid_jax.main --config=configs/gltr_duke.py:stage1 \
    --workdir=$W/gltr_duke_s1 --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  python -m vreid_jax.main --config=configs/gltr_duke.py \
    --workdir=$W/gltr_duke --config.data_dir=$TFDS \
    --config.init_from.checkpoint=$W/gltr_duke_s1
  python -m vreid_jax.main --config=configs/gltr_duke.py:runlocal \
    --workdir=/tmp/gltr_duke_local --config.data_dir=$TFDS

Paper (Tables 2 and 7): mAP 93.74, R1 96.29, R5 99.30, R20 99.71.
Protocol: the dataset's query (702) against its gallery (2,636) tracklets,
trapezoid AP as the authors' MATLAB-style evaluation.
"""

from configs import gltr_common

VARIANTS = gltr_common.VARIANTS


def get_config(arg=None):
  # About 369,656 training frames / 2,196 tracklets.
  return gltr_common.gltr_config("duke_video_reid", arg,
                                frames_per_tracklet=168, protocol="given",
                                ap="trapezoid")
