"""Cell wrappers: variational (recurrent) dropout and zoneout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn as jr
from jaxrnn.cells import ZoneoutState, variational_dropout, zoneout

# float64: the wrapped and reference computations do the same arithmetic in a possibly
# different order; 1e-12 is far above that rounding and far below any real difference.
TOL64 = dict(rtol=1e-12, atol=1e-12)


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)


def _xs(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float64)


# ---------------------------------------------------------------------------------------------
# Variational dropout


@pytest.mark.parametrize("make", [jr.lstm, jr.gru, jr.simple_rnn, jr.indrnn])
def test_variational_without_key_is_the_inner_cell(make):
  inner = make(4)
  cell = variational_dropout(inner, 0.5, input_rate=0.3)
  params = _f64(cell.init(jax.random.key(0), 3))
  xs = _xs(1, (2, 5, 3))
  _, ys = jax.jit(lambda p, x: jr.scan(cell, p, x))(params, xs)
  # The wrapper has no project/recur split, so it runs the inner cell's `step` every step; the
  # inner cell's own scan may hoist its input projection (one matmul over all steps, summed in
  # another order). Against the inner cell run by `step` too, the result is bit for bit equal.
  by_step = inner._replace(project=None, recur=None)
  np.testing.assert_array_equal(ys, jr.scan(by_step, params["cell"], xs)[1])
  np.testing.assert_allclose(ys, jr.scan(inner, params["cell"], xs)[1], **TOL64)
  # A key with both rates zero is the inner cell too.
  plain = variational_dropout(inner, 0.0)
  np.testing.assert_allclose(
      jr.scan(plain, {**params, "key": jax.random.key(2)}, xs)[1], ys, **TOL64)


def _probe(rate, input_rate):
  """A relu simple RNN whose outputs expose the masks: `w_x = I`, `w_h = I`."""
  cell = variational_dropout(jr.simple_rnn(6, activation="relu"), rate, input_rate=input_rate)
  eye = jnp.eye(6, dtype=jnp.float64)
  return cell, {"cell": {"w_x": eye, "w_h": eye, "b": jnp.zeros((6,), jnp.float64)}}


def test_variational_input_mask_constant_across_time():
  cell, params = _probe(0.0, 0.5)
  xs = jnp.ones((8, 7, 6), jnp.float64)        # with w_h = I, h_t = sum of masked inputs
  _, ys = jax.jit(lambda p, x: jr.scan(cell, p, x))({**params, "key": jax.random.key(3)}, xs)
  increments = jnp.diff(ys, axis=1)
  np.testing.assert_allclose(increments, jnp.broadcast_to(ys[:, :1], increments.shape), **TOL64)
  assert set(np.unique(np.asarray(ys[:, 0])).tolist()) == {0.0, 2.0}
  assert not (ys[0, 0][None] == ys[1:, 0]).all()      # each sequence has its own mask


def test_variational_recurrent_mask_constant_across_time():
  cell, params = _probe(0.5, 0.0)
  xs = jnp.ones((8, 7, 6), jnp.float64)
  # h_t = relu(1 + m * h_{t-1}) with m in {0, 2}: a dropped unit is 1 at every step, a kept one
  # follows 1, 3, 7, 15, ... A mask redrawn over time would mix the two patterns.
  _, ys = jr.scan(cell, {**params, "key": jax.random.key(4)}, xs)
  kept = np.cumsum(2.0 ** np.arange(7))[None, :, None] * np.ones((8, 1, 6))
  dropped = np.ones((8, 7, 6))
  is_kept = np.asarray(ys[:, 1:2] == 3.0)
  np.testing.assert_allclose(ys, np.where(is_kept, kept, dropped), **TOL64)
  assert 0 < is_kept.sum() < is_kept.size
  # Same key, same masks; a reset does not redraw them (the key is in the params).
  resets = jnp.zeros((8, 7), bool).at[:, 4].set(True)
  _, ys_r = jr.scan(cell, {**params, "key": jax.random.key(4)}, xs, resets=resets)
  np.testing.assert_allclose(ys_r[:, 4:], ys[:, :3], **TOL64)


def test_variational_gradients():
  cell = variational_dropout(jr.gru(3), 0.4, input_rate=0.2)
  params = _f64(cell.init(jax.random.key(0), 2))
  key = jax.random.key(5)
  f = lambda p, x: jr.scan(cell, {"cell": p, "key": key}, x, lengths=jnp.array([4, 2]))[1]
  check_grads(f, (params["cell"], _xs(6, (2, 4, 2))), order=2, modes=["fwd", "rev"])


def test_variational_bad_input():
  with pytest.raises(ValueError, match="rate"):
    variational_dropout(jr.lstm(3), 1.0)
  with pytest.raises(ValueError, match="input_rate"):
    variational_dropout(jr.lstm(3), 0.1, input_rate=-0.5)
  with pytest.raises(TypeError, match="jr.Cell"):
    variational_dropout(jr.rnn(jr.lstm(3)), 0.1)
  nested = variational_dropout(zoneout(jr.gru(3), 0.1), 0.2)
  params = nested.init(jax.random.key(0), 2)
  with pytest.raises(TypeError, match="neither 'w_h' nor 'u'"):
    jr.scan(nested, {**params, "key": jax.random.key(1)}, jnp.ones((1, 2, 2), jnp.float32))
  with pytest.raises(ValueError, match="params must be"):
    jr.scan(nested, {**params, "masks": 1}, jnp.ones((1, 2, 2), jnp.float32))


# ---------------------------------------------------------------------------------------------
# Zoneout


def test_zoneout_eval_is_the_expected_blend():
  inner = jr.lstm(3)
  cell = zoneout(inner, jr.LSTMState(h=0.2, c=0.6))
  params = _f64(cell.init(jax.random.key(0), 2))
  xs = _xs(7, (2, 4, 2))
  carry, ys = jax.jit(lambda p, x: jr.scan(cell, p, x))(params, xs)
  c = inner.initial_carry((2,), jnp.float64)
  for t in range(4):
    new, _ = inner.step(params["cell"], c, xs[:, t])
    c = jr.LSTMState(0.2 * c.h + 0.8 * new.h, 0.6 * c.c + 0.4 * new.c)
    np.testing.assert_allclose(ys[:, t], c.h, **TOL64)
  np.testing.assert_array_equal(carry.step, [4, 4])


def test_zoneout_train_keeps_or_updates_each_unit():
  inner, rate = jr.gru(16), 0.3
  cell = zoneout(inner, rate)
  params = _f64(cell.init(jax.random.key(0), 2))
  xs = _xs(8, (32, 6, 2))
  run = jax.jit(lambda p, x, k: jr.scan(cell, {**p, "key": k}, x))
  carry, ys = run(params, xs, jax.random.key(9))
  h, kept_masks = jnp.zeros((32, 16), jnp.float64), []
  for t in range(6):
    new, _ = inner.step(params["cell"], h, xs[:, t])
    kept = np.asarray(ys[:, t] == h)
    np.testing.assert_allclose(ys[:, t], np.where(kept, h, new), **TOL64)
    kept_masks.append(kept)
    h = ys[:, t]
  kept_masks = np.stack(kept_masks)
  # 3072 Bernoulli(0.3) draws: sd of the fraction ~0.008; 5 sd is a safe bound.
  assert abs(kept_masks.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / kept_masks.size)
  assert not (kept_masks[0] == kept_masks[1:]).all()      # redrawn at every step
  np.testing.assert_array_equal(run(params, xs, jax.random.key(9))[1], ys)   # same key


def test_zoneout_with_lengths_counts_valid_steps():
  cell = zoneout(jr.simple_rnn(3), 0.5)
  params = cell.init(jax.random.key(0), 2)
  xs = jnp.ones((2, 5, 2), jnp.float32)
  carry, ys = jr.scan(cell, {**params, "key": jax.random.key(1)}, xs, lengths=jnp.array([5, 2]))
  assert isinstance(carry, ZoneoutState) and ys.dtype == jnp.float32
  np.testing.assert_array_equal(carry.step, [5, 2])
  np.testing.assert_array_equal(ys[1, 2:], 0.0)


def test_zoneout_gradients():
  cell = zoneout(jr.lstm(3), jr.LSTMState(h=0.1, c=0.5))
  params = _f64(cell.init(jax.random.key(0), 2))
  key = jax.random.key(2)
  f = lambda p, x: jr.scan(cell, {"cell": p, "key": key}, x)[1]
  check_grads(f, (params["cell"], _xs(3, (2, 4, 2))), order=2, modes=["fwd", "rev"])
  g = lambda p, x: jr.scan(cell, {"cell": p}, x)[1]
  check_grads(g, (params["cell"], _xs(3, (2, 4, 2))), order=2, modes=["fwd", "rev"])


def test_zoneout_bad_input():
  with pytest.raises(ValueError, match="rate"):
    zoneout(jr.lstm(3), 1.0)
  with pytest.raises(ValueError, match="rate"):
    zoneout(jr.lstm(3), jr.LSTMState(h=0.1, c=-0.1))
  cell = zoneout(jr.gru(3), jr.LSTMState(h=0.1, c=0.1))
  with pytest.raises(TypeError, match="needs an LSTMState carry"):
    jr.scan(cell, cell.init(jax.random.key(0), 2), jnp.ones((1, 2, 2), jnp.float32))


# --- the masked-state implementation against the per-example weight-scaling formula ---------

def _old_variational(cell, rate, input_rate):
  """The former implementation, kept as the oracle: the step runs per example with the rows of
  `w_h` (IndRNN: `u`) scaled by that example's mask."""
  from jaxrnn.cells._wrappers import _keep_mask

  def step(params, carry, x):
    inner, key = params["cell"], params.get("key")
    if key is None:
      return cell.step(inner, carry, x)
    batch = x.shape[:-1]
    kx, kh = jax.random.split(key)
    if input_rate > 0.0:
      x = x * _keep_mask(kx, input_rate, x.shape, x.dtype)
    field = "w_h" if "w_h" in inner else "u"
    w = inner[field]
    m_h = _keep_mask(kh, rate, batch + w.shape[:1], w.dtype)

    def one(c, x1, m1):
      scaled = w * (m1[:, None] if field == "w_h" else m1)
      return cell.step({**inner, field: scaled}, c, x1)

    return jax.vmap(one)(carry, x, m_h)

  return jr.Cell(init=lambda k, d: {"cell": cell.init(k, d)}, initial_carry=cell.initial_carry,
                 step=step, name="old", takes_key=True)


