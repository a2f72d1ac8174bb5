"""`jr.seq2seq`: an encoder-decoder over token ids, with optional attention, teacher forcing
for training, and greedy decoding and beam search for inference."""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _stack
from jaxrnn.models import _embedding, _generate, _heads

PyTree = Any
Array = jax.Array

ATTENTIONS = (None, "dot", "additive")
BRIDGES = ("carry", "zeros")


class Memory(NamedTuple):
  """What the decoder reads from the encoder.

  Attributes:
    outputs: `(..., S, He)`, the encoder's outputs (zeros at padding).
    keys: `(..., S, A)`, the outputs projected once for additive attention, else `None`.
    mask: bool `(..., S)`, the valid source steps.
  """

  outputs: Array
  keys: Optional[Array]
  mask: Array


class DecoderState(NamedTuple):
  """The decoder's carry between steps.

  Attributes:
    cell: the decoder cell's carry.
    feed: `(..., Hd)`, the previous attentional vector (fed back with the next token, Luong's
      "input feeding"), or `None` without attention.
  """

  cell: PyTree
  feed: Optional[Array]


class Seq2Seq(NamedTuple):
  """An encoder-decoder model (see `jr.seq2seq`).

  Attributes:
    init: `init(key) -> params`, a dict with keys `src_embedding`, `tgt_embedding`, `encoder`,
      `decoder`, `attention` (`{}` without attention) and `head`.
    apply: `apply(params, src (..., S), src_lengths (...) | None, tgt_in (..., T), *,
      return_attention=False) -> logits (..., T, V)`: teacher forcing (`tgt_in` is the target
      shifted right, BOS first). With `return_attention=True` (a model with attention only) it
      returns `(logits, weights (..., T, S))`, row `t` the attention of output step `t` over the
      source (zero at padding). Feeding a decoded output back in this way (BOS, then its
      tokens) gives the weights the decoder used while decoding it.
    encode: `encode(params, src, src_lengths) -> (Memory, DecoderState)`.
    decode_step: `decode_step(params, memory, state, token (...)) -> (state, logits (..., V))`.
  """

  init: Callable[..., PyTree]
  apply: Callable[..., Array]
  encode: Callable[..., tuple]
  decode_step: Callable[..., tuple]


def attend(attention: str, params, memory: Memory, query: Array):
  """Attention of `query (..., Hd)` over `memory` (masked by its source lengths).

  `"dot"` (Luong et al. 2015): `score_s = <out_s, query>` (needs `He == Hd`).
  `"additive"` (Bahdanau et al. 2015): `score_s = v . tanh(out_s W_k + query W_q)`.
  Padding steps get weight 0; a sequence with no valid step gets the context 0.

  Returns:
    `(context (..., He), weights (..., S))`.
  """
  outputs = memory.outputs
  if attention == "dot":
    scores = jnp.einsum("...sh,...h->...s", outputs, query)
  else:
    q = query @ params["w_q"].astype(query.dtype)
    hidden = jnp.tanh(memory.keys + q[..., None, :])
    scores = hidden @ params["v"].astype(query.dtype)
  lowest = jnp.asarray(jnp.finfo(scores.dtype).min, scores.dtype)
  weights = jax.nn.softmax(jnp.where(memory.mask, scores, lowest), axis=-1)
  weights = jnp.where(memory.mask, weights, jnp.zeros((), weights.dtype))
  context = jnp.einsum("...s,...sh->...h", weights, outputs)
  return context, weights


