"""Cells whose state update is linear with coefficients from the input alone.

`h_t = a_t * h_{t-1} + b_t` (elementwise) with `(a_t, b_t)` a function of `x_t` only: minGRU,
minLSTM, the LRU and a linear IndRNN. Each is an ordinary `jr.Cell` (it runs under `jr.scan`,
in layers, streams) that also carries its `LinearRecurrence` (`cell.linear`), with which
`jr.parallel_scan` evaluates all steps at once.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import _common, _indrnn


def _log_g(v):
  """`log g(v)` for Feng et al.'s positive activation `g(v) = v + 1/2 (v >= 0), sigmoid(v)
  (v < 0)`; the `where` selects from finite branches only, so its gradient has no NaN."""
  return jnp.where(v >= 0, jnp.log(jnp.maximum(v, 0) + 0.5), -jax.nn.softplus(-v))


def _g(v):
  return jnp.where(v >= 0, jnp.maximum(v, 0) + 0.5, jax.nn.sigmoid(v))


def _with_linear(cell: _types.Cell, init, coeff_one: Callable, output_one: Callable,
                 log_space: bool = False) -> _types.Cell:
  """`cell` with its `LinearRecurrence`, built from one-example `coeff_one(p, x) -> (a, b)` and
  `output_one(p, h, x) -> y`, lifted to any leading axes with the same checks as `project`."""
  input_size = _common.param_checker(cell.name, init)
  coefficients = _types.broadcasting_project(coeff_one, cell.name, input_size)

  def output(params, carry, xs):
    xs = jnp.asarray(xs)
    _types.check_features(xs, input_size(params), "xs", cell.name)
    return _types.over_leading_axes(output_one, xs.ndim - 1, (None, 0, 0))(params, carry, xs)

  linear = _types.LinearRecurrence(coefficients=coefficients, output=output, step=cell.step,
                                   log_space=log_space)
  return cell._replace(linear=linear)


def _gate_init(hidden, n_blocks, kernel_init, bias_init, param_dtype):
  k_init = kernel_init or jax.nn.initializers.glorot_uniform()
  b_init = bias_init or jax.nn.initializers.zeros

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    kx, kb = jax.random.split(key)
    return {"w_x": _common.block_weights(kx, input_size, hidden, n_blocks, k_init, param_dtype),
            "b": b_init(kb, (n_blocks * hidden,), param_dtype)}

  return init_params


def min_gru(hidden_size: int, *, log_space: bool = False, kernel_init=None, bias_init=None,
            dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32) -> _types.Cell:
  r"""minGRU (Feng et al. 2024): a GRU whose gate and candidate see only the input.

  .. math::
      z_t = \sigma(x_t W_z + b_z), \quad \tilde h_t = x_t W_h + b_h, \quad
      h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t, \quad y_t = h_t

  A linear recurrence `h_t = a_t h_{t-1} + b_t` with `a_t = 1 - z_t` (computed as
  :math:`\sigma(-k)`) and `b_t = z_t \tilde h_t`, so `jr.parallel_scan` runs it.

  With `log_space=True` the candidate is :math:`g(\tilde h_t)`, Feng et al.'s positive
  activation (`v + 1/2` for `v >= 0`, :math:`\sigma(v)` below), and `jr.parallel_scan` combines
  the coefficients as logarithms, the paper's form for long sequences (the state of a sequence
  started from zero stays positive). `jr.scan` computes the same values step by step.

  Parameters (a dict): `w_x (D, 2H)` with blocks in the order `z, h`, `b (2H,)`.
  Carry: `h (..., H)`. `project(p, xs) = xs @ w_x + b`.

  Args:
    hidden_size: H.
    log_space: use the positive candidate and log-space coefficients (see above).
    kernel_init, bias_init: `(key, shape, dtype) -> array` overrides of the Glorot-uniform
      (per block) `w_x` and the zero `b`.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `jr.Cell` with `cell.linear` set.

  References:
    Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs All We Needed?", arXiv:2410.01201,
    2024.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.min_gru(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, ys = jr.parallel_scan(cell, params, jnp.ones((2, 5, 3)))
  >>> ys.shape
  (2, 5, 8)
  """
  hidden = _types.check_hidden_size(hidden_size)
  log_space = _types.check_flag(log_space, "min_gru: log_space")
  init_params = _gate_init(hidden, 2, kernel_init, bias_init, param_dtype)
  project_one = _common.affine_projection(dtype, "b")

  def coeff_one(p, x):
    k, v = jnp.split(project_one(p, x), 2)
    if log_space:
      return -jax.nn.softplus(k), -jax.nn.softplus(-k) + _log_g(v)
    return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * v

  def recur_one(p, h, zs):
    k, v = jnp.split(zs, 2)
    h = jax.nn.sigmoid(-k) * h + jax.nn.sigmoid(k) * (_g(v) if log_space else v)
    return h, h

  name = f"min_gru({hidden}{', log_space' if log_space else ''})"
  cell = _common.build_cell(name, init_params,
                            _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
                            project_one, recur_one, z_size=2 * hidden,
                            family="min_gru")
  return _with_linear(cell, init_params, coeff_one, lambda p, h, x: h, log_space)


def min_lstm(hidden_size: int, *, log_space: bool = False, kernel_init=None, bias_init=None,
             dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32) -> _types.Cell:
  r"""minLSTM (Feng et al. 2024): an LSTM whose gates see only the input, normalised so that
  forget and input gate sum to one.

  .. math::
      f_t = \sigma(x_t W_f + b_f), \quad i_t = \sigma(x_t W_i + b_i), \quad
      \tilde h_t = x_t W_h + b_h, \\
      h_t = \frac{f_t}{f_t + i_t} \odot h_{t-1} + \frac{i_t}{f_t + i_t} \odot \tilde h_t,
      \quad y_t = h_t

  The normalised gates are computed as :math:`\sigma(\mp d)` with
  :math:`d = \log(i_t / f_t) = \mathrm{softplus}(-k_f) - \mathrm{softplus}(-k_i)`, stable for
  any pre-activations. `log_space=True` uses the positive candidate :math:`g(\tilde h_t)` and
  log-space coefficients in `jr.parallel_scan`, as for `jr.min_gru`.

  Parameters (a dict): `w_x (D, 3H)` with blocks in the order `f, i, h`, `b (3H,)`.
  Carry: `h (..., H)`. `project(p, xs) = xs @ w_x + b`.

  Args:
    hidden_size: H.
    log_space: use the positive candidate and log-space coefficients.
    kernel_init, bias_init: overrides of the Glorot-uniform (per block) `w_x` and the zero `b`.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `jr.Cell` with `cell.linear` set.

  References:
    Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs All We Needed?", arXiv:2410.01201,
    2024.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.min_lstm(8, log_space=True)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> params["w_x"].shape
  (3, 24)
  """
  hidden = _types.check_hidden_size(hidden_size)
  log_space = _types.check_flag(log_space, "min_lstm: log_space")
  init_params = _gate_init(hidden, 3, kernel_init, bias_init, param_dtype)
  project_one = _common.affine_projection(dtype, "b")

  def log_ratio(kf, ki):
    return jax.nn.softplus(-kf) - jax.nn.softplus(-ki)

  def coeff_one(p, x):
    kf, ki, v = jnp.split(project_one(p, x), 3)
    d = log_ratio(kf, ki)
    if log_space:
      return -jax.nn.softplus(d), -jax.nn.softplus(-d) + _log_g(v)
    return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * v

  def recur_one(p, h, zs):
    kf, ki, v = jnp.split(zs, 3)
    d = log_ratio(kf, ki)
    h = jax.nn.sigmoid(-d) * h + jax.nn.sigmoid(d) * (_g(v) if log_space else v)
    return h, h

  name = f"min_lstm({hidden}{', log_space' if log_space else ''})"
  cell = _common.build_cell(name, init_params,
                            _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
                            project_one, recur_one, z_size=3 * hidden,
                            family="min_lstm")
  return _with_linear(cell, init_params, coeff_one, lambda p, h, x: h, log_space)


def linear_indrnn(hidden_size: int, *, recurrent_bound: Optional[float] = None,
                  use_bias: bool = True, kernel_init=None, recurrent_init=None, bias_init=None,
                  dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32) -> _types.Cell:
  r"""A diagonal linear recurrence: an IndRNN (Li et al. 2018) without its activation.

  .. math::
      h_t = \mathrm{clip}(u, -B, B) \odot h_{t-1} + x_t W_x + b, \qquad y_t = h_t

  Each unit sees only its own past, and the recurrence is linear with `a_t = clip(u)` and
  `b_t = x_t W_x + b`, so `jr.parallel_scan` runs it. `|u| < 1` keeps it stable; `B`
  (`recurrent_bound`, no clipping when `None`) enforces a bound in the step.

  Parameters (a dict): `w_x (D, H)`, `u (H,)`, `b (H,)` (absent with `use_bias=False`).
  Carry: `h (..., H)`. `project(p, xs) = xs @ w_x + b`.

  Args:
    hidden_size: H.
    recurrent_bound: B > 0, the bound on `|u|`, or `None`.
    use_bias: whether the cell has `b`.
    kernel_init, recurrent_init, bias_init: overrides of the Glorot-uniform `w_x`,
      `u ~ U(0, min(1, B))` and the zero `b`.
    dtype: the compute dtype; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `jr.Cell` with `cell.linear` set.

  References:
    Li et al., "Independently Recurrent Neural Network (IndRNN): Building A Longer and Deeper
    RNN", CVPR 2018.

  >>> import jax, jaxrnn as jr
  >>> cell = jr.linear_indrnn(8, recurrent_bound=0.99)
  >>> cell.init(jax.random.key(0), 3)["u"].shape
  (8,)
  """
  hidden = _types.check_hidden_size(hidden_size)
  if recurrent_bound is not None and not recurrent_bound > 0:
    raise ValueError(f"recurrent_bound must be positive or None, got {recurrent_bound!r}")
  k_init = kernel_init or jax.nn.initializers.glorot_uniform()
  b_init = bias_init or jax.nn.initializers.zeros
  if recurrent_init is None:
    recurrent_init = _indrnn.bounded_uniform(recurrent_bound)
  init_params = _indrnn.diagonal_params(hidden, k_init, recurrent_init, b_init, use_bias,
                                        param_dtype)

  project_one = _common.affine_projection(dtype, "b" if use_bias else None)

  def decay(p, cd):
    u = p["u"].astype(cd)
    return u if recurrent_bound is None else jnp.clip(u, -recurrent_bound, recurrent_bound)

  def coeff_one(p, x):
    z = project_one(p, x)
    return decay(p, z.dtype), z

  def recur_one(p, h, z):
    h = decay(p, z.dtype) * h + z
    return h, h

  cell = _common.build_cell(f"linear_indrnn({hidden})", init_params,
                            _common.make_initial_carry(hidden, dtype, lambda zeros: zeros()),
                            project_one, recur_one, z_size=hidden,
                            family="linear_indrnn")
  return _with_linear(cell, init_params, coeff_one, lambda p, h, x: h)


def _wide(real_dtype):
  """float64 stays float64; float32 and narrower compute the complex state in float32."""
  return jnp.dtype(jnp.float64 if jnp.dtype(real_dtype).itemsize > 4 else jnp.float32)


def _complex_dtype(real_dtype):
  """The complex dtype the LRU's state takes for real inputs of `real_dtype` (complex64 for
  float32 and narrower, which have no complex counterpart; complex128 for float64)."""
  return jnp.dtype(jnp.complex128 if jnp.dtype(real_dtype).itemsize > 4 else jnp.complex64)


def lru(hidden_size: int, *, output_size: Optional[int] = None, r_min: float = 0.9,
        r_max: float = 0.999, max_phase: float = 2 * math.pi,
        dtype: Optional[jnp.dtype] = None, param_dtype=jnp.float32) -> _types.Cell:
  r"""The Linear Recurrent Unit (Orvieto et al. 2023): a complex diagonal linear recurrence
  with real inputs and outputs.

  .. math::
      \lambda = \exp(-e^{\nu} + i e^{\theta}), \qquad
      h_t = \lambda \odot h_{t-1} + e^{\gamma} \odot (x_t B), \qquad
      y_t = \mathrm{Re}(h_t C) + x_t D

  with :math:`B = B_{re} + i B_{im}` and :math:`C = C_{re} + i C_{im}`. The exponential
  parameterisation keeps :math:`|\lambda| = e^{-e^\nu} < 1` (stable) for any parameters.
  Ring initialisation: :math:`|\lambda|` uniform on the ring `[r_min, r_max]` in area (as the
  paper draws it), the phase uniform in `[0, max_phase]`, and the normalisation
  :math:`e^{\gamma} = \sqrt{1 - |\lambda|^2}` at initialisation (trainable afterwards), which
  keeps the state's scale independent of how close :math:`|\lambda|` is to one.

  Parameters (a dict): `w_x (D, 2N)` = `[B_re | B_im]`, `nu_log (N,)`, `theta_log (N,)`,
  `gamma_log (N,)`, `c_re (N, O)`, `c_im (N, O)`, `d (D, O)`, where `N = hidden_size` and
  `O = output_size`. Init: `B ~ N(0, 1 / (2D))` (real and imaginary parts), `C ~ N(0, 1 / N)`,
  `D ~ N(0, 1 / D)` (the paper's `D` is a vector for `D = O`; here a matrix, scaled like a
  dense layer). Carry: complex `h (..., N)` (complex64 for float32 and bfloat16 inputs,
  complex128 for float64); outputs `(..., O)` are real, in the compute dtype.
  `project(p, xs) = [xs @ w_x, xs @ d]`.

  Args:
    hidden_size: N, the number of complex state units.
    output_size: O; default N.
    r_min, r_max: the ring's radii, `0 < r_min <= r_max < 1` (a `ValueError` otherwise).
    max_phase: the largest initial phase, in `(0, 2 pi]`.
    dtype: the compute dtype of the real parts; `None` computes in the inputs' dtype.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `jr.Cell` with `cell.linear` set.

  References:
    Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting Recurrent Neural
    Networks for Long Sequences", ICML 2023.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.lru(16, output_size=4)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, ys = jr.scan(cell, params, jnp.ones((2, 5, 3)))
  >>> carry.dtype, ys.shape, ys.dtype
  (dtype('complex64'), (2, 5, 4), dtype('float32'))
  """
  hidden = _types.check_hidden_size(hidden_size)
  out = hidden if output_size is None else _types.check_hidden_size(output_size, "output_size")
  for what, r in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
      raise TypeError(f"lru: {what} must be a finite float, got {r!r}")
  if not 0.0 < r_min < 1.0 or not 0.0 < r_max < 1.0:
    raise ValueError(f"lru: the ring's radii must lie in (0, 1) (|lambda| = 1 is not stable, 0 "
                     f"has no logarithm); got r_min={r_min}, r_max={r_max}")
  if r_min > r_max:
    raise ValueError(f"lru: r_min must not exceed r_max, got r_min={r_min}, r_max={r_max}")
  if not 0.0 < max_phase <= 2 * math.pi:
    raise ValueError(f"lru: max_phase must lie in (0, 2 pi], got {max_phase}")

  def init_params(key, input_size):
    input_size = _types.check_hidden_size(input_size, "input_size")
    k_u1, k_u2, k_b, k_c, k_d = jax.random.split(key, 5)
    u1 = jax.random.uniform(k_u1, (hidden,), jnp.float32)
    u2 = jax.random.uniform(k_u2, (hidden,), jnp.float32)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = jnp.log(max_phase * u2)
    gamma_log = jnp.log(jnp.sqrt(-jnp.expm1(-2.0 * jnp.exp(nu_log))))  # sqrt(1 - |lambda|^2)
    c = jax.random.normal(k_c, (2, hidden, out), jnp.float32) / math.sqrt(hidden)
    params = {
        "w_x": jax.random.normal(k_b, (input_size, 2 * hidden), jnp.float32)
               / math.sqrt(2 * input_size),
        "nu_log": nu_log, "theta_log": theta_log, "gamma_log": gamma_log,
        "c_re": c[0], "c_im": c[1],
        "d": jax.random.normal(k_d, (input_size, out), jnp.float32) / math.sqrt(input_size),
    }
    return _common.cast_tree(params, param_dtype)

  def project_one(p, x):
    cd = _common.compute_dtype(dtype, x)
    x = x.astype(cd)
    return jnp.concatenate([x @ p["w_x"].astype(cd), x @ p["d"].astype(cd)])

  def decay(p, cd):
    """lambda, complex, from the real parameters in the compute dtype `cd`."""
    wide = _wide(cd)  # there is no complex bfloat16
    modulus = jnp.exp(-jnp.exp(p["nu_log"].astype(wide)))
    phase = jnp.exp(p["theta_log"].astype(wide))
    return jax.lax.complex(modulus * jnp.cos(phase), modulus * jnp.sin(phase))

  def drive(p, z):
    """`e^gamma (x B)` (complex) and `x D` (real) from the projected input."""
    wide = _wide(z.dtype)
    bx_re, bx_im, dx = jnp.split(z, [hidden, 2 * hidden])
    gamma = jnp.exp(p["gamma_log"].astype(wide))
    return jax.lax.complex(gamma * bx_re.astype(wide), gamma * bx_im.astype(wide)), dx

  def readout(p, h, dx):
    wide = h.real.dtype
    y = h.real @ p["c_re"].astype(wide) - h.imag @ p["c_im"].astype(wide)
    return (y + dx.astype(wide)).astype(dx.dtype)

  def recur_one(p, h, z):
    lam = decay(p, z.dtype)
    bx, dx = drive(p, z)
    h = lam * h + bx
    return h, readout(p, h, dx)

  def coeff_one(p, x):
    bx, _ = drive(p, project_one(p, x))
    return decay(p, _common.compute_dtype(dtype, x)), bx

  def output_one(p, h, x):
    return readout(p, h, project_one(p, x)[2 * hidden:])

  def initial_carry(batch_shape=(), dtype_in=None):
    real = dtype if dtype is not None else (jnp.float32 if dtype_in is None else dtype_in)
    if not jnp.issubdtype(jnp.dtype(real), jnp.inexact):
      raise TypeError(f"initial_carry: dtype must be floating, got {jnp.dtype(real)}")
    if jnp.issubdtype(jnp.dtype(real), jnp.complexfloating):
      real = jnp.finfo(real).dtype
    return jnp.zeros(tuple(batch_shape) + (hidden,), _complex_dtype(real))

  cell = _common.build_cell(f"lru({hidden}, output_size={out})", init_params, initial_carry,
                            project_one, recur_one, z_size=2 * hidden + out, family="lru")
  return _with_linear(cell, init_params, coeff_one, output_one)
