r"""M3D (Li, Zhang, Huang, IEEE TIP 2020) on MARS.

Build MARS once (data_prep/README.md), then:

  # The headline: both streams, fused (jointly trained; see m3d_common.py
  # for the paper's separate training and `evaluate_features --fuse`).
  python -m vreid_jax.main --config=configs/m3d_mars.py \
    --workdir=$W/m3d_mars --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  # One row of Tables I-IV, e.g. the M3D stream alone or I3D:
  python -m vreid_jax.main --config=configs/m3d_mars.py:m3d ...
  python -m vreid_jax.main --config=configs/m3d_mars.py:i3d ...
  # Seconds on a CPU, same code path (any row):
  python -m vreid_jax.main --config=configs/m3d_mars.py:m3d,runlocal \
    --workdir=/tmp/m3d_local --config.data_dir=$TFDS

Paper (TIP; the table bodies were lost from our copy of the text, these are
the numbers its prose states; official MATLAB evaluation, trapezoid AP):
  two_stream   R1 88.63, mAP 79.46; re-ranked mAP 85.46 (Table VI)
  m3d          mAP 78.64 (Table III)      local   mAP 72.84 (Table III)
  2d           mAP 62.54 (Tables III-IV)  global  above local (Table III)
  i3d          mAP 62.84, R1 76.62 (Table IV; ~186 MB)
  p3d_c        mAP 69.06 (Table IV)       p3d_a   below 2D (Table IV)
  flow_two_stream  slightly above 2D (Table IV)
  (The AAAI version, via GLTR's tables: mAP 74.06, R1 84.39, R5 93.84,
  R20 97.74.)
Protocol here: `evals.reid.protocol=matlab` (all 12,180 test tracklets) with
trapezoid AP, as the official code; re-ranked numbers in metrics.json.
Model sizes (`python -m vreid_jax.summary`, no classifier, float32): 2d
95.1 MB, m3d 108.2 MB (+13.1), i3d 185.7 MB (+77.5 over m3d); the paper:
M3D ~110 MB, ~15 MB over 2D, ~76 MB under I3D.
"""

from configs import m3d_common

VARIANTS = m3d_common.VARIANTS


def get_config(arg=None):
  # 509,914 training frames / 8,298 tracklets.
  return m3d_common.m3d_config("mars", arg, frames_per_tracklet=61,
                               protocol="matlab", ap="trapezoid")
