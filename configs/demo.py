r"""The embedded demo: a small temporal model on the synthetic benchmark.

  python -m vreid_jax.main --config=configs/demo.py --workdir=/tmp/vreid_demo

Builds `synthetic_video_reid/small` on first use (seconds), trains a narrow
ResNet-18 with temporal average pooling on 64x32 clips and evaluates on the
synthetic query/gallery (re-id metrics, then the motion-twin metrics on the
same embeddings). On a 2-core CPU it finishes in under 5 minutes and
reaches mAP >= 0.6 (README: expected output).

Variants: '' (the demo) and the flag `tiny` (seconds; used by the tests).
"""

from configs import common
from vreid_jax import config_utils

VARIANTS = config_utils.Variants(flags=("tiny",))


def get_config(arg=None):
  v = VARIANTS.parse(arg, where="configs/demo.py")
  c = common.get_config()
  c.seed = 0
  c.num_steps = 300
  c.num_epochs = -1.0
  c.log_every_steps = 25
  c.model_name = "baseline"
  c.model.arch = "resnet18"
  c.model.width = 16
  c.model.last_stride = 1
  c.model.frame_dim = 128
  c.dataset.name = "synthetic_video_reid"
  c.dataset.config = "small"
  c.dataset.auto_build = True
  c.input.height, c.input.width = 64, 32
  c.input.clip_len = 4
  c.input.num_ids_per_batch = 8
  c.input.num_per_id = 4
  c.input.pad = 4
  c.optimizer.name = "adam"
  c.optimizer.weight_decay = 5e-4
  c.schedule.base_lr = 1e-3
  c.schedule.warmup_epochs = 0.0
  c.schedule.name = "cosine"
  del c.schedule["decay_epochs"], c.schedule["decay_factor"]
  c.evals.reid.mode = "dense"
  c.evals.reid.clip_len = 8
  c.evals.reid.batch_size = 64
  c.evals.motion_twins = common.motion_twins_eval("reid")
  c.checkpoint.every_steps = 100
  if v.tiny:
    c.dataset.config = "tiny"
    c.num_steps = 4
    c.log_every_steps = 2
    c.model.width = 4
    c.model.frame_dim = 16
    c.input.height, c.input.width = 16, 8
    c.input.clip_len = 2
    c.input.num_ids_per_batch = 4
    c.input.num_per_id = 2
    c.input.pad = 1
    c.evals.reid.clip_len = 4
    c.evals.reid.batch_size = 16
    c.checkpoint.every_steps = 2
    c.evals.reid.plots = False
  return c
