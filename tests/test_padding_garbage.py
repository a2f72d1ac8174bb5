"""Padding never enters the arithmetic: NaN or Inf past each sequence's length gives exactly the
values AND gradients of zero padding, on every path (reference, fused XLA loop, native loop) and
through every layer and head that takes `lengths`, token ids included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn.drivers import _onednn, _plan

STEPS, D, H = 5, 3, 4
CELLS = {"lstm": jr.lstm, "gru": jr.gru, "simple_rnn": jr.simple_rnn, "indrnn": jr.indrnn}
GARBAGE = {"nan": jnp.nan, "inf": jnp.inf, "-inf": -jnp.inf}


def _lengths(batch):
  return jnp.asarray(np.arange(batch) % (STEPS + 1), jnp.int32)  # 0 .. T, padding in most rows


def _valid(lengths):
  return (jnp.arange(STEPS, dtype=jnp.int32)[None, :] < lengths[:, None])[..., None]


def _values_and_grads(cell, params, xs, lengths, **kw):
  def loss(p, x):
    carry, ys = jr.scan(cell, p, x, lengths=lengths, **kw)
    return jnp.sum(ys * ys) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(carry))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, xs)


@pytest.mark.parametrize("batch", [3, 16])  # below and at the native loop's threshold
@pytest.mark.parametrize("implementation", ["reference", "auto"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_garbage_padding_gives_the_values_and_gradients_of_zero_padding(name, implementation,
                                                                         batch):
  cell = CELLS[name](H)
  params = cell.init(jax.random.key(0), D)
  xs = jax.random.normal(jax.random.key(1), (batch, STEPS, D), jnp.float32)
  lengths = _lengths(batch)
  valid = _valid(lengths)
  for reverse in (False, True):
    kw = dict(implementation=implementation, reverse=reverse)
    clean_loss, (clean_p, clean_x) = _values_and_grads(cell, params, jnp.where(valid, xs, 0.0),
                                                       lengths, **kw)
    assert np.isfinite(float(clean_loss))
    for fill in GARBAGE.values():
      loss, (grad_p, grad_x) = _values_and_grads(cell, params, jnp.where(valid, xs, fill),
                                                 lengths, **kw)
      assert float(loss) == float(clean_loss)
      for a, b in zip(jax.tree_util.tree_leaves(grad_p), jax.tree_util.tree_leaves(clean_p)):
        np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(grad_x, clean_x)
      np.testing.assert_array_equal(jnp.where(valid, 0.0, grad_x), 0.0)


@pytest.mark.skipif(not _onednn.available(), reason="the native library is not built here")
@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn"])
def test_the_batch_of_16_runs_the_native_loop(name):
  """So that the `batch=16` cases above cover the native loop, not only XLA's."""
  cell = CELLS[name](H)
  params = cell.init(jax.random.key(0), D)
  xs_t = jnp.zeros((STEPS, 16, D), jnp.float32)
  carry = cell.initial_carry((16,), jnp.float32)
  assert _plan.why_not_native(cell, cell.fused, params, xs_t, carry, None) is None


def _layer_grads(layer, params, xs, lengths, key=None):
  def loss(p, x):
    return jnp.sum(jnp.sin(layer.apply(p, x, lengths=lengths, key=key)[1]))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, xs)


@pytest.mark.parametrize("make", [
    lambda: jr.bidirectional(jr.rnn(jr.lstm(H)), jr.rnn(jr.lstm(H))),
    lambda: jr.stack(jr.rnn(jr.gru(H)), jr.dropout(0.3), jr.rnn(jr.lstm(H)), residual=False),
    lambda: jr.stack(jr.rnn(jr.simple_rnn(D)), jr.rnn(jr.simple_rnn(D)), residual=True),
], ids=["bidirectional", "stack_dropout", "stack_residual"])
def test_layers_keep_garbage_padding_out_of_values_and_gradients(make):
  layer = make()
  params = layer.init(jax.random.key(0), D)
  xs = jax.random.normal(jax.random.key(1), (4, STEPS, D), jnp.float32)
  lengths = _lengths(4)
  valid = _valid(lengths)
  key = jax.random.key(2)
  clean = _layer_grads(layer, params, jnp.where(valid, xs, 0.0), lengths, key)
  for fill in GARBAGE.values():
    dirty = _layer_grads(layer, params, jnp.where(valid, xs, fill), lengths, key)
    assert float(dirty[0]) == float(clean[0])
    for a, b in zip(jax.tree_util.tree_leaves(dirty[1]), jax.tree_util.tree_leaves(clean[1])):
      np.testing.assert_array_equal(a, b)


def test_out_of_vocabulary_padding_ids_leave_a_language_model_finite():
  """The embedding maps bad ids to NaN rows; in the padding they change nothing, not even the
  gradient of the embedding table."""
  vocab = 7
  lm = jr.language_model(vocab, 3, jr.lstm(H))
  params = lm.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, STEPS), 0, vocab)
  lengths = jnp.array([5, 3, 1, 0], jnp.int32)
  valid = _valid(lengths)[..., 0]

  def loss(p, toks):
    _, logits = lm.apply(p, toks, lengths=lengths)
    return jr.masked_cross_entropy(logits, toks, lengths)

  grad = jax.jit(jax.value_and_grad(loss))
  clean = grad(params, jnp.where(valid, tokens, 0))
  for bad in (-1, vocab, 10 ** 6):
    dirty = grad(params, jnp.where(valid, tokens, bad))
    assert float(dirty[0]) == float(clean[0])
    for a, b in zip(jax.tree_util.tree_leaves(dirty[1]), jax.tree_util.tree_leaves(clean[1])):
      np.testing.assert_array_equal(a, b)


def test_heads_ignore_garbage_logits_and_targets_in_the_padding():
  logits = jax.random.normal(jax.random.key(0), (3, STEPS, 6), jnp.float32)
  targets = jax.random.randint(jax.random.key(1), (3, STEPS), 0, 6)
  lengths = jnp.array([5, 2, 0], jnp.int32)
  valid = _valid(lengths)
  f = jax.jit(jax.value_and_grad(
      lambda l, t: jr.masked_cross_entropy(l, t, lengths) + jnp.sum(jr.masked_mean(l, lengths))
      + jnp.sum(jr.last_valid(l, lengths))))
  clean = f(jnp.where(valid, logits, 0.0), targets)
  for fill in GARBAGE.values():
    for bad_id in (-1, 6):
      dirty = f(jnp.where(valid, logits, fill), jnp.where(valid[..., 0], targets, bad_id))
      assert float(dirty[0]) == float(clean[0])
      np.testing.assert_array_equal(dirty[1], clean[1])
