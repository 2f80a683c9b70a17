"""Tests of the baseline (temporal average pooling) model and the BN-neck."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import baseline
from vreid_jax.models import common
from vreid_jax.models import heads

EPS = 1e-5
TINY = dict(arch="resnet18", width=4, embed_dim=8)


@pytest.fixture(autouse=True)
def _full_precision():
  """float32 matmuls/convs on every backend (GPUs default to TF32)."""
  with jax.default_matmul_precision("highest"):
    yield


def test_shapes_aux_and_param_names():
  clips = jax.ShapeDtypeStruct((3, 2, 32, 16, 3), jnp.float32)
  for num_classes, embed_dim, dim in ((7, 8, 8), (0, 0, 32)):
    model = baseline.Model(num_classes=num_classes, arch="resnet18", width=4,
                           embed_dim=embed_dim)
    (emb, aux), variables = jax.eval_shape(
        lambda x, m=model: m.init_with_output(jax.random.key(0), x,
                                              train=False), clips)
    assert emb.shape == (3, dim) and emb.dtype == jnp.float32
    assert aux["features"].shape == (3, dim)
    assert aux["frame_features"].shape == (3, 2, dim)
    expected = {"backbone", "head"} | ({"reduction"} if embed_dim else set())
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


def test_bnneck_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  head = heads.BNNeck(num_classes=3)
  variables = common.random_variables(head, x, train=False)
  (f_i, logits) = jax.jit(functools.partial(head.apply, train=False))(
      variables, jnp.asarray(x))
  p, s = variables["params"], variables["batch_stats"]
  want = ((x - s["bn"]["mean"]) / np.sqrt(s["bn"]["var"] + EPS)
          * p["bn"]["scale"])
  np.testing.assert_allclose(f_i, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, want @ np.asarray(
      p["classifier"]["kernel"]), rtol=1e-5, atol=1e-5)


def test_select_embedding():
  f, neck = jnp.ones((2, 3)), jnp.zeros((2, 3))
  assert heads.select_embedding(f, neck, "after") is neck
  assert heads.select_embedding(f, neck, "before") is f
  with pytest.raises(ValueError, match="neck_feat"):
    heads.select_embedding(f, neck, "middle")


def test_embedding_and_padding_invariance():
  """Eval outputs of a padded tracklet equal the unpadded ones.

  (Training-mode invariance, i.e. masked BatchNorm statistics, is tested on
  the GLTR model, which shares the backbone and reduction code.)
  """
  rng = np.random.default_rng(0)
  clips = rng.normal(size=(2, 3, 32, 16, 3)).astype(np.float32)
  model = baseline.Model(num_classes=5, **TINY)
  variables = common.random_variables(model, clips, train=False)
  run = jax.jit(functools.partial(model.apply, variables, train=False))

  emb, aux = run(jnp.asarray(clips))
  # Temporal average pooling, then the BN-neck with running statistics.
  np.testing.assert_allclose(aux["features"],
                             aux["frame_features"].mean(axis=1), rtol=1e-5,
                             atol=1e-6)
  s = variables["batch_stats"]["head"]["bn"]
  np.testing.assert_allclose(
      emb, (aux["features"] - s["mean"]) / np.sqrt(s["var"] + EPS)
      * variables["params"]["head"]["bn"]["scale"], rtol=1e-4, atol=1e-5)

  garbage = 100 * rng.normal(size=(2, 4, 32, 16, 3)).astype(np.float32)
  clips_p = np.concatenate([clips, garbage], axis=1)
  mask = np.repeat(np.arange(7)[None, :] < 3, 2, axis=0)
  emb_p, aux_p = run(jnp.asarray(clips_p), jnp.asarray(mask))
  np.testing.assert_allclose(emb_p, emb, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(aux_p["logits"], aux["logits"], rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(aux_p["frame_features"][:, :3],
                             aux["frame_features"], rtol=1e-4, atol=1e-4)


def test_bad_neck_feat_is_a_clear_error():
  model = baseline.Model(neck_feat="middle", **TINY)
  clips = jax.ShapeDtypeStruct((1, 1, 32, 16, 3), jnp.float32)
  with pytest.raises(ValueError, match="neck_feat"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   clips)


def test_bad_clip_shape_is_a_clear_error():
  model = baseline.Model(**TINY)
  clips = jax.ShapeDtypeStruct((1, 32, 16, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"clips \(B, T, H, W, 3\)"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   clips)
