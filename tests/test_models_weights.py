"""Tests of the torchvision weight import (readers, mapping, errors, CLI)."""

import json
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from vreid_jax import import_weights
from vreid_jax.models import baseline
from vreid_jax.models import common
from vreid_jax.models import resnet
from vreid_jax.models import weights

CLIPS = {"clips": np.zeros((1, 1, 32, 16, 3), np.float32)}


def resnet18_state_dict(width, seed=0):
  """Random torchvision resnet18 state dict (torchvision names and layouts)."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cout, cin, k):
    sd[name + ".weight"] = rng.normal(size=(cout, cin, k, k)).astype(
        np.float32)

  def bn(name, c):
    for field in ("weight", "bias", "running_mean", "running_var"):
      sd[f"{name}.{field}"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + ".num_batches_tracked"] = np.array(3, np.int64)

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  cin = width
  for i in range(4):
    planes = width * 2**i
    for j in range(2):
      p = f"layer{i + 1}.{j}"
      conv(p + ".conv1", planes, cin if j == 0 else planes, 3)
      bn(p + ".bn1", planes)
      conv(p + ".conv2", planes, planes, 3)
      bn(p + ".bn2", planes)
      if i > 0 and j == 0:
        conv(p + ".downsample.0", planes, cin, 1)
        bn(p + ".downsample.1", planes)
    cin = planes
  sd["fc.weight"] = rng.normal(size=(10, cin)).astype(np.float32)
  sd["fc.bias"] = np.zeros(10, np.float32)
  return sd


def write_safetensors(path, tensors):
  """Independent writer of the safetensors format."""
  names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
           np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64"}
  header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, value in tensors.items():
    raw = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"))
    raw = raw.tobytes()
    header[name] = {"dtype": names[value.dtype], "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))


def tiny_variables(width=4):
  model = baseline.Model(num_classes=3, arch="resnet18", width=width)
  return common.random_variables(model, CLIPS, train=False)


def test_safetensors_reader_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
      "a.weight": rng.normal(size=(2, 3, 1, 1)).astype(np.float32),
      "b": rng.normal(size=(5,)).astype(np.float16),
      "c": rng.normal(size=(2, 2)).astype(ml_dtypes.bfloat16),
      "n": np.array(7, np.int64),
  }
  path = tmp_path / "w.safetensors"
  write_safetensors(path, tensors)
  for got in (weights.read_safetensors(path),
              weights.read_weights(path)):
    assert set(got) == set(tensors)
    for k, v in tensors.items():
      assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
      np.testing.assert_array_equal(got[k], v)
  # A file written by the safetensors package, when it is installed.
  try:
    # pylint: disable-next=g-import-not-at-top
    from safetensors import numpy as st_numpy
  except ImportError:
    return
  path2 = tmp_path / "w2.safetensors"
  st_numpy.save_file({"x": tensors["a.weight"], "n": tensors["n"]}, path2)
  got = weights.read_safetensors(path2)
  np.testing.assert_array_equal(got["x"], tensors["a.weight"])
  np.testing.assert_array_equal(got["n"], tensors["n"])


def test_npz_reader_strips_dataparallel_prefix(tmp_path):
  sd = {"module.conv1.weight": np.ones((4, 3, 7, 7), np.float32)}
  np.savez(tmp_path / "w.npz", **sd)
  got = weights.read_weights(tmp_path / "w.npz")
  assert set(got) == {"conv1.weight"}
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown weight format"):
    weights.read_weights(tmp_path / "w.h5")
  with pytest.raises(FileNotFoundError, match="no such weight file"):
    weights.read_weights(tmp_path / "absent.pth")


def test_merge_torchvision_state_dict():
  sd = resnet18_state_dict(4)
  variables = tiny_variables()
  merged = resnet.load_torchvision(variables, sd, arch="resnet18")
  p, s = merged["params"]["backbone"], merged["batch_stats"]["backbone"]
  np.testing.assert_array_equal(p["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      p["layer3_1"]["conv2"]["kernel"][1, 2],
      sd["layer3.1.conv2.weight"][:, :, 1, 2].T)
  np.testing.assert_array_equal(p["layer2_0"]["downsample_conv"]["kernel"],
                                sd["layer2.0.downsample.0.weight"]
                                .transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["bn1"]["scale"], sd["bn1.weight"])
  np.testing.assert_array_equal(p["bn1"]["bias"], sd["bn1.bias"])
  np.testing.assert_array_equal(s["layer2_0"]["downsample_bn"]["mean"],
                                sd["layer2.0.downsample.1.running_mean"])
  np.testing.assert_array_equal(s["layer4_1"]["bn2"]["var"],
                                sd["layer4.1.bn2.running_var"])
  # Same tree structure and dtypes; the rest of the model untouched.
  assert (jax.tree.structure(merged) == jax.tree.structure(
      jax.tree.map(lambda x: x, dict(variables))))
  np.testing.assert_array_equal(merged["params"]["head"]["bn"]["scale"],
                                variables["params"]["head"]["bn"]["scale"])
  assert not np.array_equal(variables["params"]["backbone"]["conv1"]["kernel"],
                            p["conv1"]["kernel"])  # Input not modified.


def test_merge_reports_every_bad_key():
  variables = tiny_variables()
  sd = resnet18_state_dict(4)
  del sd["layer1.1.bn2.running_var"]
  sd["layer1.0.conv3.weight"] = np.zeros((4, 4, 1, 1), np.float32)
  with pytest.raises(weights.WeightImportError) as e:
    resnet.load_torchvision(variables, sd, arch="resnet18")
  assert "missing (1): layer1.1.bn2.running_var" in str(e.value)
  assert "unexpected (1): layer1.0.conv3.weight" in str(e.value)
  # Wrong width: every leaf is named with both shapes.
  with pytest.raises(weights.WeightImportError,
                     match=r"params/conv1/kernel \(model \(7, 7, 3, 4\), "
                     r"file \(7, 7, 3, 8\)\)"):
    resnet.load_torchvision(variables, resnet18_state_dict(8), arch="resnet18")
  # A resnet18 file is not a resnet50.
  with pytest.raises(weights.WeightImportError, match="conv3"):
    resnet.load_torchvision(variables, resnet18_state_dict(4), arch="resnet50")


def test_cli_converts_to_flax_npz(tmp_path, capsys):
  sd = resnet18_state_dict(4)
  src = tmp_path / "resnet18.safetensors"
  write_safetensors(src, sd)
  out = tmp_path / "resnet18_flax.npz"
  import_weights.main(["--arch=resnet18", f"--input={src}", f"--output={out}"])
  assert "Wrote" in capsys.readouterr().out
  with np.load(out) as f:
    keys = set(f.files)
  assert "params/layer1_0/conv1/kernel" in keys
  assert "batch_stats/bn1/mean" in keys
  assert not any("fc" in k or "num_batches" in k for k in keys)
  variables = tiny_variables()
  from_npz = resnet.load_torchvision(variables, out, arch="resnet18")
  direct = resnet.load_torchvision(variables, sd, arch="resnet18")
  jax.tree.map(np.testing.assert_array_equal, from_npz, direct)


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # Import fails.
  (tmp_path / "resnet18.pth").write_bytes(b"not read")
  with pytest.raises(ImportError, match="needs PyTorch"):
    weights.read_weights(tmp_path / "resnet18.pth")


def test_pth_reader(tmp_path):
  torch = pytest.importorskip("torch")
  sd = resnet18_state_dict(4)
  path = tmp_path / "resnet18.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  got = weights.read_weights(path)
  assert set(got) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k])
  merged = resnet.load_torchvision(tiny_variables(), path, arch="resnet18")
  np.testing.assert_array_equal(
      merged["params"]["backbone"]["conv1"]["kernel"],
      sd["conv1.weight"].transpose(2, 3, 1, 0))


def test_pth_reader_calls_torch_load_safely(tmp_path, monkeypatch):
  """The .pth path with a stand-in torch module (works without torch)."""
  calls = []

  class FakeTensor:

    def __init__(self, value):
      self.value = value
      self.dtype = "float32"

    def detach(self):
      return self

    def cpu(self):
      return self

    def numpy(self):
      return self.value

  class FakeTorch:
    Tensor = FakeTensor
    bfloat16 = "bfloat16"

    @staticmethod
    def load(path, **kwargs):
      calls.append((str(path), kwargs))
      return {"state_dict": {"module.conv1.weight": FakeTensor(np.ones(3)),
                             "meta": "not a tensor"}}

  monkeypatch.setitem(sys.modules, "torch", FakeTorch)
  (tmp_path / "w.pth").write_bytes(b"not read")
  got = weights.read_weights(tmp_path / "w.pth")
  assert calls == [(str(tmp_path / "w.pth"),
                    {"map_location": "cpu", "weights_only": True})]
  assert set(got) == {"conv1.weight"}
  np.testing.assert_array_equal(got["conv1.weight"], np.ones(3))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50",
                                  "resnet101"])
def test_torchvision_key_list_covers_the_flax_backbone(arch):
  """Every torchvision key maps to exactly one backbone leaf, and back."""
  sd = {k: None for k in resnet.torchvision_keys(arch)}
  mapped = {}
  for key in sd:
    collection, path = resnet._flax_location(key)  # pylint: disable=protected-access
    mapped[f"{collection}/{'/'.join(path)}"] = key
  assert len(mapped) == len(sd)
  shapes = resnet.backbone_shapes(arch, 4)
  flat = {f"{c}/{k}" for c in shapes for k in shapes[c]}
  assert set(mapped) == flat
  # torchvision's state dicts have 122 (resnet18) and 320 (resnet50) keys,
  # of which fc.weight, fc.bias and one num_batches_tracked per BN (20, 53)
  # are not needed.
  expected = {"resnet18": 122 - 2 - 20, "resnet50": 320 - 2 - 53}
  if arch in expected:
    assert len(sd) == expected[arch]


def test_model_load_initialises_a_flow_stem_from_rgb(tmp_path):
  """The baseline's `load`: ImageNet into the backbone; a flow stem gets the
  TSN cross-modality init (conv1 averaged over RGB, bn1 copied)."""
  sd = resnet18_state_dict(4)
  path = tmp_path / "resnet18.safetensors"
  write_safetensors(path, sd)
  model = baseline.Model(num_classes=3, arch="resnet18", width=4,
                         use_flow=True)
  inputs = dict(CLIPS, flow=np.zeros((1, 1, 32, 16, 2), np.float32))
  variables = common.random_variables(model, inputs, train=False)
  loaded = baseline.load(variables, str(path), {"arch": "resnet18"})
  p = loaded["params"]["backbone"]
  rgb = sd["conv1.weight"].transpose(2, 3, 1, 0)      # (7, 7, 3, 4)
  np.testing.assert_array_equal(p["conv1"]["kernel"], rgb)
  np.testing.assert_allclose(p["flow_conv1"]["kernel"],
                             np.repeat(rgb.mean(2, keepdims=True), 2, axis=2),
                             rtol=1e-6)
  np.testing.assert_array_equal(p["flow_bn1"]["scale"], sd["bn1.weight"])
  np.testing.assert_array_equal(
      loaded["batch_stats"]["backbone"]["flow_bn1"]["var"],
      sd["bn1.running_var"])
  # The head is not in ImageNet weights: untouched.
  np.testing.assert_array_equal(loaded["params"]["head"]["bn"]["scale"],
                                variables["params"]["head"]["bn"]["scale"])
