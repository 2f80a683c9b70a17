"""M3D's layers and trunk against the spec's unit-testable properties (Sec. 5).

Local M3D layer vs a NumPy implementation of eq. 5-7 (and its impulse
response), zero kernels = the 2D network exactly, trainable from the first
step (the public code's conv -> BN -> ReLU form is dead), P3D-C = a
one-branch local layer, the global layer's identity part, I3D inflation on
static clips, padding invariance, the paper's model sizes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import common
from vreid_jax.models import m3d
from vreid_jax.models import resnet
from vreid_jax.models import video_resnet

TINY = dict(arch="resnet50", width=4)


@pytest.fixture(autouse=True)
def _full_precision():
  with jax.default_matmul_precision("highest"):
    yield


def np_local_m3d(s, kernels, rates):
  """Eq. 5-7 for one clip: y_t = S_t + sum_i sum_{a=-1..1} S_{t+a r_i} W_i[a].

  s: (T, h, w, C); kernels: rate -> (3, C, C) taps; zero outside the clip.
  """
  t_len = s.shape[0]
  y = s.astype(np.float64).copy()
  for r in rates:
    w = kernels[r]
    for t in range(t_len):
      for a in (-1, 0, 1):
        if 0 <= t + a * r < t_len:
          y[t] += s[t + a * r] @ w[a + 1]
  return y


def _random_branches(variables, rates, seed=0):
  rng = np.random.default_rng(seed)
  params = dict(variables["params"])
  for r in rates:
    shape = params[f"branch_r{r}"]["Conv_0"]["kernel"].shape
    params[f"branch_r{r}"] = {"Conv_0": {"kernel": jnp.asarray(
        rng.normal(0, 0.3, shape), jnp.float32)}}
  return {"params": params}


@pytest.mark.parametrize("rates", [(1, 2, 4), (1, 2, 3)])
def test_local_m3d_matches_eq_5_7_and_its_receptive_field(rates):
  rng = np.random.default_rng(1)
  s = rng.normal(size=(2, 9, 2, 2, 3)).astype(np.float32)
  tmask = jnp.ones((2, 9), bool)
  layer = video_resnet.LocalM3D(rates=rates)
  variables = jax.jit(functools.partial(layer.init, train=False))(
      jax.random.key(0), jnp.asarray(s), tmask)
  # Zero-initialised: the identity (the 2D network).
  out = layer.apply(variables, jnp.asarray(s), tmask, train=False)
  np.testing.assert_array_equal(out, s)
  variables = _random_branches(variables, rates)
  out = layer.apply(variables, jnp.asarray(s), tmask, train=False)
  kernels = {r: np.asarray(variables["params"][f"branch_r{r}"]["Conv_0"][
      "kernel"])[:, 0, 0] for r in rates}                   # (3, C, C).
  for b in range(2):
    np.testing.assert_allclose(out[b], np_local_m3d(s[b], kernels, rates),
                               rtol=1e-5, atol=1e-5)
  # An impulse at frame 4 reaches exactly frames 4 + {0, +-r_i}.
  impulse = np.zeros((1, 9, 1, 1, 3), np.float32)
  impulse[0, 4] = 1.0
  out = layer.apply(variables, jnp.asarray(impulse), tmask[:1], train=False)
  touched = np.flatnonzero(np.abs(np.asarray(out)[0]).sum(axis=(1, 2, 3)))
  want = sorted({4} | {4 + a * r for r in rates for a in (-1, 1)})
  assert list(touched) == want
  assert max(touched) - min(touched) + 1 == 2 * max(rates) + 1  # 9 or 7.


def test_zero_kernels_give_the_2d_network_exactly():
  """The M3D trunk with zero temporal kernels = ResNet-50 frame by frame
  (imported from the same torchvision weights)."""
  from test_models_resnet import random_torchvision_state_dict  # pylint: disable=g-import-not-at-top
  sd = random_torchvision_state_dict("resnet50", 4)
  clips = np.random.default_rng(2).normal(size=(2, 3, 32, 16, 3)).astype(
      np.float32)
  trunk = video_resnet.VideoResNet(kind="m3d", stem="m3d", **TINY)
  # Zero-initialised temporal kernels (the layers' own init), the 2D
  # parameters from the file.
  tv = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
      functools.partial(trunk.init, train=False), jax.random.key(0),
      jnp.asarray(clips)))
  tv = video_resnet.load_imagenet({k: {"backbone": v} for k, v in tv.items()},
                                  sd, arch="resnet50")
  local = tv["params"]["backbone"]["layer1_0"]["local_m3d"]
  assert not np.any(local["branch_r4"]["Conv_0"]["kernel"])  # Kept at 0.
  maps, _ = trunk.apply({k: v["backbone"] for k, v in tv.items()},
                        jnp.asarray(clips), train=False)
  net2d = resnet.ResNet(last_stride=1, **TINY)
  v2 = common.random_variables(net2d, jnp.asarray(clips[:, 0]), train=False)
  v2 = {"params": {"backbone": v2["params"]},
        "batch_stats": {"backbone": v2["batch_stats"]}}
  v2 = resnet.load_torchvision(v2, sd, arch="resnet50")
  want = net2d.apply({k: v["backbone"] for k, v in v2.items()},
                     jnp.asarray(clips.reshape(6, 32, 16, 3)), train=False)
  want = np.asarray(want).reshape(maps.shape)
  # The same arithmetic (3D convs of temporal extent 1 vs 2D convs), up to
  # float summation order on activations of ~100.
  np.testing.assert_allclose(maps, want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())


def test_zero_initialised_branches_train_and_the_codes_form_does_not():
  """Eq. 5 (linear branches): a gradient at init. The public code's
  zero-init conv -> BN -> ReLU: exactly zero, forever (spec Sec. 4.1)."""
  s = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 2, 2, 3)),
                  jnp.float32)
  tmask = jnp.ones((2, 6), bool)
  layer = video_resnet.LocalM3D(rates=(1, 2, 4))
  variables = layer.init(jax.random.key(0), s, tmask, train=False)

  def loss(params, layer=layer, extra=None):
    v = {"params": params, **(extra or {})}
    out = layer.apply(v, s, tmask, train=True, mutable=["batch_stats"])[0]
    return jnp.sum(jnp.sin(out) * s)

  grads = jax.grad(loss)(variables["params"])
  for r in (1, 2, 4):
    assert float(jnp.abs(grads[f"branch_r{r}"]["Conv_0"]["kernel"]).max()
                 ) > 1e-3, r
  # The code's form with its zero init (kernels forced to 0):
  code = video_resnet.LocalM3D(rates=(1,), branch_norm="bn_relu")
  cv = code.init(jax.random.key(0), s, tmask, train=False)
  params = jax.tree.map(jnp.asarray, cv["params"])
  params["branch_r1"]["Conv_0"]["kernel"] = jnp.zeros_like(
      params["branch_r1"]["Conv_0"]["kernel"])
  g = jax.grad(functools.partial(loss, layer=code, extra={
      "batch_stats": cv["batch_stats"]}))(params)
  assert not np.any(np.asarray(g["branch_r1"]["Conv_0"]["kernel"]))
  assert not np.any(np.asarray(g["branch_r1_bn"]["scale"]))
  # ... which is why bn_relu branches are Kaiming-initialised here.
  assert np.abs(cv["params"]["branch_r1"]["Conv_0"]["kernel"]).max() > 0


def test_p3d_c_is_a_one_branch_local_layer():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 5, 8, 4, 16)),
                  jnp.float32)
  tmask = jnp.ones((1, 5), bool)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  make = lambda kind, rates: video_resnet.VideoBottleneck(  # pylint: disable=g-long-lambda
      planes=4, strides=1, kind=kind, rates=rates,
      conv=functools.partial(nn.Conv, use_bias=False, dtype=jnp.float32,
                             param_dtype=jnp.float32),
      norm=functools.partial(common.BatchNorm, use_running_average=True))
  p3d_c, one = make("p3d_c", (1, 2, 4)), make("m3d", (1,))
  variables = common.random_variables(p3d_c, x, tmask, train=False)
  assert set(variables["params"]["local_m3d"]) == {"branch_r1"}
  np.testing.assert_array_equal(
      p3d_c.apply(variables, x, tmask, train=False),
      one.apply(variables, x, tmask, train=False))


def test_global_m3d_layer_and_model_shapes():
  model = m3d.Model(num_classes=5, variant="m3d", embed_dim=8, **TINY)
  clips = np.random.default_rng(5).normal(size=(2, 6, 32, 16, 3)).astype(
      np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)
  emb, aux = model.apply(variables, {"clips": clips}, train=False)
  assert emb.shape == (2, 32) and aux["global_m3d"].shape == (2, 6, 32)
  # The identity branch: the first d dims are F itself.
  np.testing.assert_array_equal(aux["global_m3d"][..., :8],
                                aux["frame_features"])
  # With the global convs at zero, f_t = [mean F, 0, 0, 0].
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if "global_m3d" in str(p) else v,
      variables["params"])
  emb, aux = model.apply({**variables, "params": params}, {"clips": clips},
                         train=False)
  np.testing.assert_allclose(emb[:, :8], aux["frame_features"].mean(1),
                             rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(emb[:, 8:]))


# Three mechanisms: local layers + the global layer; 3D kernels and the 3D
# pool; a serial temporal conv with its own BatchNorm (the others share
# these code paths; each variant costs ~15 s of compilation).
@pytest.mark.parametrize("variant", ["m3d", "i3d", "p3d_a"])
def test_padded_frames_change_nothing(variant):
  model = m3d.Model(num_classes=3, variant=variant, embed_dim=8, **TINY)
  rng = np.random.default_rng(6)
  clips = rng.normal(size=(2, 4, 32, 16, 3)).astype(np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)

  @jax.jit
  def run(clips, mask):
    inputs = {"clips": clips, "mask": mask}
    return (model.apply(variables, inputs, train=False),
            model.apply(variables, inputs, train=True,
                        mutable=["batch_stats"], rngs={"dropout":
                                                       jax.random.key(0)}))

  ref = run(jnp.asarray(clips), jnp.ones((2, 4), bool))
  garbage = 40 * rng.normal(size=(2, 3, 32, 16, 3)).astype(np.float32)
  padded = np.concatenate([clips, garbage], axis=1)
  padded[1] = np.concatenate([garbage[1, :2], clips[1], garbage[1, 2:]])
  mask = np.zeros((2, 7), bool)
  mask[0, :4] = True
  mask[1, 2:6] = True                            # Padding on both sides.
  got = run(jnp.asarray(padded), jnp.asarray(mask))
  np.testing.assert_allclose(got[0][0], ref[0][0], rtol=2e-4, atol=2e-4)
  # Training: masked BatchNorm statistics over other array sizes sum in
  # another order; 16 blocks of random weights amplify that to ~1e-4.
  np.testing.assert_allclose(got[1][0][0], ref[1][0][0], rtol=1e-3,
                             atol=1e-3)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-3,
                                 atol=1e-3), got[1][1], ref[1][1])


def test_i3d_inflation_on_a_static_clip_is_the_2d_network():
  """W3d[t] = W2d / 3: on a static clip, a frame whose temporal receptive
  field stays inside the clip gets the 2D features exactly."""
  from test_models_resnet import random_torchvision_state_dict  # pylint: disable=g-import-not-at-top
  sd = random_torchvision_state_dict("resnet50", 4)
  image = np.random.default_rng(7).normal(size=(1, 32, 16, 3)).astype(
      np.float32)
  # Each 3-frame kernel widens the receptive field by one frame per side:
  # stem + pool + 16 blocks = 18; the centre of 37 frames sees no border.
  t = 37
  clip = np.repeat(image[:, None], t, axis=1)
  i3d = video_resnet.VideoResNet(kind="i3d", stem="i3d", **TINY)
  v = jax.eval_shape(lambda x: i3d.init(jax.random.key(0), x, train=False),
                     jnp.asarray(clip))
  v = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v)
  v = video_resnet.load_imagenet(
      {k: {"backbone": x} for k, x in v.items()}, sd, arch="resnet50")
  kernel = v["params"]["backbone"]["layer2_0"]["conv2"]["kernel"]
  assert kernel.shape[0] == 3
  np.testing.assert_allclose(kernel[1] * 3, sd["layer2.0.conv2.weight"]
                             .transpose(2, 3, 1, 0), rtol=1e-6)
  maps, _ = jax.jit(functools.partial(i3d.apply, train=False))(
      {k: x["backbone"] for k, x in v.items()}, jnp.asarray(clip))
  net2d = resnet.ResNet(last_stride=1, **TINY)
  v2 = resnet.load_torchvision(
      {k: {"backbone": x} for k, x in jax.tree.map(
          lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
              lambda x: net2d.init(jax.random.key(0), x, train=False),
              jnp.asarray(image))).items()}, sd, arch="resnet50")
  want = net2d.apply({k: x["backbone"] for k, x in v2.items()},
                     jnp.asarray(image), train=False)
  np.testing.assert_allclose(maps[0, t // 2], want[0], rtol=1e-4,
                             atol=1e-5 * np.abs(np.asarray(want)).max())
  assert np.abs(np.asarray(maps[0, 0] - want[0])).max() > 1e-3  # Border.


def test_model_sizes_match_the_paper():
  """TIP: M3D ~110 MB, ~15 MB over the 2D CNN, ~76 MB under I3D."""
  inputs = {"clips": jax.ShapeDtypeStruct((1, 16, 256, 128, 3), jnp.float32)}
  mb = {}
  for variant in ("2d", "m3d", "i3d", "p3d_c"):
    model = m3d.Model(num_classes=0, variant=variant)
    v = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x,
                                                 train=False), inputs)
    mb[variant] = common.count_params(v["params"]) * 4 / 1e6
  assert 11 < mb["m3d"] - mb["2d"] < 19
  assert 70 < mb["i3d"] - mb["m3d"] < 82
  assert 105 < mb["m3d"] < 112
  # P3D-C's temporal convs: 3.78 M parameters (spec Sec. 5.8).
  assert abs((mb["p3d_c"] - mb["2d"]) / 4 - 3.78) < 0.01


def test_two_stream_fuses_unit_halves_and_loads_both_streams(tmp_path):
  from test_models_resnet import random_torchvision_state_dict  # pylint: disable=g-import-not-at-top
  from test_models_weights import write_safetensors  # pylint: disable=g-import-not-at-top
  sd = random_torchvision_state_dict("resnet50", 4)
  path = tmp_path / "r50.safetensors"
  write_safetensors(path, sd)
  model = m3d.Model(num_classes=3, variant="two_stream", embed_dim=8, **TINY)
  clips = np.random.default_rng(8).normal(size=(2, 4, 32, 16, 3)).astype(
      np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)
  variables = m3d.load(variables, str(path), {"variant": "two_stream",
                                               "arch": "resnet50"})
  for stream in ("spatial", "temporal"):
    np.testing.assert_array_equal(
        np.asarray(variables["params"][stream]["backbone"]["conv1"]
                   ["kernel"]).reshape(-1),
        sd["conv1.weight"].transpose(2, 3, 1, 0).reshape(-1))
  emb, aux = model.apply(variables, {"clips": clips}, train=False)
  assert emb.shape == (2, 8 + 32)
  np.testing.assert_allclose(np.linalg.norm(emb[:, :8], axis=1), 1.0,
                             rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(emb[:, 8:], axis=1), 1.0,
                             rtol=1e-5)
  assert aux["spatial_logits"].shape == (2, 4, 3)
  assert aux["logits"].shape == (2, 3)


def test_flow_two_stream_reads_flow():
  model = m3d.Model(num_classes=3, variant="flow_two_stream", embed_dim=8,
                    **TINY)
  rng = np.random.default_rng(9)
  inputs = {"clips": rng.normal(size=(2, 3, 32, 16, 3)).astype(np.float32),
            "flow": rng.normal(size=(2, 3, 32, 16, 2)).astype(np.float32)}
  variables = common.random_variables(model, inputs, train=False)
  assert variables["params"]["flow_encoder"]["backbone"]["conv1"][
      "kernel"].shape == (7, 7, 2, 4)
  emb, aux = model.apply(variables, inputs, train=False)
  assert emb.shape == (2, 16) and aux["flow_logits"].shape == (2, 3)
  other = model.apply(variables, dict(inputs, flow=inputs["flow"] * 2),
                      train=False)[0]
  assert np.abs(np.asarray(other[:, 8:] - emb[:, 8:])).max() > 1e-4
  np.testing.assert_array_equal(other[:, :8], emb[:, :8])  # RGB untouched.
