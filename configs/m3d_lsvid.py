r"""M3D (Li, Zhang, Huang) on LS-VID.

  python -m vreid_jax.main --config=configs/m3d_lsvid.py \
    --workdir=$W/m3d_lsvid --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  python -m vreid_jax.main --config=configs/m3d_lsvid.py:m3d,runlocal \
    --workdir=/tmp/m3d_lsvid_local --config.data_dir=$TFDS

The TIP paper reports no LS-VID numbers. LS-VID's own paper (GLTR, ICCV
2019, Table 4) lists the AAAI version of M3D at mAP 40.07, R1 57.68, R5
76.09, R10 83.35, R20 88.18, and its baselines: I3D 33.86 / 51.03, P3D
34.96 / 53.37, two-stream (RGB + flow) 32.12 / 48.23 (mAP / R1). Protocol:
the test list's query rows against the other test tracklets, trapezoid AP.
Rows and recipe: m3d_common.py.
"""

from configs import m3d_common

VARIANTS = m3d_common.VARIANTS


def get_config(arg=None):
  # About 2.98M frames / 14,943 tracklets overall (~200 per tracklet).
  return m3d_common.m3d_config("ls_vid", arg, frames_per_tracklet=200,
                               protocol="given", ap="trapezoid")
