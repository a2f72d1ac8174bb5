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
  gru_step, lstm_step = jax.jit(gru.step), jax.jit(lstm.step)
  p_gru, p_lstm = params["cell"]
  table, w, b = params["embedding"]["table"], params["head"]["w"], params["head"]["b"]
  for i in range(2):
    c1, c2 = gru.initial_carry(()), lstm.initial_carry(())
    for t in range(int(lengths[i])):
      x = table[tokens[i, t]]
      c1, h1 = gru_step(p_gru, c1, x)
      c2, h2 = lstm_step(p_lstm, c2, h1)
      np.testing.assert_allclose(logits[i, t], h2 @ w + b, **TOL)
    np.testing.assert_allclose(carry[0][i], c1, **TOL)
    for got, want in zip(jax.tree.leaves(carry[1]), jax.tree.leaves(c2)):
      np.testing.assert_allclose(got[i], want, **TOL)
  # The per-step function agrees with the whole-sequence run.
  c, step = lm.initial_carry((2,)), jax.jit(lm.step)
  for t in range(6):
    c, step_logits = step(params, c, tokens[:, t])
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


# ---------------------------------------------------------------------------------------------
# Tied input and output embeddings


@pytest.mark.parametrize("cell", [jr.gru(E), jr.stack(jr.rnn(jr.gru(5)), jr.rnn(jr.lstm(E)))])
def test_tied_embeddings_equal_an_untied_model_with_the_transposed_table(cell):
  tied = jr.language_model(V, E, cell, tie_embeddings=True)
  untied = jr.language_model(V, E, cell)
  params = tied.init(_key(0))
  assert set(params["head"]) == {"b"}
  params["head"]["b"] = jax.random.normal(_key(4), (V,), jnp.float32)
  table = params["embedding"]["table"]
  u_params = {**params, "head": {"w": table.T, "b": params["head"]["b"]}}
  tokens = jax.random.randint(_key(1), (2, 5), 0, V, jnp.int32)
  targets = jax.random.randint(_key(2), (2, 5), 0, V, jnp.int32)
  lengths = jnp.array([5, 3])
  np.testing.assert_allclose(tied.apply(params, tokens, lengths=lengths)[1],
                             untied.apply(u_params, tokens, lengths=lengths)[1], **TOL)
  np.testing.assert_allclose(tied.step(params, tied.initial_carry((2,)), tokens[:, 0])[1],
                             untied.step(u_params, untied.initial_carry((2,)), tokens[:, 0])[1],
                             **TOL)

  def loss(model, p):
    return jr.masked_cross_entropy(model.apply(p, tokens, lengths=lengths)[1], targets, lengths)

  g_tied = jax.grad(functools.partial(loss, tied))(params)
  g_untied = jax.grad(functools.partial(loss, untied))(u_params)
  # The table's gradient is the sum of its gradient as the embedding and as the head.
  np.testing.assert_allclose(g_tied["embedding"]["table"],
                             g_untied["embedding"]["table"] + g_untied["head"]["w"].T, **TOL)
  assert float(jnp.abs(g_untied["head"]["w"]).max()) > 0
  assert float(jnp.abs(g_untied["embedding"]["table"]).max()) > 0
  np.testing.assert_allclose(g_tied["head"]["b"], g_untied["head"]["b"], **TOL)
  for a, b in zip(jax.tree.leaves(g_tied["cell"]), jax.tree.leaves(g_untied["cell"])):
    np.testing.assert_allclose(a, b, **TOL)


def test_tied_embeddings_generate():
  lm = jr.language_model(V, E, jr.stack(jr.rnn(jr.gru(E)), jr.rnn(jr.gru(E))),
                         tie_embeddings=True)
  params = lm.init(_key(0))
  out = jr.generate(lm.step, params, lm.initial_carry((2,)), jnp.array([1, 2]), None,
                    max_length=3, greedy=True)
  assert out.tokens.shape == (2, 3)


def test_tie_embeddings_must_be_a_bool():
  with pytest.raises(TypeError):
    jr.language_model(V, E, jr.gru(E), tie_embeddings="yes")


# ---------------------------------------------------------------------------------------------
# Pooling bidirectional outputs


def test_bidirectional_last_equals_explicit_indexing():
  ys = jax.random.normal(_key(0), (3, 5, 6), jnp.float32)
  lengths = jnp.array([5, 2, 0])
  got = jr.bidirectional_last(ys, lengths)
  want = np.zeros((3, 6), np.float32)
  for i, n in enumerate([5, 2, 0]):
    if n:
      want[i, :3] = ys[i, n - 1, :3]
      want[i, 3:] = ys[i, 0, 3:]
  np.testing.assert_array_equal(got, want)
  no_lengths = jr.bidirectional_last(ys)
  np.testing.assert_array_equal(no_lengths, jnp.concatenate([ys[:, -1, :3], ys[:, 0, 3:]], -1))


def test_bidirectional_last_summarises_a_bidirectional_layer():
  fwd, bwd = jr.rnn(jr.gru(3)), jr.rnn(jr.gru(3))
  layer = jr.bidirectional(fwd, bwd)
  params = layer.init(_key(1), 2)
  xs = jax.random.normal(_key(2), (2, 4, 2), jnp.float32)
  lengths = jnp.array([4, 2])
  (c_f, c_b), ys = layer.apply(params, xs, lengths=lengths)
  # Each direction's summary of the whole sequence is its final carry.
  np.testing.assert_allclose(jr.bidirectional_last(ys, lengths),
                             jnp.concatenate([c_f, c_b], -1), **TOL)


def test_bidirectional_last_ignores_padding_garbage():
  ys = jax.random.normal(_key(0), (3, 5, 4), jnp.float64)
  lengths = jnp.array([5, 2, 0])
  pad = jnp.arange(5)[None, :, None] >= lengths[:, None, None]
  garbage = jnp.where(pad, jnp.nan, ys)
  np.testing.assert_array_equal(jr.bidirectional_last(garbage, lengths),
                                jr.bidirectional_last(ys, lengths))
  w = jax.random.normal(_key(1), (4,), jnp.float64)
  grad = jax.grad(lambda y: jnp.sum(jr.bidirectional_last(y, lengths) @ w))
  g_garbage, g_clean = grad(garbage), grad(ys)
  np.testing.assert_array_equal(g_garbage, g_clean)
  assert bool(jnp.all(jnp.isfinite(g_garbage)))
  assert bool(jnp.all(jnp.where(pad, g_garbage, 0.0) == 0.0))
  # The gradient lands exactly on the picked entries.
  want = np.zeros((3, 5, 4))
  want[0, 4, :2], want[0, 0, 2:] = w[:2], w[2:]
  want[1, 1, :2], want[1, 0, 2:] = w[:2], w[2:]
  np.testing.assert_allclose(g_clean, want, **TOL)


@pytest.mark.parametrize("shape", [(2, 4, 5), (2, 4, 1)])
def test_bidirectional_last_odd_feature_size(shape):
  with pytest.raises(ValueError, match="odd feature size"):
    jr.bidirectional_last(jnp.zeros(shape), jnp.array([1, 2]))


def test_bidirectional_last_wrong_shapes():
  with pytest.raises(ValueError, match=r"\(\.\.\., T, H\)"):
    jr.bidirectional_last(jnp.zeros((4,)))
  with pytest.raises(ValueError):
    jr.bidirectional_last(jnp.zeros((2, 4, 6)), jnp.array([1, 2, 3]))
