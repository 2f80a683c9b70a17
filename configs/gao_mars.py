r"""Gao & Nevatia (BMVC 2018), "Revisiting Temporal Modeling", on MARS.

One row of the paper per variant (the first is the default):

  python -m vreid_jax.main --config=configs/gao_mars.py:ta \
    --workdir=$W/gao_ta --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet50-0676ba61.pth
  # The 3D CNN starts from Kinetics (Hara's resnet-50-kinetics.pth):
  python -m vreid_jax.main --config=configs/gao_mars.py:c3d \
    --workdir=$W/gao_c3d --config.data_dir=$TFDS \
    --config.init_from.backbone_weights=resnet-50-kinetics.pth
  # Minutes on a CPU, same code path (any row):
  python -m vreid_jax.main --config=configs/gao_mars.py:ta,runlocal \
    --workdir=/tmp/gao_ta_local --config.data_dir=$TFDS

Rows and the paper's numbers (MARS, standard 9,330-tracklet gallery, step
AP; mAP / CMC-1 / 5 / 10 / 20 in %):

  ta          spatial + temporal conv, softmax, T=4   76.7 / 83.3 / 93.8 / 96.0 / 97.4
              (Tables 5, 10; re-ranked 84.5 / 85.0 / 94.7 / 96.6 / 97.7)
  ta_fc       spatial conv + FC, softmax, T=4         75.8 / 82.7 / 93.0 / 95.1 / 96.5 (Table 5)
  ta_sigmoid  spatial conv + FC, sigmoid + L1, T=4    76.1 / 82.8 / 93.6 / 95.4 / 96.8 (Table 4)
  tp_avg      average pooling, T=4                    76.5 / 83.3 / 93.0 / 95.3 / 96.8 (Table 10)
  tp_max      max pooling, T=8                        74.5 / 83.1 / 93.3 / 95.6 / 96.7 (Table 2)
  image       average pooling, T=1 (image baseline)   74.1 / 81.3 / 92.6 / 94.8 / 96.7 (Tables 3, 10)
  rnn         LSTM 512, output average, T=4           73.9 / 81.6 / 92.8 / 94.7 / 96.3 (Tables 9, 10)
  rnn_final   LSTM 512, final hidden state, T=8       69.8 / 79.3 / 91.7 / 93.3 / 96.2 (Table 6)
  gru         GRU 512, output average, T=8            70.5 / 79.7 / 91.5 / 93.8 / 95.3 (Table 8)
  c3d         3D ResNet-50 (Kinetics), T=4            70.5 / 78.5 / 90.9 / 93.9 / 95.9 (Tables 1, 10)

Recipe (spec gao.md, from the authors' code, which produced the numbers):
224 x 112 frames, ImageNet mean/std; PK batches of 8 identities x 4 clips,
an epoch visiting every identity once (`input.pk_epoch="ids"`: 78 steps on
MARS); Adam (coupled L2 weight decay 5e-4, as torch.optim.Adam) at lr 3e-4
(1e-4 for the RNN and 3D rows), x0.1 every 200 epochs, 800 epochs;
label-smoothed cross-entropy (eps 0.1) + batch-hard triplet (margin 0.3) on
the clip feature; horizontal flip and Random2DTranslation (p 0.5); at test
time every tracklet cut into non-overlapping T-frame clips (the last one
loop-padded), clip features averaged, Euclidean distance, the `standard`
gallery (140 queries without a positive are excluded and counted) with step
AP; re-ranked numbers in metrics.json "reranked".

Augmentation: the authors' code draws flip and translation for every frame
independently, and the paper's numbers come from that; our default keeps
one draw per clip (a clip stays a coherent video, which matters for the
temporal conv and the 3D CNN): `--config.input.augment_per_frame=True`
gives the code's per-frame draws. The 3D row uses ImageNet normalisation
like the authors' code (Kinetics weights were trained on 0-255 input minus
the ActivityNet mean: `--config.input.mean="(0.4501,0.4225,0.3901)"
--config.input.std="(0.00392,0.00392,0.00392)"` gives that convention).
"""

import ml_collections

from configs import common
from vreid_jax import config_utils

VARIANTS = config_utils.Variants(
    rows=("ta", "ta_fc", "ta_sigmoid", "tp_avg", "tp_max", "image", "rnn",
          "rnn_final", "gru", "c3d"),
    flags=("runlocal",))

