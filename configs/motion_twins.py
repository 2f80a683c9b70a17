r"""Motion identity on the synthetic benchmark: can a temporal model read gait?

  python -m vreid_jax.main --config=configs/motion_twins.py --workdir=/tmp/mt
  python -m vreid_jax.main --config=configs/motion_twins.py:avg --workdir=/tmp/mt_avg
  python -m vreid_jax.main --config=configs/motion_twins.py:shuffled --workdir=/tmp/mt_shuf

`synthetic_video_reid/motion` (built on first use, seconds): every identity
has a motion twin with the very same appearance, stride and swing, walking
at another cadence (5-6.5 vs 11-14 frames per gait cycle) and so another
speed; no single frame of one twin can be told from some frame of the other.
metrics.json reports `motion_twins.pair_mAP`: each twin query ranked against
only its own and its twin's gallery tracklets (50 = chance).

Rows (after the colon):
  c3d (default)  the best motion-capable model of the codebase under this
                 budget: Gao & Nevatia's 3D CNN (Hara's 3D ResNet, depth 18,
                 width 16) on 4-frame clips;
  avg            the control: the same width-16 ResNet-18, per frame (2D),
                 with temporal average pooling and the same budget;
  lstm           the 2D ResNet-18 + Gao's LSTM (output mean).
Flags: `shuffled` (the control that removes temporal order: the frames of
every training and test clip in a random order), `runlocal` (the tiny world,
a few steps: seconds, for tests).

Recipe (the protocol of benchmarks/compare_temporal.py): 64 x 32 frames,
4-frame consecutive clips, PK batches of 8 identities x 2 clips in which a
twin's partner comes along (`input.pair_motion_twins`: the triplet's
hardest negative is then the identity that only motion separates), Adam lr
3e-3 with a cosine decay, 800 steps, label-smoothed cross-entropy +
batch-hard triplet, BN-neck head; test: dense 4-frame clips averaged.
Measured on our slow 2-core host (56 clips/s for the demo): about 9 minutes
for `c3d`, 4 for `avg` (README: the twin-pair results with 3 seeds and the
controls).
"""

import ml_collections

from configs import common
from vreid_jax import config_utils

VARIANTS = config_utils.Variants(rows=("c3d", "avg", "lstm"),
                                 flags=("shuffled", "runlocal"))

# row -> (model_name, model fields).
MODELS = {
    "c3d": ("gao", dict(temporal="c3d", arch="resnet18", width=16,
                        neck="bnneck", neck_feat="after", dtype="float32")),
    "avg": ("baseline", dict(arch="resnet18", width=16, last_stride=1,
                             frame_dim=0, neck="bnneck", neck_feat="after",
                             dtype="float32")),
    "lstm": ("gao", dict(temporal="rnn", arch="resnet18", width=16,
                         last_stride=1, frame_dim=0, rnn_cell="lstm",
                         rnn_hidden=512, rnn_output="mean", neck="bnneck",
                         neck_feat="after", dtype="float32")),
}
CLIP_LEN = 4
STEPS = 800


def get_config(arg=None):
  v = VARIANTS.parse(arg, where="configs/motion_twins.py")
  c = common.get_config()
  c.seed = 0
  c.num_steps = STEPS
  c.num_epochs = -1.0
  c.log_every_steps = 100
  c.model_name, fields = MODELS[v.row]
  c.model = ml_collections.ConfigDict(fields)
  c.dataset.name = "synthetic_video_reid"
  c.dataset.config = "motion"
  c.dataset.auto_build = True
  c.input.height, c.input.width = 64, 32
  c.input.clip_len = CLIP_LEN
  c.input.num_ids_per_batch = 8
  c.input.num_per_id = 2
  c.input.pad = 4
  c.input.pair_motion_twins = True
  c.input.shuffle_frames = v.shuffled
  c.optimizer.name = "adam"
  c.optimizer.weight_decay = 5e-4
  c.schedule = ml_collections.ConfigDict(dict(
      name="cosine", base_lr=3e-3, warmup_epochs=0.0))
  c.evals.reid.mode = "dense"
  c.evals.reid.clip_len = CLIP_LEN
  c.evals.reid.batch_size = 64
  c.evals.reid.plots = False
  c.evals.motion_twins = common.motion_twins_eval("reid")
  c.evals.attention = common.attention_occlusion_eval("reid")
  c.checkpoint.every_steps = 400
  if v.runlocal:
    c.dataset.config = "tiny"
    c.num_steps = 4
    c.log_every_steps = 2
    c.model.width = 4
    c.input.height, c.input.width = 32, 16
    c.input.num_ids_per_batch = 4
    c.evals.reid.batch_size = 16
    c.checkpoint.every_steps = 2
  return c
