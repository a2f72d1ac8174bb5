"""Convolutional recurrent cells: ConvLSTM and ConvGRU over frames `(..., H, W, C)`."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.cells import _common

_DIMS = ("NHWC", "HWIO", "NHWC")
Padding = Union[str, Sequence[Sequence[int]]]

def _pair(value: Any, what: str) -> tuple:
  """`value` (an int or a pair of ints) as a pair of positive ints, or `TypeError`/`ValueError`."""
  pair = (value, value) if isinstance(value, (int, np.integer)) else value
  if (not isinstance(pair, (tuple, list)) or len(pair) != 2
      or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair)):
    raise TypeError(f"{what} must be a positive int or a pair of them, got {value!r}")
  if min(pair) < 1:
    raise ValueError(f"{what} must be positive, got {value!r}")
  return int(pair[0]), int(pair[1])


def _pads(padding: Padding, spatial: tuple, kernel: tuple, strides: tuple, name: str) -> tuple:
  """The input convolution's `((lo, hi), (lo, hi))` padding, from "SAME", "VALID" or pairs."""
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"{name}: padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)), got "
                       f"{padding!r}")
    return tuple(tuple(p) for p in jax.lax.padtype_to_pads(spatial, kernel, strides, padding))
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != 2 or min(min(p) for p in pads) < 0:
    raise ValueError(f"{name}: padding must be 'SAME', 'VALID' or two pairs of non-negative "
                     f"ints ((lo, hi), (lo, hi)), got {padding!r}")
  return pads


def _conv(x, w, strides, pads):
  """`x (N, H, W, C)` convolved with `w (kh, kw, C, O)` (cross-correlation, as every deep
  learning library), in `x`'s dtype."""
  return jax.lax.conv_general_dilated(x, w.astype(x.dtype), strides, pads,
                                      dimension_numbers=_DIMS,
                                      precision=jax.lax.Precision.HIGHEST)


def _conv_cell(kind: str, n_gates: int, features, kernel_size, spatial_shape, padding, strides,
               kernel_init, recurrent_init, bias_init, dtype, param_dtype,
               gates: Callable, carry_fn: Callable) -> _types.Cell:
  """The parts ConvLSTM and ConvGRU share: argument checks, parameters, shape checks and the
  batching of `gates(p, carry, zx, conv_h) -> (carry, y)` over any leading axes, where `zx` is
  the input convolution plus bias `(N, H', W', G)` and `conv_h(h, w)` the recurrent convolution;
  `carry_fn(zeros)` assembles the carry from zero leaves, as in `make_initial_carry`."""
  feats = _types.check_hidden_size(features, f"{kind}: features")
  kernel = _pair(kernel_size, f"{kind}: kernel_size")
  stride = _pair(strides, f"{kind}: strides")
  spatial = _pair(spatial_shape, f"{kind}: spatial_shape")
  name = f"{kind}({feats})"
  pads = _pads(padding, spatial, kernel, stride, name)
  # The state's size is the input convolution's output size; the recurrent convolution (stride
  # 1, "SAME") keeps it, so h_{t-1} and x_t's contribution line up pixel by pixel.
  state = tuple((n + lo + hi - k) // s + 1
                for n, (lo, hi), k, s in zip(spatial, pads, kernel, stride))
  if min(state) < 1:
    raise ValueError(f"{name}: a {kernel} kernel with strides {stride} and padding {pads} leaves "
                     f"no output pixels of {spatial} frames (state shape {state}); pad more or "
                     "use a smaller kernel")
  rec_pads = tuple(tuple(p) for p in jax.lax.padtype_to_pads(state, kernel, (1, 1), "SAME"))
  glorot = jax.nn.initializers.glorot_uniform()
  k_init, r_init = kernel_init or glorot, recurrent_init or glorot
  b_init = bias_init or jax.nn.initializers.zeros
  width = n_gates * feats

  def init(key, input_size):
    channels = _types.check_hidden_size(input_size, f"{name}.init: input_size")
    k_x, k_h, k_b = jax.random.split(key, 3)
    return {"w_x": k_init(k_x, kernel + (channels, width), param_dtype),
            "w_h": r_init(k_h, kernel + (feats, width), param_dtype),
            "b": b_init(k_b, (width,), param_dtype)}

  def channels_of(params) -> int:
    if not isinstance(params, Mapping) or sorted(params) != ["b", "w_h", "w_x"]:
      raise ValueError(f"{name}: params must be the dict {{'w_x', 'w_h', 'b'}} that {name}.init "
                       f"returns, got {sorted(params) if isinstance(params, Mapping) else params!r}")
    c = int(jnp.shape(params["w_x"])[2]) if jnp.ndim(params["w_x"]) == 4 else -1
    want = {"w_x": kernel + (c, width), "w_h": kernel + (feats, width), "b": (width,)}
    got = {k: tuple(jnp.shape(v)) for k, v in params.items()}
    if got != want:
      raise ValueError(f"{name}: params have shapes {got}, expected {want}")
    return c

  zero_carry = _common.make_initial_carry(feats, dtype, carry_fn)

  def initial_carry(batch_shape=(), dtype=None):
    return zero_carry(tuple(batch_shape) + state, dtype)

  def step(params, carry, x):
    channels = channels_of(params)
    x = jnp.asarray(x)
    _types.check_float(x, f"{name}: x")
    if x.ndim < 3:
      raise ValueError(f"{name}: x must have shape (..., H, W, C), got {x.shape}")
    if x.shape[-1] != channels:
      raise _types.FeatureSizeError(
          f"{name}: x has shape {x.shape}, but the parameters expect (..., H, W, {channels}) "
          "(last axis = input channels)", channels, int(x.shape[-1]))
    if tuple(x.shape[-3:-1]) != spatial:
      raise ValueError(f"{name}: x has shape {x.shape}, but the cell was built for frames "
                       f"(..., {spatial[0]}, {spatial[1]}, C) (spatial_shape={spatial})")
    batch = x.shape[:-3]
    for leaf in jax.tree_util.tree_leaves(carry):
      if tuple(leaf.shape) != batch + state + (feats,):
        raise ValueError(f"{name}: carry leaf has shape {tuple(leaf.shape)}, expected "
                         f"{batch + state + (feats,)} (the batch shape of x, then the state's "
                         "height, width and features)")
    cd = _common.compute_dtype(dtype, x)
    n = _types.prod(batch)
    flat = lambda a: a.astype(cd).reshape((n,) + a.shape[len(batch):])
    carry = jax.tree_util.tree_map(flat, carry)
    zx = _conv(flat(x), params["w_x"], stride, pads)
    zx = zx + _types.last_axis(params["b"].astype(cd), zx)
    conv_h = lambda h, w: _conv(h, w, (1, 1), rec_pads)
    carry, y = gates(params, carry, zx, conv_h)
    unflat = lambda a: a.reshape(batch + a.shape[1:])
    return jax.tree_util.tree_map(unflat, carry), unflat(y)

  return _types.Cell(init=init, initial_carry=initial_carry, step=step, name=name,
                     input_rank=3, frame_shape=spatial)


