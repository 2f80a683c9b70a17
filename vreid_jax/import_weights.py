r"""Converts ImageNet ResNet weights (torchvision layout) to a Flax .npz.

  python -m vreid_jax.import_weights --arch=resnet50 \
      --input=resnet50-0676ba61.pth --output=resnet50.npz

The input is a local torchvision state dict (.pth/.pt needs torch; or a
.safetensors/.npz with the same keys). The output .npz holds the Flax
`backbone` subtree flattened with '/' keys ("params/layer1_0/conv1/kernel",
"batch_stats/bn1/mean", ...); point `config.init_from.backbone_weights` at it
(or directly at the .pth/.safetensors file): the trainer passes it to the
model module's `load`, which calls `vreid_jax.models.resnet.load_torchvision`.

Flags are parsed with argparse inside `main`, so importing this module
registers no global flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from vreid_jax import cli
from vreid_jax.models import common
from vreid_jax.models import resnet
from vreid_jax.models import weights


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the conversion; a bad input is one `error:` line (exit 1)."""
  return cli.run(_main, argv, errors=(weights.WeightImportError,))


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m vreid_jax.import_weights",
      description="Convert torchvision ResNet weights to a Flax backbone .npz.")
  parser.add_argument("--arch", default="resnet50",
                      choices=sorted(resnet.ARCHS),
                      help="ResNet architecture of the weights.")
  parser.add_argument("--input", required=True,
                      help="torchvision weights: .pth, .safetensors or .npz.")
  parser.add_argument("--output", required=True, help="Output .npz path.")
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)
  if not os.path.isfile(args.input):
    raise cli.UserError(
        f"--input={args.input}: no such file; pass a local torchvision state "
        "dict (.pth/.pt, .safetensors or .npz), e.g. the resnet50-*.pth that "
        "torchvision downloads to ~/.cache/torch/hub/checkpoints/")
  flat = resnet.convert_file(args.input, arch=args.arch)
  np.savez(args.output, **flat)
  num_params = common.count_params(
      [v for k, v in flat.items() if k.startswith("params/")])
  print(f"Wrote {len(flat)} arrays ({num_params:,} parameters) of the "
        f"{args.arch} backbone to {args.output}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
