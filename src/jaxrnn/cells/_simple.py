"""The Elman (simple) RNN cell."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import _common



def simple_rnn(hidden_size: int, *, activation: str = "tanh", use_bias: bool = True,
               init: str = "default", kernel_init=None, recurrent_init=None, bias_init=None,
               dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32,
               matmul_dtype: Optional[jnp.dtype] = None) -> _types.Cell:
  r"""An Elman RNN cell (Elman 1990), PyTorch's `nn.RNN`.

  .. math::
      h_t = \phi(x_t W_x + h_{t-1} W_h + b), \qquad y_t = h_t

  with :math:`\phi` = tanh or relu.

  Parameters (a dict): `w_x (D, H)`, `w_h (H, H)`, `b (H,)` (absent with `use_bias=False`).
  PyTorch's two biases enter only as their sum, `b = b_ih + b_hh`. Carry: `h (..., H)`.
  `project(p, xs) = xs @ w_x + b` has shape `(..., H)`.

  Args:
    hidden_size: H, the size of the state.
    activation: "tanh" or "relu".
    use_bias: whether the cell has `b`.
    init: "default" (Glorot-uniform `w_x`, orthogonal `w_h`, zero `b`) or "pytorch"
      (everything U(-1/sqrt(H), 1/sqrt(H))).
    kernel_init, recurrent_init, bias_init: `(key, shape, dtype) -> array` overrides.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.
    matmul_dtype: if given (say `jnp.bfloat16`), both matmuls' operands are rounded to it and
      the products summed in the compute dtype (float32 accumulation); everything else stays in
      the compute dtype. `None` runs the matmuls in the compute dtype.

  Returns:
    A `jr.Cell`.

  >>> import jax, jaxrnn as jr
  >>> cell = jr.simple_rnn(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, y = cell.step(params, cell.initial_carry((2,)), jax.numpy.ones((2, 3)))
  >>> y.shape
  (2, 8)
  """
  hidden = _types.check_hidden_size(hidden_size)
  mm = _common.check_matmul_dtype(matmul_dtype)
  phi = _common.check_activation(activation)
  k_init, r_init, b_init = _common.weight_inits(
      _common.check_scheme(init), hidden, kernel_init, recurrent_init, bias_init)

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kh, kb = jax.random.split(key, 3)
    params = {"w_x": k_init(kx, (input_size, hidden), param_dtype),
              "w_h": r_init(kh, (hidden, hidden), param_dtype)}
    if use_bias:
      params["b"] = b_init(kb, (hidden,), param_dtype)
    return params

  project_one = _common.affine_projection(dtype, "b" if use_bias else None, mm)

  def recur_one(p, h, z):
    h = phi(z + _common.matmul(h, p["w_h"], mm))
    return h, h

  def fused_step(rp, h, z):
    h = phi(z + _common.matmul(h, rp["w_h"], mm))
    return h, h, _slope(activation, h)

  def fused_tangent(rp, slope, dh, forcing):
    dh = slope * (forcing + _common.matmul(dh, rp["w_h"], mm))
    return dh, dh

  fused = _types.FusedSpec(
      rec_params=_common.matmul_rec_params("w_h", mm),
      step=fused_step, rec_tangent=_common.matmul_tangent("w_h", mm),
      force=lambda dz, dr: dz + dr,
      tangent=fused_tangent,
      native=({"tanh": "rnn", "relu": "rnn_relu"}[activation]
              if mm is None or mm == jnp.float32 else None))
  return _common.build_cell(
      f"simple_rnn({hidden}, {activation})", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
      project_one, recur_one,
      z_size=hidden, family="simple_rnn", fused=fused)


def _slope(activation: str, h):
  """The activation's derivative at its pre-activation, from its output `h`."""
  if activation == "tanh":
    return 1 - h * h
  return (h > 0).astype(h.dtype)  # relu; 0 at 0, as jax.nn.relu's derivative
