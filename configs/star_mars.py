r"""STAR (Wu, Zhu, Gong, BMVC 2019) on MARS.

Build MARS and its TV-L1 flow once (data_prep/README.md: data_prep/build.py,
then data_prep/flow.py --dataset=mars), then:

  python -m vreid_jax.main --config=configs/star_mars.py \
    --workdir=$W/star_mars --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  # Another row (Table 3 / the ablations), e.g. without optical flow:
  python -m vreid_jax.main --config=configs/star_mars.py:no_flow ...
  # Seconds on a CPU, same code path (any row):
  python -m vreid_jax.main --config=configs/star_mars.py:full,runlocal \
    --workdir=/tmp/star_local --config.data_dir=$TFDS

Paper, Table 2 (MARS, mAP / R1 / R5 / R10 / R20 in %):

  full       STAR                         76.0 / 85.4 / 95.4 / 96.2 / 97.3
             (ResNet-50 backbone, RGB + flow, ID loss: 62.5 / 76.7 / 90.0 /
             92.7 / 95.8)
Table 3 (MARS, R1 / R5):
  resnet_id  Baseline ResNet50-ID         76.7 / 90.0
  cbam       Baseline CBAM-Multi-loss     83.7 / 93.9
  lsta       LSTA                         84.7 / 93.9
  no_rpr     LSTA + GSTA                  84.9 / 95.0
  full       LSTA + GSTA + R_pr           85.4 / 95.4
  no_gsta, no_lsta, no_flow: not in the paper's tables (Fig. 7 plots RGB <
  RGB + flow < RGB + flow + GSTA without numbers).

Protocol: the paper does not say; the standard 9,330-tracklet gallery with
step AP (the Python toolkits' MARS protocol, `evals.reid.protocol`), Euclidean
distance on V. Rows, recipe and choices: configs/star_common.py,
vreid_jax/models/star.py.
"""

from configs import star_common

VARIANTS = star_common.VARIANTS


def get_config(arg=None):
  return star_common.star_config("mars", arg, variants=VARIANTS,
                                 protocol="standard", ap="step")
