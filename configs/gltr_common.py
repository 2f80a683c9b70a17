"""GLTR (Li et al., ICCV 2019) training recipe shared by the gltr_*.py configs.

Paper, Sec. 4.2 (implemented by default):
  * ResNet-50 backbone, input 256x128, mean subtraction only (the (B, G, R)
    mean is subtracted from each channel: `input.std = 1/255` so the input
    is `x - 255 * mean`), SGD, softmax loss only.
  * Stage 1 trains the 2D CNN on single frames: batches of 128 images,
    lr 0.01, x0.1 after 10 epochs, 20 epochs. Our epoch is a pass of PK
    batches over the tracklets; `input.epoch_repeats` (the dataset's mean
    tracklet length) makes an epoch see as many images as there are frames,
    as in the paper's image training.
  * Stage 2 trains DTP + TSA on 16 adjacent frames: batch 10 tracklets,
    lr 0.01, x0.1 after 120 epochs, 400 epochs, starting from stage 1's
    checkpoint (`init_from.checkpoint`).
  * d = 128 frame features, DTP with N = 3 branches of rates 1, 2, 4,
    TSA with alpha = 2; test: the whole tracklet in one pass, Euclidean
    distance; the authors scored with the official MATLAB code (trapezoid
    AP).
Not stated in the paper (our choices, overridable): SGD momentum 0.9 and
weight decay 5e-4; random horizontal flip as the only augmentation; the
BN-neck head (a BatchNorm before the classifier) of our models.
The authors' public code differs in DTP: rates 1, 2, 3 plus an identity
branch -> `--config.model.rates=(1,2,3) --config.model.identity_branch=True`.

Variants after the colon: `stage1`, `stage2` (default), `runlocal` (stage 2
with tiny sizes: minutes on a laptop CPU, same code path) and
`stage1_runlocal`.
"""

import ml_collections

from configs import common

VARIANTS = ("stage1", "stage2", "runlocal", "stage1_runlocal")


def get_config(dataset: str, variant: str | None, *,
               frames_per_tracklet: int, trial: int = -1,
               protocol: str = "given", ap: str = "trapezoid",
               dataset_config: str = "") -> ml_collections.ConfigDict:
  """The GLTR config of one dataset and variant.

  Args:
    dataset: TFDS name.
    variant: one of VARIANTS (None or '' = stage2).
    frames_per_tracklet: the training set's mean tracklet length (frames per
      tracklet), used as stage 1's epoch_repeats.
    trial: the default trial of 10-trial datasets (-1 otherwise).
    protocol: config.eval.protocol.
    ap: config.eval.ap.
    dataset_config: TFDS builder config name.
  """
  variant = variant or "stage2"
  if variant not in VARIANTS:
    raise ValueError(f"GLTR configs have variants {VARIANTS}, not "
                     f"{variant!r}")
  c = common.get_config()
  c.dataset.name = dataset
  c.dataset.config = dataset_config
  c.dataset.trial = trial
  c.model_name = "gltr"
  c.model = ml_collections.ConfigDict(dict(
      arch="resnet50", width=64, last_stride=1, embed_dim=128,
      reduction_relu=True, temporal="gltr", num_branches=3, rates=None,
      kernel_size=3, identity_branch=False, alpha=2,
      attention_norm="softmax", neck_feat="after", dtype="float32"))
  c.model.rates = ml_collections.FieldReference(None, field_type=tuple)
  c.input.height, c.input.width = 256, 128
  c.input.std = (1 / 255, 1 / 255, 1 / 255)
  c.input.flip_prob = 0.5
  c.input.pad = 0
  c.input.erasing_prob = 0.0
  c.input.clip_sampling = "consecutive"
  c.losses = ml_collections.ConfigDict({
      "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.0}})
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4,
      grad_clip_norm=0.0))
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", base_lr=0.01, warmup_epochs=0.0, decay_epochs=(120.0,),
      decay_factor=0.1))
  c.eval.protocol = protocol
  c.eval.ap = ap
  c.eval.metric = "euclidean"
  c.eval.mode = "all"
  c.eval.clip_len = 16
  c.eval.batch_size = 16
  c.eval.max_frames_per_batch = 512
  c.eval.rerank = True
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100

  if variant.startswith("stage1"):
    # The 2D CNN on single frames: GLTR's frame model, T = 1.
    c.model_name = "baseline"
    c.model = ml_collections.ConfigDict(dict(
        arch="resnet50", width=64, last_stride=1, embed_dim=128,
        reduction_relu=True, neck_feat="after", dtype="float32"))
    c.input.clip_len = 1
    c.input.num_ids_per_batch = 32
    c.input.num_per_id = 4
    c.input.epoch_repeats = frames_per_tracklet
    c.num_epochs = 20.0
    c.schedule.decay_epochs = (10.0,)
    c.eval.mode = "dense"
    c.eval.clip_len = 16
  else:
    c.input.clip_len = 16
    c.input.num_ids_per_batch = 10
    c.input.num_per_id = 1
    c.num_epochs = 400.0
    c.schedule.decay_epochs = (120.0,)

  if variant.endswith("runlocal"):
    c.num_epochs = -1.0
    c.num_steps = 20
    c.log_every_steps = 5
    c.model.arch = "resnet18"
    c.model.width = 8
    c.model.embed_dim = 32
    c.input.height, c.input.width = 64, 32
    # P = 2 so that small (e.g. fake) trees with few identities work.
    c.input.num_ids_per_batch = 2
    c.input.num_per_id = 2
    c.input.epoch_repeats = 1
    if variant == "runlocal":
      c.input.clip_len = 4
    c.eval.clip_len = 4
    c.eval.batch_size = 8
    c.eval.max_frames_per_batch = 256
    c.eval.rerank = False
    c.checkpoint.every_steps = 10
  return c
