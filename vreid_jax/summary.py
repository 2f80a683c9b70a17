r"""Inspects the model of any config without data.

  python -m vreid_jax.summary --config=configs/gao_mars.py:ta --num_classes=625
  python -m vreid_jax.summary --config=configs/gltr_mars.py --json

Builds `vreid_jax.models.<model_name>.Model` from the config (shapes only:
nothing is initialised or compiled) and prints its parameter count, in
total and per top-level module, the float32 size, the shapes of the
embedding and of every aux entry for one clip of the config's training
shape, and the FLOPs of the eval-mode forward pass of one clip from XLA's
cost analysis of the lowered program (a multiply-add counts 2).

`--num_classes` is the classifier's size (0, the default, builds no
classifier: the size of the model you would deploy); `--json` prints one
JSON object instead, with at least {"params", "embedding_dim",
"flops_per_clip"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from vreid_jax import config_utils


def summarize(config, num_classes: int = 0, *, batch: int = 1,
              clip_len: int = 0) -> dict[str, Any]:
  """The summary dict of `config`'s model (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top

  model = models.build_model(config.model_name, num_classes, config.model)
  spec = preprocess.InputSpec.from_config(config.input)
  keys = models.input_keys(model)
  inputs = jax.eval_shape(lambda: preprocess.dummy_inputs(
      spec, batch, clip_len or spec.clip_len, keys=keys))
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), inputs)
  embedding, aux = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, inputs)
  params = variables["params"]
  by_module = {k: int(sum(np.prod(l.shape) for l in jax.tree.leaves(v)))
               for k, v in params.items()}
  total = int(sum(by_module.values()))
  lowered = jax.jit(models.embed_fn(model)).lower(variables, inputs)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0]
  flops = float(cost.get("flops", float("nan"))) / batch
  return {
      "model_name": config.model_name,
      "model": config.model.to_dict(),
      "num_classes": int(num_classes),
      "input_keys": list(keys),
      "inputs": {k: list(v.shape) for k, v in inputs.items()},
      "params": total,
      "params_by_module": by_module,
      "param_mib_float32": total * 4 / 2**20,
      "param_mb_float32": total * 4 / 1e6,
      "embedding_shape": list(embedding.shape),
      "embedding_dim": int(embedding.shape[-1]),
      "aux": {k: list(v.shape) for k, v in sorted(aux.items())},
      "flops_per_clip": flops,
  }


def format_summary(path: str, s: dict[str, Any]) -> str:
  width = max(len(k) for k in s["params_by_module"])
  lines = [f"{path}: model {s['model_name']}, {s['num_classes']} classes",
           "inputs: " + ", ".join(f"{k} {tuple(v)}"
                                  for k, v in s["inputs"].items()),
           f"parameters: {s['params']:,} ({s['param_mb_float32']:.1f} MB "
           "as float32)"]
  for k, v in s["params_by_module"].items():
    lines.append(f"  {k:<{width}} {v:>14,}")
  lines.append(f"embedding: {tuple(s['embedding_shape'])}")
  lines.append("aux: " + ", ".join(f"{k} {tuple(v)}"
                                   for k, v in s["aux"].items()))
  lines.append(f"FLOPs per clip (eval forward, XLA cost analysis, "
               f"multiply-add = 2): {s['flops_per_clip'] / 1e9:,.2f} G")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m vreid_jax.summary",
      description="Parameters, shapes and FLOPs of a config's model.")
  parser.add_argument("--config", required=True,
                      help="configs/x.py[:variant]")
  parser.add_argument("--num_classes", type=int, default=0,
                      help="classifier size (0: no classifier)")
  parser.add_argument("--clip_len", type=int, default=0,
                      help="frames per clip (default: the config's)")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object")
  args = parser.parse_args(argv)
  path = args.config.partition(":")[0]
  if not os.path.isfile(path):
    print(f"error: --config={args.config}: no config file {path}",
          file=sys.stderr)
    return 2
  config = config_utils.load_config(args.config)
  summary = summarize(config, args.num_classes, clip_len=args.clip_len)
  if args.json:
    print(json.dumps(summary))
  else:
    print(format_summary(args.config, summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
