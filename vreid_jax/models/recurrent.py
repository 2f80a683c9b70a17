"""Recurrent layers over frame features, with frame masks.

`ConvLSTM` (end of file) runs over frame feature maps (B, T, h, w, C)
instead (STAR's GSTA, eq. 6), with the same mask rule.

`Recurrent` runs one LSTM or GRU layer over (B, T, C) and returns the hidden
state at every step, (B, T, H). The cells follow PyTorch exactly (so a
PyTorch checkpoint maps one to one, and parameter counts match the papers'
code):

  LSTM (gate order i, f, g, o):
    [i, f, g, o] = x_t W_ih + b_ih + h_{t-1} W_hh + b_hh
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)                      (output o_t = h_t)
  GRU (gate order r, z, n):
    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

Parameters: `w_ih` (C, G H), `w_hh` (H, G H), `b_ih`, `b_hh` (G H,), with
G = 4 (LSTM) or 3 (GRU): PyTorch's weight_ih_l0 / weight_hh_l0 transposed,
and its two bias vectors (an LSTM of 2048 -> 512 has 5,246,976 parameters,
as Gao & Nevatia's). Init: PyTorch's U(+-1/sqrt(H)) for all of them by
default; `kernel_init` / `recurrent_init` / `bias_init` / `forget_bias`
give other recipes (e.g. TensorFlow's LSTMCell: orthogonal or Glorot
kernels, zero biases and a +1 forget bias, which TF adds in the cell and
we add to b_ih once at init: the same function).

Masks: a padded frame (mask False) does not update the state (the carry is
kept), wherever it sits, so a padded tracklet gives every real frame the
state of the unpadded one; `reverse=True` runs from the last frame to the
first, so padded frames at the end are skipped before the first real one.
Outputs at padded positions repeat the kept state and mean nothing.
`Bidirectional` concatenates a forward and a reverse layer; both directions
skip padded frames, so a padded tracklet gives the bidirectional outputs of
the unpadded one at its real frames (the reverse direction starts at the
last real frame), wherever the padding sits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common

CELLS = {"lstm": 4, "gru": 3}


def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def lstm_step(carry, xw, w_hh, b_hh):
  """One PyTorch LSTM step; carry (c, h), xw = x W_ih + b_ih."""
  c, h = carry
  i, f, g, o = jnp.split(xw + h @ w_hh + b_hh, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (c, h), h


def gru_step(carry, xw, w_hh, b_hh):
  """One PyTorch GRU step; carry (h,), xw = x W_ih + b_ih."""
  (h,) = carry
  xr, xz, xn = jnp.split(xw, 3, axis=-1)
  hr, hz, hn = jnp.split(h @ w_hh + b_hh, 3, axis=-1)
  r = jax.nn.sigmoid(xr + hr)
  z = jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  h = (1.0 - z) * n + z * h
  return (h,), h


class Recurrent(nn.Module):
  """One masked LSTM or GRU layer over time (module docstring).

  Attributes:
    features: H, the hidden size (Gao & Nevatia: 512).
    cell: "lstm" or "gru".
    reverse: run from the last frame to the first.
    kernel_init: init of w_ih; None = PyTorch's U(+-1/sqrt(H)).
    recurrent_init: init of w_hh; None = PyTorch's U(+-1/sqrt(H)).
    bias_init: init of b_ih and b_hh; None = PyTorch's U(+-1/sqrt(H)).
    forget_bias: added to the LSTM forget-gate part of b_ih at init.
    dtype: dtype of the input projection (the recurrence runs in float32).
    param_dtype: parameter dtype.
  """
  features: int = 512
  cell: str = "lstm"
  reverse: bool = False
  kernel_init: Callable[..., Any] | None = None
  recurrent_init: Callable[..., Any] | None = None
  bias_init: Callable[..., Any] | None = None
  forget_bias: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the layer.

    Args:
      x: (B, T, C) frame features.
      mask: (B, T) bool, True for real frames; None = all real.
      train: unused; the sequence-layer signature.

    Returns:
      ((B, T, H) float32 hidden states, {}).
    """
    del train
    if self.cell not in CELLS:
      raise ValueError(f"{self.name}: cell must be one of {sorted(CELLS)}, "
                       f"got {self.cell!r}")
    common.check_shape(x, (None, None, None), f"{self.name}: x (B, T, C)")
    b, t, c = x.shape
    mask = common.frame_mask(mask, b, t)
    gates, hidden = CELLS[self.cell], self.features
    param_dtype = common.resolve_dtype(self.param_dtype)
    dtype = common.resolve_dtype(self.dtype)
    default = _uniform(1.0 / hidden ** 0.5)
    w_ih = self.param("w_ih", self.kernel_init or default, (c, gates * hidden),
                      param_dtype)
    w_hh = self.param("w_hh", self.recurrent_init or default,
                      (hidden, gates * hidden), param_dtype)

    bias_init = self.bias_init or default

    def input_bias(key, shape, dtype=param_dtype):
      bias = bias_init(key, shape, dtype)
      if self.cell == "lstm" and self.forget_bias:
        bias = bias.at[hidden:2 * hidden].add(self.forget_bias)
      return bias

    b_ih = self.param("b_ih", input_bias, (gates * hidden,), param_dtype)
    b_hh = self.param("b_hh", bias_init, (gates * hidden,), param_dtype)

    xw = (x.astype(dtype) @ w_ih.astype(dtype)).astype(jnp.float32) + b_ih
    step = lstm_step if self.cell == "lstm" else gru_step
    w_hh32, b_hh32 = w_hh.astype(jnp.float32), b_hh.astype(jnp.float32)
    zeros = jnp.zeros((b, hidden), jnp.float32)
    carry = (zeros, zeros) if self.cell == "lstm" else (zeros,)

    def body(carry, inputs):
      xw_t, m_t = inputs
      new, _ = step(carry, xw_t, w_hh32, b_hh32)
      keep = m_t[:, None]
      carry = tuple(jnp.where(keep, n, o) for n, o in zip(new, carry))
      return carry, carry[-1]

    _, hs = jax.lax.scan(body, carry,
                         (jnp.swapaxes(xw, 0, 1), jnp.swapaxes(mask, 0, 1)),
                         reverse=self.reverse)
    return jnp.swapaxes(hs, 0, 1), {}


