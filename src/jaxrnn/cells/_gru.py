"""The GRU cell, in PyTorch's and cuDNN's form."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import _common


def gru(hidden_size: int, *, reset_after: bool = True, use_bias: bool = True,
        init: str = "default", kernel_init=None, recurrent_init=None, bias_init=None,
        dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32,
        matmul_dtype: Optional[jnp.dtype] = None) -> _types.Cell:
  r"""A gated recurrent unit (Cho et al. 2014). By default in the PyTorch / cuDNN form, where the
  reset gate multiplies the recurrent matmul's result ("linear before reset"):

  .. math::
      [a_r, a_z, a_n] &= x_t W_x + b_x, \qquad [g_r, g_z, g_n] = h_{t-1} W_h + b_h \\
      r &= \sigma(a_r + g_r), \quad z = \sigma(a_z + g_z), \quad n = \tanh(a_n + r \odot g_n) \\
      h_t &= (1 - z) \odot n + z \odot h_{t-1}, \qquad y_t = h_t

  Gate order along the `3H` axis is `r, z, n`. Parameters (a dict): `w_x (D, 3H)`,
  `w_h (H, 3H)`, `b_x (3H,)`, `b_h (3H,)` (biases absent with `use_bias=False`); PyTorch's
  `weight_ih` is `w_x.T`, `bias_ih` is `b_x`. Carry: `h (..., H)`.
  `project(p, xs) = xs @ w_x + b_x` has shape `(..., 3H)`.

  With `reset_after=False`, the original form of Cho et al. 2014 (Keras' `reset_after=False`,
  Haiku's `GRU`): the reset gate multiplies `h_{t-1}` before the candidate's recurrent matmul,

  .. math::
      [a_r, a_z, a_n] &= x_t W_x + b, \qquad W_h = [W_{hr}, W_{hz}, W_{hn}] \\
      r &= \sigma(a_r + h_{t-1} W_{hr}), \quad z = \sigma(a_z + h_{t-1} W_{hz}), \quad
      n = \tanh(a_n + (r \odot h_{t-1}) W_{hn}) \\
      h_t &= (1 - z) \odot n + z \odot h_{t-1}, \qquad y_t = h_t

  with the same `w_x (D, 3H)`, `w_h (H, 3H)` and gate order, and one bias `b (3H,)` (a second,
  recurrent bias would only add to it: no gate multiplies it). `project(p, xs) = xs @ w_x + b`.
  This form has no fused or native loop: every `implementation` but "fused" (which raises)
  runs the plain scan of these equations.

  Args:
    hidden_size: H.
    reset_after: True for the PyTorch / cuDNN form above, False for the original form.
    use_bias: whether the cell has `b_x` and `b_h` (`b` with `reset_after=False`).
    init: "default" (Glorot-uniform `w_x` and orthogonal `w_h`, per gate block; zero biases) or
      "pytorch" (everything U(-1/sqrt(H), 1/sqrt(H))).
    kernel_init, recurrent_init, bias_init: `(key, shape, dtype) -> array` overrides.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.
    matmul_dtype: if given (say `jnp.bfloat16`), both matmuls' operands are rounded to it and
      the products summed in the compute dtype (float32 accumulation); everything else stays in
      the compute dtype. `None` runs the matmuls in the compute dtype.

  Returns:
    A `jr.Cell`.

  References:
    Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
    Machine Translation", EMNLP 2014.

  >>> import jax, jaxrnn as jr
  >>> cell = jr.gru(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> sorted(params)
  ['b_h', 'b_x', 'w_h', 'w_x']
  >>> sorted(jr.gru(8, reset_after=False).init(jax.random.key(0), 3))
  ['b', 'w_h', 'w_x']
  """
  hidden = _types.check_hidden_size(hidden_size)
  reset_after = _types.check_flag(reset_after, "gru: reset_after")
  use_bias = _types.check_flag(use_bias, "gru: use_bias")
  mm = _common.check_matmul_dtype(matmul_dtype)
  k_init, r_init, b_init = _common.weight_inits(
      _common.check_scheme(init), hidden, kernel_init, recurrent_init, bias_init)
  if not reset_after:
    return _reset_before(hidden, use_bias, (k_init, r_init, b_init), dtype, param_dtype, mm)

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh, kbx, kbh = jax.random.split(key, 4)
    params = {"w_x": _common.block_weights(kx, input_size, hidden, 3, k_init, param_dtype),
              "w_h": _common.block_weights(kh, hidden, hidden, 3, r_init, param_dtype)}
    if use_bias:
      params["b_x"] = b_init(kbx, (3 * hidden,), param_dtype)
      params["b_h"] = b_init(kbh, (3 * hidden,), param_dtype)
    return params

  project_one = _common.affine_projection(dtype, "b_x" if use_bias else None, mm)

  def recur_in(p, h_in, h, z):
    # `h_in` feeds the recurrent matmul, `h` the update `u * h` (the same but under
    # `jr.variational_dropout`, which masks only the matmul's input).
    g = _common.matmul(h_in, p["w_h"], mm)
    if use_bias:
      g = g + p["b_h"].astype(z.dtype)
    h, _ = gates(z, g, h)
    return h, h

  def recur_one(p, h, z):
    return recur_in(p, h, h, z)

  def rec_params(p, cd):
    rp = {"w_h": p["w_h"].astype(cd if mm is None else mm)}
    if use_bias:
      rp["b_h"] = p["b_h"].astype(cd)
    return rp

  def rec_tangent(drp, h_in):
    g = _common.matmul(h_in, drp["w_h"], mm)
    return g + _types.last_axis(drp["b_h"], g) if use_bias else g

  fused = _types.FusedSpec(rec_params=rec_params, step=functools.partial(_fused_step, mm),
                           rec_tangent=rec_tangent, force=_fused_force,
                           tangent=functools.partial(_fused_tangent, mm),
                           native="gru" if mm is None or mm == jnp.float32 else None)
  return _common.build_cell(
      f"gru({hidden})", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
      project_one, recur_one,
      z_size=3 * hidden, family="gru", fused=fused, recur_in=recur_in)


def _reset_before(hidden: int, use_bias: bool, inits, dtype, param_dtype, mm) -> _types.Cell:
  """`gru(..., reset_after=False)`: the reset gate applied to `h` before the matmul."""
  k_init, r_init, b_init = inits

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh, kb = jax.random.split(key, 3)
    params = {"w_x": _common.block_weights(kx, input_size, hidden, 3, k_init, param_dtype),
              "w_h": _common.block_weights(kh, hidden, hidden, 3, r_init, param_dtype)}
    if use_bias:
      params["b"] = b_init(kb, (3 * hidden,), param_dtype)
    return params

  project_one = _common.affine_projection(dtype, "b" if use_bias else None, mm)

  def recur_in(p, h_in, h, z):
    # `h_in` feeds the recurrent matmuls, `h` the update `u * h` (see `gru`).
    a_r, a_z, a_n = jnp.split(z, 3, axis=-1)
    g_r, g_z = jnp.split(_common.matmul(h_in, p["w_h"][:, :2 * hidden], mm), 2, axis=-1)
    r = jax.nn.sigmoid(a_r + g_r)
    u = jax.nn.sigmoid(a_z + g_z)
    n = jnp.tanh(a_n + _common.matmul(r * h_in, p["w_h"][:, 2 * hidden:], mm))
    h = (1 - u) * n + u * h
    return h, h

  def recur_one(p, h, z):
    return recur_in(p, h, h, z)

  # No `fused`: the fused and native loops implement the reset-after equations only. The
  # family is this form's own, so that no per-family choice measured on those applies.
  return _common.build_cell(
      f"gru({hidden}, reset_after=False)", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
      project_one, recur_one, z_size=3 * hidden, family="gru_reset_before", recur_in=recur_in)


def gates(z, g, h):
  """The GRU update from the input part `z (..., 3H)` and recurrent part `g (..., 3H)` of the
  pre-activations (gate order r, z, n): returns `h'` and `(r, u, n, g_n)`; shared by `gru`, its
  fused step and `layer_norm_gru`."""
  a_r, a_z, a_n = jnp.split(z, 3, axis=-1)
  g_r, g_z, g_n = jnp.split(g, 3, axis=-1)
  r = jax.nn.sigmoid(a_r + g_r)
  u = jax.nn.sigmoid(a_z + g_z)
  n = jnp.tanh(a_n + r * g_n)
  return (1 - u) * n + u * h, (r, u, n, g_n)


def _fused_step(mm, rp, h, z):
  """`recur` on a batch, plus the coefficients of its tangent
  `dh' = k_r q_r + k_z q_z + k_xn dz_n + k_hn dg_n + u dh`, where `dg = d(h W_h + b_h)`,
  `q_r = dz_r + dg_r` and `q_z = dz_z + dg_z`."""
  g = _common.matmul(h, rp["w_h"], mm)
  if "b_h" in rp:
    g = g + _types.last_axis(rp["b_h"], g)
  h_new, (r, u, n, g_n) = gates(z, g, h)
  k_n = (1 - u) * (1 - n * n)
  res = (k_n * g_n * r * (1 - r), (h - n) * u * (1 - u), k_n, k_n * r, u)
  return h_new, h_new, res


def _fused_force(dz, dr):
  dz_r, dz_z, dz_n = jnp.split(dz, 3, axis=-1)
  dr_r, dr_z, dr_n = jnp.split(dr, 3, axis=-1)
  return dz_r + dr_r, dz_z + dr_z, dz_n, dr_n


def _fused_tangent(mm, rp, res, dh, forcing):
  k_r, k_z, k_xn, k_hn, u = res
  f_r, f_z, f_xn, f_hn = forcing
  m_r, m_z, m_n = jnp.split(_common.matmul(dh, rp["w_h"], mm), 3, axis=-1)
  dh = k_r * (f_r + m_r) + k_z * (f_z + m_z) + k_xn * f_xn + k_hn * (f_hn + m_n) + u * dh
  return dh, dh