_MASKED_CELLS = {
    "lstm": lambda: jr.lstm(5),
    "lstm_proj_peephole": lambda: jr.lstm(5, proj_size=3, peephole=True),
    "gru": lambda: jr.gru(5),
    "gru_reset_before": lambda: jr.gru(5, reset_after=False),
    "layer_norm_gru": lambda: jr.layer_norm_gru(5),
    "indrnn": lambda: jr.indrnn(5),
}


@pytest.mark.parametrize("which", sorted(_MASKED_CELLS))
def test_variational_masked_state_equals_weight_scaling(which):
  inner = _MASKED_CELLS[which]()
  new, old = variational_dropout(inner, 0.4, input_rate=0.2), _old_variational(inner, 0.4, 0.2)
  params = _f64(new.init(jax.random.key(0), 4))
  xs = _xs(1, (3, 6, 4))
  lengths = jnp.array([6, 2, 4])
  key = jax.random.key(7)

  def loss(cell, p, implementation="auto"):
    carry, ys = jr.scan(cell, {**p, "key": key}, xs, lengths=lengths,
                        implementation=implementation)
    return jnp.sum(ys ** 2) + sum(jnp.sum(leaf ** 3) for leaf in jax.tree_util.tree_leaves(carry))

  want, want_g = jax.value_and_grad(lambda p: loss(old, p, "reference"))(params)
  for implementation in ("auto", "reference"):
    got, got_g = jax.value_and_grad(lambda p: loss(new, p, implementation))(params)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                           got_g, want_g)
  # train=False / no key: the inner cell, unchanged
  _, ys_eval = jr.scan(new, params, xs, lengths=lengths)
  _, ys_inner = jr.scan(inner, params["cell"], xs, lengths=lengths)
  np.testing.assert_allclose(ys_eval, ys_inner, **TOL64)


def test_variational_routes():
  from jaxrnn.cells._wrappers import _masking_route
  assert _masking_route(jr.lstm(3)) == "state"
  assert _masking_route(jr.gru(3)) == "split"
  assert _masking_route(jr.layer_norm_gru(3)) == "split"
  assert _masking_route(jr.indrnn(3)) == "state"
  custom = jr.lstm(3)._replace(step=lambda p, c, x: jr.lstm(3).step(p, c, x))
  assert _masking_route(custom) == "weights"