class Bidirectional(nn.Module):
  """A forward and a reverse `Recurrent` layer, outputs concatenated.

  Output t is [h_t^fw ; h_t^bw] (B, T, 2H), each direction with its own
  parameters ("forward", "backward").

  Attributes:
    features: H per direction.
    cell: "lstm" or "gru".
    kernel_init, recurrent_init, bias_init, forget_bias: as `Recurrent`.
    dtype: input projection dtype.
    param_dtype: parameter dtype.
  """
  features: int = 512
  cell: str = "lstm"
  kernel_init: Callable[..., Any] | None = None
  recurrent_init: Callable[..., Any] | None = None
  bias_init: Callable[..., Any] | None = None
  forget_bias: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    kwargs = dict(features=self.features, cell=self.cell,
                  kernel_init=self.kernel_init,
                  recurrent_init=self.recurrent_init,
                  bias_init=self.bias_init,
                  forget_bias=self.forget_bias, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    fw, _ = Recurrent(**kwargs, name="forward")(x, mask, train=train)
    bw, _ = Recurrent(reverse=True, **kwargs, name="backward")(x, mask,
                                                              train=train)
    return jnp.concatenate([fw, bw], axis=-1), {}


class _ConvParams(nn.Module):
  """The kernel and bias of a convolution applied inside `lax.scan` (the
  parameters are created outside it); names as `nn.Conv`'s."""
  shape: tuple[int, ...]
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), self.shape,
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(),
                      (self.shape[-1],), self.param_dtype)
    return kernel, bias


