"""The baseline (temporal average pooling), the embedding head, the flow stem."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax import models
from vreid_jax.models import baseline
from vreid_jax.models import common
from vreid_jax.models import heads

EPS = 1e-5
TINY = dict(arch="resnet18", width=4, frame_dim=8)


@pytest.fixture(autouse=True)
def _full_precision():
  """float32 matmuls/convs on every backend (GPUs default to TF32)."""
  with jax.default_matmul_precision("highest"):
    yield


def _inputs(clips, mask=None, flow=None):
  out = {"clips": jnp.asarray(clips)}
  if mask is not None:
    out["mask"] = jnp.asarray(mask)
  if flow is not None:
    out["flow"] = jnp.asarray(flow)
  return out


def test_shapes_aux_and_param_names():
  clips = {"clips": jax.ShapeDtypeStruct((3, 2, 32, 16, 3), jnp.float32)}
  for num_classes, frame_dim, dim in ((7, 8, 8), (0, 0, 32)):
    model = baseline.Model(num_classes=num_classes, arch="resnet18", width=4,
                           frame_dim=frame_dim)
    (emb, aux), variables = jax.eval_shape(
        lambda x, m=model: m.init_with_output(jax.random.key(0), x,
                                              train=False), clips)
    assert emb.shape == (3, dim) and emb.dtype == jnp.float32
    assert aux["features"].shape == (3, dim)
    assert aux["frame_features"].shape == (3, 2, dim)
    expected = {"backbone", "head"} | ({"reduction"} if frame_dim else set())
    assert set(variables["params"]) == expected
    if num_classes:
      assert aux["logits"].shape == (3, num_classes)
      assert set(variables["params"]["head"]) == {"bn", "classifier"}
      assert "bias" not in variables["params"]["head"]["classifier"]
    else:
      assert "logits" not in aux
      assert set(variables["params"]["head"]) == {"bn"}
    # BN-neck: BatchNorm without bias (Luo et al.).
    assert set(variables["params"]["head"]["bn"]) == {"scale"}
  assert models.input_keys(baseline.Model(**TINY)) == ("clips", "mask")
  assert models.input_keys(baseline.Model(use_flow=True, **TINY)) == (
      "clips", "mask", "flow")


def test_bnneck_head_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  for neck_feat in ("after", "before"):
    head = heads.EmbeddingHead(num_classes=3, neck_feat=neck_feat)
    variables = common.random_variables(head, x, train=False)
    emb, aux = jax.jit(functools.partial(head.apply, train=False))(
        variables, jnp.asarray(x))
    p, s = variables["params"], variables["batch_stats"]
    f_i = ((x - s["bn"]["mean"]) / np.sqrt(s["bn"]["var"] + EPS)
           * p["bn"]["scale"])
    np.testing.assert_allclose(emb, f_i if neck_feat == "after" else x,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["features"], x)
    np.testing.assert_allclose(aux["logits"], f_i @ np.asarray(
        p["classifier"]["kernel"]), rtol=1e-5, atol=1e-5)


def test_linear_head_matches_numpy_and_torch_init_range():
  """neck="none": Gao's and STAR's head, a linear classifier with bias."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  head = heads.EmbeddingHead(num_classes=3, neck="none")
  variables = jax.jit(lambda k: head.init(k, jnp.asarray(x), train=False))(
      jax.random.key(0))
  p = variables["params"]["classifier"]
  assert set(variables["params"]) == {"classifier"}
  bound = 1 / np.sqrt(6)  # PyTorch Linear: U(+-1/sqrt(fan_in)).
  assert np.abs(p["kernel"]).max() <= bound and np.abs(p["bias"]).max() <= (
      bound)
  assert np.abs(p["bias"]).max() > 0
  emb, aux = head.apply(variables, jnp.asarray(x), train=True)
  np.testing.assert_array_equal(emb, x)
  np.testing.assert_allclose(aux["logits"], x @ np.asarray(p["kernel"])
                             + np.asarray(p["bias"]), rtol=1e-5, atol=1e-6)


def test_bad_neck_and_neck_feat_are_clear_errors():
  x = jax.ShapeDtypeStruct((2, 4), jnp.float32)
  for kwargs, match in (({"neck_feat": "middle"}, "neck_feat"),
                        ({"neck": "arcface"}, "neck must be one of")):
    head = heads.EmbeddingHead(**kwargs)
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(lambda v, h=head: h.init(jax.random.key(0), v,
                                              train=False), x)


