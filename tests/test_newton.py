"""`jr.newton_scan` equals `jr.scan` to its tolerance (values and gradients) for nonlinear cells,
on random and on trained-looking weights, with lengths and garbage in the padding; a solve that
does not converge falls back to the sequential scan inside the jitted call; the implicit
gradient passes `check_grads`; bad arguments are refused."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jax_test_util

import jaxrnn as jr

D, H, T = 3, 4, 24
# The default float64 tolerance is promised to give agreement with jr.scan to about 1e-6,
# gradients included; the errors measured here are 1e-9 or below.
AGREE = 1e-6


def _trained_looking(cell, params, key):
  """Weights like those after training rather than at initialisation: recurrent matrices with
  spectral radius above one (1.5x an orthogonal matrix's), biases of order one, so that gates
  saturate and the dynamics are far from linear."""
  out = dict(params)
  k1, k2 = jax.random.split(key)
  if "w_h" in out:
    out["w_h"] = 1.5 * out["w_h"]
  if "u" in out:
    out["u"] = 1.2 * out["u"]
  for name in ("b", "b_x", "b_h"):
    if name in out:
      out[name] = out[name] + jax.random.normal(k1, out[name].shape, out[name].dtype)
  out["w_x"] = out["w_x"] + 0.5 * jax.random.normal(k2, out["w_x"].shape, out["w_x"].dtype)
  return out


CELLS = {"gru": jr.gru(H), "lstm": jr.lstm(H), "simple_rnn": jr.simple_rnn(H),
         "indrnn": jr.indrnn(H, activation="tanh")}


def _setup(name, trained, seed=0):
  cell = CELLS[name]
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  cell.init(jax.random.key(seed), D))
  if trained:
    params = _trained_looking(cell, params, jax.random.key(seed + 1))
  xs = jax.random.normal(jax.random.key(seed + 2), (3, T, D), jnp.float64)
  return cell, params, xs


def _loss(run):
  def loss(p, x):
    carry, ys = run(p, x)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c ** 2) for c in jax.tree_util.tree_leaves(carry))
  return loss


@pytest.mark.parametrize("name,trained,method", [
    ("gru", False, "deer"), ("gru", False, "quasi_deer"), ("gru", False, "elk"),
    ("lstm", True, "deer"), ("lstm", True, "quasi_deer"), ("simple_rnn", True, "deer"),
    ("simple_rnn", True, "elk"), ("indrnn", False, "quasi_deer")])
def test_equals_scan_with_garbage_padding(name, trained, method):
  """Values, final carry and gradients (params and inputs) against jr.scan, with lengths and
  NaN in the padding, under jit."""
  cell, params, xs = _setup(name, trained)
  lengths = jnp.asarray([T, 9, 0], jnp.int32)
  valid = (jnp.arange(T, dtype=jnp.int32)[None, :] < lengths[:, None])[..., None]
  dirty = jnp.where(valid, xs, jnp.nan)

  def newton(p, x):
    return jr.newton_scan(cell, p, x, lengths=lengths, method=method, return_info=True)

  carry, ys, info = jax.jit(newton)(params, dirty)
  want = jr.scan(cell, params, jnp.where(valid, xs, 0.0), lengths=lengths)
  assert not bool(info.fell_back), info
  # DEER and quasi-DEER are exact after T iterations; ELK's damped steps have no such bound.
  assert float(info.residual) <= 1e-8 and 1 <= int(info.iterations) <= (
      100 if method == "elk" else T)
  for got, ref in zip(jax.tree_util.tree_leaves((carry, ys)), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=AGREE, atol=AGREE)
  grad = lambda run: jax.jit(jax.grad(_loss(run), argnums=(0, 1)))
  g_newton = grad(lambda p, x: newton(p, x)[:2])(params, dirty)
  g_scan = grad(lambda p, x: jr.scan(cell, p, x, lengths=lengths))(params, dirty)
  for got, ref in zip(jax.tree_util.tree_leaves(g_newton), jax.tree_util.tree_leaves(g_scan)):
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, ref, rtol=AGREE, atol=AGREE)


def test_float32_and_given_carry():
  """float32 stays float32; with the float32 default tolerance (1e-5 on the residual) the
  states agree with the loop to a few 1e-5 (a contracting GRU amplifies a residual by at most
  a small factor)."""
  cell = CELLS["gru"]
  params = cell.init(jax.random.key(0), D)
  xs = jax.random.normal(jax.random.key(1), (2, 40, D), jnp.float32)
  carry = 0.5 * jax.random.normal(jax.random.key(2), (2, H), jnp.float32)
  got = jax.jit(functools.partial(jr.newton_scan, cell, return_info=True))(params, xs,
                                                                          carry=carry)
  want = jr.scan(cell, params, xs, carry=carry)
  assert got[1].dtype == jnp.float32 and not bool(got[2].fell_back)
  np.testing.assert_allclose(got[1], want[1], rtol=5e-5, atol=5e-5)
  np.testing.assert_allclose(got[0], want[0], rtol=5e-5, atol=5e-5)


def _logistic_cell(r=3.9):
  """A user-written cell whose step is the chaotic logistic map, `h = r h (1 - h) + 0.01 x`:
  Newton's linearisations of a chaotic map overshoot, so the solve diverges."""

  def step(params, h, x):
    h = r * h * (1 - h) + 0.01 * (x @ params["w"])[..., None]
    return h, h

  return jr.Cell(init=lambda key, d: {"w": jnp.ones((d,))},
                 initial_carry=lambda batch_shape=(), dtype=None: jnp.full(
                     tuple(batch_shape) + (1,), 0.3, dtype or jnp.float32),
                 step=step, name="logistic_map")


@pytest.mark.parametrize("method", ["deer", "quasi_deer"])
def test_fallback_when_newton_diverges(method):
  cell = _logistic_cell()
  params = {"w": jnp.ones((D,), jnp.float64)}
  xs = jax.random.normal(jax.random.key(0), (2, 60, D), jnp.float64)
  run = jax.jit(lambda p, x: jr.newton_scan(cell, p, x, method=method, max_iters=20,
                                            return_info=True))
  carry, ys, info = run(params, xs)
  assert bool(info.fell_back) and int(info.iterations) <= 20
  want = jr.scan(cell, params, xs)
  np.testing.assert_allclose(ys, want[1], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(carry, want[0], rtol=1e-12, atol=1e-12)
  # The gradient (implicit, at the fallback's exact solution) is the loop's too. The map is
  # chaotic, so only a short prefix keeps the gradients of moderate size.
  short = xs[:, :8]
  g = jax.grad(_loss(lambda p, x: jr.newton_scan(cell, p, x, method=method, max_iters=1)))
  g_ref = jax.grad(_loss(lambda p, x: jr.scan(cell, p, x)))
  np.testing.assert_allclose(g(params, short)["w"], g_ref(params, short)["w"], rtol=1e-9)


def _nan_outside_cell():
  """`h = tanh(w h + x)`, plus `0 * log(h + 1.5)`: NaN wherever a state drops below -1.5. The
  sequential trajectory stays in (-1, 1), but Newton's first linearised steps (|w| > 1) overshoot
  there, so iterates hold NaNs in some entries among many finite ones."""

  def step(params, h, x):
    new = jnp.tanh(params["w"] * h + x) + 0.0 * jnp.log(h + 1.5)
    return new, new

  return jr.Cell(init=lambda key, d: {"w": jnp.asarray(2.0, jnp.float32)},
                 initial_carry=lambda batch_shape=(), dtype=None: jnp.zeros(
                     tuple(batch_shape) + (4,), dtype or jnp.float32),
                 step=step, name="nan_outside")


@pytest.mark.parametrize("method", ["deer", "quasi_deer", "elk"])
def test_iterates_with_some_nans_never_pass_as_converged(method):
  """A NaN among finite entries must make the residual non-finite. XLA:CPU's vectorised
  max-reduction drops NaNs (a NaN among many ones reduces to 1.0, all NaNs to -inf), and a
  residual taken with a plain max once returned such an iterate as converged: NaN outputs
  with `fell_back=False`."""
  cell = _nan_outside_cell()
  params = cell.init(None, 4)
  xs = 2 * jax.random.normal(jax.random.key(0), (4, 512, 4), jnp.float32)
  carry, ys, info = jax.jit(lambda p, x: jr.newton_scan(cell, p, x, method=method,
                                                        return_info=True))(params, xs)
  want_carry, want = jr.scan(cell, params, xs)
  assert bool(jnp.all(jnp.isfinite(ys))) and bool(jnp.all(jnp.isfinite(want)))
  if bool(info.fell_back):
    np.testing.assert_array_equal(ys, want)
    np.testing.assert_array_equal(carry, want_carry)
  else:  # converged: then to the tolerance
    assert float(info.residual) <= 1e-5
    np.testing.assert_allclose(ys, want, atol=1e-4)
  if method != "elk":  # undamped steps overshoot into the NaN region here
    assert bool(info.fell_back) and not np.isfinite(float(info.residual))


def test_check_grads_through_implicit_gradient():
  cell, params, xs = _setup("gru", trained=False)
  lengths = jnp.asarray([T, 5, 0], jnp.int32)
  carry = 0.3 * jnp.ones((3, H), jnp.float64)
  f = jax.jit(lambda p, x, c: jr.newton_scan(cell, p, x, carry=c, lengths=lengths, tol=1e-12))
  jax_test_util.check_grads(f, (params, xs, carry), order=1,
                            modes=("rev",), eps=1e-6)


def test_vmap():
  cell, params, xs = _setup("lstm", trained=False)
  got = jax.jit(jax.vmap(lambda x: jr.newton_scan(cell, params, x)))(xs)
  want = jr.scan(cell, params, xs)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=AGREE, atol=AGREE)


def test_bad_arguments():
  cell, params, xs = _setup("gru", trained=False)
  with pytest.raises(ValueError, match="method"):
    jr.newton_scan(cell, params, xs, method="newton")
  with pytest.raises(ValueError, match="tol"):
    jr.newton_scan(cell, params, xs, tol=0.0)
  with pytest.raises(ValueError, match="max_iters"):
    jr.newton_scan(cell, params, xs, max_iters=0)
  with pytest.raises(ValueError, match="damping"):
    jr.newton_scan(cell, params, xs, method="elk", damping=-1.0)
  with pytest.raises(ValueError, match="lengths"):
    jr.newton_scan(cell, params, xs, lengths=jnp.ones((2,), jnp.int32))
  with pytest.raises(TypeError, match="cell"):
    jr.newton_scan(object(), params, xs)
  lru = jr.lru(4)
  with pytest.raises(TypeError, match="parallel_scan"):
    jr.newton_scan(lru, lru.init(jax.random.key(0), D), xs)
