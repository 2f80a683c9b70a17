r"""GLTR on MARS (Li et al., ICCV 2019).

Build MARS once (data_prep/README.md), then:

  # Stage 1: the 2D CNN on frames (ImageNet init from a local file).
  python -m vreid_jax.main --config=configs/gltr_mars.py:stage1 \
    --workdir=$W/gltr_mars_s1 --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  # Stage 2: DTP + TSA on 16-frame clips, from stage 1.
  python -m vreid_jax.main --config=configs/gltr_mars.py \
    --workdir=$W/gltr_mars --config.data_dir=$TFDS \
    --config.init_from.checkpoint=$W/gltr_mars_s1
  # A few minutes on a CPU, same code path:
  python -m vreid_jax.main --config=configs/gltr_mars.py:runlocal \
    --workdir=/tmp/gltr_mars_local --config.data_dir=$TFDS

Paper (Tables 2 and 5; official MATLAB evaluation, trapezoid AP):
  mAP 78.47, R1 87.02, R5 95.76, R20 98.23; with re-ranking mAP 85.54.
Protocol here: `evals.reid.protocol=matlab` (all 12,180 test tracklets,
junk = pid -1 and same pid & camera) with `evals.reid.ap=trapezoid`, as the
official code; `--config.evals.reid.protocol=standard
--config.evals.reid.ap=step` gives the torchreid
protocol (9,330 gallery). Re-ranked numbers are in metrics.json "reranked".
"""

from configs import gltr_common

VARIANTS = gltr_common.VARIANTS


def get_config(arg=None):
  # 509,914 training frames / 8,298 tracklets.
  return gltr_common.gltr_config("mars", arg, frames_per_tracklet=61,
                                protocol="matlab", ap="trapezoid")
