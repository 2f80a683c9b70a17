"""STAR (Wu, Zhu, Gong, BMVC 2019) recipe shared by configs/star_*.py.

Rows (after the colon; the first is the default), the paper's Table 3 and
the ablations the brief asks for (`vreid_jax/models/star.py`):

  full       LSTA + GSTA + R_pr on RGB + flow: the paper's model
  no_rpr     LSTA + GSTA, L_id + L_trip (Table 3 "LSTA + GSTA")
  lsta       LSTA alone, temporal average pooling, L_id + L_trip (Table 3
             "LSTA")
  no_gsta    LSTA + R_pr, temporal average pooling instead of GSTA
  no_lsta    GSTA + R_pr on the plain two-stem ResNet-50 (no attention)
  no_flow    the full model on RGB only (Fig. 7's "RGB" side): no flow stem
  cbam       Table 3 "Baseline CBAM-Multi-loss": CBAM in every bottleneck
             (layer-wise, the placement STAR's block-wise LSTA replaces),
             RGB + flow stems, average pooling, L_id + L_trip
  resnet_id  Table 3 "Baseline ResNet50-ID": the two stems, no attention,
             average pooling, L_id only
Flag `runlocal`: tiny sizes, a few steps (seconds on a CPU, same code path).
E.g. `configs/star_mars.py:no_flow,runlocal`.

Recipe (paper Sec. 4.2; spec star.md Sec. 2 and 4): RGB and TV-L1 flow at
256 x 128 (flow from `data_prep/flow.py`, served with `input.with_flow`,
+-20 px -> +-1), L = 10 frames by restricted random sampling (one random
frame from each of 10 equal segments, spec 4.8), B = 16 clips as P = 4
identities x K = 4 tracklets (P, K unstated; needed for hard mining), an
epoch visits every training tracklet once; horizontal flip and
Random2DTranslation (p 0.5, one draw per clip, the same for RGB and flow:
flipping negates the flow's x), no erasing; Adam (0.9, 0.999) at 5e-4,
x0.1 after 150 epochs, 200 epochs (total unstated: spec 4.7), coupled L2
weight decay 5e-4 (unstated); losses eq. 13: softmax cross-entropy (no
smoothing) + batch-hard triplet (margin a2 = 0.4) on V + 0.1 R_pr (margin
a1 = 0.4, Z = 3). Test: every frame of a tracklet in one pass
(`evals.reid.mode=all`), Euclidean distance on V. ImageNet ResNet-50:
`--config.init_from.backbone_weights=resnet50-0676ba61.pth` (the flow stem
by TSN's cross-modality rule, the gates, GSTA and the head new).

Every run also writes `star_attention_<i>.png` (evaluator
`star_attention`): the last gate's spatial attention over a few query
frames and the clip's temporal weights K.
"""

import ml_collections

from configs import common
from vreid_jax import config_utils

ROWS = ("full", "no_rpr", "lsta", "no_gsta", "no_lsta", "no_flow", "cbam",
        "resnet_id")


VARIANTS = config_utils.Variants(rows=ROWS, flags=("runlocal",))

# row -> (model fields, R_pr, triplet).
ROW_TABLE = {
    "full": (dict(attention="lsta", gsta=True, use_flow=True), True, True),
    "no_rpr": (dict(attention="lsta", gsta=True, use_flow=True), False, True),
    "lsta": (dict(attention="lsta", gsta=False, use_flow=True), False, True),
    "no_gsta": (dict(attention="lsta", gsta=False, use_flow=True), True,
                True),
    "no_lsta": (dict(attention="none", gsta=True, use_flow=True), True, True),
    "no_flow": (dict(attention="lsta", gsta=True, use_flow=False), True,
                True),
    "cbam": (dict(attention="cbam", gsta=False, use_flow=True), False, True),
    "resnet_id": (dict(attention="none", gsta=False, use_flow=True), False,
                  False),
}

EPOCHS = 200.0
DECAY_EPOCHS = (150.0,)


def model_config(row: str) -> ml_collections.ConfigDict:
  """The `config.model` of a row (`star.Model`'s fields)."""
  fields, _, _ = ROW_TABLE[row]
  model = dict(arch="resnet50", width=64, last_stride=2,
               lsta_stages=(1, 2, 3, 4), reduction=16, spatial_kernel=3,
               dilations=(1, 2, 3), spatial_attention=True,
               lsta_residual=False, gsta_hidden=512, gsta_kernel=3,
               attention_hidden=128, zero_init_w9=False, neck="none",
               neck_feat="after", dtype="float32")
  model.update(fields)
  return ml_collections.ConfigDict(model)


def star_config(dataset: str, arg, *, variants=VARIANTS, trial: int = -1,
                protocol: str = "given", ap: str = "trapezoid"
                ) -> ml_collections.ConfigDict:
  """The STAR config of one dataset and row (module docstring).

  Args:
    dataset: TFDS name.
    arg: what follows the colon (`VARIANTS`).
    variants: the file's Variants (for the error message's list).
    trial: the default trial of 10-trial datasets (-1 otherwise).
    protocol: config.evals.reid.protocol.
    ap: config.evals.reid.ap.
  """
  v = variants.parse(arg, where=f"STAR config of {dataset}")
  _, rpr, triplet = ROW_TABLE[v.row]
  c = common.get_config()
  c.dataset.name = dataset
  c.dataset.trial = trial
  c.model_name = "star"
  c.model = model_config(v.row)
  c.input.height, c.input.width = 256, 128
  c.input.clip_len = 10
  c.input.clip_sampling = "restricted"
  c.input.num_ids_per_batch = 4
  c.input.num_per_id = 4
  c.input.pk_epoch = "tracklets"
  c.input.flip_prob = 0.5
  c.input.translate_prob = 0.5
  c.input.pad = 0
  c.input.erasing_prob = 0.0
  c.input.with_flow = bool(c.model.use_flow)
  c.losses = ml_collections.ConfigDict({
      "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.0}})
  if triplet:
    c.losses.batch_hard_triplet = {"weight": 1.0, "margin": 0.4}
  if rpr:
    c.losses.pyramid_ranking = {"weight": 0.1, "margin": 0.4, "levels": 3}
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-4,
      grad_clip_norm=0.0, param_groups=ml_collections.ConfigDict()))
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", base_lr=5e-4, warmup_epochs=0.0,
      decay_epochs=DECAY_EPOCHS, decay_factor=0.1))
  c.num_epochs = EPOCHS
  ev = c.evals.reid
  ev.protocol = protocol
  ev.ap = ap
  ev.metric = "euclidean"
  ev.mode = "all"
  ev.clip_len = 10
  ev.batch_size = 8
  ev.max_frames_per_device = 512
  ev.rerank = False
  c.evals.star_attention = common.star_attention_eval("reid")
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100

  if v.runlocal:
    c.num_epochs = -1.0
    c.num_steps = 20
    c.log_every_steps = 5
    c.model.width = 4
    c.model.reduction = 4
    c.model.gsta_hidden = 8
    c.model.attention_hidden = 4
    c.input.height, c.input.width = 64, 32
    c.input.clip_len = 4
    # P = 2, K = 2 so that small (e.g. fake) trees with few identities work.
    c.input.num_ids_per_batch = 2
    c.input.num_per_id = 2
    ev.clip_len = 4
    ev.batch_size = 4
    ev.max_frames_per_device = 256
    c.checkpoint.every_steps = 10
  return c
