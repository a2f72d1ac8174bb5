"""Embedding, heads, pooling, masked loss and autoregressive generation (jr.models)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr

# float32 results are compared with float64 NumPy at 1e-5 relative: a few float32 roundings of
# O(1) values in sums of at most a few dozen terms. Pure gathers must be exact.
F32 = dict(rtol=1e-5, atol=1e-6)


def _key(i):
  return jax.random.key(i)


def _lengths(values):
  return jnp.asarray(values, jnp.int32)


# ---------------------------------------------------------------------------------------------
# Embedding and dense head


def test_embedding_is_a_table_lookup():
  embed = jr.embedding(7, 3)
  params = embed.init(_key(0))
  assert params["table"].shape == (7, 3) and params["table"].dtype == jnp.float32
  tokens = np.array([[0, 6, 2, 2], [5, 1, 3, 0]], np.int32)
  got = jax.jit(embed.apply)(params, tokens)
  np.testing.assert_array_equal(got, np.asarray(params["table"])[tokens])
  assert got.shape == (2, 4, 3)
  # Any leading shape, including a scalar token (one decoding step).
  np.testing.assert_array_equal(embed.apply(params, jnp.int32(4)), params["table"][4])


def test_embedding_out_of_range_id_gives_nan():
  embed = jr.embedding(4, 2)
  params = embed.init(_key(0))
  out = embed.apply(params, jnp.array([1, 4], jnp.int32))
  assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


def test_embedding_errors():
  embed = jr.embedding(4, 2)
  params = embed.init(_key(0))
  with pytest.raises(TypeError, match="integer"):
    embed.apply(params, jnp.array([1.0, 2.0]))
  with pytest.raises(ValueError, match="vocab_size"):
    jr.embedding(0, 2)
  with pytest.raises(ValueError, match="table has shape"):
    jr.embedding(5, 2).apply(params, jnp.array([1], jnp.int32))


def test_dense_matches_numpy():
  head = jr.dense(5)
  params = head.init(_key(1), 3)
  params["b"] = jax.random.normal(_key(2), (5,), jnp.float32)
  x = jax.random.normal(_key(3), (2, 4, 3), jnp.float32)
  got = jax.jit(head.apply)(params, x)
  want = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"])
  np.testing.assert_allclose(got, want, **F32)
  assert got.dtype == jnp.float32
  # float64 inputs compute in float64 (parameters are cast to the input's dtype).
  assert head.apply(params, x.astype(jnp.float64)).dtype == jnp.float64
  with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
    head.apply(params, jnp.ones((2, 4), jnp.float32))
  with pytest.raises(TypeError, match="floating"):
    head.apply(params, jnp.ones((2, 3), jnp.int32))
  assert "b" not in jr.dense(2, use_bias=False).init(_key(0), 3)


# ---------------------------------------------------------------------------------------------
# Masks, pooling, masked loss


def test_sequence_mask():
  got = jax.jit(jr.sequence_mask, static_argnums=1)(_lengths([[0, 2], [4, 1]]), 3)
  want = np.arange(3)[None, None, :] < np.array([[0, 2], [4, 1]])[..., None]
  np.testing.assert_array_equal(got, want)
  with pytest.raises(TypeError, match="integer"):
    jr.sequence_mask(jnp.array([1.0]), 3)
  with pytest.raises(ValueError, match="steps"):
    jr.sequence_mask(_lengths([1]), -1)


def test_last_valid_and_masked_mean_match_numpy():
  ys = jax.random.normal(_key(0), (2, 3, 5, 4), jnp.float32)
  lengths = np.array([[5, 1, 0], [3, 2, 4]], np.int32)
  y = np.asarray(ys, np.float64)
  want_last = np.zeros((2, 3, 4))
  want_mean = np.zeros((2, 3, 4))
  for i in range(2):
    for j in range(3):
      n = lengths[i, j]
      if n > 0:
        want_last[i, j] = y[i, j, n - 1]
        want_mean[i, j] = y[i, j, :n].mean(axis=0)
  np.testing.assert_array_equal(jax.jit(jr.last_valid)(ys, jnp.asarray(lengths)),
                                want_last.astype(np.float32))
  np.testing.assert_allclose(jax.jit(jr.masked_mean)(ys, jnp.asarray(lengths)), want_mean, **F32)
  np.testing.assert_array_equal(jr.last_valid(ys), ys[..., -1, :])
  np.testing.assert_allclose(jr.masked_mean(ys), y.mean(axis=-2), **F32)


def test_last_valid_is_the_final_carry_of_a_forward_lstm():
  cell = jr.lstm(3)
  params = cell.init(_key(0), 2)
  xs = jax.random.normal(_key(1), (4, 6, 2), jnp.float32)
  lengths = _lengths([6, 3, 1, 4])
  carry, ys = jr.scan(cell, params, xs, lengths=lengths)
  # Both are the same stored h, so the equality is exact.
  np.testing.assert_array_equal(jr.last_valid(ys, lengths), carry.h)


def test_pooling_errors():
  ys = jnp.zeros((2, 5, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"lengths has shape \(3,\), expected \(2,\)"):
    jr.last_valid(ys, _lengths([1, 2, 3]))
  with pytest.raises(TypeError, match="integer"):
    jr.masked_mean(ys, jnp.array([1.0, 2.0]))
  with pytest.raises(ValueError, match=r"\(\.\.\., T, H\)"):
    jr.last_valid(jnp.zeros((3,), jnp.float32))


def _numpy_masked_ce(logits, targets, lengths):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
  total, count = 0.0, 0
  for b in range(logits.shape[0]):
    for t in range(lengths[b]):
      total -= logp[b, t, targets[b, t]]
      count += 1
  return total / count


def test_masked_cross_entropy_matches_numpy():
  logits = 3.0 * jax.random.normal(_key(0), (3, 4, 6), jnp.float32)
  targets = np.array(jax.random.randint(_key(1), (3, 4), 0, 6, jnp.int32))
  lengths = np.array([4, 1, 2], np.int32)
  targets[1, 1:] = 99  # ids at padding steps are ignored, even invalid ones
  loss = jax.jit(jr.masked_cross_entropy)(logits, jnp.asarray(targets), jnp.asarray(lengths))
  np.testing.assert_allclose(loss, _numpy_masked_ce(logits, targets, lengths), **F32)
  assert loss.shape == () and loss.dtype == jnp.float32
  targets[1, 1:] = 0
  full = jr.masked_cross_entropy(logits, jnp.asarray(targets))
  np.testing.assert_allclose(full, _numpy_masked_ce(logits, targets, [4, 4, 4]), **F32)
  # No valid token at all: 0, not NaN.
  assert float(jr.masked_cross_entropy(logits, jnp.asarray(targets), _lengths([0, 0, 0]))) == 0.0


def test_masked_cross_entropy_errors():
  logits = jnp.zeros((2, 3, 4), jnp.float32)
  with pytest.raises(TypeError, match="integer"):
    jr.masked_cross_entropy(logits, jnp.zeros((2, 3), jnp.float32))
  with pytest.raises(ValueError, match="targets has shape"):
    jr.masked_cross_entropy(logits, jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match="lengths has shape"):
    jr.masked_cross_entropy(logits, jnp.zeros((2, 3), jnp.int32), _lengths([1]))


# ---------------------------------------------------------------------------------------------
# Language model and generation

VOCAB = 5


@pytest.fixture(scope="module")
def lm():
  model = jr.language_model(VOCAB, 4, jr.gru(6))
  params = model.init(_key(0))
  # Larger head weights make the next-token distributions peaked enough that sampling and
  # argmax differ visibly, without changing what is tested.
  params["head"]["w"] = 3.0 * params["head"]["w"]
  return model, params


def test_language_model_apply_equals_its_step(lm):
  model, params = lm
  tokens = jax.random.randint(_key(1), (2, 5), 0, VOCAB, jnp.int32)
  carry, logits = jax.jit(model.apply)(params, tokens)
  c = model.initial_carry((2,))
  for t in range(5):
    c, step_logits = model.step(params, c, tokens[:, t])
    np.testing.assert_allclose(logits[:, t], step_logits, **F32)
  np.testing.assert_allclose(carry, c, **F32)


def _generate_jit(step_fn, **kwargs):
  return jax.jit(functools.partial(jr.generate, step_fn, **kwargs))


def test_greedy_equals_python_argmax_loop(lm):
  model, params = lm
  first = jnp.array([0, 2, 4], jnp.int32)
  out = _generate_jit(model.step, max_length=6, greedy=True)(
      params, model.initial_carry((3,)), first, None)
  carry, token = model.initial_carry((3,)), first
  for t in range(6):
    carry, logits = model.step(params, carry, token)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    np.testing.assert_array_equal(out.tokens[:, t], token)
  np.testing.assert_array_equal(out.lengths, [6, 6, 6])
  np.testing.assert_allclose(out.carry, carry, **F32)
  assert out.tokens.dtype == jnp.int32


def _counting_step(params, carry, token):
  """A hand-checkable model: the carry counts steps; it emits token 3 until step `stop - 1`
  (per sequence), where it emits EOS = 1. `params` holds `stop (B,)`."""
  del token
  carry = carry + 1.0
  at_stop = carry == params["stop"].astype(carry.dtype)
  target = jnp.where(at_stop, 1, 3)
  return carry, 10.0 * jax.nn.one_hot(target, 4, dtype=jnp.float32)


def test_eos_pads_freezes_carry_and_sets_lengths():
  params = {"stop": jnp.array([2, 5, 1, 9], jnp.int32)}
  out = _generate_jit(_counting_step, max_length=6, greedy=True, eos_id=1, pad_id=0)(
      params, jnp.zeros((4,), jnp.float32), jnp.zeros((4,), jnp.int32), None)
  np.testing.assert_array_equal(out.tokens, [[3, 1, 0, 0, 0, 0],
                                             [3, 3, 3, 3, 1, 0],
                                             [1, 0, 0, 0, 0, 0],
                                             [3, 3, 3, 3, 3, 3]])
  np.testing.assert_array_equal(out.lengths, [2, 5, 1, 6])
  # The carry stops counting once EOS is out: it is the carry of the step that produced EOS.
  np.testing.assert_array_equal(out.carry, [2.0, 5.0, 1.0, 6.0])


def test_sampled_eos_invariants(lm):
  """For a sampled run: after the first EOS only pads, lengths = first EOS + 1, and the
  returned carry is the one a Python loop reaches after `length` tokens."""
  model, params = lm
  batch, eos, pad = 8, 2, 0
  first = jnp.zeros((batch,), jnp.int32)
  out = _generate_jit(model.step, max_length=7, eos_id=eos, pad_id=pad, temperature=1.5)(
      params, model.initial_carry((batch,)), first, _key(5))
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  assert (lengths < 7).any() and (lengths > 1).any()  # the test sees early and late EOS
  for b in range(batch):
    hits = np.flatnonzero(tokens[b] == eos)
    n = hits[0] + 1 if hits.size else 7
    assert lengths[b] == n
    assert (tokens[b, n:] == pad).all()
    carry, token = model.initial_carry(()), first[b]
    for t in range(n):
      carry, _ = model.step(params, carry, token)
      token = tokens[b, t]
    np.testing.assert_allclose(out.carry[b], carry, **F32)


def test_same_key_same_sample_and_top_k(lm):
  model, params = lm
  first = jnp.zeros((6,), jnp.int32)
  carry = model.initial_carry((6,))
  sample = _generate_jit(model.step, max_length=8)
  a, b = sample(params, carry, first, _key(3)), sample(params, carry, first, _key(3))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  c = sample(params, carry, first, _key(4))
  assert not np.array_equal(a.tokens, c.tokens)
  greedy = _generate_jit(model.step, max_length=8, greedy=True)(params, carry, first, None)
  top1 = _generate_jit(model.step, max_length=8, top_k=1, temperature=0.7)(
      params, carry, first, _key(3))
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  assert not np.array_equal(a.tokens, greedy.tokens)


def test_top_k_samples_only_among_the_k_largest(lm):
  model, params = lm
  first = jnp.zeros((6,), jnp.int32)
  out = _generate_jit(model.step, max_length=8, top_k=2, temperature=3.0)(
      params, model.initial_carry((6,)), first, _key(7))
  carry, token = model.initial_carry((6,)), first
  for t in range(8):
    carry, logits = model.step(params, carry, token)
    token = out.tokens[:, t]
    top2 = np.argsort(-np.asarray(logits), axis=-1)[:, :2]
    assert all(int(token[b]) in top2[b] for b in range(6))


def test_sampling_frequencies_follow_softmax_over_temperature():
  logits = jnp.array([0.0, 1.0, 2.0, -1.0], jnp.float32)
  n = 4000

  def step(params, carry, token):
    return carry, jnp.broadcast_to(params, token.shape + (4,))

  out = _generate_jit(step, max_length=1, temperature=2.0)(
      logits, jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32), _key(0))
  freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=4) / n
  p = np.exp(np.asarray(logits, np.float64) / 2.0)
  p /= p.sum()
  # 5 binomial standard deviations (sqrt(p(1-p)/n) <= 0.008 at n = 4000).
  np.testing.assert_allclose(freq, p, atol=0.04)


def test_generate_errors(lm):
  model, params = lm
  carry, first = model.initial_carry((2,)), jnp.zeros((2,), jnp.int32)
  gen = functools.partial(jr.generate, model.step, params, carry, first, _key(0))
  with pytest.raises(ValueError, match="max_length"):
    gen(max_length=0)
  with pytest.raises(ValueError, match="temperature"):
    gen(max_length=2, temperature=0.0)
  with pytest.raises(ValueError, match="temperature"):
    gen(max_length=2, temperature=-1.0)
  with pytest.raises(ValueError, match="top_k"):
    gen(max_length=2, top_k=0)
  with pytest.raises(ValueError, match="top_k=6 exceeds the vocabulary size 5"):
    gen(max_length=2, top_k=6)
  with pytest.raises(TypeError, match="max_length"):
    gen(max_length=2.0)
  with pytest.raises(TypeError, match="integer"):
    jr.generate(model.step, params, carry, jnp.zeros((2,), jnp.float32), _key(0), max_length=2)
  with pytest.raises(TypeError, match="key"):
    jr.generate(model.step, params, carry, first, None, max_length=2)
  with pytest.raises(ValueError, match="logits of shape"):
    jr.generate(lambda p, c, t: (c, jnp.zeros((3, 5), jnp.float32)), params, carry, first,
                _key(0), max_length=2)