def seq2seq(encoder: _types.Layer, decoder: _types.Cell, *, src_vocab: int, tgt_vocab: int,
            embed_dim: int, attention: Optional[str] = None,
            attention_dim: Optional[int] = None, bridge: str = "carry",
            param_dtype=jnp.float32) -> Seq2Seq:
  r"""An RNN encoder-decoder (Sutskever et al. 2014), optionally with attention.

  The encoder layer reads the embedded source with its lengths; the decoder cell reads, at
  step `t`, the embedded previous target token and (with attention) the previous attentional
  vector:

  .. math::
      x_t &= [E_{tgt}(y_{t-1});\ \tilde h_{t-1}] \\
      s_t, h_t &= \mathrm{cell}(s_{t-1}, x_t) \\
      c_t &= \textstyle\sum_s \alpha_{ts}\, o_s, \quad \alpha_t = \mathrm{softmax}_{s < S_b}(
             \mathrm{score}(o_s, h_t)) \\
      \tilde h_t &= \tanh([c_t;\ h_t] W_c), \qquad \mathrm{logits}_t = \tilde h_t W + b

  (Luong et al. 2015 with input feeding; without attention, `x_t = E(y_{t-1})` and the head
  reads `h_t`). `score` is `"dot"` (`o_s . h_t`) or `"additive"` (`v . tanh(o_s W_k + h_t W_q)`,
  Bahdanau's form); padding source steps get zero weight.

  Args:
    encoder: a `jr.Layer` over `(..., S, embed_dim)`, e.g. `jr.rnn(jr.lstm(H))`.
    decoder: a `jr.Cell`, e.g. `jr.lstm(H)`.
    src_vocab, tgt_vocab: vocabulary sizes.
    embed_dim: the size of both embeddings.
    attention: `None`, `"dot"` (needs encoder output size == decoder output size) or
      `"additive"`.
    attention_dim: the hidden size A of additive attention (default: the decoder's size).
    bridge: the decoder's initial cell carry: `"carry"`, the encoder's final carry (its
      structure and shapes must equal the decoder's, e.g. `jr.rnn(jr.lstm(H))` with
      `jr.lstm(H)`), or `"zeros"`.
    param_dtype: the dtype of the embeddings, attention and head parameters.

  Returns:
    A `Seq2Seq(init, apply, encode, decode_step)`; decode with `jr.greedy_decode` or
    `jr.beam_search`.

  References:
    Sutskever, Vinyals & Le, "Sequence to Sequence Learning with Neural Networks", 2014.
    Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align and
    Translate", 2015. Luong, Pham & Manning, "Effective Approaches to Attention-based Neural
    Machine Translation", 2015.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> model = jr.seq2seq(jr.rnn(jr.lstm(8)), jr.lstm(8), src_vocab=5, tgt_vocab=6,
  ...                    embed_dim=4, attention="dot")
  >>> params = model.init(jax.random.key(0))
  >>> src, tgt_in = jnp.zeros((2, 7), jnp.int32), jnp.zeros((2, 3), jnp.int32)
  >>> model.apply(params, src, jnp.array([7, 4]), tgt_in).shape
  (2, 3, 6)
  """
  if not isinstance(encoder, _types.Layer):
    raise TypeError(f"seq2seq: encoder must be a jr.Layer (e.g. jr.rnn(jr.lstm(H))), got "
                    f"{type(encoder).__name__}")
  if not isinstance(decoder, _types.Cell):
    raise TypeError(f"seq2seq: decoder must be a jr.Cell, got {type(decoder).__name__}")
  if attention not in ATTENTIONS:
    raise ValueError(f"seq2seq: attention must be one of {ATTENTIONS}, got {attention!r}")
  if bridge not in BRIDGES:
    raise ValueError(f"seq2seq: bridge must be one of {BRIDGES}, got {bridge!r}")
  if attention_dim is not None:
    attention_dim = _types.check_hidden_size(attention_dim, "attention_dim")
  embed_dim = _types.check_hidden_size(embed_dim, "embed_dim")
  src_embed = _embedding.embedding(src_vocab, embed_dim, param_dtype=param_dtype)
  tgt_embed = _embedding.embedding(tgt_vocab, embed_dim, param_dtype=param_dtype)
  head = _heads.dense(tgt_vocab, param_dtype=param_dtype)
  glorot = jax.nn.initializers.glorot_uniform()

  def init(key):
    ks = jax.random.split(key, 8)
    enc_params = encoder.init(ks[0], embed_dim)
    enc_size = _stack.output_size(encoder, enc_params, embed_dim)
    probe = jax.eval_shape(lambda k: decoder.init(k, embed_dim), ks[1])
    dec_size = _generate.cell_output_size(decoder, probe, embed_dim)
    dec_in = embed_dim + (dec_size if attention else 0)
    att = {}
    if attention == "dot" and enc_size != dec_size:
      raise ValueError(f"seq2seq: dot attention needs the encoder's output size ({enc_size}) to "
                       f"equal the decoder's ({dec_size}); use attention='additive'")
    if attention == "additive":
      a = attention_dim or dec_size
      att = {"w_q": glorot(ks[2], (dec_size, a), param_dtype),
             "w_k": glorot(ks[3], (enc_size, a), param_dtype),
             "v": jax.random.normal(ks[4], (a,), param_dtype) / jnp.sqrt(
                 jnp.asarray(a, param_dtype))}
    if attention:
      att["w_c"] = glorot(ks[5], (enc_size + dec_size, dec_size), param_dtype)
    return {"src_embedding": src_embed.init(ks[6]), "tgt_embedding": tgt_embed.init(ks[7]),
            "encoder": enc_params, "decoder": decoder.init(ks[1], dec_in), "attention": att,
            "head": head.init(jax.random.fold_in(key, 1), dec_size)}

  def encode(params, src, src_lengths=None):
    src = _embedding.check_tokens(src, "seq2seq: src")
    if src.ndim < 1:
      raise ValueError(f"seq2seq: src must have shape (..., S), got {src.shape}")
    batch, steps = src.shape[:-1], src.shape[-1]
    xs = src_embed.apply(params["src_embedding"], src)
    enc_carry, outputs = encoder.apply(params["encoder"], xs, lengths=src_lengths)
    if src_lengths is None:
      mask = jnp.ones(batch + (steps,), bool)
    else:
      mask = _heads.sequence_mask(src_lengths, steps)
    keys = None
    if attention == "additive":
      keys = outputs @ params["attention"]["w_k"].astype(outputs.dtype)
    initial = decoder.initial_carry(batch, outputs.dtype)
    cell_carry = _bridge(enc_carry, initial) if bridge == "carry" else initial
    feed = None
    if attention:
      feed = jnp.zeros(batch + (params["head"]["w"].shape[0],), outputs.dtype)
    return Memory(outputs, keys, mask), DecoderState(cell_carry, feed)

  def step(params, memory, state, token):
    """One decoder step: `(state, logits, attention weights (..., S) or None)`."""
    token = _embedding.check_tokens(token, "seq2seq: token")
    if token.shape != memory.mask.shape[:-1]:
      raise ValueError(f"seq2seq: token has shape {token.shape}, expected the source batch "
                       f"shape {memory.mask.shape[:-1]}")
    x = tgt_embed.apply(params["tgt_embedding"], token)
    if attention:
      x = jnp.concatenate([x, state.feed], axis=-1)
    cell_carry, h = decoder.step(params["decoder"], state.cell, x)
    feed = weights = None
    if attention:
      context, weights = attend(attention, params["attention"], memory, h)
      w_c = params["attention"]["w_c"].astype(h.dtype)
      feed = jnp.tanh(jnp.concatenate([context, h], axis=-1) @ w_c)
      h = feed
    return DecoderState(cell_carry, feed), head.apply(params["head"], h), weights

  def decode_step(params, memory, state, token):
    state, logits, _ = step(params, memory, state, token)
    return state, logits

  def apply(params, src, src_lengths, tgt_in, *, return_attention=False):
    return_attention = _types.check_flag(return_attention, "seq2seq: return_attention")
    if return_attention and not attention:
      raise ValueError("seq2seq: return_attention=True needs a model built with attention "
                       "('dot' or 'additive'); this one has none")
    src = _embedding.check_tokens(src, "seq2seq: src")
    tgt_in = _embedding.check_tokens(tgt_in, "seq2seq: tgt_in")
    if tgt_in.ndim < 1 or tgt_in.shape[:-1] != src.shape[:-1]:
      raise ValueError(f"seq2seq: tgt_in has shape {tgt_in.shape}; expected (..., T) with the "
                       f"leading shape of src {src.shape[:-1]}")
    memory, state = encode(params, src, src_lengths)

    def body(state, token):
      state, logits, weights = step(params, memory, state, token)
      return state, (logits, weights if return_attention else None)

    _, (logits, weights) = jax.lax.scan(body, state, jnp.moveaxis(tgt_in, -1, 0))
    logits = jnp.moveaxis(logits, 0, -2)
    if return_attention:
      return logits, jnp.moveaxis(weights, 0, -2)
    return logits

  return Seq2Seq(init=init, apply=apply, encode=encode, decode_step=decode_step)


