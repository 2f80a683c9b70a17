r"""STAR (Wu, Zhu, Gong, BMVC 2019) on DukeMTMC-VideoReID.

  python -m vreid_jax.main --config=configs/star_duke.py \
    --workdir=$W/star_duke --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  python -m vreid_jax.main --config=configs/star_duke.py:full,runlocal \
    --workdir=/tmp/star_duke_local --config.data_dir=$TFDS

Paper, Table 2 (mAP / R1 / R5 / R10 / R20): STAR 93.4 / 94.0 / 99.0 / 99.3
/ 99.7 (ResNet-50 backbone 79.7 / 82.2 / 95.2 / 97.2 / 98.6). Table 3 (R1 /
R5): resnet_id 82.2 / 95.2, cbam 91.7 / 98.6, lsta 93.4 / 98.9, no_rpr 93.7 /
99.0, full 94.0 / 99.0. Protocol: the dataset's query against its gallery
(the "402" distractors of the text are the official 408), trapezoid AP.
Rows and recipe: configs/star_common.py (the flow: data_prep/flow.py
--dataset=duke_video_reid).
"""

from configs import star_common

VARIANTS = star_common.VARIANTS


def get_config(arg=None):
  return star_common.star_config("duke_video_reid", arg, variants=VARIANTS,
                                 protocol="given", ap="trapezoid")
