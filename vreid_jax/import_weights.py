r"""Converts ImageNet ResNet weights (torchvision layout) to a Flax .npz.

  python -m vreid_jax.import_weights --arch=resnet50 \
      --input=resnet50-0676ba61.pth --output=resnet50.npz

The input is a local torchvision state dict (.pth/.pt needs torch; or a
.safetensors/.npz with the same keys). The output .npz holds the Flax
`backbone` subtree flattened with '/' keys ("params/layer1_0/conv1/kernel",
"batch_stats/bn1/mean", ...); point `config.init_from.backbone_weights` at it
(or directly at the .pth/.safetensors file): the trainer loads it with
`vreid_jax.models.weights.merge_backbone`.
"""

from collections.abc import Sequence

from absl import app
from absl import flags
import numpy as np

from vreid_jax.models import common
from vreid_jax.models import resnet
from vreid_jax.models import weights

_ARCH = flags.DEFINE_enum("arch", "resnet50", sorted(resnet.ARCHS),
                          "ResNet architecture of the weights.")
_INPUT = flags.DEFINE_string("input", None,
                             "torchvision weights: .pth, .safetensors or .npz.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .npz path.")
flags.mark_flags_as_required(["input", "output"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flat = weights.convert_file(_INPUT.value, arch=_ARCH.value)
  np.savez(_OUTPUT.value, **flat)
  num_params = common.count_params(
      {k: v for k, v in flat.items() if k.startswith("params/")})
  print(f"Wrote {len(flat)} arrays ({num_params:,} parameters) of the "
        f"{_ARCH.value} backbone to {_OUTPUT.value}.")


if __name__ == "__main__":
  app.run(main)