def _bridge(enc_carry, initial):
  """The encoder's final carry as the decoder's initial one, if their shapes agree."""
  got, want = jax.tree_util.tree_structure(enc_carry), jax.tree_util.tree_structure(initial)
  shapes = lambda t: [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(t)]
  if got != want or shapes(enc_carry) != shapes(initial):
    raise ValueError(
        f"seq2seq(bridge='carry'): the encoder's final carry {got} with leaves "
        f"{shapes(enc_carry)} does not match the decoder's carry {want} with leaves "
        f"{shapes(initial)}; use a matching encoder (e.g. jr.rnn(jr.lstm(H)) with jr.lstm(H)) "
        "or bridge='zeros'")
  return enc_carry


# ---------------------------------------------------------------------------------------------
# Inference


def greedy_decode(model: Seq2Seq, params, src, src_lengths=None, *, max_length: int,
                  bos_id: int, eos_id: Optional[int] = None,
                  pad_id: int = 0) -> _generate.Generation:
  """Greedy decoding: at each step the most likely token, fed back in.

  Equals `jr.beam_search(..., beam_width=1)`. Jit-able (one `lax.scan` of `max_length` steps).

  Returns:
    `jr.Generation(tokens (..., max_length), lengths (...), carry)`: tokens after EOS are
    `pad_id`; `lengths` count the EOS.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> model = jr.seq2seq(jr.rnn(jr.gru(8)), jr.gru(8), src_vocab=5, tgt_vocab=5, embed_dim=4)
  >>> params = model.init(jax.random.key(0))
  >>> out = jr.greedy_decode(model, params, jnp.array([[3, 4, 2]]), max_length=4, bos_id=0,
  ...                        eos_id=1)
  >>> out.tokens.shape
  (1, 4)
  """
  memory, state = model.encode(params, src, src_lengths)
  first = jnp.full(memory.mask.shape[:-1], _generate.check_token_id(bos_id, "bos_id"), jnp.int32)
  _check_ids(_vocab(model, params, memory, state, first)[0], "greedy_decode", bos_id=bos_id,
             eos_id=eos_id)
  return _generate.generate(_memory_step(model), (params, memory), state, first, None,
                            max_length=max_length, greedy=True, eos_id=eos_id, pad_id=pad_id)


