"""The seq2seq encoder-decoder: teacher forcing against a Python-loop oracle, greedy decoding,
beam search against brute force, training on a toy task, gradients, and bad input."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxrnn as jr
from jaxrnn.models import _seq2seq

ATTENTIONS = [None, "dot", "additive"]
BOS, EOS, PAD = 0, 1, 0
# float64 model against a float64 oracle that computes the same sums in another order: agreement
# to ~1e-12 relative is expected; 1e-9 leaves room for the sums' length without hiding a bug
# (a wrong mask or gate shifts values by O(1e-2) or more).
F64 = dict(rtol=1e-9, atol=1e-12)


def _key(i):
  return jax.random.key(i)


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)


def _model(attention, hidden=5, src_vocab=6, tgt_vocab=4, embed_dim=3, seed=0):
  model = jr.seq2seq(jr.rnn(jr.lstm(hidden)), jr.lstm(hidden), src_vocab=src_vocab,
                     tgt_vocab=tgt_vocab, embed_dim=embed_dim, attention=attention)
  params = _f64(model.init(_key(seed)))
  # Larger head weights make next-token distributions peaked, so rankings are clear-cut.
  params["head"]["w"] = 4.0 * params["head"]["w"]
  return model, params


def _oracle_logits(params, attention, src, src_lengths, tgt_in, hidden):
  """Teacher forcing written out step by step: NumPy attention, one example at a time."""
  enc_cell, dec_cell = jr.lstm(hidden), jr.lstm(hidden)
  p = jax.tree_util.tree_map(np.asarray, params)
  xs = p["src_embedding"]["table"][src]
  enc_carry, enc_out = jr.static_unroll(enc_cell, params["encoder"], jnp.asarray(xs),
                                        lengths=src_lengths)
  enc_out = np.asarray(enc_out)
  carry = enc_carry
  batch = src.shape[0]
  feed = np.zeros((batch, hidden))
  out, weights = [], np.zeros(tgt_in.shape + src.shape[1:])
  for t in range(tgt_in.shape[1]):
    x = p["tgt_embedding"]["table"][tgt_in[:, t]]
    if attention:
      x = np.concatenate([x, feed], axis=-1)
    carry, h = dec_cell.step(params["decoder"], carry, jnp.asarray(x))
    h = np.asarray(h)
    if attention:
      a = p["attention"]
      for b in range(batch):
        o = enc_out[b, :src_lengths[b]]
        if attention == "dot":
          scores = o @ h[b]
        else:
          scores = np.tanh(o @ a["w_k"] + h[b] @ a["w_q"]) @ a["v"]
        alpha = np.exp(scores - scores.max())
        alpha /= alpha.sum()
        weights[b, t, :src_lengths[b]] = alpha
        feed[b] = np.tanh(np.concatenate([alpha @ o, h[b]]) @ a["w_c"])
      top = feed.copy()
    else:
      top = h
    out.append(top @ p["head"]["w"] + p["head"]["b"])
  return np.stack(out, axis=1), weights


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forcing_equals_python_loop(attention):
  model, params = _model(attention)
  src = np.array([[2, 3, 4, 5], [5, 4, 0, 0], [3, 0, 0, 0]], np.int32)
  src_lengths = np.array([4, 2, 1], np.int32)
  tgt_in = np.array([[0, 2, 3], [0, 3, 3], [0, 2, 2]], np.int32)
  logits = jax.jit(model.apply)(params, src, jnp.asarray(src_lengths), tgt_in)
  assert logits.shape == (3, 3, 4) and logits.dtype == jnp.float64
  want, _ = _oracle_logits(params, attention, src, src_lengths, tgt_in, hidden=5)
  np.testing.assert_allclose(logits, want, **F64)
  # Tokens in the source padding are never read.
  src_noise = np.where(np.arange(4)[None] < src_lengths[:, None], src, 5).astype(np.int32)
  np.testing.assert_array_equal(model.apply(params, src_noise, src_lengths, tgt_in), logits)


@pytest.mark.parametrize("attention", ["dot", "additive"])
def test_return_attention_equals_python_loop(attention):
  model, params = _model(attention, seed=2)
  src = np.array([[2, 3, 4, 5, 1], [5, 4, 0, 0, 0], [3, 0, 0, 0, 0]], np.int32)
  src_lengths = np.array([5, 2, 1], np.int32)
  tgt_in = np.array([[0, 2, 3, 1], [0, 3, 3, 2], [0, 2, 2, 2]], np.int32)
  logits, weights = model.apply(params, src, src_lengths, tgt_in, return_attention=True)
  want_logits, want_weights = _oracle_logits(params, attention, src, src_lengths, tgt_in,
                                             hidden=5)
  assert weights.shape == (3, 4, 5)
  np.testing.assert_allclose(logits, want_logits, **F64)
  np.testing.assert_allclose(weights, want_weights, **F64)
  # Each output step's weights are a distribution over the valid source steps only.
  np.testing.assert_allclose(weights.sum(-1), np.ones((3, 4)), rtol=1e-12)
  np.testing.assert_array_equal(model.apply(params, src, src_lengths, tgt_in), logits)
  # The same through jit, and with a leading batch shape of rank 2.
  jitted = jax.jit(functools.partial(model.apply, return_attention=True))
  _, w2 = jitted(params, src[None], src_lengths[None], tgt_in[None])
  np.testing.assert_allclose(w2[0], weights, **F64)


def test_return_attention_bad_input():
  model, params = _model(None)
  src, tgt_in = np.zeros((2, 3), np.int32), np.zeros((2, 2), np.int32)
  with pytest.raises(ValueError, match="needs a model built with attention"):
    model.apply(params, src, None, tgt_in, return_attention=True)
  model, params = _model("dot")
  with pytest.raises(TypeError, match="return_attention must be a bool"):
    model.apply(params, src, None, tgt_in, return_attention="yes")


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_equals_beam_width_one(attention):
  model, params = _model(attention, seed=1)
  src = jnp.array([[2, 3, 4], [5, 4, 0], [3, 0, 0], [4, 4, 4]], jnp.int32)
  src_lengths = jnp.array([3, 2, 1, 3], jnp.int32)
  kw = dict(max_length=5, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  greedy = jax.jit(functools.partial(jr.greedy_decode, model, **kw))(params, src, src_lengths)
  beam = jax.jit(functools.partial(jr.beam_search, model, beam_width=1, **kw))(
      params, src, src_lengths)
  np.testing.assert_array_equal(beam.sequences[:, 0], greedy.tokens)
  np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
  # Greedy itself is the step-by-step argmax.
  memory, state = model.encode(params, src, src_lengths)
  token = jnp.full((4,), BOS, jnp.int32)
  done = np.zeros(4, bool)
  for t in range(5):
    state, logits = model.decode_step(params, memory, state, token)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    want = np.where(done, PAD, np.asarray(token))
    np.testing.assert_array_equal(greedy.tokens[:, t], want)
    done |= want == EOS


def _brute_force(model, params, src, src_lengths, max_length, vocab):
  """Every output sequence (EOS ends it; `max_length` tokens without EOS also count), with its
  log-probability under the model, for each source: lists of (tokens, score, length)."""
  memory, state = model.encode(params, src, src_lengths)
  step = jax.jit(model.decode_step)
  results = []
  for b in range(src.shape[0]):
    mem_b = jax.tree_util.tree_map(lambda a: a[b], memory)
    found = []

    def expand(state, prefix, score):
      new_state, logits = step(params, mem_b, state, jnp.int32(prefix[-1] if prefix else BOS))
      logp = np.asarray(jax.nn.log_softmax(logits))
      for v in range(vocab):
        seq, s = prefix + [v], score + logp[v]
        if v == EOS or len(seq) == max_length:
          found.append((seq + [PAD] * (max_length - len(seq)), s, len(seq)))
        else:
          expand(new_state, seq, s)

    expand(jax.tree_util.tree_map(lambda a: a[b], state), [], 0.0)
    results.append(found)
  return results


def test_beam_search_skips_the_decoder_once_every_beam_has_ended():
  """With EOS made certain after the first token, every beam ends by step 2: the decoder runs
  twice, not `max_length` times, and the result is the 2-step search's, padded."""
  model, params = _model(None, tgt_vocab=4, seed=3)
  params["head"]["b"] = params["head"]["b"].at[EOS].add(30.0)
  src = jnp.array([[2, 3, 4], [5, 4, 0]], jnp.int32)
  calls = []

  def counted(params, memory, state, token):
    jax.debug.callback(lambda: calls.append(1))
    return model.decode_step(params, memory, state, token)

  kw = dict(beam_width=3, bos_id=BOS, eos_id=EOS, pad_id=PAD, length_penalty=0.5)
  got = jax.jit(lambda p: jr.beam_search(model._replace(decode_step=counted), p, src,
                                         max_length=6, **kw))(params)
  jax.effects_barrier()
  assert len(calls) == 2, len(calls)
  short = jr.beam_search(model, params, src, max_length=2, **kw)
  assert int(short.lengths.min()) >= 1 and bool(jnp.any(short.sequences == EOS))
  np.testing.assert_array_equal(got.sequences[..., :2], short.sequences)
  np.testing.assert_array_equal(got.sequences[..., 2:], PAD)
  np.testing.assert_array_equal(got.lengths, short.lengths)
  np.testing.assert_allclose(got.scores, short.scores, **F64)


