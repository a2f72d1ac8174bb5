"""`jr.parallel_scan` equals `jr.scan` on every linear-recurrence cell: values, final carries and
gradients, with lengths, resets, reverse, a given initial carry and odd T, for each strategy;
padding never reaches a value or gradient; wrong cells and arguments are refused."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
import jaxrnn.testing
from jaxrnn.drivers import _parallel

D, H, T = 3, 4, 13  # T odd, and not a multiple of the chunk length below

LINEAR_CELLS = {
    "min_gru": jr.min_gru(H),
    "min_gru_log_space": jr.min_gru(H, log_space=True),
    "min_lstm": jr.min_lstm(H),
    "min_lstm_log_space": jr.min_lstm(H, log_space=True),
    "linear_indrnn": jr.linear_indrnn(H),
    "lru": jr.lru(H, output_size=3, r_min=0.5),
}
STRATEGIES = ("associative", "chunked", "sequential")


def _resets():
  r = np.zeros((3, T), bool)
  r[0, 4] = r[1, 0] = r[1, 6] = r[2, 2] = r[2, 9] = True  # r[2, 9] lies in sequence 2's padding
  return jnp.asarray(r)


def _setup(cell, dtype, seed=0):
  params = cell.init(jax.random.key(seed), D)
  k1, k2, k3 = jax.random.split(jax.random.key(seed + 1), 3)
  params = jax.tree_util.tree_map(  # perturbed, so that zero biases matter
      lambda a: (a + 0.1 * jax.random.normal(k1, a.shape, a.dtype)).astype(dtype), params)
  xs = jax.random.normal(k2, (3, T, D), dtype)
  carry = cell.initial_carry((3,), dtype)
  carry = carry + (0.5 * jax.random.normal(k3, carry.shape, carry.dtype))
  return params, xs, carry


# Every cell through the associative scan; the chunked form and the loop over precomputed
# coefficients, which share its coefficients and boundary handling, for a real, a log-space
# and a complex cell.
CASES = [(name, "associative") for name in LINEAR_CELLS] + [
    ("min_gru", "chunked"), ("min_lstm_log_space", "chunked"), ("lru", "chunked"),
    ("min_gru", "sequential"), ("lru", "sequential")]


@pytest.mark.parametrize("name,strategy", CASES)
def test_equals_scan_float64(name, strategy):
  """Values, final carry and reverse-mode gradients (params, inputs, initial carry) in float64,
  with lengths (one of them 0), resets (one in the padding), a given carry, forward and
  reverse. The two agree up to reassociation, which in float64 over 13 steps stays near 1e-15:
  the battery's float64 tolerance (1e-10) fails any wrong coefficient or boundary."""
  cell = LINEAR_CELLS[name]
  params, xs, carry = _setup(cell, jnp.float64)
  lengths = jnp.asarray([T, 7, 0], jnp.int32)
  for reverse in (False, True):
    kw = dict(lengths=lengths, resets=_resets(), reverse=reverse)
    par = lambda p, x, c, kw=kw: jr.parallel_scan(cell, p, x, carry=c, strategy=strategy,
                                                   chunk=4, **kw)
    seq = lambda p, x, c, kw=kw: jr.scan(cell, p, x, carry=c, implementation="reference", **kw)
    jaxrnn.testing.assert_same_function(par, seq, (params, xs, carry), modes=("rev",))


@pytest.mark.parametrize("name", ["min_gru", "lru"])
def test_forward_mode_and_plain_call(name):
  """Forward-mode derivatives too, with the default strategy and no options."""
  cell = LINEAR_CELLS[name]
  params, xs, carry = _setup(cell, jnp.float64, seed=3)
  jaxrnn.testing.assert_same_function(
      lambda p, x, c: jr.parallel_scan(cell, p, x, carry=c),
      lambda p, x, c: jr.scan(cell, p, x, carry=c), (params, xs, carry))


@pytest.mark.parametrize("name", ["min_gru", "min_lstm_log_space", "lru"])
def test_equals_scan_float32_long(name):
  """float32 at T = 300: the associative scan sums the terms of each state in a tree of depth
  log2(T) ~ 9 instead of one after another, so each state differs by rounding of order
  (number of terms) * eps * max|term|; the coefficients |a| < 1 make the sums geometric and
  bounded, a few dozen terms matter, and with |h| = O(1) and eps = 1.2e-7 the differences stay
  near 1e-6. 2e-5 leaves that an order of magnitude of headroom; a wrong step is off by 1e-2+."""
  cell = LINEAR_CELLS[name]
  params, _, carry = _setup(cell, jnp.float32)
  xs = jax.random.normal(jax.random.key(7), (3, 300, D), jnp.float32)
  lengths = jnp.asarray([300, 151, 0], jnp.int32)
  want = jax.jit(functools.partial(jr.scan, cell, lengths=lengths))(params, xs, carry=carry)
  for strategy in ("associative", "chunked"):
    got = jax.jit(functools.partial(jr.parallel_scan, cell, lengths=lengths, strategy=strategy))(
        params, xs, carry=carry)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      assert g.dtype == w.dtype
      np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["min_lstm_log_space", "lru"])
