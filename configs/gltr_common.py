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

Variants after the colon: the rows `stage2` (default) and `stage1`, and the
flag `runlocal` (tiny sizes: minutes on a laptop CPU, same code path), e.g.
`configs/gltr_mars.py:stage1,runlocal`.
"""

import ml_collections

from configs import common
from vreid_jax import config_utils

VARIANTS = config_utils.Variants(rows=("stage2", "stage1"),
                                 flags=("runlocal",))


def gltr_config(dataset: str, variant: str | None, *,
               frames_per_tracklet: int, trial: int = -1,
               protocol: str = "given", ap: str = "trapezoid",
               dataset_config: str = "") -> ml_collections.ConfigDict:
  """The GLTR config of one dataset and variant.

  Args:
    dataset: TFDS name.
    variant: what follows the colon (`VARIANTS`; '' = stage2).
    frames_per_tracklet: the training set's mean tracklet length (frames per
      tracklet), used as stage 1's epoch_repeats.
    trial: the default trial of 10-trial datasets (-1 otherwise).
    protocol: config.evals.reid.protocol.
    ap: config.evals.reid.ap.
    dataset_config: TFDS builder config name.
  """
  v = VARIANTS.parse(variant, where=f"GLTR config of {dataset}")
  c = common.get_config()
  c.dataset.name = dataset
  c.dataset.config = dataset_config
  c.dataset.trial = trial
  c.model_name = "gltr"
  c.model = ml_collections.ConfigDict(dict(
      arch="resnet50", width=64, last_stride=1, frame_dim=128,
      reduction_relu=True, temporal="gltr", num_branches=3, rates=None,
      kernel_size=3, identity_branch=False, alpha=2,
      attention_norm="softmax", neck_feat="after", dtype="float32",
      remat=False, norm_impl="fused"))
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
  ev = c.evals.reid
  ev.protocol = protocol
  ev.ap = ap
  ev.metric = "euclidean"
  ev.mode = "all"
  ev.clip_len = 16
  ev.batch_size = 16
  ev.max_frames_per_device = 512
  ev.rerank = True
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100

  if v.row == "stage1":
    # The 2D CNN on single frames: GLTR's frame model, T = 1.
    c.model_name = "baseline"
    c.model = ml_collections.ConfigDict(dict(
        arch="resnet50", width=64, last_stride=1, frame_dim=128,
        reduction_relu=True, neck_feat="after", dtype="float32",
        remat=False, norm_impl="fused"))
    c.input.clip_len = 1
    c.input.num_ids_per_batch = 32
    c.input.num_per_id = 4
    c.input.epoch_repeats = frames_per_tracklet
    c.num_epochs = 20.0
    c.schedule.decay_epochs = (10.0,)
    ev.mode = "dense"
    ev.clip_len = 16
  else:
    c.input.clip_len = 16
    c.input.num_ids_per_batch = 10
    c.input.num_per_id = 1
    c.num_epochs = 400.0
    c.schedule.decay_epochs = (120.0,)

  if v.runlocal:
    c.num_epochs = -1.0
    c.num_steps = 20
    c.log_every_steps = 5
    c.model.arch = "resnet18"
    c.model.width = 8
    c.model.frame_dim = 32
    c.input.height, c.input.width = 64, 32
    # P = 2 so that small (e.g. fake) trees with few identities work.
    c.input.num_ids_per_batch = 2
    c.input.num_per_id = 2
    c.input.epoch_repeats = 1
    if v.row == "stage2":
      c.input.clip_len = 4
    ev.clip_len = 4
    ev.batch_size = 8
    ev.max_frames_per_device = 256
    ev.rerank = False
    c.checkpoint.every_steps = 10
  return c
