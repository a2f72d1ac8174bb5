"""`jr.newton_scan`: any differentiable cell evaluated over all steps at once by Newton's method
on the whole sequence (DEER, quasi-DEER, and the damped, Kalman-smoother form of ELK), with the
sequential scan as the fallback and the implicit-function theorem for gradients."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.drivers import _parallel, _scan

PyTree = Any

METHODS = ("deer", "quasi_deer", "elk")

# The default tolerance on the residual max_t |h_t - f(h_{t-1}, x_t)|, by dtype: a few hundred
# ulps of an O(1) state in float64 (Newton converges quadratically near the solution, so the
# last iteration typically lands far below it) and what a float32 step's own rounding allows.
DEFAULT_TOL = {"float64": 1e-8, "float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}

# Newton iterations at most, by default (and never more than T: DEER and quasi-DEER are exact
# after T iterations in exact arithmetic, as each fixes at least one more step).
DEFAULT_MAX_ITERS = 100


class NewtonInfo(NamedTuple):
  """What `jr.newton_scan(..., return_info=True)` reports about its solve.

  Attributes:
    residual: `max_t |h_t - f(h_{t-1}, x_t)|` over all steps, units and sequences at the last
      Newton iterate (before any fallback), in the state's dtype.
    iterations: the number of Newton iterations run (int32).
    fell_back: whether the solve did not converge within `max_iters` (or went non-finite) and
      the result is the sequential scan's (bool).
  """

  residual: jax.Array
  iterations: jax.Array
  fell_back: jax.Array


def _solve_strategy() -> str:
  # On XLA:CPU a loop over the (precomputed) linear recurrence beats the associative scan's
  # log2(T) passes over memory (benchmarks/parallel_scan.py); accelerators want the latter.
  return "sequential" if jax.default_backend() == "cpu" else "associative"


def _kalman_smoother(a, c, h0, obs, damping, valid):
  """The damped (Levenberg-Marquardt) Newton step of ELK with diagonal Jacobians:

      argmin_h  sum_t |h_t - a_t h_{t-1} - c_t|^2 + damping * |h_t - obs_t|^2,   h_0 = h0,

  the posterior mean of a linear-Gaussian state-space model (dynamics noise 1, observations
  `obs` with noise 1 / damping), by a Kalman filter and a Rauch-Tung-Striebel smoother,
  elementwise. Steps past a sequence's length (`valid` False) carry the state unchanged and
  observe nothing.
  """
  var_obs = 1.0 / damping

  def filt(carry, inp):
    m, p = carry
    a_t, c_t, y_t, v_t = inp
    m_pred = a_t * m + c_t
    p_pred = a_t * a_t * p + jnp.where(v_t, 1.0, 0.0).astype(p.dtype)
    gain = jnp.where(v_t, p_pred / (p_pred + var_obs), 0.0).astype(p.dtype)
    m_new = m_pred + gain * (y_t - m_pred)
    p_new = (1 - gain) * p_pred
    return (m_new, p_new), (m_new, p_new, m_pred, p_pred)

  v = _types.expand_mask(valid, a)
  v = jnp.broadcast_to(v, a.shape)
  (_, _), (m, p, m_pred, p_pred) = jax.lax.scan(filt, (h0, jnp.zeros_like(h0)),
                                                (a, c, obs, v))

  def smooth(m_next, inp):
    m_t, p_t, a_next, m_pred_next, p_pred_next = inp
    safe = jnp.where(p_pred_next > 0, p_pred_next, 1.0)
    g = jnp.where(p_pred_next > 0, p_t * a_next / safe, 0.0)
    m_s = m_t + g * (m_next - m_pred_next)
    return m_s, m_s

  tail = (m[:-1], p[:-1], a[1:], m_pred[1:], p_pred[1:])
  _, ms = jax.lax.scan(smooth, m[-1], tail, reverse=True)
  return jnp.concatenate([ms, m[-1:]], axis=0)


def newton_scan(cell: _types.Cell, params: PyTree, xs, *, carry: PyTree = None, lengths=None,
                method: str = "deer", tol: Optional[float] = None,
                max_iters: Optional[int] = None, return_info: bool = False,
                damping: float = 1.0, time_major: bool = False):
  r"""Runs any cell over all time steps at once by Newton's method on the whole sequence.

  The states :math:`h_{1..T}` solve :math:`h_t = f(h_{t-1}, x_t)` (`f` the cell's step).
  Linearising every step at the current guess :math:`h^{(k)}` gives a linear recurrence,

  .. math::
      h_t^{(k+1)} = J_t h_{t-1}^{(k+1)} + f(h_{t-1}^{(k)}, x_t) - J_t h_{t-1}^{(k)}, \qquad
      J_t = \partial f / \partial h \,(h_{t-1}^{(k)}, x_t),

  solved for all `t` at once with the associative scan of `jr.parallel_scan` (on XLA:CPU a
  loop over it, which is faster there). Methods:

  - "deer" (Lim et al. 2024): dense Jacobians, `(n, n)` a step for a state of `n` numbers;
    quadratic convergence near the solution.
  - "quasi_deer": only the Jacobians' diagonals (Gonzalez et al. 2024): O(n) memory and work a
    step, more iterations.
  - "elk": the damped (Levenberg-Marquardt) step of Gonzalez et al.'s ELK with diagonal
    Jacobians, computed by a Kalman smoother: the step minimises the linearised residual plus
    `damping` times its squared length; the damping is adapted by Levenberg-Marquardt's rule
    (relaxed after a step that lowers the residual, raised and the step undone otherwise), for
    cells where undamped steps overshoot. Its smoother runs as a loop over time.

  Every Newton iterate is checked: the iterations stop when the residual
  :math:`\max_t |h_t - f(h_{t-1}, x_t)|` is at most `tol`, or after `max_iters`. If the solve
  has not converged (or went non-finite), the sequential scan's answer is returned instead,
  chosen inside the jitted computation (`lax.cond`): the result is never a non-converged
  iterate. In exact arithmetic, DEER and quasi-DEER are exact after T iterations.

  Gradients (reverse mode) come from the implicit-function theorem, not from differentiating
  the iterations: a `jax.custom_vjp` whose backward pass is one linear solve, the adjoint
  recurrence :math:`\lambda_t = \bar h_t + J_{t+1}^\top \lambda_{t+1}` (Jacobian-transpose
  products at the solution, a loop over time), followed by one batched VJP of the step for the
  gradients of the parameters and inputs. Forward-mode differentiation is not supported.

  Args:
    cell: any `jr.Cell` whose step JAX can differentiate, with a real floating carry.
    params: the cell's parameters.
    xs: inputs `(..., T, D)`, or `(T, ..., D)` with `time_major=True`.
    carry: the initial carry, or `None` for `cell.initial_carry`.
    lengths: optional int `(...)`, as in `jr.scan` (padding never enters the arithmetic).
    method: "deer", "quasi_deer" or "elk".
    tol: the residual tolerance; default by the state's dtype (float64 1e-8, float32 1e-5,
      bfloat16 and float16 1e-2), which in float64 gives agreement with `jr.scan` to about 1e-6
      or better, gradients included. The residual bounds each step's defect; where the
      dynamics are near-marginal (state Jacobians of norm close to 1) the states can differ
      from the sequential scan's by much more (measured: an IndRNN with norm 0.99, float32,
      residual 9.1e-6, states off by 1.2e-3): lower `tol` where that matters.
    max_iters: the iteration cap (default `min(T, 100)`; 100 for "elk").
    return_info: also return a `NewtonInfo(residual, iterations, fell_back)`.
    damping: ELK's initial damping weight (> 0); larger is more cautious. Ignored by the other
      methods.
    time_major: whether `xs` and outputs have time first.

  Returns:
    `(carry, ys)` as `jr.scan` returns them, or `(carry, ys, info)` with `return_info=True`.

  References:
    Lim, Zhu, Selfridge, Kasim, "Parallelizing non-linear sequential models over the sequence
    length" (DEER), ICLR 2024. Gonzalez, Warrington, Smith, Linderman, "Towards Scalable and
    Stable Parallelization of Nonlinear RNNs" (quasi-DEER, ELK), NeurIPS 2024.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.gru(4)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> xs = jax.random.normal(jax.random.key(1), (2, 20, 3))
  >>> carry, ys, info = jr.newton_scan(cell, params, xs, return_info=True)
  >>> bool(jnp.allclose(ys, jr.scan(cell, params, xs)[1], atol=1e-4)), bool(info.fell_back)
  (True, False)
  """
  _scan._check_cell(cell)
  if method not in METHODS:
    raise ValueError(f"newton_scan: method must be one of {METHODS}, got {method!r}")
  return_info = _types.check_flag(return_info, "newton_scan: return_info")
  time_major = _types.check_flag(time_major, "newton_scan: time_major")
  if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                          or not tol > 0):
    raise ValueError(f"newton_scan: tol must be a positive float or None, got {tol!r}")
  if max_iters is not None and (isinstance(max_iters, bool) or
                                not isinstance(max_iters, (int, np.integer)) or max_iters < 1):
    raise ValueError(f"newton_scan: max_iters must be a positive int or None, got {max_iters!r}")
  if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
    raise ValueError(f"newton_scan: damping must be a positive float, got {damping!r}")

  if cell.input_rank != 1:
    raise ValueError(f"newton_scan: {cell.name} takes inputs with {cell.input_rank} feature "
                     "axes; newton_scan runs cells of vector inputs (..., T, D) only (use jr.scan)")
  xs_t, batch, _, carry = _scan._start(cell, xs, carry, time_major)
  steps = xs_t.shape[0]
  _scan._check_input_size(cell, params, carry, xs, xs_t, time_major)
  leaves, treedef = jax.tree_util.tree_flatten(carry)
  dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
  if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
    raise TypeError(f"newton_scan: cell {cell.name}: the carry's leaves must share one real "
                    f"floating dtype, got {sorted(d.name for d in dtypes)} (a complex linear "
                    "cell such as jr.lru runs exactly under jr.parallel_scan)")
  dtype = next(iter(dtypes))
  tol = float(DEFAULT_TOL.get(dtype.name, 1e-5) if tol is None else tol)
  if max_iters is not None:
    iters_cap = int(max_iters)
  else:  # ELK's damped steps are not exact after T iterations, so T is no cap for it
    iters_cap = DEFAULT_MAX_ITERS if method == "elk" else min(steps, DEFAULT_MAX_ITERS)

  if steps == 0:
    y_shape = jax.eval_shape(lambda c, x: cell.step(params, c, x)[1], carry,
                             jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))
    ys = jax.tree_util.tree_map(lambda s: jnp.zeros((0,) + s.shape, s.dtype), y_shape)
    ys = ys if time_major else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, -2), ys)
    info = NewtonInfo(jnp.zeros((), dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    return (carry, ys, info) if return_info else (carry, ys)

  if lengths is not None:
    lengths = _types.check_lengths(lengths, batch, steps, cell.name)
    valid = _types.valid_steps(lengths, steps, time_major=True)
    xs_t = _types.zero_padding(xs_t, valid)
  else:
    valid = jnp.ones((steps,) + batch, bool)

  # The state of one example as a flat vector of n numbers.
  n_batch = _types.prod(batch)
  core = [leaf.shape[len(batch):] for leaf in leaves]
  sizes = [_types.prod(s) for s in core]
  offsets = np.cumsum([0] + sizes)

  def flatten(c, lead):
    return jnp.concatenate([leaf.reshape(lead + (size,)) for leaf, size in
                            zip(jax.tree_util.tree_leaves(c), sizes)], axis=-1)

  def unflatten(z):
    lead = z.shape[:-1]
    return jax.tree_util.tree_unflatten(treedef, [
        z[..., offsets[i]:offsets[i + 1]].reshape(lead + core[i]) for i in range(len(core))])

  def f_one(p, z, x, v):
    """One example's step on the flat state; the identity past the sequence's length."""
    new = flatten(cell.step(p, unflatten(z), x)[0], ())
    return jnp.where(v, new, z)

  f_all = jax.vmap(jax.vmap(f_one, in_axes=(None, 0, 0, 0)), in_axes=(None, 0, 0, 0))
  xs_f = xs_t.reshape((steps, n_batch, xs_t.shape[-1]))
  valid_f = valid.reshape((steps, n_batch))
  h0_f = flatten(carry, (n_batch,))
  solve = _make_solver(f_one, f_all, method, tol, iters_cap, float(damping))
  z, residual, iterations, fell_back = solve(params, xs_f, h0_f, valid_f)

  z_prev = jnp.concatenate([h0_f[None], z[:-1]], axis=0)
  final = unflatten(z[-1].reshape(batch + (z.shape[-1],)))
  carries_in = unflatten(z_prev.reshape((steps,) + batch + (z.shape[-1],)))
  ys = cell.step(params, carries_in, xs_t)[1]
  ys = jax.tree_util.tree_map(
      lambda y: jnp.where(_types.expand_mask(valid, y), y, jnp.zeros((), y.dtype)), ys)
  if not time_major:
    ys = jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  if return_info:
    return final, ys, NewtonInfo(residual, iterations, fell_back)
  return final, ys


def _residual(z, fz):
  """`max |z - fz|`, and `inf` where any entry is NaN.

  A plain `jnp.max` does not do: XLA:CPU's vectorised max-reduction drops NaNs (measured with
  jax 0.10: a NaN among 1,000 ones reduces to 1.0, and an all-NaN slab to -inf), so a diverged
  Newton iterate would pass the convergence test and be returned as the answer.
  """
  d = jnp.abs(z - fz)
  return jnp.max(jnp.where(jnp.isnan(d), jnp.inf, d))


def _make_solver(f_one, f_all, method: str, tol: float, max_iters: int, damping: float):
  """`solve(params, xs (T, N, D), h0 (N, n), valid (T, N)) -> (z (T, N, n), residual,
  iterations, fell_back)`, differentiable in reverse mode by the implicit-function theorem."""
  dense = method == "deer"
  jac_one = jax.jacfwd(f_one, argnums=1)
  jac_all = jax.vmap(jax.vmap(jac_one, in_axes=(None, 0, 0, 0)), in_axes=(None, 0, 0, 0))
  strategy = _solve_strategy()

  def shift(z, h0):
    return jnp.concatenate([h0[None], z[:-1]], axis=0)

  def evaluate(params, xs, h0, valid, z):
    z_prev = shift(z, h0)
    fz = f_all(params, z_prev, xs, valid)
    jac = jac_all(params, z_prev, xs, valid)
    if not dense:
      jac = jnp.diagonal(jac, axis1=-2, axis2=-1)
    return z_prev, fz, jac, _residual(z, fz)

  def newton_step(params, xs, h0, valid, z, z_prev, fz, jac, lam):
    c = fz - _parallel._mul(jac, z_prev, dense)
    if method == "elk":
      return _kalman_smoother(jac, c, h0, z, lam, valid)
    return _parallel.linear_scan(jac, c, h0, strategy=strategy)

  def sequential(params, xs, h0, valid):
    def body(h, inp):
      x, v = inp
      h = jax.vmap(f_one, in_axes=(None, 0, 0, 0))(params, h, x, v)
      return h, h
    return jax.lax.scan(body, h0, (xs, valid))[1]

  def forward(params, xs, h0, valid):
    z0 = jnp.broadcast_to(h0[None], xs.shape[:2] + h0.shape[-1:])
    lam0 = jnp.asarray(damping, z0.dtype)
    state0 = (z0,) + evaluate(params, xs, h0, valid, z0) + (jnp.zeros((), jnp.int32), lam0)

    def not_done(state):
      residual, k = state[4], state[5]
      return (k < max_iters) & (residual > tol) & jnp.isfinite(residual)

    def body(state):
      z, z_prev, fz, jac, residual, k, lam = state
      new = (newton_step(params, xs, h0, valid, z, z_prev, fz, jac, lam),)
      new = new + evaluate(params, xs, h0, valid, new[0])
      if method != "elk":
        return new + (k + 1, lam)
      # Levenberg-Marquardt's rule: a step that lowers the residual is kept and the damping
      # relaxed; one that does not is undone and the damping raised.
      merit = lambda z, fz: jnp.sum(jnp.square(z - fz))  # the objective ELK's step minimises
      better = merit(new[0], new[2]) < merit(z, fz)
      kept = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), new,
                                    (z, z_prev, fz, jac, residual))
      return kept + (k + 1, jnp.clip(jnp.where(better, lam / 4, lam * 4), 1e-12, 1e12))

    z, _, _, _, residual, k, _ = jax.lax.while_loop(not_done, body, state0)
    converged = jnp.isfinite(residual) & (residual <= tol)
    z = jax.lax.cond(converged, lambda: z, lambda: sequential(params, xs, h0, valid))
    return z, residual, k, ~converged

  @jax.custom_vjp
  def solve(params, xs, h0, valid):
    return forward(params, xs, h0, valid)

  def solve_fwd(params, xs, h0, valid):
    out = forward(params, xs, h0, valid)
    return out, (params, xs, h0, valid, out[0])

  def solve_bwd(res, cotangents):
    params, xs, h0, valid, z = res
    gz = cotangents[0]
    z_prev = shift(z, h0)
    step_vjp = jax.vmap(lambda p, h, x, v, g: jax.vjp(lambda h: f_one(p, h, x, v), h)[1](g)[0],
                        in_axes=(None, 0, 0, 0, 0))

    def adjoint(u, inp):
      # u = J_{t+1}^T lambda_{t+1}; lambda_t = gz_t + u; pass J_t^T lambda_t on.
      g_t, h_t, x_t, v_t = inp
      lam = g_t + u
      return step_vjp(params, h_t, x_t, v_t, lam), lam

    dh0, lam = jax.lax.scan(adjoint, jnp.zeros_like(h0), (gz, z_prev, xs, valid), reverse=True)
    _, vjp_px = jax.vjp(lambda p, x: f_all(p, z_prev, x, valid), params, xs)
    dparams, dxs = vjp_px(lam)
    return dparams, dxs, dh0, None

  solve.defvjp(solve_fwd, solve_bwd)
  return solve
