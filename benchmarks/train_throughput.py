r"""Training and inference throughput of the GLTR config, fp32 and bf16.

Random clips already on the device (no input pipeline), so this measures the
model and the jitted step: ResNet-50 + DTP + TSA at 256x128, SGD, softmax
loss, data parallel over every local device.

  python benchmarks/train_throughput.py                 # GPU/TPU defaults
  python benchmarks/train_throughput.py --batch=2 --clip_len=4 --steps=3  # CPU

Prints frames/s (training: forward + backward + update; inference: forward
in eval mode) for each dtype, with the device name.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from vreid_jax import config_utils
from vreid_jax import losses as losses_lib
from vreid_jax import models
from vreid_jax import optim
from vreid_jax import parallel
from vreid_jax import train
from vreid_jax.input_pipeline import preprocess


def measure(config, dtype: str, batch: int, steps: int, num_classes: int):
  with config.unlocked():
    config.model.dtype = dtype
  model = models.build_model(config.model_name, num_classes, config.model)
  mesh = parallel.make_mesh()
  t, h, w = config.input.clip_len, config.input.height, config.input.width
  schedule = optim.make_schedule(config.schedule, total_steps=1000,
                                 steps_per_epoch=100)
  tx = optim.make_optimizer(config.optimizer, schedule)
  spec = preprocess.InputSpec.from_config(config.input)
  variables = train.init_variables(model, jax.random.PRNGKey(0),
                                   preprocess.dummy_inputs(spec))
  state = train.create_train_state(variables, tx, jax.random.PRNGKey(1))
  sharding = train.state_sharding_like(state, mesh)
  state = jax.device_put(state, sharding)
  step_fn = train.jit_train_step(
      mesh, sharding, model=model, tx=tx,
      losses=losses_lib.resolve(config.losses.to_dict()), schedule=schedule,
      input_spec=spec)
  rng = np.random.default_rng(0)
  local = {"clips": rng.integers(0, 256, (batch, t, h, w, 3), np.uint8),
           "mask": np.ones((batch, t), bool),
           "labels": rng.integers(0, num_classes, batch).astype(np.int32)}
  data = parallel.global_batch(local, mesh)
  t0 = time.perf_counter()
  state, m = step_fn(state, data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step_fn(state, data)
  jax.block_until_ready(m)
  train_fps = steps * batch * t / (time.perf_counter() - t0)

  embed = models.embed_fn(model)

  @jax.jit
  def infer(v, batch):
    return embed(v, preprocess.preprocess(batch, spec))

  v = state.variables()
  eval_batch = {"clips": data["clips"], "mask": data["mask"]}
  jax.block_until_ready(infer(v, eval_batch))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = infer(v, eval_batch)
  jax.block_until_ready(out)
  infer_fps = steps * batch * t / (time.perf_counter() - t0)
  return compile_s, train_fps, infer_fps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/gltr_mars.py")
  parser.add_argument("--batch", type=int, default=0,
                      help="clips per step (default: the config's P*K, "
                      "rounded up to the device count)")
  parser.add_argument("--clip_len", type=int, default=0)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args(argv)
  config = config_utils.load_config(os.path.join(ROOT, args.config))
  n = jax.device_count()
  batch = args.batch or config.input.num_ids_per_batch * config.input.num_per_id
  batch = -(-batch // n) * n
  with config.unlocked():
    if args.clip_len:
      config.input.clip_len = args.clip_len
  dev = jax.devices()[0]
  print(f"{args.config}: {config.model_name} {config.model.arch} at "
        f"{config.input.height}x{config.input.width}, {batch} clips x "
        f"{config.input.clip_len} frames per step, {n} x "
        f"{getattr(dev, 'device_kind', dev.platform)}, jax {jax.__version__}")
  print("| dtype | compile s | train frames/s | inference frames/s |")
  print("|---|---|---|---|")
  for dtype in args.dtypes.split(","):
    c, tr, inf = measure(config, dtype, batch, args.steps, num_classes=625)
    print(f"| {dtype} | {c:.1f} | {tr:,.1f} | {inf:,.1f} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