def test_garbage_padding_reaches_nothing(name):
  cell = LINEAR_CELLS[name]
  params, xs, carry = _setup(cell, jnp.float64, seed=5)
  lengths = jnp.asarray([T, 4, 0], jnp.int32)
  valid = (jnp.arange(T, dtype=jnp.int32)[None, :] < lengths[:, None])[..., None]

  def loss(p, x, c, reverse):
    carry_out, ys = jr.parallel_scan(cell, p, x, carry=c, lengths=lengths, reverse=reverse,
                                     strategy="associative")
    return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.abs(carry_out) ** 2)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  for reverse in (False, True):
    clean = grad(params, jnp.where(valid, xs, 0.0), carry, reverse)
    dirty = grad(params, jnp.where(valid, xs, jnp.nan), carry, reverse)
    for a, b in zip(jax.tree_util.tree_leaves(dirty), jax.tree_util.tree_leaves(clean)):
      np.testing.assert_array_equal(a, b)


def test_log_space_long_sequence_float32():
  """The log-space form over T = 4096 in float32: states stay finite and equal the loop's."""
  cell = jr.min_gru(8, log_space=True)
  params = cell.init(jax.random.key(0), D)
  xs = jax.random.normal(jax.random.key(1), (2, 4096, D), jnp.float32)
  want = jax.jit(functools.partial(jr.scan, cell))(params, xs)[1]
  got = jax.jit(functools.partial(jr.parallel_scan, cell, strategy="associative"))(params, xs)[1]
  assert bool(jnp.all(jnp.isfinite(got)))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_vmap_jit_time_major_and_short_sequences():
  cell = LINEAR_CELLS["min_gru"]
  params, xs, carry = _setup(cell, jnp.float64)
  want = jr.scan(cell, params, xs, carry=carry)
  got = jax.jit(jax.vmap(lambda x, c: jr.parallel_scan(cell, params, x, carry=c)))(xs, carry)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-12)
  got = jr.parallel_scan(cell, params, jnp.moveaxis(xs, 1, 0), carry=carry, time_major=True)
  np.testing.assert_allclose(got[1], jnp.moveaxis(want[1], 1, 0), rtol=1e-12, atol=1e-12)
  for steps in (0, 1):
    got = jr.parallel_scan(cell, params, xs[:, :steps], carry=carry, strategy="associative")
    want = jr.scan(cell, params, xs[:, :steps], carry=carry)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)
    assert got[1].shape == want[1].shape


def test_linear_scan_dense_matches_loop():
  """The solver `jr.newton_scan` uses, with a matrix a step, against a NumPy loop."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(11, 2, 3, 3)) * 0.5
  b = rng.normal(size=(11, 2, 3))
  h0 = rng.normal(size=(2, 3))
  r = np.zeros((11, 2), bool)
  r[5, 1] = True
  want, h = [], h0
  for t in range(11):
    h = np.where(r[t][:, None], b[t], np.einsum("bij,bj->bi", a[t], h) + b[t])
    want.append(h)
  for strategy in STRATEGIES:
    got = _parallel.linear_scan(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), jnp.asarray(r),
                                strategy=strategy, chunk=4)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-12, atol=1e-12)


def test_nonlinear_cell_is_refused():
  cell = jr.lstm(4)
  params = cell.init(jax.random.key(0), D)
  with pytest.raises(TypeError, match=r"lstm\(4\).*jr\.newton_scan"):
    jr.parallel_scan(cell, params, jnp.ones((2, 5, D)))


def test_replaced_step_is_refused():
  cell = jr.min_gru(4)
  params = cell.init(jax.random.key(0), D)
  other = cell._replace(step=lambda p, c, x: cell.step(p, c, 2 * x))
  with pytest.raises(TypeError, match="step"):
    jr.parallel_scan(other, params, jnp.ones((2, 5, D)))


def test_bad_arguments():
  cell = jr.min_gru(4)
  params = cell.init(jax.random.key(0), D)
  xs = jnp.ones((2, 5, D))
  with pytest.raises(ValueError, match="strategy"):
    jr.parallel_scan(cell, params, xs, strategy="magic")
  with pytest.raises(ValueError, match="chunk"):
    jr.parallel_scan(cell, params, xs, strategy="chunked", chunk=0)
  with pytest.raises(ValueError, match="lengths"):
    jr.parallel_scan(cell, params, xs, lengths=jnp.ones((3,), jnp.int32))
  with pytest.raises(ValueError, match="input size|expect"):
    jr.parallel_scan(cell, params, jnp.ones((2, 5, D + 1)))
  with pytest.raises(TypeError, match="reverse"):
    jr.parallel_scan(cell, params, xs, reverse="yes")
