"""Layer-normalised LSTM and GRU cells (Ba et al. 2016)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import _common, _gru, _lstm


def _normalise(v, eps: float):
  """`(v - mean(v)) / sqrt(var(v) + eps)` over the last axis (no gain or bias)."""
  mean = jnp.mean(v, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(v - mean), axis=-1, keepdims=True)
  return (v - mean) * jax.lax.rsqrt(var + jnp.asarray(eps, v.dtype))


def _check_eps(eps) -> float:
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
    raise ValueError(f"eps must be a positive float, got {eps!r}")
  return float(eps)


def layer_norm_lstm(hidden_size: int, *, eps: float = 1e-5, forget_bias: float = 1.0,
                    dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32,
                    matmul_dtype: Optional[jnp.dtype] = None) -> _types.Cell:
  r"""A layer-normalised LSTM (Ba et al. 2016, section 3.1).

  .. math::
      [i, f, g, o] &= \gamma_x \odot \mathrm{LN}(x_t W_x) + \gamma_h \odot \mathrm{LN}(h_{t-1}
      W_h) + b \\
      c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
      h_t &= \sigma(o) \odot \tanh(\gamma_c \odot \mathrm{LN}(c_t) + \beta_c), \qquad y_t = h_t

  with :math:`\mathrm{LN}(v) = (v - \mu(v)) / \sqrt{\sigma^2(v) + \epsilon}` over the whole
  `4H` vector (as in the paper, not per gate) and over the `H` units of :math:`c_t`. The two
  input and recurrent LN biases are folded into the one bias `b`. Gate order `i, f, g, o`.

  Parameters (a dict): `w_x (D, 4H)`, `w_h (H, 4H)`, `b (4H,)`, `gamma_x (4H,)`,
  `gamma_h (4H,)`, `gamma_c (H,)`, `beta_c (H,)`. Gains start at 1, `beta_c` at 0, `b` at 0
  with `forget_bias` on its forget slice. Carry: `LSTMState(h (..., H), c (..., H))`.
  `project(p, xs) = gamma_x * LN(xs @ w_x) + b`, shape `(..., 4H)`.

  Args:
    hidden_size: H.
    eps: the variance floor of LN.
    forget_bias: added to the forget slice of `b` at initialisation.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.
    matmul_dtype: if given (say `jnp.bfloat16`), both matmuls' operands are rounded to it and
      the products summed in the compute dtype; LN and everything else stay in the compute dtype.

  Returns:
    A `jr.Cell`.

  References:
    Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.layer_norm_lstm(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, ys = jr.scan(cell, params, jnp.ones((2, 5, 3)))
  >>> ys.shape, sorted(params)
  ((2, 5, 8), ['b', 'beta_c', 'gamma_c', 'gamma_h', 'gamma_x', 'w_h', 'w_x'])
  """
  hidden = _types.check_hidden_size(hidden_size)
  eps = _check_eps(eps)
  mm = _common.check_matmul_dtype(matmul_dtype)
  k_init, r_init, _ = _common.weight_inits("default", hidden, None, None, None)

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh = jax.random.split(key)
    ones = lambda n: jnp.ones((n,), param_dtype)
    b = jnp.zeros((4 * hidden,), param_dtype)
    return {"w_x": _common.block_weights(kx, input_size, hidden, 4, k_init, param_dtype),
            "w_h": _common.block_weights(kh, hidden, hidden, 4, r_init, param_dtype),
            "b": b.at[hidden:2 * hidden].add(jnp.asarray(forget_bias, param_dtype)),
            "gamma_x": ones(4 * hidden), "gamma_h": ones(4 * hidden),
            "gamma_c": ones(hidden), "beta_c": jnp.zeros((hidden,), param_dtype)}

  def project_one(p, x):
    cd = _common.compute_dtype(dtype, x)
    z = _normalise(_common.matmul(x.astype(cd), p["w_x"], mm), eps)
    return p["gamma_x"].astype(cd) * z + p["b"].astype(cd)

  def recur_one(p, carry, z):
    h, c = carry
    cd = z.dtype
    a = z + p["gamma_h"].astype(cd) * _normalise(_common.matmul(h, p["w_h"], mm), eps)
    (_, _, _, o), c = _lstm.gates(a, c)
    c_norm = p["gamma_c"].astype(cd) * _normalise(c, eps) + p["beta_c"].astype(cd)
    h = o * jnp.tanh(c_norm)
    return _types.LSTMState(h, c), h

  return _common.build_cell(
      f"layer_norm_lstm({hidden})", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: _types.LSTMState(zeros(), zeros())),
      project_one, recur_one,
      z_size=4 * hidden, family="layer_norm_lstm")


def layer_norm_gru(hidden_size: int, *, eps: float = 1e-5, dtype: Optional[jnp.dtype] = None,
                   param_dtype=jnp.float32, matmul_dtype: Optional[jnp.dtype] = None
                   ) -> _types.Cell:
  r"""A layer-normalised GRU in the PyTorch / cuDNN form of `jr.gru` (reset gate after the
  recurrent matmul), with LN on the input and the recurrent pre-activations (Ba et al. 2016).

  .. math::
      [a_r, a_z, a_n] &= \gamma_x \odot \mathrm{LN}(x_t W_x) + b_x, \qquad
      [g_r, g_z, g_n] = \gamma_h \odot \mathrm{LN}(h_{t-1} W_h) + b_h \\
      r &= \sigma(a_r + g_r), \quad z = \sigma(a_z + g_z), \quad n = \tanh(a_n + r \odot g_n) \\
      h_t &= (1 - z) \odot n + z \odot h_{t-1}, \qquad y_t = h_t

  LN is over the whole `3H` vector. Gate order `r, z, n`. Parameters (a dict): `w_x (D, 3H)`,
  `w_h (H, 3H)`, `b_x (3H,)`, `b_h (3H,)`, `gamma_x (3H,)`, `gamma_h (3H,)` (gains start at 1,
  biases at 0). Carry: `h (..., H)`. `project(p, xs) = gamma_x * LN(xs @ w_x) + b_x`.

  Args:
    hidden_size: H.
    eps: the variance floor of LN.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.
    matmul_dtype: if given (say `jnp.bfloat16`), both matmuls' operands are rounded to it and
      the products summed in the compute dtype; LN and everything else stay in the compute dtype.

  Returns:
    A `jr.Cell`.

  References:
    Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.layer_norm_gru(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, ys = jr.scan(cell, params, jnp.ones((2, 5, 3)))
  >>> carry.shape
  (2, 8)
  """
  hidden = _types.check_hidden_size(hidden_size)
  eps = _check_eps(eps)
  mm = _common.check_matmul_dtype(matmul_dtype)
  k_init, r_init, _ = _common.weight_inits("default", hidden, None, None, None)

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh = jax.random.split(key)
    n = 3 * hidden
    return {"w_x": _common.block_weights(kx, input_size, hidden, 3, k_init, param_dtype),
            "w_h": _common.block_weights(kh, hidden, hidden, 3, r_init, param_dtype),
            "b_x": jnp.zeros((n,), param_dtype), "b_h": jnp.zeros((n,), param_dtype),
            "gamma_x": jnp.ones((n,), param_dtype), "gamma_h": jnp.ones((n,), param_dtype)}

  def project_one(p, x):
    cd = _common.compute_dtype(dtype, x)
    z = _normalise(_common.matmul(x.astype(cd), p["w_x"], mm), eps)
    return p["gamma_x"].astype(cd) * z + p["b_x"].astype(cd)

  def recur_in(p, h_in, h, z):
    # `h_in` feeds the recurrent matmul, `h` the update `u * h` (see `jr.gru`).
    cd = z.dtype
    g = (p["gamma_h"].astype(cd) * _normalise(_common.matmul(h_in, p["w_h"], mm), eps)
         + p["b_h"].astype(cd))
    h, _ = _gru.gates(z, g, h)
    return h, h

  def recur_one(p, h, z):
    return recur_in(p, h, h, z)

  return _common.build_cell(
      f"layer_norm_gru({hidden})", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
      project_one, recur_one,
      z_size=3 * hidden, family="layer_norm_gru", recur_in=recur_in)
