"""TRL + ST²N (Dai et al., IEEE TIP 2019) recipe shared by configs/trl_*.py.

Rows (after the colon; the first is the default), Table I of the paper
(`vreid_jax/models/trl.py`):

  full            G+BiLSTM_g+BiLSTM_s+ST²N: the paper's model
  lstm_g          G+LSTM_g (main stream, one forward LSTM, mean)
  bilstm_g        G+BiLSTM_g, the Baseline (α = 1)
  bilstm_s        G+BiLSTM_s (α = 0)
  trl             G+BiLSTM_g+BiLSTM_s (α = 0.5)
  bilstm_g_stn, bilstm_s_stn, trl_stn      + the alignment stream, per-frame STN
  bilstm_g_st2n, bilstm_s_st2n             + the alignment stream, ST²N
Flags: `stage1` (ST²N pre-training: frame-level cross-entropy on every
frame's OSD and ASD, lr 2e-4, 10,000 steps, on MARS for every dataset as
the paper writes; the default is stage 2, the joint training with one
sequence-level CE per stream, starting from stage 1's checkpoint),
`runlocal` (tiny sizes, a few steps: seconds on a CPU, same code path).
E.g. `configs/trl_mars.py:stage1,runlocal`, `configs/trl_prid.py:trl`.

Recipe (paper §IV-B; spec trl_st2n.md §2): frames squashed to 224 x 224 and
normalised to [-1, 1] (the GoogLeNet weights' convention), T = 10
consecutive frames (loop-padded when shorter), 12 sequences per batch (12
identities x 1: random sequences, CE is the only loss), no augmentation;
Adam (0.9, 0.999, eps 1e-8), constant lr (2e-4 stage 1, 2e-5 stage 2), no
weight decay, every gradient element clipped to [-5, 5]
(`optimizer.grad_clip_value`); stage 2 runs 10,000 steps on MARS, 8,000 on
PRID-2011 and iLIDS-VID, 5,000 on SDU-VID. Initialisation: ImageNet
GoogLeNet (torchvision's googlenet-1378be20.pth, or that state dict saved as
.safetensors/.npz) into the stem and both Inception copies:
`--config.init_from.backbone_weights=googlenet-1378be20.pth`; new layers
N(0, 0.01²), LSTMs orthogonal, ST²N's FC the identity. BatchNorm uses batch
statistics in training (B T = 120 frames). Test: the whole tracklet in one
pass (`evals.reid.mode=all`; the CNN per frame, the BiLSTMs over the full
length), eq. 16's descriptor, Euclidean distance. The documented
alternative, non-overlapping 10-frame clips averaged:
`--config.evals.reid.mode=dense --config.evals.reid.clip_len=10`.
Not in the paper (overridable): α = β = 0.5 are Fig. 5's best
(`--config.model.alpha`, `--config.model.beta`); the sampler's 'border'
padding with align_corners (`--config.model.padding=zeros`,
`--config.model.coords=tf_legacy`).

Rows with an alignment stream also run the `stn_boxes` evaluator:
`stn_boxes_<i>.png` in the workdir draws each frame of a few query
tracklets with the box ST²N samples, and metrics.json reports the mean
scale, shift and frame-to-frame change of θ.
"""

import ml_collections

from configs import common
from vreid_jax import config_utils

ROWS = ("full", "lstm_g", "bilstm_g", "bilstm_s", "trl", "bilstm_g_stn",
        "bilstm_s_stn", "trl_stn", "bilstm_g_st2n", "bilstm_s_st2n")
VARIANTS = config_utils.Variants(rows=ROWS, flags=("stage1", "runlocal"))

STAGE1_STEPS = 10_000
STAGE1_LR = 2e-4
STAGE2_LR = 2e-5


def model_config(row: str, *, stage1: bool) -> ml_collections.ConfigDict:
  """The `config.model` of a row (`trl.Model`'s fields)."""
  c = ml_collections.ConfigDict(dict(
      variant=row, alpha=None, beta=0.5, width=64, trl_hidden=512,
      loc_features=512, loc_hidden=256, loc_dropout=0.5, padding="border",
      coords="align_corners", frame_classifiers=stage1, dtype="float32"))
  # None = the row's α (Table I); a float overrides it (Fig. 5a).
  c.alpha = ml_collections.FieldReference(None, field_type=float)
  return c