# row -> (model fields, clip length T, learning rate).
ROWS = {
    "ta": (dict(temporal="attention", attention="temporal_conv",
                attention_norm="softmax"), 4, 3e-4),
    "ta_fc": (dict(temporal="attention", attention="fc",
                   attention_norm="softmax"), 4, 3e-4),
    "ta_sigmoid": (dict(temporal="attention", attention="fc",
                        attention_norm="sigmoid"), 4, 3e-4),
    "tp_avg": (dict(temporal="avg"), 4, 3e-4),
    "tp_max": (dict(temporal="max"), 8, 3e-4),
    "image": (dict(temporal="avg"), 1, 3e-4),
    "rnn": (dict(temporal="rnn", rnn_cell="lstm", rnn_output="mean"), 4,
            1e-4),
    "rnn_final": (dict(temporal="rnn", rnn_cell="lstm", rnn_output="final"),
                  8, 1e-4),
    "gru": (dict(temporal="rnn", rnn_cell="gru", rnn_output="mean"), 8, 1e-4),
    "c3d": (dict(temporal="c3d"), 4, 1e-4),
}

_ATTENTION = dict(attention="temporal_conv", attention_norm="softmax",
                  attention_relu=True, attention_dim=256)
_RNN = dict(rnn_cell="lstm", rnn_hidden=512, rnn_output="mean")


def model_config(row: str) -> ml_collections.ConfigDict:
  """The `config.model` of a row (only the fields its model takes)."""
  fields, _, _ = ROWS[row]
  temporal = fields["temporal"]
  model = dict(arch="resnet50", width=64, neck="none", neck_feat="after",
               dtype="float32")
  if temporal != "c3d":
    model.update(last_stride=2, frame_dim=0)
  if temporal == "attention":
    model.update(_ATTENTION)
  if temporal == "rnn":
    model.update(_RNN)
  model.update(fields)
  return ml_collections.ConfigDict(model)


def get_config(arg=None):
  v = VARIANTS.parse(arg, where="configs/gao_mars.py")
  _, clip_len, lr = ROWS[v.row]
  c = common.get_config()
  c.dataset.name = "mars"
  c.model_name = "gao"
  c.model = model_config(v.row)
  c.input.height, c.input.width = 224, 112
  c.input.clip_len = clip_len
  c.input.clip_sampling = "consecutive"
  c.input.num_ids_per_batch = 8
  c.input.num_per_id = 4
  c.input.pk_epoch = "ids"
  c.input.flip_prob = 0.5
  c.input.translate_prob = 0.5
  c.input.pad = 0
  c.input.erasing_prob = 0.0
  c.losses = ml_collections.ConfigDict({
      "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.1},
      "batch_hard_triplet": {"weight": 1.0, "margin": 0.3}})
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", weight_decay=5e-4, grad_clip_norm=0.0,
      param_groups=ml_collections.ConfigDict()))
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", base_lr=lr, warmup_epochs=0.0,
      decay_epochs=(200.0, 400.0, 600.0), decay_factor=0.1))
  c.num_epochs = 800.0
  ev = c.evals.reid
  ev.mode = "dense"
  ev.clip_len = clip_len
  ev.batch_size = 32
  ev.max_frames_per_device = 512
  ev.protocol = "standard"
  ev.ap = "step"
  ev.metric = "euclidean"
  ev.rerank = True
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100

  if v.runlocal:
    c.num_epochs = -1.0
    c.num_steps = 20
    c.log_every_steps = 5
    c.model.arch = "resnet18"
    c.model.width = 8
    if "attention_dim" in c.model:
      c.model.attention_dim = 16
    if "rnn_hidden" in c.model:
      c.model.rnn_hidden = 16
    c.input.height, c.input.width = 64, 32
    c.input.clip_len = min(clip_len, 4)
    # P = 2 so that small (e.g. fake) trees with few identities work.
    c.input.num_ids_per_batch = 2
    c.input.num_per_id = 2
    ev.clip_len = min(clip_len, 4)
    ev.batch_size = 8
    ev.max_frames_per_device = 256
    ev.rerank = False
    c.checkpoint.every_steps = 10
  return c