class ConvLSTM(nn.Module):
  """One masked ConvLSTM layer over frame feature maps (Shi et al. 2015).

  Over x (B, T, h, w, C), with zero initial state and 'same' convolutions:

    [i, g, f, o] = conv_x(x_t) + b_x + conv_h(h_{t-1}) + b_h
    c_t = sigmoid(f + forget_bias) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

  Flax's `nn.ConvLSTMCell` arithmetic (gate order i, g, f, o, no peephole
  connections; Shi et al.'s peepholes are left out, as in Flax), with the
  +1 forget bias that the STAR spec reads from it. Parameters: `conv_x`
  (k, k, C, 4H) and `conv_h` (k, k, H, 4H), each with its bias; init Flax's
  (LeCun normal kernels, zero biases). STAR's GSTA (eq. 6) runs one layer
  over the last ResNet maps (spec: k = 3, H = 512).

  Masks as `Recurrent`: a padded frame (mask False) keeps the carry, so real
  frames get the states of the unpadded tracklet wherever the padding sits;
  outputs at padded positions repeat the kept state and mean nothing. The
  input convolution runs on every frame at once (folded), the recurrence in
  float32 under `lax.scan`.

  Attributes:
    features: H, hidden channels.
    kernel_size: k of both convolutions.
    forget_bias: added to the forget gate's pre-activation.
    dtype: dtype of the input convolution.
    param_dtype: parameter dtype.
  """
  features: int = 512
  kernel_size: int = 3
  forget_bias: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the layer.

    Args:
      x: (B, T, h, w, C) frame feature maps.
      mask: (B, T) bool, True for real frames; None = all real.
      train: unused; the sequence-layer signature.

    Returns:
      ((B, T, h, w, H) float32 hidden states, {}).
    """
    del train
    common.check_shape(x, (None, None, None, None, None),
                       f"{self.name}: x (B, T, h, w, C)")
    b, t, h, w, _ = x.shape
    mask = common.frame_mask(mask, b, t)
    hidden, k = self.features, self.kernel_size
    if k % 2 != 1:
      raise ValueError(f"{self.name}: kernel_size must be odd for 'same' "
                       f"padding, got {k}")
    param_dtype = common.resolve_dtype(self.param_dtype)
    dtype = common.resolve_dtype(self.dtype)
    p = (k - 1) // 2
    pad = ((p, p), (p, p))
    xw = nn.Conv(4 * hidden, (k, k), padding=pad, dtype=dtype,
                 param_dtype=param_dtype, name="conv_x")(
                     common.fold_time(x).astype(dtype))
    xw = common.unfold_time(xw.astype(jnp.float32), b)
    kernel_h, bias_h = _ConvParams((k, k, hidden, 4 * hidden), param_dtype,
                                   name="conv_h")()
    kernel_h, bias_h = (kernel_h.astype(jnp.float32),
                        bias_h.astype(jnp.float32))
    zeros = jnp.zeros((b, h, w, hidden), jnp.float32)

    def step(carry, inputs):
      c, hs = carry
      xw_t, m_t = inputs
      gates = xw_t + jax.lax.conv_general_dilated(
          hs, kernel_h, (1, 1), pad,
          dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias_h
      i, g, f, o = jnp.split(gates, 4, axis=-1)
      c_new = (jax.nn.sigmoid(f + self.forget_bias) * c
               + jax.nn.sigmoid(i) * jnp.tanh(g))
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      keep = m_t[:, None, None, None]
      carry = (jnp.where(keep, c_new, c), jnp.where(keep, h_new, hs))
      return carry, carry[1]

    _, hs = jax.lax.scan(step, (zeros, zeros),
                         (jnp.swapaxes(xw, 0, 1), jnp.swapaxes(mask, 0, 1)))
    return jnp.swapaxes(hs, 0, 1), {}