def test_embedding_and_padding_invariance():
  """Eval outputs of a padded tracklet equal the unpadded ones.

  (Training-mode invariance, i.e. masked BatchNorm statistics, is tested on
  the GLTR model, which shares the frame encoder.)
  """
  rng = np.random.default_rng(0)
  clips = rng.normal(size=(2, 3, 32, 16, 3)).astype(np.float32)
  model = baseline.Model(num_classes=5, **TINY)
  variables = common.random_variables(model, _inputs(clips), train=False)
  run = jax.jit(functools.partial(model.apply, variables, train=False))

  emb, aux = run(_inputs(clips))
  # Temporal average pooling, then the BN-neck with running statistics.
  np.testing.assert_allclose(aux["features"],
                             aux["frame_features"].mean(axis=1), rtol=1e-5,
                             atol=1e-6)
  s = variables["batch_stats"]["head"]["bn"]
  np.testing.assert_allclose(
      emb, (aux["features"] - s["mean"]) / np.sqrt(s["var"] + EPS)
      * variables["params"]["head"]["bn"]["scale"], rtol=1e-4, atol=1e-5)

  garbage = 100 * rng.normal(size=(2, 4, 32, 16, 3)).astype(np.float32)
  mask = np.repeat(np.arange(7)[None, :] < 3, 2, axis=0)
  for clips_p, mask_p, real in (
      (np.concatenate([clips, garbage], axis=1), mask, slice(0, 3)),
      # Padding first: the mask may put real frames anywhere.
      (np.concatenate([garbage, clips], axis=1), mask[:, ::-1], slice(4, 7))):
    emb_p, aux_p = run(_inputs(clips_p, mask_p))
    np.testing.assert_allclose(emb_p, emb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(aux_p["logits"], aux["logits"], rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(aux_p["frame_features"][:, real],
                               aux["frame_features"], rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_clear_errors():
  model = baseline.Model(**TINY)
  bad = {"clips": jax.ShapeDtypeStruct((1, 32, 16, 3), jnp.float32)}
  with pytest.raises(ValueError, match=r"clips'\] \(B, T, H, W, 3\)"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   bad)
  clips = jnp.zeros((1, 2, 32, 16, 3))
  with pytest.raises(TypeError, match="mapping of inputs"):
    model.init(jax.random.key(0), clips, train=False)
  with pytest.raises(ValueError, match="unknown input keys"):
    model.init(jax.random.key(0), {"clips": clips, "flows": clips},
               train=False)
  flow_model = baseline.Model(use_flow=True, **TINY)
  with pytest.raises(ValueError, match="reads optical flow.*with_flow=True"):
    flow_model.init(jax.random.key(0), {"clips": clips}, train=False)


# ---------------------------------------------------------------- flow stem


def _flow_inputs(seed=0, b=2, t=3):
  rng = np.random.default_rng(seed)
  return _inputs(rng.normal(size=(b, t, 32, 16, 3)).astype(np.float32),
                 np.ones((b, t), bool),
                 rng.normal(size=(b, t, 32, 16, 2)).astype(np.float32))


def test_flow_stem_params_and_gradients_reach_it():
  model = baseline.Model(num_classes=4, use_flow=True, **TINY)
  inputs = _flow_inputs()
  variables = common.random_variables(model, inputs, train=False)
  backbone = variables["params"]["backbone"]
  assert backbone["flow_conv1"]["kernel"].shape == (7, 7, 2, 4)
  assert set(backbone["flow_bn1"]) == {"scale", "bias"}

  def loss(params, inputs):
    (emb, aux), _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, inputs,
        train=True, mutable=["batch_stats"])
    return jnp.sum(aux["logits"] ** 2) + jnp.sum(emb ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"], inputs)
  g = grads["backbone"]["flow_conv1"]["kernel"]
  assert float(jnp.abs(g).max()) > 0, "no gradient reaches the flow stem"
  # And the flow values matter: other flow, other output.
  other = dict(inputs, flow=inputs["flow"] * -3.0)
  run = jax.jit(functools.partial(model.apply, variables, train=False))
  assert float(jnp.abs(run(other)[0] - run(inputs)[0]).max()) > 1e-4


def test_zero_flow_stem_reduces_to_the_rgb_model():
  """STAR eq. 2: with W2 = 0 and beta = 0 the flow stem adds nothing."""
  rgb = baseline.Model(num_classes=4, **TINY)
  two = baseline.Model(num_classes=4, use_flow=True, **TINY)
  inputs = _flow_inputs(1)
  v2 = common.random_variables(two, inputs, train=False, seed=2)
  v2["params"]["backbone"]["flow_conv1"]["kernel"] = jnp.zeros_like(
      v2["params"]["backbone"]["flow_conv1"]["kernel"])
  v2["params"]["backbone"]["flow_bn1"]["bias"] = jnp.zeros(4)
  v2["batch_stats"]["backbone"]["flow_bn1"]["mean"] = jnp.zeros(4)
  strip = lambda tree: {k: v for k, v in tree.items() if not k.startswith(  # pylint: disable=g-long-lambda
      "flow_")}
  v1 = {c: dict(v2[c], backbone=strip(v2[c]["backbone"])) for c in v2}
  rgb_inputs = {k: v for k, v in inputs.items() if k != "flow"}
  for train in (False, True):
    a = rgb.apply(v1, rgb_inputs, train=train, mutable=["batch_stats"])[0]
    b = two.apply(v2, inputs, train=train, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(b[0], a[0], rtol=1e-5, atol=1e-5)
