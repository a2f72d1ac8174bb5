"""Layers: `jr.rnn`, `jr.stack`, `jr.bidirectional` against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _util
import jaxrnn as jr

D, T, B = 3, 6, 3
TOL64 = dict(rtol=1e-12, atol=1e-12)  # float64, same functions: summation order only


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)


def _xs(batch=(B,), key=0):
  return _util.normal(jax.random.key(key), batch + (T, D))


def test_stack_equals_layers_in_sequence():
  layers = [jr.rnn(jr.lstm(4)), jr.rnn(jr.gru(5)), jr.rnn(jr.simple_rnn(2))]
  net = jr.stack(*layers)
  params = _f64(net.init(jax.random.key(1), D))
  assert [p["w_x"].shape for p in params] == [(3, 16), (4, 15), (5, 2)]
  xs, lengths = _xs(), jnp.array([6, 4, 1], jnp.int32)
  resets = jnp.zeros((B, T), bool).at[0, 3].set(True)
  carry, ys = net.apply(params, xs, lengths=lengths, resets=resets)
  h = xs
  for i, (layer, p) in enumerate(zip(layers, params)):
    c, h = layer.apply(p, h, lengths=lengths, resets=resets)
    _util.assert_tree_close(carry[i], c, **TOL64, what=f"layer {i} carry")
  np.testing.assert_allclose(ys, h, **TOL64)
  # A given carry reaches its layer (None leaves the default).
  c1 = jax.tree_util.tree_map(lambda a: a + 0.3, carry[1])
  _, ys2 = net.apply(params, xs, carry=(None, c1, None))
  _, h1 = layers[1].apply(params[1], layers[0].apply(params[0], xs)[1], carry=c1)
  np.testing.assert_allclose(ys2, layers[2].apply(params[2], h1)[1], **TOL64)


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_bidirectional_equals_per_sequence_runs(name, time_major):
  fwd = jr.rnn(_util.make(name, 4), time_major=time_major)
  bwd = jr.rnn(_util.make(name, 3), time_major=time_major)
  layer = jr.bidirectional(fwd, bwd, time_major=time_major)
  params = _f64(layer.init(jax.random.key(2), D))
  xs, lengths = _xs(), [6, 4, 0]
  xs_in = jnp.moveaxis(xs, 1, 0) if time_major else xs
  (c_f, c_b), ys = layer.apply(params, xs_in, lengths=jnp.array(lengths, jnp.int32))
  if time_major:
    ys = jnp.moveaxis(ys, 0, 1)
  assert ys.shape == (B, T, 7)
  for b, n in enumerate(lengths):
    seq = xs[b, :n]
    seq_in = seq[:, None] if time_major else seq[None]  # a batch of one, unpadded
    take = (lambda a: a[:, 0]) if time_major else (lambda a: a[0])
    cf, yf = fwd.apply(params["forward"], seq_in)
    cb, yb = bwd.apply(params["backward"], seq_in[::-1] if time_major else seq_in[:, ::-1])
    yb = yb[::-1] if time_major else yb[:, ::-1]
    np.testing.assert_allclose(ys[b, :n], jnp.concatenate([take(yf), take(yb)], -1), **TOL64)
    np.testing.assert_array_equal(ys[b, n:], 0.0)
    if n:
      _util.assert_tree_close(jax.tree_util.tree_map(lambda a: a[b], c_f),
                              jax.tree_util.tree_map(lambda a: a[0], cf), **TOL64, what="fwd")
      _util.assert_tree_close(jax.tree_util.tree_map(lambda a: a[b], c_b),
                              jax.tree_util.tree_map(lambda a: a[0], cb), **TOL64, what="bwd")


def test_bidirectional_merges():
  fwd, bwd = jr.rnn(jr.gru(4)), jr.rnn(jr.gru(4))
  params = _f64(jr.bidirectional(fwd, bwd).init(jax.random.key(3), D))
  xs, lengths = _xs(), jnp.array([6, 2, 5], jnp.int32)
  _, cat = jr.bidirectional(fwd, bwd).apply(params, xs, lengths=lengths)
  _, summed = jr.bidirectional(fwd, bwd, merge="sum").apply(params, xs, lengths=lengths)
  np.testing.assert_allclose(summed, cat[..., :4] + cat[..., 4:], **TOL64)
  _, custom = jr.bidirectional(fwd, bwd, merge=lambda a, b: a * b).apply(
      params, xs, lengths=lengths)
  np.testing.assert_allclose(custom, cat[..., :4] * cat[..., 4:], **TOL64)


def test_flip_sequences_is_an_involution_keeping_padding():
  xs, lengths = _xs(), jnp.array([6, 4, 0], jnp.int32)
  flipped = jr.flip_sequences(xs, lengths)
  np.testing.assert_array_equal(flipped[1, :4], xs[1, :4][::-1])
  np.testing.assert_array_equal(flipped[1, 4:], xs[1, 4:])
  np.testing.assert_array_equal(flipped[2], xs[2])
  np.testing.assert_array_equal(jr.flip_sequences(flipped, lengths), xs)
  tm = jr.flip_sequences(jnp.moveaxis(xs, 1, 0), lengths, time_major=True)
  np.testing.assert_array_equal(jnp.moveaxis(tm, 0, 1), flipped)


def test_time_major_rnn_and_stack_equal_batch_major():
  cells = [jr.lstm(3), jr.gru(2)]
  bm = jr.stack(*[jr.rnn(c) for c in cells])
  tm = jr.stack(*[jr.rnn(c, time_major=True) for c in cells])
  params = _f64(bm.init(jax.random.key(4), D))
  xs, lengths = _xs(), jnp.array([6, 3, 1], jnp.int32)
  resets = jnp.zeros((B, T), bool).at[0, 2].set(True)
  c_bm, y_bm = bm.apply(params, xs, lengths=lengths, resets=resets)
  c_tm, y_tm = tm.apply(params, jnp.moveaxis(xs, 1, 0), lengths=lengths, resets=resets.T)
  np.testing.assert_allclose(jnp.moveaxis(y_tm, 0, 1), y_bm, **TOL64)
  _util.assert_tree_close(c_tm, c_bm, **TOL64, what="carry")


def test_rnn_layer_options_reach_scan():
  cell = jr.lstm(3)
  params = _f64(cell.init(jax.random.key(5), D))
  xs, lengths = _xs(), jnp.array([6, 3, 1], jnp.int32)
  got = jr.rnn(cell, reverse=True, unroll=2, remat=2).apply(params, xs, lengths=lengths)
  want = jr.scan(cell, params, xs, lengths=lengths, reverse=True)
  _util.assert_tree_close(got, want, **TOL64, what="rnn(reverse, unroll, remat)")