def test_beam_search_finds_the_brute_force_optimum():
  vocab, steps = 4, 3
  model, params = _model("additive", tgt_vocab=vocab, seed=2)
  src = jnp.array([[2, 3, 4], [5, 4, 0]], jnp.int32)
  src_lengths = jnp.array([3, 2], jnp.int32)
  everything = _brute_force(model, params, src, src_lengths, steps, vocab)
  n_all = 1 + 3 + 9 + 27  # EOS at step 1, 2 or 3, or no EOS
  assert all(len(found) == n_all for found in everything)
  kw = dict(max_length=steps, bos_id=BOS, eos_id=EOS, pad_id=PAD)

  for alpha in (0.0, 0.6):
    penalty = lambda n: ((5.0 + n) / 6.0) ** alpha
    # Width 40 keeps every hypothesis (exhaustive), so the whole ranking must match.
    beam = jax.jit(functools.partial(jr.beam_search, model, beam_width=n_all,
                                     length_penalty=alpha, **kw))(params, src, src_lengths)
    for b, found in enumerate(everything):
      ranked = sorted(found, key=lambda r: -r[1] / penalty(r[2]))
      np.testing.assert_array_equal(beam.sequences[b], [r[0] for r in ranked])
      np.testing.assert_allclose(beam.scores[b], [r[1] / penalty(r[2]) for r in ranked], **F64)
      np.testing.assert_array_equal(beam.lengths[b], [r[2] for r in ranked])

  # Width 13 keeps every prefix of length 2 (1 finished + 3 + 9), so the best must be found.
  beam = jr.beam_search(model, params, src, src_lengths, beam_width=13, **kw)
  for b, found in enumerate(everything):
    best = max(found, key=lambda r: r[1])
    np.testing.assert_array_equal(beam.sequences[b, 0], best[0])
    np.testing.assert_allclose(beam.scores[b, 0], best[1], **F64)
    # Sorted best first.
    assert np.all(np.diff(np.asarray(beam.scores[b])) <= 0)


