"""Dropout and sequence-level composition: `jr.dropout`, `jr.stack` (dropout, residual),
`jr.bidirectional`, episode resets through layers, and PyTorch interop of a deep bidirectional
LSTM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn as jr
from jaxrnn.layers import dropout

# float64 runs compare the same math in a different order (masking vs slicing): 1e-10 is far
# above float64 rounding over these short sequences and far below any real discrepancy.
TOL64 = dict(rtol=1e-10, atol=1e-10)
# float32 against PyTorch's float32 kernels: different summation orders over H <= 8, T <= 7.
TOL32 = dict(rtol=1e-5, atol=1e-5)


def _xs(key, shape, dtype=jnp.float64):
  return jax.random.normal(jax.random.key(key), shape, dtype)


# ---------------------------------------------------------------------------------------------
# jr.dropout


def test_dropout_without_key_is_identity():
  layer = dropout(0.5)
  xs = _xs(0, (2, 3, 4))
  carry, ys = jax.jit(lambda x: layer.apply({}, x))(xs)
  assert carry is None
  np.testing.assert_array_equal(ys, xs)


def test_dropout_with_key_masks_and_scales():
  rate = 0.25
  layer = dropout(rate)
  xs = jnp.ones((40, 50, 5), jnp.float32)
  apply = jax.jit(lambda x, k: layer.apply({}, x, key=k)[1])
  ys = apply(xs, jax.random.key(3))
  assert ys.dtype == jnp.float32 and ys.shape == xs.shape
  values = set(np.unique(np.asarray(ys)).tolist())
  assert values == {0.0, np.float32(1 / (1 - rate))}
  # 10_000 Bernoulli(0.25) draws: the dropped fraction has sd ~0.0043; 5 sd is a safe bound.
  assert abs(float((ys == 0).mean()) - rate) < 5 * np.sqrt(rate * (1 - rate) / ys.size)
  np.testing.assert_array_equal(ys, apply(xs, jax.random.key(3)))     # same key, same mask
  assert (ys != apply(xs, jax.random.key(4))).any()


@pytest.mark.parametrize("rate, error", [(-0.1, ValueError), (1.0, ValueError),
                                         (1.5, ValueError), ("0.5", TypeError),
                                         (True, TypeError)])
def test_dropout_rate_checked(rate, error):
  with pytest.raises(error, match="rate"):
    dropout(rate)
  with pytest.raises(error, match="dropout"):
    jr.stack(jr.rnn(jr.gru(3)), jr.rnn(jr.gru(3)), dropout=rate)


def test_dropout_gradients():
  xs = _xs(1, (2, 3, 4))
  layer = dropout(0.3)
  check_grads(lambda x: layer.apply({}, x, key=jax.random.key(0))[1], (xs,), order=2,
              modes=["fwd", "rev"])


# ---------------------------------------------------------------------------------------------
# jr.stack


def _two_layer():
  return jr.rnn(jr.lstm(5)), jr.rnn(jr.gru(4))


def test_stack_equals_layers_one_after_another():
  l1, l2 = _two_layer()
  net = jr.stack(l1, l2)
  params = net.init(jax.random.key(0), 3)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  xs, lengths = _xs(1, (3, 6, 3)), jnp.array([6, 2, 4])
  resets = jnp.zeros((3, 6), bool).at[0, 3].set(True)
  carry, ys = jax.jit(lambda p, x: net.apply(p, x, lengths=lengths, resets=resets))(params, xs)
  c1, h = l1.apply(params[0], xs, lengths=lengths, resets=resets)
  c2, ref = l2.apply(params[1], h, lengths=lengths, resets=resets)
  np.testing.assert_allclose(ys, ref, **TOL64)
  for got, want in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves((c1, c2))):
    np.testing.assert_allclose(got, want, **TOL64)


def test_stack_dropout_between_layers_only():
  l1, l2 = _two_layer()
  net = jr.stack(l1, l2, dropout=0.5)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  net.init(jax.random.key(0), 3))
  xs, key = _xs(1, (2, 5, 3)), jax.random.key(7)
  _, ys = jax.jit(lambda p, x, k: net.apply(p, x, key=k))(params, xs, key)
  # The documented key use: split into 2n keys, layer keys first, then one per dropout site.
  keys = jax.random.split(key, 4)
  _, h = l1.apply(params[0], xs)
  keep = jax.random.bernoulli(keys[2], 0.5, h.shape)
  _, ref = l2.apply(params[1], jnp.where(keep, 2 * h, 0.0))
  np.testing.assert_allclose(ys, ref, **TOL64)
  # No key: evaluation, no dropout.
  np.testing.assert_allclose(net.apply(params, xs)[1],
                             l2.apply(params[1], l1.apply(params[0], xs)[1])[1], **TOL64)
  # The last layer's output is never dropped.
  single = jr.stack(l2, dropout=0.9)
  p2 = params[1:]
  np.testing.assert_allclose(single.apply(p2, h, key=key)[1], l2.apply(p2[0], h)[1], **TOL64)


def test_stack_residual():
  l1, l2 = jr.rnn(jr.gru(4)), jr.rnn(jr.lstm(4))
  net = jr.stack(l1, l2, residual=True)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  net.init(jax.random.key(0), 4))
  xs, lengths = _xs(2, (2, 5, 4)), jnp.array([5, 3])
  _, ys = jax.jit(lambda p, x: net.apply(p, x, lengths=lengths))(params, xs)
  valid = (jnp.arange(5)[None, :] < lengths[:, None])[..., None]
  h = l1.apply(params[0], xs, lengths=lengths)[1] + jnp.where(valid, xs, 0.0)
  ref = l2.apply(params[1], h, lengths=lengths)[1] + h
  np.testing.assert_allclose(ys, ref, **TOL64)
  np.testing.assert_array_equal(ys[1, 3:], 0.0)      # padding stays zero


def test_stack_residual_size_mismatch():
  net = jr.stack(jr.rnn(jr.gru(4)), jr.rnn(jr.gru(6)), residual=True)
  with pytest.raises(ValueError, match="layer 1 maps 4 features to 6"):
    net.init(jax.random.key(0), 4)
  with pytest.raises(ValueError, match="layer 0 maps 3 features to 4"):
    net.init(jax.random.key(0), 3)
  good = jr.stack(jr.rnn(jr.gru(4)), jr.rnn(jr.gru(4)))
  params = good.init(jax.random.key(0), 4)
  bad = jr.stack(jr.rnn(jr.gru(4)), jr.rnn(jr.gru(4)), residual=True)
  with pytest.raises(ValueError, match="layer 0 maps 3 features to 4"):
    jax.jit(bad.apply)((jr.gru(4).init(jax.random.key(0), 3), params[1]),
                       jnp.ones((1, 2, 3), jnp.float32))


def test_stack_gradients_with_dropout_and_residual():
  net = jr.stack(jr.rnn(jr.gru(3)), jr.rnn(jr.simple_rnn(3)), dropout=0.3, residual=True)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  net.init(jax.random.key(0), 3))
  xs = _xs(3, (2, 4, 3))
  f = lambda p, x: net.apply(p, x, lengths=jnp.array([4, 2]), key=jax.random.key(1))[1]
  check_grads(f, (params, xs), order=2, modes=["fwd", "rev"])


# ---------------------------------------------------------------------------------------------
# jr.bidirectional


def test_bidirectional_equals_each_unpadded_sequence():
  fwd, bwd = jr.rnn(jr.lstm(3)), jr.rnn(jr.lstm(2))
  layer = jr.bidirectional(fwd, bwd)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  layer.init(jax.random.key(0), 4))
  xs, lengths = _xs(4, (3, 6, 4)), [6, 1, 4]
  (cf, cb), ys = jax.jit(lambda p, x, n: layer.apply(p, x, lengths=n))(
      params, xs, jnp.array(lengths))
  for b, n in enumerate(lengths):
    seq = xs[b, :n]
    cf_ref, yf = fwd.apply(params["forward"], seq)
    cb_ref, yb = bwd.apply(params["backward"], seq[::-1])
    np.testing.assert_allclose(ys[b, :n], jnp.concatenate([yf, yb[::-1]], -1), **TOL64)
    np.testing.assert_array_equal(ys[b, n:], 0.0)
    for got, want in zip(jax.tree_util.tree_leaves((cf, cb)),
                         jax.tree_util.tree_leaves((cf_ref, cb_ref))):
      np.testing.assert_allclose(got[b], want, **TOL64)


def test_bidirectional_carry_structure_mismatch_is_caught_before_running():
  calls = []

  def counting(layer):
    def apply(params, xs, **kw):
      calls.append(1)
      return layer.apply(params, xs, **kw)
    return jr.Layer(layer.init, apply)

  layer = jr.bidirectional(jr.rnn(jr.lstm(3)), counting(jr.rnn(jr.gru(3))))
  params = layer.init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="carries differ in structure"):
    layer.apply(params, jnp.ones((1, 4, 2), jnp.float32))
  # The halves were only traced abstractly (eval_shape), never run to completion: the
  # backward half's apply was entered once, by the check, and the error came before the run.
  assert len(calls) == 1


def test_bidirectional_gradients():
  layer = jr.bidirectional(jr.rnn(jr.gru(2)), jr.rnn(jr.gru(2)), merge="sum")
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  layer.init(jax.random.key(0), 3))
  f = lambda p, x: layer.apply(p, x, lengths=jnp.array([3, 2]))[1]
  check_grads(f, (params, _xs(5, (2, 3, 3))), order=2, modes=["fwd", "rev"])


# ---------------------------------------------------------------------------------------------
# Episode resets through layers


def _by_segments(layer, params, xs, lengths, resets):
  """Runs `layer` on every segment of every sequence on its own; padding outputs zero."""
  out, run = [], jax.jit(lambda p, x: layer.apply(p, x)[1])
  for b in range(xs.shape[0]):
    n = int(lengths[b])
    starts = [t for t in range(n) if t == 0 or bool(resets[b, t])]
    pieces = [run(params, xs[b, s:e]) for s, e in zip(starts, starts[1:] + [n])]
    ys = jnp.concatenate(pieces, 0)
    out.append(jnp.concatenate([ys, jnp.zeros((xs.shape[1] - n,) + ys.shape[1:], ys.dtype)]))
  return jnp.stack(out)


@pytest.mark.parametrize("kind", ["rnn", "reverse", "stack", "bidirectional"])
def test_resets_equal_separate_segments(kind):
  layer = {
      "rnn": lambda: jr.rnn(jr.lstm(3)),
      "reverse": lambda: jr.rnn(jr.gru(3), reverse=True),
      "stack": lambda: jr.stack(jr.rnn(jr.gru(3)), jr.rnn(jr.lstm(2))),
      "bidirectional": lambda: jr.bidirectional(jr.rnn(jr.gru(2)), jr.rnn(jr.gru(3))),
  }[kind]()
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  layer.init(jax.random.key(1), 2))
  xs = _xs(6, (3, 7, 2))
  lengths = np.array([7, 5, 6])
  resets = np.zeros((3, 7), bool)
  resets[0, [0, 3, 4]] = True
  resets[1, [2, 6]] = True         # the reset at t=6 lies in the padding: no effect
  resets[2, [5]] = True
  _, ys = jax.jit(lambda p, x, n, r: layer.apply(p, x, lengths=n, resets=r))(
      params, xs, jnp.asarray(lengths), jnp.asarray(resets))
  np.testing.assert_allclose(ys, _by_segments(layer, params, xs, lengths, resets), **TOL64)


def test_resets_wrong_shape_or_dtype():
  layer = jr.stack(jr.rnn(jr.gru(3)))
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.ones((2, 4, 2), jnp.float32)
  with pytest.raises(ValueError, match="resets has shape"):
    layer.apply(params, xs, resets=jnp.zeros((4, 2), bool))
  with pytest.raises(TypeError, match="resets must be boolean"):
    layer.apply(params, xs, resets=jnp.zeros((2, 4), jnp.int32))
  bi = jr.bidirectional(jr.rnn(jr.gru(3)), jr.rnn(jr.gru(3)))
  with pytest.raises(ValueError, match="resets has shape"):
    bi.apply(bi.init(jax.random.key(0), 2), xs, resets=jnp.zeros((2, 5), bool))


# ---------------------------------------------------------------------------------------------
# PyTorch interop of a deep bidirectional LSTM on padded batches


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_two_layer_bidirectional_lstm_on_padded_batch(batch_first):
  import torch  # the [test] extra, installed with pytest
  torch.manual_seed(0)
  module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
  layer, params = jr.interop.from_torch(module)
  lengths = [7, 3, 5]
  xs = np.array(_xs(7, (3, 7, 3), jnp.float32))
  xs[np.arange(7)[None, :] >= np.array(lengths)[:, None]] = 0.0
  xs_in = xs if batch_first else np.swapaxes(xs, 0, 1)
  (final), ys = jax.jit(lambda p, x, n: layer.apply(p, x, lengths=n))(
      params, jnp.asarray(xs_in), jnp.asarray(lengths))
  ys = np.asarray(ys if batch_first else jnp.swapaxes(ys, 0, 1))
  for b, n in enumerate(lengths):
    seq = torch.from_numpy(xs[b, :n][None] if batch_first else xs[b, :n][:, None])
    with torch.no_grad():
      out, (h_n, c_n) = module(seq)
    out = out[0] if batch_first else out[:, 0]
    np.testing.assert_allclose(ys[b, :n], out.numpy(), **TOL32)
    np.testing.assert_array_equal(ys[b, n:], 0.0)
    for lyr in range(2):
      for d in range(2):
        state = final[lyr][d]
        np.testing.assert_allclose(state.h[b], h_n[2 * lyr + d, 0].numpy(), **TOL32)
        np.testing.assert_allclose(state.c[b], c_n[2 * lyr + d, 0].numpy(), **TOL32)