def _vocab(model: Seq2Seq, params, memory, state, token) -> tuple:
  """The decoder's vocabulary size V and logits dtype, by abstract evaluation."""
  logits = jax.eval_shape(lambda s, t: model.decode_step(params, memory, s, t)[1], state, token)
  return logits.shape[-1], logits.dtype


def _check_ids(vocab: int, what: str, **ids) -> None:
  """The decoder reads the ids it emits, so BOS and EOS must be ids of its vocabulary `[0, V)`:
  an id outside it would embed to NaN and make every score NaN."""
  for name, value in ids.items():
    if value is not None and not 0 <= value < vocab:
      raise ValueError(f"{what}: {name}={value} is outside the decoder's vocabulary [0, {vocab})")


def _distinct_hypotheses(vocab: int, steps: int, cap: int) -> int:
  """How many distinct outputs of at most `steps` tokens there are when `eos_id` ends one
  (capped at `cap`): those ending with EOS at step k, `(V - 1) ** (k - 1)` each, plus the
  `(V - 1) ** steps` without EOS."""
  total, power = 0, 1
  for _ in range(steps):
    total += power
    power *= vocab - 1
    if total + power >= cap:
      return cap
  return total + power


def _memory_step(model: Seq2Seq):
  def step(params_and_memory, state, token):
    params, memory = params_and_memory
    return model.decode_step(params, memory, state, token)

  return step