def _reverse_task():
  """All sources over symbols {3, 4, 5} of length 2 or 3 (pad 0); the target is the source
  reversed then EOS. Decoder input: BOS then the target without its last token."""
  src, lengths, tgt_in, tgt_out = [], [], [], []
  for n in (2, 3):
    for seq in itertools.product((3, 4, 5), repeat=n):
      rev = list(seq[::-1])
      src.append(list(seq) + [0] * (3 - n))
      lengths.append(n)
      tgt_in.append([BOS] + rev + [0] * (3 - n))
      tgt_out.append(rev + [EOS] + [0] * (3 - n))
  return tuple(jnp.asarray(a, jnp.int32) for a in (src, lengths, tgt_in, tgt_out))


def test_tiny_seq2seq_learns_to_reverse():
  src, lengths, tgt_in, tgt_out = _reverse_task()
  model = jr.seq2seq(jr.rnn(jr.gru(16)), jr.gru(16), src_vocab=6, tgt_vocab=6, embed_dim=8,
                     attention="dot")
  params = model.init(_key(0))
  opt = optax.adam(1e-2)

  def loss_fn(p):
    return jr.masked_cross_entropy(model.apply(p, src, lengths, tgt_in), tgt_out, lengths + 1)

  @jax.jit
  def update(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    # optax's Adam bias correction computes `decay ** count` (a Python float to an int32
    # power), which strict promotion (conftest.py) rejects; the model itself runs strict.
    with jax.numpy_dtype_promotion("standard"):
      updates, s = opt.update(grads, s, p)
      return optax.apply_updates(p, updates), s, loss

  state = opt.init(params)
  losses = []
  for _ in range(200):
    params, state, loss = update(params, state)
    losses.append(float(loss))
  # A uniform guess costs log(6) = 1.79 nats per token; the task is deterministic, so a model
  # that learns it drives the loss towards 0.
  assert losses[0] > 1.0
  assert losses[-1] < 0.1 * losses[0], losses[::20]
  out = jr.greedy_decode(model, params, src, lengths, max_length=4, bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(out.tokens, tgt_out)


def test_check_grads_through_teacher_forced_loss():
  # Additive attention: the path with the most parameters (w_q, w_k, v, w_c); dot attention's
  # gradients are checked on their own below.
  model, params = _model("additive", hidden=3, src_vocab=4, tgt_vocab=3, embed_dim=2, seed=3)
  src = jnp.array([[2, 3, 1], [3, 0, 0]], jnp.int32)
  src_lengths = jnp.array([3, 1], jnp.int32)
  tgt_in = jnp.array([[0, 2], [0, 1]], jnp.int32)
  tgt_out = jnp.array([[2, 1], [1, 0]], jnp.int32)

  def loss(p):
    return jr.masked_cross_entropy(model.apply(p, src, src_lengths, tgt_in), tgt_out,
                                   jnp.array([2, 1], jnp.int32))

  check_grads(jax.jit(loss), (params,), order=1, modes=("rev",))


@pytest.mark.parametrize("attention", ["dot", "additive"])
def test_check_grads_through_attention(attention):
  ks = jax.random.split(_key(4), 5)
  outputs = jax.random.normal(ks[0], (2, 4, 3), jnp.float64)
  query = jax.random.normal(ks[1], (2, 3), jnp.float64)
  mask = jnp.asarray(np.arange(4)[None] < np.array([4, 2])[:, None])
  att = {"w_q": jax.random.normal(ks[2], (3, 2), jnp.float64),
         "w_k": jax.random.normal(ks[3], (3, 2), jnp.float64),
         "v": jax.random.normal(ks[4], (2,), jnp.float64)}

  def context(att, outputs, query):
    keys = outputs @ att["w_k"] if attention == "additive" else None
    c, w = _seq2seq.attend(attention, att, _seq2seq.Memory(outputs, keys, mask), query)
    return c, w

  c, w = context(att, outputs, query)
  np.testing.assert_allclose(jnp.sum(w, axis=-1), [1.0, 1.0], **F64)
  assert np.all(np.asarray(w)[1, 2:] == 0.0)
  check_grads(jax.jit(context), (att, outputs, query), order=2, modes=("rev",))


def test_bad_input():
  model, params = _model("dot")
  src = jnp.array([[2, 3]], jnp.int32)
  kw = dict(max_length=3, bos_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match="beam_width"):
    jr.beam_search(model, params, src, beam_width=0, **kw)
  with pytest.raises(ValueError, match="max_length"):
    jr.beam_search(model, params, src, beam_width=2, max_length=0, bos_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match="length_penalty"):
    jr.beam_search(model, params, src, beam_width=2, length_penalty=-1.0, **kw)
  with pytest.raises(ValueError, match="max_length"):
    jr.greedy_decode(model, params, src, max_length=0, bos_id=BOS)
  with pytest.raises(TypeError, match="integer"):
    model.apply(params, jnp.ones((1, 2), jnp.float32), None, jnp.zeros((1, 2), jnp.int32))
  with pytest.raises(ValueError, match="tgt_in"):
    model.apply(params, src, None, jnp.zeros((2, 2), jnp.int32))
  with pytest.raises(ValueError, match="dot attention"):
    jr.seq2seq(jr.rnn(jr.gru(4)), jr.gru(5), src_vocab=3, tgt_vocab=3, embed_dim=2,
               attention="dot").init(_key(0))
  mismatched = jr.seq2seq(jr.rnn(jr.gru(4)), jr.lstm(4), src_vocab=3, tgt_vocab=3, embed_dim=2)
  with pytest.raises(ValueError, match="bridge='zeros'"):
    mismatched.apply(mismatched.init(_key(0)), src, None, src)
  with pytest.raises(ValueError, match="attention"):
    jr.seq2seq(jr.rnn(jr.gru(4)), jr.gru(4), src_vocab=3, tgt_vocab=3, embed_dim=2,
               attention="luong")
  with pytest.raises(ValueError, match="bridge"):
    jr.seq2seq(jr.rnn(jr.gru(4)), jr.gru(4), src_vocab=3, tgt_vocab=3, embed_dim=2,
               bridge="mean")
  with pytest.raises(TypeError, match="jr.Layer"):
    jr.seq2seq(jr.gru(4), jr.gru(4), src_vocab=3, tgt_vocab=3, embed_dim=2)


def test_bridge_zeros_works_with_any_encoder():
  model = jr.seq2seq(jr.bidirectional(jr.rnn(jr.gru(3)), jr.rnn(jr.gru(3))),
                     jr.lstm(4), src_vocab=5, tgt_vocab=5, embed_dim=2, attention="additive",
                     bridge="zeros")
  params = model.init(_key(0))
  logits = model.apply(params, jnp.array([[2, 3, 4]], jnp.int32), jnp.array([2], jnp.int32),
                       jnp.array([[0, 2]], jnp.int32))
  assert logits.shape == (1, 2, 5) and bool(jnp.all(jnp.isfinite(logits)))