def conv_lstm(features: int, kernel_size: Union[int, Sequence[int]], *,
              spatial_shape: Union[int, Sequence[int]], padding: Padding = "SAME",
              strides: Union[int, Sequence[int]] = 1, kernel_init=None, recurrent_init=None,
              bias_init=None, dtype: Optional[jnp.dtype] = None,
              param_dtype=jnp.float32) -> _types.Cell:
  r"""A convolutional LSTM (Shi et al. 2015) over frames `x_t (..., H, W, C)`: an LSTM whose
  matmuls are 2-D convolutions (`*`), so that its state keeps the frames' spatial layout:

  .. math::
      [a_i, a_f, a_g, a_o] &= W_x * x_t + W_h * h_{t-1} + b \\
      i = \sigma(a_i), \quad f &= \sigma(a_f), \quad g = \tanh(a_g), \quad o = \sigma(a_o) \\
      c_t = f \odot c_{t-1} + i \odot g, \qquad h_t &= o \odot \tanh(c_t), \qquad y_t = h_t

  Without the peephole terms of the paper (as Keras' `ConvLSTM2D`). `W_x * x_t` runs with the
  given `padding` and `strides`; `W_h * h_{t-1}` with stride 1 and "SAME" padding, which keeps
  the state's size `(H', W')`, that of the input convolution's output. The convolutions are
  cross-correlations in NHWC, as in `jax.lax.conv_general_dilated`.

  Gate order along the `4F` axis is `i, f, g, o` (as `jr.lstm`). Parameters (a dict):
  `w_x (kh, kw, C, 4F)`, `w_h (kh, kw, F, 4F)` (HWIO), `b (4F,)`. Carry:
  `LSTMState(h, c)`, each `(..., H', W', F)`. The cell has `input_rank=3`: `jr.scan` runs it
  over `xs (..., T, H, W, C)` (lengths and resets included) and returns `ys (..., T, H', W', F)`.
  No fused or native loop serves it.

  Args:
    features: F, the state's channels.
    kernel_size: an int or a pair `(kh, kw)`, for both convolutions.
    spatial_shape: the frames' `(H, W)` (the carry's shape depends on it).
    padding: the input convolution's: "SAME", "VALID" or `((lo, hi), (lo, hi))`.
    strides: the input convolution's, an int or a pair.
    kernel_init, recurrent_init, bias_init: `(key, shape, dtype) -> array` overrides of the
      Glorot-uniform kernels and zero bias.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `jr.Cell`.

  Raises:
    ValueError: for padding and strides that leave no output pixels, among other bad arguments.

  References:
    Shi et al., "Convolutional LSTM Network: A Machine Learning Approach for Precipitation
    Nowcasting", NeurIPS 2015.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.conv_lstm(4, 3, spatial_shape=(8, 8), strides=2)
  >>> params = cell.init(jax.random.key(0), 2)
  >>> carry, ys = jr.scan(cell, params, jnp.ones((5, 6, 8, 8, 2)))
  >>> ys.shape, carry.c.shape
  ((5, 6, 4, 4, 4), (5, 4, 4, 4))
  """

  def gates(p, carry, zx, conv_h):
    a = zx + conv_h(carry.h, p["w_h"])
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return _types.LSTMState(h, c), h

  return _conv_cell("conv_lstm", 4, features, kernel_size, spatial_shape, padding, strides,
                    kernel_init, recurrent_init, bias_init, dtype, param_dtype, gates,
                    lambda zeros: _types.LSTMState(zeros(), zeros()))