class BeamSearchResult(NamedTuple):
  """What `jr.beam_search` returns, best hypothesis first.

  Attributes:
    sequences: int32 `(..., beam_width, max_length)`, `pad_id` after EOS.
    scores: `(..., beam_width)`, the sum of the tokens' log-probabilities (the EOS included),
      divided by the length penalty when `length_penalty > 0`.
    lengths: int32 `(..., beam_width)`, the EOS included (`max_length` where none came).
  """

  sequences: Array
  scores: Array
  lengths: Array


def beam_search(model: Seq2Seq, params, src, src_lengths=None, *, beam_width: int,
                max_length: int, bos_id: int, eos_id: int, length_penalty: float = 0.0,
                pad_id: int = 0) -> BeamSearchResult:
  """Beam search over the decoder: keeps the `beam_width` most likely prefixes at every step.

  At each step every live beam is extended by every token and the `beam_width` best
  candidates over all (beam, token) pairs are kept (by the sum of log-probabilities); each
  kept candidate takes its parent's decoder state. A beam that has emitted `eos_id` is
  finished: it stays a candidate with its score unchanged, emits `pad_id` and its state is
  frozen. Hypotheses still open at `max_length` compete with finished ones on their score so
  far. The loop is one `lax.scan` over the fixed `max_length`, so the call is jit-able. Once
  every beam of every sequence in the batch has ended, the remaining steps skip the decoder
  (a `lax.cond`; under `jax.vmap` both branches run): they would only re-rank the ended
  beams by score, which the skipped steps still do, so the result is the same as running
  every step.

  The search itself compares raw log-probabilities; `length_penalty = alpha > 0` then ranks the
  final hypotheses by `score / ((5 + length) / 6) ** alpha` (Wu et al. 2016), which favours
  longer outputs.

  Args:
    model: a `jr.seq2seq` model (anything with its `encode` and `decode_step`).
    params: its parameters.
    src: int `(..., S)`; src_lengths: int `(...)` or `None`.
    beam_width: K >= 1 (K = 1 is greedy decoding), at most the number of distinct outputs of
      up to `max_length` tokens (a larger K raises `ValueError` rather than return filler
      hypotheses).
    max_length: the number of decoding steps, >= 1.
    bos_id: the first token fed to the decoder; eos_id: the end-of-sequence id; both in the
      decoder's vocabulary `[0, V)` (`ValueError` otherwise).
    length_penalty: alpha >= 0.
    pad_id: written after EOS.

  Returns:
    `BeamSearchResult(sequences (..., K, max_length), scores (..., K), lengths (..., K))`,
    sorted best first.

  References:
    Wu et al., "Google's Neural Machine Translation System", 2016 (the length penalty).

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> model = jr.seq2seq(jr.rnn(jr.gru(8)), jr.gru(8), src_vocab=5, tgt_vocab=5, embed_dim=4)
  >>> params = model.init(jax.random.key(0))
  >>> out = jr.beam_search(model, params, jnp.array([[3, 4, 2]]), beam_width=3, max_length=4,
  ...                      bos_id=0, eos_id=1)
  >>> out.sequences.shape, out.scores.shape
  ((1, 3, 4), (1, 3))
  """
  width = _generate.check_positive_int(beam_width, "beam_width")
  steps = _generate.check_positive_int(max_length, "max_length")
  bos_id = _generate.check_token_id(bos_id, "bos_id")
  eos_id = _generate.check_token_id(eos_id, "eos_id")
  pad_id = _generate.check_token_id(pad_id, "pad_id")
  if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
    raise TypeError(f"length_penalty must be a float, got {length_penalty!r}")
  if length_penalty < 0:
    raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")

  memory, state = model.encode(params, src, src_lengths)
  batch = memory.mask.shape[:-1]
  nb = len(batch)
  beams = batch + (width,)

  def tile(a):
    return jnp.repeat(jnp.expand_dims(a, nb), width, axis=nb)

  memory = jax.tree_util.tree_map(tile, memory)
  state = jax.tree_util.tree_map(tile, state)
  prev = jnp.full(beams, bos_id, jnp.int32)
  vocab, dtype = _vocab(model, params, memory, state, prev)
  _check_ids(vocab, "beam_search", bos_id=bos_id, eos_id=eos_id)
  distinct = _distinct_hypotheses(vocab, steps, width + 1)
  if width > distinct:
    raise ValueError(f"beam_search: beam_width={width} exceeds the {distinct} distinct "
                     f"outputs of at most max_length={steps} tokens over a vocabulary of "
                     f"{vocab} (EOS ending one); use a beam_width of at most that")
  neg_inf = jnp.asarray(-jnp.inf, dtype)
  # Only beam 0 is live at the start, so the first step expands one hypothesis, not K copies.
  scores = jnp.broadcast_to(
      jnp.where(jnp.arange(width) == 0, jnp.zeros((), dtype), neg_inf), beams)
  finished = jnp.zeros(beams, bool)
  lengths = jnp.zeros(beams, jnp.int32)
  sequences = jnp.full(beams + (steps,), pad_id, jnp.int32)
  first_slot = (jnp.arange(vocab) == 0).reshape((1,) * len(beams) + (vocab,))

  def gather(parent, a):
    """`a[..., parent[..., k], ...]` along the beam axis, for a leaf `(..., K, *rest)`."""
    index = parent.reshape(parent.shape + (1,) * (a.ndim - parent.ndim))
    return jnp.take_along_axis(a, jnp.broadcast_to(index, parent.shape + a.shape[nb + 1:]),
                               axis=nb)

  def decode(state, prev):
    new_state, logits = model.decode_step(params, memory, state, prev)
    return new_state, jax.nn.log_softmax(logits, axis=-1).astype(dtype)

  def ended(state, prev):
    # Every beam is finished: the step below reads neither the new state nor the
    # log-probabilities (a finished beam's one continuation keeps its score).
    return state, jnp.zeros(beams + (vocab,), dtype)

  def body(carry, t):
    state, prev, scores, finished, lengths, sequences = carry
    new_state, logp = jax.lax.cond(jnp.all(finished), ended, decode, state, prev)
    # A finished beam has one continuation (slot 0, emitted as pad) at its unchanged score.
    extended = jnp.where(finished[..., None],
                         jnp.where(first_slot, scores[..., None], neg_inf),
                         scores[..., None] + logp)
    scores, flat = jax.lax.top_k(extended.reshape(batch + (width * vocab,)), width)
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    was_finished = gather(parent, finished)
    token = jnp.where(was_finished, jnp.int32(pad_id), token)
    state = _types.tree_where(was_finished, jax.tree_util.tree_map(
        lambda a: gather(parent, a), state), jax.tree_util.tree_map(
            lambda a: gather(parent, a), new_state))
    prev = jnp.where(was_finished, gather(parent, prev), token)
    lengths = gather(parent, lengths) + (~was_finished).astype(jnp.int32)
    finished = was_finished | (token == eos_id)
    at_t = (jnp.arange(steps) == t).reshape((1,) * len(beams) + (steps,))
    sequences = jnp.where(at_t, token[..., None], gather(parent, sequences))
    return (state, prev, scores, finished, lengths, sequences), None

  init = (state, prev, scores, finished, lengths, sequences)
  (_, _, scores, _, lengths, sequences), _ = jax.lax.scan(body, init, jnp.arange(steps))
  if length_penalty > 0:
    penalty = ((5.0 + lengths.astype(dtype)) / jnp.asarray(6.0, dtype)) ** jnp.asarray(
        length_penalty, dtype)
    scores = scores / penalty
  order = jnp.argsort(-scores, axis=-1, stable=True)
  return BeamSearchResult(sequences=gather(order, sequences), scores=gather(order, scores),
                          lengths=gather(order, lengths))