def _has_alignment(row: str) -> bool:
  return row.endswith("stn") or row.endswith("st2n") or row == "full"


def trl_config(dataset: str, arg, *, steps: int, trial: int = -1,
               protocol: str = "given", ap: str = "trapezoid",
               mars_step_ap: bool = False) -> ml_collections.ConfigDict:
  """The TRL config of one dataset, row and stage (module docstring).

  Args:
    dataset: TFDS name of stage 2's dataset (stage 1 is always MARS).
    arg: what follows the colon (`VARIANTS`).
    steps: stage 2's iterations on this dataset.
    trial: the default trial of 10-trial datasets (-1 otherwise).
    protocol: config.evals.reid.protocol.
    ap: config.evals.reid.ap.
    mars_step_ap: also evaluate MARS with the Python toolkits' protocol
      (`reid_step`: the standard 9,330 gallery, step AP), sharing the
      embedding pass (spec §4.12: report both).
  """
  v = VARIANTS.parse(arg, where=f"TRL config of {dataset}")
  if v.stage1 and dataset != "mars":
    # The paper pre-trains ST²N on MARS for every dataset (§IV-B).
    c = trl_config("mars", arg, steps=steps, protocol="matlab",
                   ap="trapezoid", mars_step_ap=True)
    return c
  c = common.get_config()
  c.dataset.name = dataset
  c.dataset.trial = trial
  c.model_name = "trl"
  c.model = model_config(v.row, stage1=v.stage1)
  c.input.height, c.input.width = 224, 224
  c.input.mean = (0.5, 0.5, 0.5)
  c.input.std = (0.5, 0.5, 0.5)
  c.input.clip_len = 10
  c.input.clip_sampling = "consecutive"
  c.input.num_ids_per_batch = 12
  c.input.num_per_id = 1
  c.input.flip_prob = 0.0
  c.input.pad = 0
  c.input.erasing_prob = 0.0
  two_streams = _has_alignment(v.row)
  if v.stage1:
    c.losses = ml_collections.ConfigDict({
        "ce_frames": {"type": "softmax_cross_entropy", "weight": 1.0,
                      "inputs": {"logits": "frame_logits"}}})
    if two_streams:
      c.losses.ce_frames_align = {
          "type": "softmax_cross_entropy", "weight": 1.0,
          "inputs": {"logits": "frame_logits_align"}}
  else:
    c.losses = ml_collections.ConfigDict({
        "ce": {"type": "softmax_cross_entropy", "weight": 1.0}})
    if two_streams:
      c.losses.ce_align = {"type": "softmax_cross_entropy", "weight": 1.0,
                           "inputs": {"logits": "logits_align"}}
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip_norm=0.0, grad_clip_value=5.0,
      param_groups=ml_collections.ConfigDict()))
  c.schedule = ml_collections.ConfigDict(dict(
      name="constant", base_lr=STAGE1_LR if v.stage1 else STAGE2_LR))
  c.num_epochs = -1.0
  c.num_steps = STAGE1_STEPS if v.stage1 else steps
  ev = c.evals.reid
  ev.protocol = protocol
  ev.ap = ap
  ev.metric = "euclidean"
  ev.mode = "all"
  ev.clip_len = 10
  ev.batch_size = 8
  ev.max_frames_per_device = 512
  ev.rerank = False
  if mars_step_ap:
    c.evals.reid_step = common.reid_eval(
        protocol="standard", ap="step", mode="all", clip_len=10,
        batch_size=8, max_frames_per_device=512, plots=False)
  if two_streams:
    c.evals.stn_boxes = common.stn_boxes_eval("reid")
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100

  if v.runlocal:
    c.num_steps = 20
    c.log_every_steps = 5
    c.model.width = 8
    c.model.trl_hidden = 16
    c.model.loc_features = 16
    c.model.loc_hidden = 8
    c.input.height, c.input.width = 32, 32
    c.input.clip_len = 4
    # P = 2, K = 2 so that small (e.g. fake) trees with few identities work.
    c.input.num_ids_per_batch = 2
    c.input.num_per_id = 2
    for name in ("reid", "reid_step"):
      if name in c.evals:
        c.evals[name].clip_len = 4
        c.evals[name].batch_size = 4
        c.evals[name].max_frames_per_device = 256
    c.checkpoint.every_steps = 10
  return c
