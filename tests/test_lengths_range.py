"""Out-of-range `lengths` have one meaning everywhere: clipped to [0, T]. Under
`jax.experimental.checkify.checkify` (the checked mode) every function that takes lengths reports
them instead, traced or concrete."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxrnn as jr

T, D, H = 4, 3, 5
XS = jax.random.normal(jax.random.key(0), (3, T, D), jnp.float32)
WILD = jnp.array([10, -3, 2], jnp.int32)      # above T, negative, in range
CLIPPED = jnp.array([T, 0, 2], jnp.int32)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("implementation", ["reference", "auto"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_clips_lengths(implementation, reverse):
  cell = jr.lstm(H)
  params = cell.init(jax.random.key(1), D)
  run = lambda n: jr.scan(cell, params, XS, lengths=n, reverse=reverse,
                          implementation=implementation)
  _assert_trees_equal(run(WILD), run(CLIPPED))
  _assert_trees_equal(jr.static_unroll(cell, params, XS, lengths=WILD, reverse=reverse),
                      jr.static_unroll(cell, params, XS, lengths=CLIPPED, reverse=reverse))
  # The negative length is an empty sequence: the initial carry and zero outputs.
  carry, ys = run(WILD)
  assert not bool(jnp.any(ys[1])) and not bool(jnp.any(carry.h[1]))


def test_layers_clip_lengths_and_never_return_nan():
  flipped = jr.flip_sequences(XS, WILD)
  assert bool(jnp.all(jnp.isfinite(flipped)))
  np.testing.assert_array_equal(flipped, jr.flip_sequences(XS, CLIPPED))
  np.testing.assert_array_equal(flipped[0], XS[0, ::-1])
  for layer in (jr.bidirectional(jr.rnn(jr.gru(H)), jr.rnn(jr.gru(H))),
                jr.stack(jr.rnn(jr.simple_rnn(D)), jr.rnn(jr.simple_rnn(D)), residual=True)):
    params = layer.init(jax.random.key(2), D)
    got = layer.apply(params, XS, lengths=WILD)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(got))
    _assert_trees_equal(got, layer.apply(params, XS, lengths=CLIPPED))


def test_pooling_and_losses_clip_lengths():
  ones = jnp.ones((1, T, 2), jnp.float32)
  np.testing.assert_array_equal(jr.masked_mean(ones, jnp.array([10], jnp.int32)), 1.0)
  ys = jax.random.normal(jax.random.key(3), (3, T, 2), jnp.float32)
  np.testing.assert_array_equal(jr.masked_mean(ys, WILD), jr.masked_mean(ys, CLIPPED))
  np.testing.assert_array_equal(jr.last_valid(ys, WILD), jr.last_valid(ys, CLIPPED))
  np.testing.assert_array_equal(jr.last_valid(ys, WILD)[0], ys[0, -1])
  np.testing.assert_array_equal(jr.sequence_mask(WILD, T), jr.sequence_mask(CLIPPED, T))
  targets = jnp.zeros((3, T), jnp.int32)
  np.testing.assert_array_equal(jr.masked_cross_entropy(ys, targets, WILD),
                                jr.masked_cross_entropy(ys, targets, CLIPPED))


def _lm():
  lm = jr.language_model(6, D, jr.gru(H))
  return lm, lm.init(jax.random.key(4))


def _s2s():
  model = jr.seq2seq(jr.rnn(jr.gru(H)), jr.gru(H), src_vocab=6, tgt_vocab=6, embed_dim=D,
                     attention="dot")
  return model, model.init(jax.random.key(5))


CELL = jr.lstm(H)
P_CELL = CELL.init(jax.random.key(1), D)
BIDI = jr.bidirectional(jr.rnn(jr.gru(H)), jr.rnn(jr.gru(H)))
P_BIDI = BIDI.init(jax.random.key(2), D)
STACK = jr.stack(jr.rnn(jr.simple_rnn(D)), jr.rnn(jr.simple_rnn(D)), residual=True)
P_STACK = STACK.init(jax.random.key(2), D)
TOKENS = jnp.zeros((3, T), jnp.int32)
TAKES_LENGTHS = {
    "scan": lambda n: jr.scan(CELL, P_CELL, XS, lengths=n),
    "scan_reference": lambda n: jr.scan(CELL, P_CELL, XS, lengths=n, implementation="reference"),
    "rnn": lambda n: jr.rnn(CELL).apply(P_CELL, XS, lengths=n),
    "bidirectional": lambda n: BIDI.apply(P_BIDI, XS, lengths=n),
    "stack_residual": lambda n: STACK.apply(P_STACK, XS, lengths=n),
    "flip_sequences": lambda n: jr.flip_sequences(XS, n),
    "masked_mean": lambda n: jr.masked_mean(XS, n),
    "last_valid": lambda n: jr.last_valid(XS, n),
    "sequence_mask": lambda n: jr.sequence_mask(n, T),
    "masked_cross_entropy": lambda n: jr.masked_cross_entropy(XS, jnp.zeros((3, T), jnp.int32),
                                                              n),
    "language_model": lambda n: _lm()[0].apply(_lm()[1], TOKENS, lengths=n),
    "seq2seq": lambda n: _s2s()[0].apply(_s2s()[1], TOKENS, n, TOKENS[:, :2]),
}


@pytest.mark.parametrize("name", sorted(TAKES_LENGTHS))
def test_checked_mode_reports_out_of_range_lengths(name):
  fn = TAKES_LENGTHS[name]
  checked = checkify.checkify(jax.jit(fn))
  for bad in (jnp.array([T + 1, 1, 2], jnp.int32), jnp.array([1, -1, 2], jnp.int32)):
    err, _ = checked(bad)
    with pytest.raises(checkify.JaxRuntimeError, match=r"lengths must lie in \[0, T\]"):
      err.throw()
  err, _ = checked(CLIPPED)
  err.throw()  # in range: no error
  # Outside checkify the same call runs, with the lengths clipped.
  _assert_trees_equal(jax.jit(fn)(WILD), jax.jit(fn)(CLIPPED))
