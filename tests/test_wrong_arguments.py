"""Wrong but plausible arguments, as a new user passes them: each gets a clear error naming the
argument, or a documented meaning that is tested here. None returns a wrong answer silently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxrnn as jr

D, H, T = 3, 4, 5
XS = jax.random.normal(jax.random.key(0), (2, T, D), jnp.float32)


def _key(i):
  return jax.random.key(i)


# ---------------------------------------------------------------------------------------------
# Token ids never wrap around


def test_embedding_gives_nan_rows_for_every_out_of_range_id():
  embed = jr.embedding(7, 2)
  params = embed.init(_key(0))
  out = embed.apply(params, jnp.array([-1, -7, 0, 6, 7, 100]))
  assert bool(jnp.all(jnp.isnan(out[jnp.array([0, 1, 4, 5])])))
  np.testing.assert_array_equal(out[2], params["table"][0])
  np.testing.assert_array_equal(out[3], params["table"][6])


def test_masked_cross_entropy_gives_nan_for_an_out_of_range_target_at_a_valid_step():
  logits = jax.random.normal(_key(1), (1, 3, 4), jnp.float32)
  for bad in (-1, 4):
    targets = jnp.array([[0, bad, 2]], jnp.int32)
    assert bool(jnp.isnan(jr.masked_cross_entropy(logits, targets)))
    assert bool(jnp.isnan(jr.masked_cross_entropy(logits, targets, jnp.array([2], jnp.int32))))
    # In the padding it is ignored: the loss over the first step only.
    got = jr.masked_cross_entropy(logits, targets, jnp.array([1], jnp.int32))
    want = jax.nn.logsumexp(logits[0, 0]) - logits[0, 0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Direction and layout


def test_bidirectional_refuses_a_reverse_half():
  cell = jr.lstm(H)
  for fwd, bwd in ((jr.rnn(cell), jr.rnn(cell, reverse=True)),
                   (jr.rnn(cell, reverse=True), jr.rnn(cell)),
                   (jr.rnn(cell), jr.stack(jr.rnn(cell), jr.rnn(jr.lstm(H), reverse=True)))):
    with pytest.raises(ValueError, match="runs backwards in time"):
      jr.bidirectional(fwd, bwd)


def test_layouts_are_checked_and_inferred():
  cell = jr.gru(H)
  tm = lambda: jr.rnn(cell, time_major=True)
  bm = lambda: jr.rnn(cell)
  with pytest.raises(ValueError, match=r"bidirectional\(time_major=True\): layer 0 is batch-major"):
    jr.bidirectional(bm(), bm(), time_major=True)
  with pytest.raises(ValueError, match="mix layouts"):
    jr.bidirectional(tm(), bm())
  with pytest.raises(ValueError, match="mix layouts"):
    jr.stack(bm(), tm())
  with pytest.raises(ValueError, match=r"stack\(time_major=False\): layer 0 is time-major"):
    jr.stack(tm(), tm(), time_major=False)
  with pytest.raises(ValueError, match=r"step_layer\(time_major=False\)"):
    jr.step_layer(tm(), cell.init(_key(0), D), None, XS[:, 0], time_major=False)
  # Unstated, the layout is the layers' own: a time-major bidirectional layer over B == T
  # equals its halves run by hand.
  layer = jr.bidirectional(tm(), tm())
  assert layer.time_major is True and jr.stack(tm(), jr.dropout(0.1)).time_major is True
  params = layer.init(_key(1), D)
  xs = jax.random.normal(_key(2), (T, T, D), jnp.float32)  # B == T: a mix-up would run
  _, ys = layer.apply(params, xs)
  _, ys_f = jr.scan(cell, params["forward"], xs, time_major=True)
  _, ys_b = jr.scan(cell, params["backward"], xs, time_major=True, reverse=True)
  np.testing.assert_allclose(ys, jnp.concatenate([ys_f, ys_b], -1), rtol=1e-5, atol=1e-6)


def test_reverse_layers_refuse_to_stream():
  cell = jr.lstm(H)
  params = cell.init(_key(0), D)
  for layer, p in ((jr.rnn(cell, reverse=True), params),
                   (jr.stack(jr.rnn(jr.lstm(D)), jr.rnn(cell, reverse=True)),
                    (jr.lstm(D).init(_key(1), D), params))):
    with pytest.raises(ValueError, match="runs backwards in time"):
      jr.stream(layer)
    with pytest.raises(ValueError, match="runs backwards in time"):
      jr.step_layer(layer, p, None, XS[:, 0])


def test_merge_sum_needs_equal_sizes():
  layer = jr.bidirectional(jr.rnn(jr.gru(3)), jr.rnn(jr.gru(5)), merge="sum")
  params = layer.init(_key(0), D)
  with pytest.raises(ValueError, match=r"merge='sum'.*\(2, 5, 3\).*\(2, 5, 5\)"):
    layer.apply(params, XS)


def test_residual_stack_names_mismatched_shapes():
  user = jr.Layer(init=lambda key, d: {},
                  apply=lambda p, xs, *, carry=None, lengths=None, resets=None, key=None:
                  (None, jnp.swapaxes(xs, 0, 1)))
  net = jr.stack(jr.rnn(jr.simple_rnn(D)), user, residual=True)
  params = net.init(_key(0), D)
  with pytest.raises(ValueError, match=r"layer 1 maps inputs of shape \(2, 5, 3\) to outputs "
                                       r"of shape \(5, 2, 3\)"):
    net.apply(params, XS)


# ---------------------------------------------------------------------------------------------
# Randomised cells follow the layer's key and train flag


@pytest.mark.parametrize("wrap", [lambda c: jr.variational_dropout(c, 0.5, input_rate=0.3),
                                  lambda c: jr.zoneout(c, 0.4)], ids=["variational", "zoneout"])
def test_randomised_cells_follow_the_layer_key_and_train(wrap):
  cell = wrap(jr.lstm(H))
  layer = jr.rnn(cell)
  params = layer.init(_key(0), D)
  key = _key(1)
  evaluation = jr.scan(cell, params, XS)[1]
  training = jr.scan(cell, {**params, "key": key}, XS)[1]
  assert not jnp.allclose(training, evaluation)
  np.testing.assert_array_equal(layer.apply(params, XS)[1], evaluation)
  np.testing.assert_array_equal(layer.apply(params, XS, key=key)[1], training)
  np.testing.assert_array_equal(layer.apply(params, XS, key=key, train=True)[1], training)
  np.testing.assert_array_equal(layer.apply(params, XS, key=key, train=False)[1], evaluation)
  np.testing.assert_array_equal(
      layer.apply({**params, "key": key}, XS, train=False)[1], evaluation)
  with pytest.raises(ValueError, match="train=True needs a PRNG key"):
    layer.apply(params, XS, train=True)
  with pytest.raises(ValueError, match="both as key= and in params"):
    layer.apply({**params, "key": key}, XS, key=key)

  # In a stack the layer's share of the stack key switches it on, and jax.grad over params
  # (which hold no key) works.
  net = jr.stack(layer, jr.rnn(jr.gru(3)))
  net_params = net.init(_key(2), D)
  on = net.apply(net_params, XS, key=key)[1]
  off = net.apply(net_params, XS)[1]
  assert not jnp.allclose(on, off)
  np.testing.assert_array_equal(net.apply(net_params, XS, key=key, train=False)[1], off)
  grads = jax.grad(lambda p: jnp.sum(net.apply(p, XS, key=key)[1] ** 2))(net_params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  assert any(bool(jnp.any(g != 0)) for g in jax.tree_util.tree_leaves(grads))


# ---------------------------------------------------------------------------------------------
# Generation never hides failure


def _lm(vocab=6):
  lm = jr.language_model(vocab, 4, jr.gru(8))
  return lm, lm.init(_key(0))


def test_generate_marks_unusable_logits_with_invalid_tokens():
  lm, params = _lm()
  nan_params = jax.tree_util.tree_map(lambda a: a * jnp.nan, params)
  out = jr.generate(lm.step, nan_params, lm.initial_carry((2,)), jnp.array([0, 1]), None,
                    max_length=3, greedy=True)
  np.testing.assert_array_equal(out.tokens, -1)
  # A first token outside the vocabulary fails only its own sequence.
  out = jr.generate(lm.step, params, lm.initial_carry((2,)), jnp.array([0, 6]), _key(1),
                    max_length=3)
  np.testing.assert_array_equal(out.tokens[1], -1)
  assert bool(jnp.all((out.tokens[0] >= 0) & (out.tokens[0] < 6)))
  # Checked mode reports it.
  checked = checkify.checkify(jax.jit(lambda p, first: jr.generate(
      lm.step, p, lm.initial_carry((2,)), first, None, max_length=3, greedy=True)))
  err, _ = checked(params, jnp.array([0, 6]))
  with pytest.raises(checkify.JaxRuntimeError, match="unusable logits"):
    err.throw()
  checked(params, jnp.array([0, 5]))[0].throw()


def test_generate_allows_forbidden_tokens_at_minus_infinity():
  vocab = 4

  def step(params, carry, token):
    logits = jnp.where(jnp.arange(vocab) == 2, 0.0, -jnp.inf)  # only token 2 is allowed
    return carry, jnp.broadcast_to(logits, token.shape + (vocab,))

  out = jr.generate(step, {}, jnp.zeros((2, 1)), jnp.array([0, 1]), _key(0), max_length=3)
  np.testing.assert_array_equal(out.tokens, 2)


def test_generate_under_jit_with_a_captured_first_token():
  """A `first_token` closed over by a jitted function is a constant there: generation runs, and
  its ids are still checked."""
  lm, params = _lm()
  carry = lm.initial_carry((2,))
  tokens = jnp.array([1, 2])
  run = jax.jit(lambda p, c: jr.generate(lm.step, p, c, tokens, None, max_length=3,
                                         greedy=True).tokens)
  np.testing.assert_array_equal(
      run(params, carry),
      jr.generate(lm.step, params, carry, tokens, None, max_length=3, greedy=True).tokens)
  bad = jnp.array([1, -2])
  with pytest.raises(ValueError, match="negative ids"):
    jax.jit(lambda p, c: jr.generate(lm.step, p, c, bad, None, max_length=3,
                                     greedy=True).tokens)(params, carry)


def test_generate_argument_errors():
  lm, params = _lm()
  with pytest.raises(TypeError, match="carry is None"):
    jr.generate(lm.step, params, None, jnp.array([0]), None, max_length=2, greedy=True)
  with pytest.raises(ValueError, match="negative ids"):
    jr.generate(lm.step, params, lm.initial_carry((1,)), jnp.array([-1]), None, max_length=2,
                greedy=True)


def _s2s(tgt_vocab=3):
  model = jr.seq2seq(jr.rnn(jr.gru(8)), jr.gru(8), src_vocab=5, tgt_vocab=tgt_vocab,
                     embed_dim=4)
  return model, model.init(_key(0))


def test_beam_search_checks_ids_and_width():
  model, params = _s2s()
  src = jnp.array([[3, 4, 2]], jnp.int32)
  with pytest.raises(ValueError, match=r"bos_id=3 is outside the decoder's vocabulary \[0, 3\)"):
    jr.beam_search(model, params, src, beam_width=2, max_length=3, bos_id=3, eos_id=1)
  with pytest.raises(ValueError, match=r"eos_id=7 is outside"):
    jr.beam_search(model, params, src, beam_width=2, max_length=3, bos_id=0, eos_id=7)
  with pytest.raises(ValueError, match=r"bos_id=9 is outside"):
    jr.greedy_decode(model, params, src, max_length=3, bos_id=9)
  # V = 3 with EOS: 1 + 2 + 4 = 7 distinct outputs of at most 2 tokens; one beam more raises.
  with pytest.raises(ValueError, match=r"beam_width=8 exceeds the 7 distinct outputs"):
    jr.beam_search(model, params, src, beam_width=8, max_length=2, bos_id=0, eos_id=1)
  out = jr.beam_search(model, params, src, beam_width=7, max_length=2, bos_id=0, eos_id=1)
  assert bool(jnp.all(jnp.isfinite(out.scores)))
  seqs = {tuple(s[:n].tolist()) for s, n in zip(out.sequences[0], out.lengths[0])}
  assert len(seqs) == 7


# ---------------------------------------------------------------------------------------------
# Messages that name the argument, the expected and the actual


def test_feature_size_is_reported_with_the_sequence_shape():
  cell = jr.lstm(H)
  params = cell.init(_key(0), D)
  for implementation in ("auto", "reference"):
    with pytest.raises(ValueError, match=r"xs has shape \(2, 5, 7\), but the parameters expect "
                                         r"\(\.\.\., 3\)"):
      jr.scan(cell, params, jnp.ones((2, 5, 7), jnp.float32), implementation=implementation)
  with pytest.raises(ValueError, match=r"xs has shape \(5, 2, 7\)"):
    jr.scan(cell, params, jnp.ones((5, 2, 7), jnp.float32), time_major=True)


@pytest.mark.parametrize("other", [jr.gru(H), jr.simple_rnn(H), jr.lstm(H + 1), jr.indrnn(H)])
def test_another_cells_params_are_named(other):
  cell = jr.lstm(H)
  params = other.init(_key(0), D)
  with pytest.raises(ValueError, match=r"lstm\(4\): params have the layout .* but lstm\(4\) "
                                       r"with input size 3 expects \{'b': \(16,\), 'w_h': "
                                       r"\(4, 16\), 'w_x': \(3, 16\)\}"):
    jr.scan(cell, params, XS)
  with pytest.raises(TypeError, match="params must be the dict"):
    cell.step([1, 2], cell.initial_carry((2,)), XS[:, 0])


def test_static_unroll_of_an_empty_sequence_equals_scan():
  cell = jr.lstm(H)
  params = cell.init(_key(0), D)
  xs = jnp.ones((2, 0, D), jnp.float32)
  for kw in ({}, {"lengths": jnp.array([0, 0], jnp.int32)}, {"reverse": True}):
    got = jr.static_unroll(cell, params, xs, **kw)
    want = jr.scan(cell, params, xs, **kw)
    assert got[1].shape == want[1].shape == (2, 0, H)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(a, b)


def test_every_rate_has_one_validator():
  cell = jr.lstm(H)
  makers = {"dropout: rate": lambda r: jr.dropout(r),
            "stack: dropout": lambda r: jr.stack(jr.rnn(cell), dropout=r),
            "variational_dropout: rate": lambda r: jr.variational_dropout(cell, r),
            "variational_dropout: input_rate": lambda r: jr.variational_dropout(
                cell, 0.1, input_rate=r),
            "zoneout: rate": lambda r: jr.zoneout(cell, r)}
  for what, make in makers.items():
    with pytest.raises(ValueError, match=rf"{what} must be in \[0, 1\), got 1.0"):
      make(1.0)
    with pytest.raises(TypeError, match=rf"{what} must be a float in \[0, 1\), got True"):
      make(True)


def test_flags_must_be_bools():
  """A string such as "False" is truthy: it would silently mean the opposite."""
  cell = jr.gru(H)
  params = cell.init(_key(0), D)
  for call in (lambda: jr.scan(cell, params, XS, reverse="False"),
               lambda: jr.scan(cell, params, XS, time_major=1),
               lambda: jr.static_unroll(cell, params, XS, reverse="yes"),
               lambda: jr.rnn(cell, reverse="False"),
               lambda: jr.stack(jr.rnn(cell), time_major="True"),
               lambda: jr.bidirectional(jr.rnn(cell), jr.rnn(cell), time_major=0),
               lambda: jr.flip_sequences(XS, time_major="no")):
    with pytest.raises(TypeError, match="must be a bool"):
      call()
  np.testing.assert_array_equal(jr.scan(cell, params, XS, reverse=np.bool_(True))[1],
                                jr.scan(cell, params, XS, reverse=True)[1])


def test_data_parallel_helpers_reject_bad_arguments():
  # (A batch that does not divide over several devices: tests/test_parallel.py.)
  mesh = jr.data_mesh()
  with pytest.raises(ValueError, match="without a batch axis 1"):
    jr.shard_batch({"x": np.zeros((4,))}, mesh, axis=1)
  with pytest.raises(TypeError, match="expected a jax.sharding.Mesh with a 'data' axis"):
    jr.replicate({"w": jnp.ones(2)}, "cpu")
  with pytest.raises(ValueError, match="no devices"):
    jr.data_mesh([])
