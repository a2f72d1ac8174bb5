"""Language models beyond one cell: stacked layers, tied embeddings, bidirectional pooling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr

V, E = 7, 4
TOL = dict(rtol=1e-6, atol=1e-6)


def _key(i):
  return jax.random.key(i)


def _stacked():
  layer = jr.stack(jr.rnn(jr.gru(5)), jr.rnn(jr.lstm(3)), dropout=0.5)
  lm = jr.language_model(V, E, layer)
  params = lm.init(_key(0))
  params["head"]["w"] = 3.0 * params["head"]["w"]
  return lm, params


def test_stacked_lm_logits_equal_a_hand_written_loop_over_the_layers():
  lm, params = _stacked()
  tokens = jax.random.randint(_key(1), (2, 6), 0, V, jnp.int32)
  lengths = jnp.array([6, 4])
  carry, logits = jax.jit(lm.apply)(params, tokens, lengths=lengths)
  assert logits.shape == (2, 6, V)
  gru, lstm = jr.gru(5), jr.lstm(3)
  p_gru, p_lstm = params["cell"]
  table, w, b = params["embedding"]["table"], params["head"]["w"], params["head"]["b"]
  for i in range(2):
    c1, c2 = gru.initial_carry(()), lstm.initial_carry(())
    for t in range(int(lengths[i])):
      x = table[tokens[i, t]]
      c1, h1 = gru.step(p_gru, c1, x)
      c2, h2 = lstm.step(p_lstm, c2, h1)
      np.testing.assert_allclose(logits[i, t], h2 @ w + b, **TOL)
    np.testing.assert_allclose(carry[0][i], c1, **TOL)
    for got, want in zip(jax.tree.leaves(carry[1]), jax.tree.leaves(c2)):
      np.testing.assert_allclose(got[i], want, **TOL)
  # The per-step function agrees with the whole-sequence run.
  c = lm.initial_carry((2,))
  for t in range(6):
    c, step_logits = lm.step(params, c, tokens[:, t])
    np.testing.assert_allclose(step_logits[0], logits[0, t], **TOL)


def test_stacked_lm_dropout_is_only_active_with_a_key():
  lm, params = _stacked()
  tokens = jnp.array([[1, 2, 3, 4]], jnp.int32)
  _, a = lm.apply(params, tokens)
  _, b = lm.apply(params, tokens, key=_key(3), train=False)
  _, c = lm.apply(params, tokens, key=_key(3))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  with pytest.raises(ValueError, match="train=True needs a PRNG key"):
    lm.apply(params, tokens, train=True)


def test_stacked_lm_greedy_generation_equals_a_python_loop():
  lm, params = _stacked()
  first = jnp.array([0, 3, 6], jnp.int32)
  gen = jax.jit(functools.partial(jr.generate, lm.step, max_length=5, greedy=True))
  out = gen(params, lm.initial_carry((3,)), first, None)
  carry, token, expected = lm.initial_carry((3,)), first, []
  for _ in range(5):
    carry, logits = lm.step(params, carry, token)
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    expected.append(token)
  np.testing.assert_array_equal(out.tokens, jnp.stack(expected, -1))
  np.testing.assert_array_equal(out.lengths, [5, 5, 5])
  for got, want in zip(jax.tree.leaves(out.carry), jax.tree.leaves(carry)):
    np.testing.assert_allclose(got, want, **TOL)


def test_stacked_lm_sampling_with_temperature():
  lm, params = _stacked()
  first = jnp.zeros((64,), jnp.int32)
  sample = jax.jit(functools.partial(jr.generate, lm.step, max_length=4, temperature=0.7,
                                     top_k=3))
  a = sample(params, lm.initial_carry((64,)), first, _key(5))
  b = sample(params, lm.initial_carry((64,)), first, _key(5))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.tokens.shape == (64, 4)
  assert bool(jnp.all((a.tokens >= 0) & (a.tokens < V)))
  # Sampling is not the argmax everywhere, and a tiny temperature is.
  greedy = jr.generate(lm.step, params, lm.initial_carry((64,)), first, None, max_length=4,
                       greedy=True)
  assert not np.array_equal(a.tokens, greedy.tokens)
  cold = jr.generate(lm.step, params, lm.initial_carry((64,)), first, _key(6), max_length=4,
                     temperature=1e-4)
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)


def test_single_layer_rnn_equals_the_cell_model():
  cell_lm = jr.language_model(V, E, jr.gru(5))
  layer_lm = jr.language_model(V, E, jr.rnn(jr.gru(5)))
  params = cell_lm.init(_key(2))
  tokens = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
  for a, b in zip(cell_lm.apply(params, tokens), layer_lm.apply(params, tokens)):
    np.testing.assert_allclose(a, b, **TOL)


def test_time_major_layer_takes_batch_major_tokens():
  bm = jr.language_model(V, E, jr.rnn(jr.gru(5)))
  tm = jr.language_model(V, E, jr.rnn(jr.gru(5), time_major=True))
  params = bm.init(_key(2))
  tokens = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
  np.testing.assert_allclose(bm.apply(params, tokens)[1], tm.apply(params, tokens)[1], **TOL)
  np.testing.assert_allclose(bm.step(params, bm.initial_carry((2,)), tokens[:, 0])[1],
                             tm.step(params, tm.initial_carry((2,)), tokens[:, 0])[1], **TOL)


@pytest.mark.parametrize("layer", [
    jr.bidirectional(jr.rnn(jr.gru(3)), jr.rnn(jr.gru(3))),
    jr.rnn(jr.gru(3), reverse=True),
    jr.stack(jr.rnn(jr.gru(3)), jr.rnn(jr.gru(3), reverse=True)),
])
def test_layers_that_look_ahead_are_refused(layer):
  with pytest.raises(ValueError, match="looks ahead in time"):
    jr.language_model(V, E, layer)


def test_not_a_cell_nor_a_layer():
  with pytest.raises(TypeError, match="jr.Cell or a jr.Layer"):
    jr.language_model(V, E, "gru")
