"""The LSTM cell."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import _common


def lstm(hidden_size: int, *, proj_size: Optional[int] = None, peephole: bool = False,
         forget_bias: Optional[float] = None, use_bias: bool = True,
         init: str = "default", kernel_init=None, recurrent_init=None, bias_init=None,
         dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32,
         matmul_dtype: Optional[jnp.dtype] = None) -> _types.Cell:
  r"""A long short-term memory cell (Hochreiter & Schmidhuber 1997; Gers et al. 2000), as
  PyTorch's `nn.LSTM`.

  .. math::
      [i, f, g, o] &= x_t W_x + h_{t-1} W_h + b \\
      c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
      h_t &= \sigma(o) \odot \tanh(c_t), \qquad y_t = h_t

  Gate order along the `4H` axis is `i, f, g, o` (PyTorch's). Parameters (a dict):
  `w_x (D, 4H)`, `w_h (H, 4H)`, `b (4H,)` (absent with `use_bias=False`); PyTorch's
  `weight_ih` is `w_x.T`, and `b = b_ih + b_hh`. Carry: `LSTMState(h (..., H), c (..., H))`.
  `project(p, xs) = xs @ w_x + b` has shape `(..., 4H)`.

  Two options change the equations (each on its own or both together):

  * `proj_size=P` (LSTMP, Sak et al. 2014; PyTorch's `nn.LSTM(proj_size=P)`): the hidden state
    is projected to `P < H` features, `h_t = (\sigma(o) \odot \tanh(c_t)) W_p`, and it is
    `h_t (..., P)` that feeds the next step and is the output. Then `w_h` is `(P, 4H)`, the new
    `w_p (H, P)` is PyTorch's `weight_hr.T`, and the carry is `LSTMState(h (..., P), c (..., H))`.
  * `peephole=True` (Gers & Schmidhuber 2000): the gates also see the cell state through
    diagonal weights `w_ci`, `w_cf`, `w_co`, each `(H,)`:

    .. math::
        i &= \sigma(a_i + w_{ci} \odot c_{t-1}), \quad f = \sigma(a_f + w_{cf} \odot c_{t-1}),
        \quad c_t = f \odot c_{t-1} + i \odot \tanh(a_g) \\
        o &= \sigma(a_o + w_{co} \odot c_t), \qquad h_t = o \odot \tanh(c_t)

    with `[a_i, a_f, a_g, a_o] = x_t W_x + h_{t-1} W_h + b` (the output gate peeks at the new
    cell state, the other two at the old one, as in the paper).

  These variants have no fused or native loop: every `implementation` but "fused" (which
  raises) runs the plain scan of their equations.

  Args:
    hidden_size: H.
    proj_size: P, an int in `[1, H)`, or None (no projection).
    peephole: whether the gates have peephole connections.
    forget_bias: added to the forget gate's slice of `b` at initialisation only (the step adds
      nothing, so weights imported from PyTorch mean the same thing). Default 1.0 for
      `init="default"` (Jozefowicz et al. 2015) and 0.0 for `init="pytorch"`.
    use_bias: whether the cell has `b`.
    init: "default" (Glorot-uniform `w_x` and orthogonal `w_h`, per gate block; zero `b`) or
      "pytorch" (everything U(-1/sqrt(H), 1/sqrt(H))).
    kernel_init, recurrent_init, bias_init: `(key, shape, dtype) -> array` overrides, applied per
      gate block for the weights.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.
    matmul_dtype: if given (say `jnp.bfloat16`), both matmuls' operands are rounded to it and
      their products summed in the compute dtype (float32 accumulation), while the gates and the
      carry stay in the compute dtype; `None` runs the matmuls in the compute dtype.

  Returns:
    A `jr.Cell`.

  References:
    Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997.
    Gers & Schmidhuber, "Recurrent Nets that Time and Count", IJCNN 2000 (peepholes).
    Sak, Senior & Beaufays, "Long Short-Term Memory Recurrent Neural Network Architectures for
    Large Scale Acoustic Modeling", Interspeech 2014 (projection).

  >>> import jax, jaxrnn as jr
  >>> cell = jr.lstm(16)
  >>> params = cell.init(jax.random.key(0), 4)
  >>> params["w_x"].shape, params["w_h"].shape, params["b"].shape
  ((4, 64), (16, 64), (64,))
  >>> p = jr.lstm(16, proj_size=4, peephole=True).init(jax.random.key(0), 3)
  >>> p["w_h"].shape, p["w_p"].shape, p["w_ci"].shape
  ((4, 64), (16, 4), (16,))
  """
  hidden = _types.check_hidden_size(hidden_size)
  peephole = _types.check_flag(peephole, "lstm: peephole")
  use_bias = _types.check_flag(use_bias, "lstm: use_bias")
  if proj_size is not None:
    proj_size = _types.check_hidden_size(proj_size, "lstm: proj_size")
    if proj_size >= hidden:
      raise ValueError(f"lstm: proj_size must be smaller than hidden_size = {hidden} (PyTorch's "
                       f"rule; a projection that does not shrink h only adds a matmul), got "
                       f"{proj_size}")
  mm = _common.check_matmul_dtype(matmul_dtype)
  scheme = _common.check_scheme(init)
  if forget_bias is None:
    forget_bias = 1.0 if scheme == "default" else 0.0
  k_init, r_init, b_init = _common.weight_inits(
      scheme, hidden, kernel_init, recurrent_init, bias_init)
  if proj_size is not None or peephole:
    return _variant(hidden, proj_size, peephole, forget_bias, use_bias, scheme,
                    (k_init, r_init, b_init), dtype, param_dtype, mm)

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh, kb = jax.random.split(key, 3)
    params = {"w_x": _common.block_weights(kx, input_size, hidden, 4, k_init, param_dtype),
              "w_h": _common.block_weights(kh, hidden, hidden, 4, r_init, param_dtype)}
    if use_bias:
      b = b_init(kb, (4 * hidden,), param_dtype)
      params["b"] = b.at[hidden:2 * hidden].add(jnp.asarray(forget_bias, param_dtype))
    return params

  project_one = _common.affine_projection(dtype, "b" if use_bias else None, mm)

  def recur_one(p, carry, z):
    (_, _, _, o), c = gates(z + _common.matmul(carry.h, p["w_h"], mm), carry.c)
    h = o * jnp.tanh(c)
    return _types.LSTMState(h, c), h

  return _common.build_cell(
      f"lstm({hidden})", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: _types.LSTMState(zeros(), zeros())),
      project_one, recur_one,
      z_size=4 * hidden, family="lstm",
      fused=_fused_spec(mm, dtype, "b" if use_bias else None))


def _variant(hidden: int, proj: Optional[int], peephole: bool, forget_bias: float,
             use_bias: bool, scheme: str, inits, dtype, param_dtype, mm) -> _types.Cell:
  """`lstm` with a projection (`proj`, or None) and/or peepholes."""
  k_init, r_init, b_init = inits
  out = hidden if proj is None else proj
  # Peepholes start at zero under the default scheme (the cell begins as a plain LSTM, as its
  # zero biases do) and U(-1/sqrt(H), 1/sqrt(H)) under "pytorch", as every other parameter.
  peep_init = b_init

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh, kb, kp, kc = jax.random.split(key, 5)
    params = {"w_x": _common.block_weights(kx, input_size, hidden, 4, k_init, param_dtype),
              "w_h": _common.block_weights(kh, out, hidden, 4, r_init, param_dtype)}
    if use_bias:
      b = b_init(kb, (4 * hidden,), param_dtype)
      params["b"] = b.at[hidden:2 * hidden].add(jnp.asarray(forget_bias, param_dtype))
    if proj is not None:
      params["w_p"] = k_init(kp, (hidden, proj), param_dtype)
    if peephole:
      for name, k in zip(("w_ci", "w_cf", "w_co"), jax.random.split(kc, 3)):
        params[name] = peep_init(k, (hidden,), param_dtype)
    return params

  project_one = _common.affine_projection(dtype, "b" if use_bias else None, mm)

  def recur_one(p, carry, z):
    a_i, a_f, a_g, a_o = jnp.split(z + _common.matmul(carry.h, p["w_h"], mm), 4, axis=-1)
    peep = (lambda name, c: p[name].astype(c.dtype) * c) if peephole else (lambda name, c: 0)
    i = jax.nn.sigmoid(a_i + peep("w_ci", carry.c))
    f = jax.nn.sigmoid(a_f + peep("w_cf", carry.c))
    c = f * carry.c + i * jnp.tanh(a_g)
    o = jax.nn.sigmoid(a_o + peep("w_co", c))
    h = o * jnp.tanh(c)
    if proj is not None:
      h = _common.matmul(h, p["w_p"], mm)
    return _types.LSTMState(h, c), h

  h_zeros = _common.make_initial_carry(out, dtype, lambda zeros: zeros())
  c_zeros = _common.make_initial_carry(hidden, dtype, lambda zeros: zeros())

  def initial_carry(batch_shape=(), dtype=None):
    return _types.LSTMState(h_zeros(batch_shape, dtype), c_zeros(batch_shape, dtype))

  options = ([] if proj is None else [f"proj_size={proj}"]) + (["peephole=True"] * peephole)
  # No `fused`: the fused, native and oneDNN loops implement the plain LSTM only. The family
  # is the variant's own, so that no per-family choice measured on the plain LSTM applies.
  family = "lstm" + ("_proj" if proj is not None else "") + ("_peephole" if peephole else "")
  return _common.build_cell(
      f"lstm({hidden}, {', '.join(options)})", init_params, initial_carry, project_one,
      recur_one, z_size=4 * hidden, family=family)


def gates(a, c):
  """The activated gates `(i, f, g, o)` of pre-activations `a (..., 4H)` (in that order) and
  the new cell state `f c + i g`; shared by `lstm`, its fused step and `layer_norm_lstm`."""
  a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
  return (i, f, g, o), f * c + i * g


def tangent_coefficients(acts, c_in, tanh_c):
  """The residuals `(coef, f, o (1 - tanh(c)^2))` of the fused LSTM step's tangent, from the
  activated gates `acts = (i, f, g, o)`, the incoming cell state and `tanh` of the new one
  (the native loop, `_native/lstm_loop.cc`, computes the same in C++)."""
  i, f, g, o = acts
  coef = jnp.concatenate(
      [i * (1 - i) * g, f * (1 - f) * c_in, i * (1 - g * g), o * (1 - o) * tanh_c], axis=-1)
  return coef, f, o * (1 - tanh_c * tanh_c)


def tangent_update(res, dc, da):
  """The fused LSTM step's tangent `LSTMState(dh', dc')` from the incoming cell state's tangent
  `dc` and the gates' pre-activation tangent `da (..., 4H)`, with the step's residuals `res`."""
  coef, f, d_tanh = res
  p_i, p_f, p_g, p_o = jnp.split(coef * da, 4, axis=-1)
  dc_new = p_i + p_f + p_g + f * dc
  return _types.LSTMState(p_o + d_tanh * dc_new, dc_new)


def _fused_spec(mm, dtype, bias_key: Optional[str]) -> _types.FusedSpec:
  """The LSTM's fused recurrence, its matmuls' operands in `mm` (None: the compute dtype);
  `dtype` (the cell's fixed compute dtype, or None) and `bias_key` serve its joint step."""

  def post(carry, a):
    """`recur` from the pre-activations `a`, plus the coefficients of its tangent:
    `dc' = p_i + p_f + p_g + f dc`, `dh' = p_o + o (1 - tanh(c')^2) dc'` with `p = coef * da`."""
    (i, f, g, o), c = gates(a, carry.c)
    tanh_c = jnp.tanh(c)
    h_new = o * tanh_c
    return _types.LSTMState(h_new, c), h_new, tangent_coefficients((i, f, g, o), carry.c, tanh_c)

  def step(rp, carry, z):
    return post(carry, z + _common.matmul(carry.h, rp["w_h"], mm))

  def tangent(rp, res, dcarry, forcing):
    state = tangent_update(res, dcarry.c, forcing + _common.matmul(dcarry.h, rp["w_h"], mm))
    return state, state.h

  return _types.FusedSpec(
      rec_params=_common.matmul_rec_params("w_h", mm),
      step=step,
      rec_tangent=_common.matmul_tangent("w_h", mm),
      force=lambda dz, dr: dz + dr,
      tangent=tangent,
      native="lstm" if mm is None or mm == jnp.float32 else None,
      joint=_common.joint_matmul(dtype, bias_key, post, hidden_of=lambda carry: carry.h))
