"""M3D (Li, Zhang, Huang, IEEE TIP 2020) recipe shared by configs/m3d_*.py.

Rows (after the colon; the first is the default) and what they train:

  two_stream       both streams, trained jointly in one run (the 2D stream
                   with a frame-level cross-entropy on every frame, the M3D
                   stream with a clip-level one), features fused: the
                   paper's headline representation (eq. 1). The paper
                   trains the streams separately; to do that, train the
                   `2d` and `m3d` rows with
                   `--config.evals.reid.save_features=True` and fuse:
                     python -m vreid_jax.evaluate_features --fuse \\
                       --query=$W/2d/query_features.npz,$W/m3d/query_features.npz \\
                       --gallery=$W/2d/gallery_features.npz,$W/m3d/gallery_features.npz \\
                       --ap=trapezoid
                   (each stream's features L2-normalised, then concatenated).
  2d               the 2D stream on single frames (Table III "ResNet50").
  local            local M3D layers only (Table I).
  global           the global M3D layer only (Table II).
  m3d              local + global: the M3D stream (Table III).
  i3d, p3d_a, p3d_b, p3d_c
                   Table IV's 3D baselines (`models/m3d_baselines.py`).
  flow_two_stream  Table IV's RGB + optical-flow two-stream ResNet-50
                   (compute the dataset's flow first: data_prep/flow.py).
Each combines with `runlocal` (e.g. `:m3d,runlocal`: tiny sizes, same code).

Recipe, paper (TIP Sec. IV-B; spec m3d.md Sec. 2): 256 x 128 frames,
ImageNet mean/std (the torchvision weights' convention), random erasing
with one rectangle per clip; SGD (momentum 0.9, weight decay 5e-4: the
code's), cross-entropy only. Clip rows: 16 adjacent frames, batches of 10
clips (an epoch is one clip per training tracklet), lr 0.01 x0.1 every 120
epochs, 400 epochs. The 2D stream: single frames, 128 images per batch,
lr 0.001, x0.1 after 10 of 20 epochs (an epoch sees as many images as the
training set has frames). Initialisation: ImageNet
(`--config.init_from.backbone_weights=resnet50-0676ba61.pth`; the temporal
layers start at zero, I3D's kernels are inflated). Test: the whole
tracklet in one pass, Euclidean distance; MARS with the official MATLAB
protocol (all 12,180 test tracklets, trapezoid AP) and re-ranking.
The public code's differences, as overrides: dilations 1, 2, 3
(`--config.model.rates="(1,2,3)" --config.model.global_rates="(1,2,3)"`),
a fifth local layer after the stem (`--config.model.local_stem=True`), its
dead conv -> BN -> ReLU branches (`--config.model.branch_norm=bn_relu`,
Kaiming-initialised here so they train), no augmentation
(`--config.input.erasing_prob=0`), 12-clip batches and 500 epochs with a
step at 200.
"""

import ml_collections

from configs import common
from vreid_jax import config_utils

ROWS = ("two_stream", "2d", "local", "global", "m3d", "i3d", "p3d_a",
        "p3d_b", "p3d_c", "flow_two_stream")
VARIANTS = config_utils.Variants(rows=ROWS, flags=("runlocal",))


def model_config(row: str) -> ml_collections.ConfigDict:
  """The `config.model` of a row (the fields its model takes)."""
  model = dict(variant=row, arch="resnet50", width=64, last_stride=1,
               dtype="float32")
  if row == "2d":
    model.update(frame_dim=128)
  elif row in ("local", "global", "m3d"):
    model.update(rates=(1, 2, 4), global_rates=(1, 2, 4), branch_norm=None,
                 local_stem=False, embed_dim=128)
  elif row == "two_stream":
    model.update(rates=(1, 2, 4), global_rates=(1, 2, 4), branch_norm=None,
                 local_stem=False, embed_dim=128)
  else:
    model.update(embed_dim=128)
  c = ml_collections.ConfigDict(model)
  if "branch_norm" in c:
    c.branch_norm = ml_collections.FieldReference(None, field_type=str)
  return c


def m3d_config(dataset: str, arg, *, frames_per_tracklet: int,
               trial: int = -1, protocol: str = "given",
               ap: str = "trapezoid") -> ml_collections.ConfigDict:
  """The M3D config of one dataset and variant (module docstring)."""
  v = VARIANTS.parse(arg, where=f"M3D config of {dataset}")
  c = common.get_config()
  c.dataset.name = dataset
  c.dataset.trial = trial
  c.model_name = "m3d"
  c.model = model_config(v.row)
  c.input.height, c.input.width = 256, 128
  c.input.flip_prob = 0.0
  c.input.pad = 0
  c.input.erasing_prob = 0.5
  c.input.clip_sampling = "consecutive"
  c.input.with_flow = v.row == "flow_two_stream"
  if v.row == "two_stream":
    c.losses = ml_collections.ConfigDict({
        "ce_spatial": {"type": "softmax_cross_entropy", "weight": 1.0,
                       "inputs": {"logits": "spatial_logits"}},
        "ce_temporal": {"type": "softmax_cross_entropy", "weight": 1.0}})
  elif v.row == "flow_two_stream":
    c.losses = ml_collections.ConfigDict({
        "ce_rgb": {"type": "softmax_cross_entropy", "weight": 1.0},
        "ce_flow": {"type": "softmax_cross_entropy", "weight": 1.0,
                    "inputs": {"logits": "flow_logits"}}})
  else:
    c.losses = ml_collections.ConfigDict({
        "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.0}})
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4,
      grad_clip_norm=0.0, param_groups=ml_collections.ConfigDict()))
  if v.row == "2d":
    c.input.clip_len = 1
    c.input.num_ids_per_batch = 32
    c.input.num_per_id = 4
    c.input.epoch_repeats = frames_per_tracklet
    c.num_epochs = 20.0
    c.schedule = ml_collections.ConfigDict(dict(
        name="step", base_lr=0.001, warmup_epochs=0.0, decay_epochs=(10.0,),
        decay_factor=0.1))
  else:
    c.input.clip_len = 16
    c.input.num_ids_per_batch = 10
    c.input.num_per_id = 1
    c.num_epochs = 400.0
    c.schedule = ml_collections.ConfigDict(dict(
        name="step", base_lr=0.01, warmup_epochs=0.0,
        decay_epochs=(120.0, 240.0, 360.0), decay_factor=0.1))
  ev = c.evals.reid
  ev.protocol = protocol
  ev.ap = ap
  ev.metric = "euclidean"
  ev.mode = "all"
  ev.clip_len = 16
  ev.batch_size = 8
  ev.max_frames_per_device = 512
  ev.rerank = True
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  if v.runlocal:
    c.num_epochs = -1.0
    c.num_steps = 20
    c.log_every_steps = 5
    c.model.width = 4
    if "embed_dim" in c.model:
      c.model.embed_dim = 16
    if "frame_dim" in c.model:
      c.model.frame_dim = 16
    c.input.height, c.input.width = 64, 32
    c.input.clip_len = 1 if v.row == "2d" else 4
    # P = 2 so that small (e.g. fake) trees with few identities work.
    c.input.num_ids_per_batch = 2
    c.input.num_per_id = 2
    c.input.epoch_repeats = 1
    ev.clip_len = 4
    ev.batch_size = 4
    ev.max_frames_per_device = 256
    ev.rerank = False
    c.checkpoint.every_steps = 10
  return c
