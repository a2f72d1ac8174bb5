"""The independently recurrent (IndRNN) cell."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import _common, _simple



def indrnn(hidden_size: int, *, activation: str = "relu", recurrent_bound: Optional[float] = None,
           use_bias: bool = True, init: str = "default", kernel_init=None,
           recurrent_init=None, bias_init=None, dtype: Optional[jnp.dtype] = None,
           param_dtype=jnp.float32, matmul_dtype: Optional[jnp.dtype] = None) -> _types.Cell:
  r"""An independently recurrent cell (Li et al. 2018): each unit sees only its own past.

  .. math::
      h_t = \phi(x_t W_x + \mathrm{clip}(u, -B, B) \odot h_{t-1} + b), \qquad y_t = h_t

  where `B` is `recurrent_bound` (no clipping when `None`). Li et al. bound :math:`|u|` by
  :math:`\gamma^{1/T}` to keep gradients over `T` steps from exploding or vanishing; clipping in
  the step keeps that bound without a separate projection after each optimiser update (the
  gradient with respect to an entry of `u` outside the bound is zero).

  Parameters (a dict): `w_x (D, H)`, `u (H,)` (the element-wise recurrent weight), `b (H,)`
  (absent with `use_bias=False`). Carry: `h (..., H)`. `project(p, xs) = xs @ w_x + b`.

  Args:
    hidden_size: H.
    activation: "relu" (the paper's) or "tanh".
    recurrent_bound: B > 0, the bound on `|u|`, or `None`.
    use_bias: whether the cell has `b`.
    init: "default" (Glorot-uniform `w_x`, `u` ~ U(0, 1) as in the paper (U(0, B) when bounded
      below 1), zero `b`) or "pytorch" (everything U(-1/sqrt(H), 1/sqrt(H))).
    kernel_init, recurrent_init, bias_init: `(key, shape, dtype) -> array` overrides.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.
    matmul_dtype: if given (say `jnp.bfloat16`), the input projection's operands are rounded
      to it and the products summed in the compute dtype (float32 accumulation); the recurrence
      (elementwise) and the carry stay in the compute dtype. `None`: the compute dtype.

  Returns:
    A `jr.Cell`.

  References:
    Li et al., "Independently Recurrent Neural Network (IndRNN): Building A Longer and Deeper
    RNN", CVPR 2018.

  >>> import jax, jaxrnn as jr
  >>> cell = jr.indrnn(8, recurrent_bound=1.0)
  >>> cell.init(jax.random.key(0), 3)["u"].shape
  (8,)
  """
  hidden = _types.check_hidden_size(hidden_size)
  mm = _common.check_matmul_dtype(matmul_dtype)
  if recurrent_bound is not None and not recurrent_bound > 0:
    raise ValueError(f"recurrent_bound must be positive or None, got {recurrent_bound!r}")
  phi = _common.check_activation(activation)
  scheme = _common.check_scheme(init)
  k_init, _, b_init = _common.weight_inits(scheme, hidden, kernel_init, None, bias_init)
  if recurrent_init is None:
    if scheme == "pytorch":
      recurrent_init = _common.uniform(hidden ** -0.5)
    else:
      recurrent_init = bounded_uniform(recurrent_bound)
  init_params = diagonal_params(hidden, k_init, recurrent_init, b_init, use_bias, param_dtype)

  project_one = _common.affine_projection(dtype, "b" if use_bias else None, mm)

  def recurrent_weight(p, cd):
    u = p["u"].astype(cd)
    return u if recurrent_bound is None else jnp.clip(u, -recurrent_bound, recurrent_bound)

  def recur_one(p, h, z):
    h = phi(z + recurrent_weight(p, z.dtype) * h)
    return h, h

  def fused_step(u, h, z):
    h = phi(z + _types.last_axis(u, h) * h)
    return h, h, _simple._slope(activation, h)

  def fused_tangent(u, slope, dh, forcing):
    dh = slope * (forcing + _types.last_axis(u, dh) * dh)
    return dh, dh

  fused = _types.FusedSpec(
      rec_params=recurrent_weight, step=fused_step,
      rec_tangent=lambda du, h_in: _types.last_axis(du, h_in) * h_in,
      force=lambda dz, dr: dz + dr, tangent=fused_tangent)

  return _common.build_cell(
      f"indrnn({hidden}, {activation})", init_params,
      _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
      project_one, recur_one,
      z_size=hidden, family="indrnn", fused=fused)


def bounded_uniform(recurrent_bound: Optional[float]):
  """The default initialiser of a diagonal recurrent weight `u`: uniform on `[0, min(1, bound)]`."""
  top = 1.0 if recurrent_bound is None else min(1.0, recurrent_bound)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, 0.0, top)


def diagonal_params(hidden: int, k_init, recurrent_init, b_init, use_bias: bool, param_dtype):
  """`init_params(key, input_size)` of a cell with an input matrix and a diagonal recurrence:
  `{"w_x": (D, H), "u": (H,)}`, and `"b": (H,)` with `use_bias`."""

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, ku, kb = jax.random.split(key, 3)
    params = {"w_x": k_init(kx, (input_size, hidden), param_dtype),
              "u": recurrent_init(ku, (hidden,), param_dtype)}
    if use_bias:
      params["b"] = b_init(kb, (hidden,), param_dtype)
    return params

  return init_params
