r"""M3D (Li, Zhang, Huang, IEEE TIP 2020) on DukeMTMC-VideoReID.

  python -m vreid_jax.main --config=configs/m3d_duke.py \
    --workdir=$W/m3d_duke --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  python -m vreid_jax.main --config=configs/m3d_duke.py:m3d,runlocal \
    --workdir=/tmp/m3d_duke_local --config.data_dir=$TFDS

Paper (TIP Table VII, two_stream): mAP 93.67, R1 95.49. Protocol: the
dataset's query (702) against its gallery (2,636) tracklets, trapezoid AP
(the authors' MATLAB evaluation). Rows and recipe: m3d_common.py.
"""

from configs import m3d_common

VARIANTS = m3d_common.VARIANTS


def get_config(arg=None):
  # About 369,656 training frames / 2,196 tracklets.
  return m3d_common.m3d_config("duke_video_reid", arg,
                               frames_per_tracklet=168, protocol="given",
                               ap="trapezoid")
