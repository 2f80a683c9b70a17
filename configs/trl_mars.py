r"""TRL + ST²N (Dai, Zhang, Lu, Wang, IEEE TIP 2019) on MARS.

Build MARS once (data_prep/README.md), then the two stages of §IV-B:

  # Stage 1, ST²N pre-training (frame-level CE), from ImageNet GoogLeNet:
  python -m vreid_jax.main --config=configs/trl_mars.py:stage1 \
    --workdir=$W/trl_mars_s1 --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=googlenet-1378be20.pth
  # Stage 2, the whole network (sequence-level CE), from stage 1:
  python -m vreid_jax.main --config=configs/trl_mars.py \
    --workdir=$W/trl_mars --config.data_dir=$TFDS \
    --config.init_from.checkpoint=$W/trl_mars_s1
  # Another row of Table I (rows without ST²N skip stage 1 or run
  # `:<row>,stage1` to pre-train their CNN the same way), e.g. the Baseline:
  python -m vreid_jax.main --config=configs/trl_mars.py:bilstm_g ...
  # Seconds on a CPU, same code path (any row, either stage):
  python -m vreid_jax.main --config=configs/trl_mars.py:full,runlocal \
    --workdir=/tmp/trl_local --config.data_dir=$TFDS

Paper, Table I (MARS, R1 / R5 / R20 / mAP, the protocol of Zheng et al.:
official MATLAB code, `evals.reid`; `evals.reid_step` also reports the
standard 9,330-tracklet gallery with step AP):

  lstm_g         G+LSTM_g                     69.9 / 84.7 / 88.9 / 47.4
  bilstm_g       G+BiLSTM_g (Baseline)        74.0 / 87.8 / 91.2 / 57.8
  bilstm_s       G+BiLSTM_s                   73.6 / 87.4 / 90.8 / 56.9
  trl            G+BiLSTM_g+BiLSTM_s          76.7 / 88.7 / 91.9 / 61.1
  bilstm_g_stn   G+BiLSTM_g+STN               75.9 / 88.9 / 92.1 / 63.5
  bilstm_s_stn   G+BiLSTM_s+STN               74.6 / 87.9 / 92.7 / 62.7
  trl_stn        G+BiLSTM_g+BiLSTM_s+STN      77.3 / 90.2 / 94.0 / 65.6
  bilstm_g_st2n  G+BiLSTM_g+ST²N              78.3 / 91.0 / 94.1 / 65.4
  bilstm_s_st2n  G+BiLSTM_s+ST²N              76.7 / 89.4 / 93.9 / 63.4
  full           G+BiLSTM_g+BiLSTM_s+ST²N     79.3 / 91.1 / 96.0 / 66.8
                 (Table II: +KISSME 80.3 / 91.0 / 95.5 / 67.1, +XQDA
                 80.5 / 91.8 / 96.0 / 69.1; Fig. 4: main stream alone R1
                 75.9)

Parameters (`python -m vreid_jax.summary --config=configs/trl_mars.py:<row>
--num_classes=625`; in brackets without classifiers) and GFLOPs of one
10-frame clip: full 39,824,102 (38,542,852: stem 124,736, each Inception
copy 5,475,168, ST²N 2,269,188, each TRL 12,599,296), 50.7; bilstm_g_st2n
27,224,806 (25,943,556); trl_stn 38,247,142 (36,965,892); bilstm_g_stn
25,647,846 (24,366,596); trl and bilstm_s 18,839,825 (18,199,200), 29.1;
bilstm_g 12,540,177 (11,899,552), 29.0; lstm_g 9,070,353 (8,749,728).
Recipe and choices:
configs/trl_common.py, vreid_jax/models/trl.py.
"""

from configs import trl_common

VARIANTS = trl_common.VARIANTS


def get_config(arg=None):
  return trl_common.trl_config("mars", arg, steps=10_000, protocol="matlab",
                               ap="trapezoid", mars_step_ap=True)