def conv_gru(features: int, kernel_size: Union[int, Sequence[int]], *,
             spatial_shape: Union[int, Sequence[int]], padding: Padding = "SAME",
             strides: Union[int, Sequence[int]] = 1, kernel_init=None, recurrent_init=None,
             bias_init=None, dtype: Optional[jnp.dtype] = None,
             param_dtype=jnp.float32) -> _types.Cell:
  r"""A convolutional GRU (Ballas et al. 2016; the convolutional form of Shi et al. 2015 applied
  to the GRU of Cho et al. 2014) over frames `x_t (..., H, W, C)`:

  .. math::
      [a_r, a_z, a_n] &= W_x * x_t + b, \qquad W_h = [W_{hr}, W_{hz}, W_{hn}] \\
      r &= \sigma(a_r + W_{hr} * h_{t-1}), \quad z = \sigma(a_z + W_{hz} * h_{t-1}), \quad
      n = \tanh(a_n + W_{hn} * (r \odot h_{t-1})) \\
      h_t &= (1 - z) \odot n + z \odot h_{t-1}, \qquad y_t = h_t

  The reset gate multiplies `h_{t-1}` before the candidate's convolution (the original GRU
  form, `jr.gru(H, reset_after=False)`). Convolutions, padding, strides and the state's size
  `(H', W')` are as in `jr.conv_lstm`. Gate order along the `3F` axis is `r, z, n`.
  Parameters (a dict): `w_x (kh, kw, C, 3F)`, `w_h (kh, kw, F, 3F)`, `b (3F,)`. Carry:
  `h (..., H', W', F)`. The cell has `input_rank=3`.

  Args:
    features: F, the state's channels.
    kernel_size: an int or a pair `(kh, kw)`, for both convolutions.
    spatial_shape: the frames' `(H, W)`.
    padding: the input convolution's: "SAME", "VALID" or `((lo, hi), (lo, hi))`.
    strides: the input convolution's, an int or a pair.
    kernel_init, recurrent_init, bias_init: initialiser overrides, as in `jr.conv_lstm`.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `jr.Cell`.

  References:
    Ballas et al., "Delving Deeper into Convolutional Networks for Learning Video
    Representations", ICLR 2016.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.conv_gru(3, (3, 3), spatial_shape=(6, 6), padding="VALID")
  >>> params = cell.init(jax.random.key(0), 2)
  >>> carry, ys = jr.scan(cell, params, jnp.ones((4, 6, 6, 2)))
  >>> ys.shape, carry.shape
  ((4, 4, 4, 3), (4, 4, 3))
  """

  def gates(p, h, zx, conv_h):
    feats = h.shape[-1]
    w_rz, w_n = p["w_h"][..., :2 * feats], p["w_h"][..., 2 * feats:]
    a_r, a_z, a_n = jnp.split(zx, 3, axis=-1)
    g_r, g_z = jnp.split(conv_h(h, w_rz), 2, axis=-1)
    r, z = jax.nn.sigmoid(a_r + g_r), jax.nn.sigmoid(a_z + g_z)
    n = jnp.tanh(a_n + conv_h(r * h, w_n))
    h = (1 - z) * n + z * h
    return h, h

  return _conv_cell("conv_gru", 3, features, kernel_size, spatial_shape, padding, strides,
                    kernel_init, recurrent_init, bias_init, dtype, param_dtype, gates,
                    lambda zeros: zeros())

