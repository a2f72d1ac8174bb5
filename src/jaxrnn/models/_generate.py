"""Autoregressive generation (one-to-many): a language model built from an embedding, a cell
and a head, and `jr.generate`, which samples from any `step_fn(params, carry, token)`."""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxrnn import _streaming, _types
from jaxrnn.drivers import _scan
from jaxrnn.layers import _dropout, _stack
from jaxrnn.models import _embedding, _heads

PyTree = Any


class LanguageModel(NamedTuple):
  """An embedding + cell (or layer) + softmax-head model over token ids.

  Attributes:
    init: `init(key) -> {"embedding": ..., "cell": ..., "head": ...}` (`"cell"` holds the cell's
      or the layer's params; a tied head over outputs of another size than the embedding's
      adds `"projection"`).
    apply: `apply(params, tokens (..., T), *, carry=None, lengths=None, resets=None, key=None,
      train=None) -> (carry, logits (..., T, V))`, the whole sequence at once (teacher
      forcing); `key`/`train` reach a layer's dropout.
    step: `step(params, carry, token (...)) -> (carry, logits (..., V))`, one token; this is the
      `step_fn` that `jr.generate` takes.
    initial_carry: the cell's or layer's `initial_carry(batch_shape=(), dtype=None)`.
  """

  init: Callable[..., PyTree]
  apply: Callable[..., tuple]
  step: Callable[..., tuple]
  initial_carry: Callable[..., PyTree]


def language_model(vocab_size: int, embed_dim: int,
                   cell: Union[_types.Cell, _types.Layer], *,
                   tie_embeddings: bool = False, param_dtype=jnp.float32) -> LanguageModel:
  """A recurrent language model: `logits_t = head(cell(embed(token_t), carry_{t-1}))`.

  The recurrent part is a `jr.Cell`, or a forward-running `jr.Layer` such as a stack of layers
  (`jr.stack(jr.rnn(jr.lstm(256)), jr.rnn(jr.lstm(256)), dropout=0.3)`). A layer runs the
  whole sequence in `apply` and one token at a time in `step` (`jr.step_layer`); its carry is
  the layer's (a tuple, one entry a layer, for `jr.stack`). A layer that looks ahead in time
  (`jr.bidirectional`, `jr.rnn(cell, reverse=True)`) cannot predict the next token and raises
  `ValueError`.

  Args:
    vocab_size: V, for both the embedding and the head.
    embed_dim: the embedding size (the cell's or layer's input size).
    cell: a `jr.Cell` or a `jr.Layer`; its output size is found by abstract evaluation.
    tie_embeddings: share the embedding table with the head (Press & Wolf 2017; Inan et al.
      2017): the logits are `y @ table.T + b`, the head's params are only `{"b": (V,)}`, and the
      table gets gradient from both uses. Where the cell's or layer's output size `H` differs
      from `embed_dim` (`E`), a learned linear projection maps the outputs to `E` first,
      `logits = (y @ w) @ table.T + b` with params `{"projection": {"w": (H, E)}}` (Glorot
      uniform) beside the others. It has no bias: `(y @ w + c) @ table.T` only adds the
      per-token offset `table @ c`, which the head's `b` already covers. With `H == E` there
      is no projection and the params are `{"embedding", "cell", "head"}` alone.
    param_dtype: the dtype of the embedding and head parameters.

  Returns:
    A `LanguageModel(init, apply, step, initial_carry)`; train `apply` with
    `jr.masked_cross_entropy(logits[..., :-1, :], tokens[..., 1:], lengths - 1)` and sample with
    `jr.generate(model.step, params, carry, first_token, key, max_length=...)`.

  References:
    Press & Wolf, "Using the Output Embedding to Improve Language Models", EACL 2017.
    Inan et al., "Tying Word Vectors and Word Classifiers: A Loss Framework for Language
    Modeling", ICLR 2017.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> lm = jr.language_model(12, 8, jr.gru(16))
  >>> params = lm.init(jax.random.key(0))
  >>> carry, logits = lm.apply(params, jnp.zeros((2, 5), jnp.int32))
  >>> logits.shape
  (2, 5, 12)
  >>> deep = jr.language_model(12, 8, jr.stack(jr.rnn(jr.gru(16)), jr.rnn(jr.gru(16))))
  >>> params = deep.init(jax.random.key(0))
  >>> carry, logits = deep.step(params, deep.initial_carry((2,)), jnp.array([3, 4]))
  >>> logits.shape, len(carry)
  ((2, 12), 2)
  >>> tied = jr.language_model(12, 8, jr.gru(16), tie_embeddings=True)
  >>> tied.init(jax.random.key(0))["projection"]["w"].shape   # 16 outputs -> 8, then table.T
  (16, 8)
  """
  tie_embeddings = _types.check_flag(tie_embeddings, "language_model: tie_embeddings")
  embed = _embedding.embedding(vocab_size, embed_dim, param_dtype=param_dtype)
  head = _heads.dense(vocab_size, param_dtype=param_dtype)
  if isinstance(cell, _types.Cell):
    advance = lambda params, carry, x: cell.step(params, carry, x)
    size_of = lambda p: cell_output_size(cell, p, embed_dim, param_dtype)
    initial_carry = cell.initial_carry

    def run(params, xs, carry, lengths, resets, key, train):
      _dropout.training_key(key, train, "language_model")  # a cell takes no key here
      return _scan.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets)
  elif isinstance(cell, _types.Layer):
    layer = _causal_layer(cell)
    time_major = bool(layer.time_major)
    size_of = lambda p: _stack.output_size(layer, p, embed_dim, param_dtype)
    initial_carry = layer.initial_carry or _no_initial_carry

    advance = lambda params, carry, x: _streaming.step_layer(layer, params, carry, x)

    def run(params, xs, carry, lengths, resets, key, train):
      if time_major:
        xs = jnp.moveaxis(xs, -2, 0)
        resets = None if resets is None else jnp.moveaxis(jnp.asarray(resets), -1, 0)
      carry, ys = layer.apply(params, xs, carry=carry, lengths=lengths, resets=resets, key=key,
                              train=train)
      return carry, (jnp.moveaxis(ys, 0, -2) if time_major else ys)
  else:
    raise TypeError(f"language_model: cell must be a jr.Cell or a jr.Layer, got "
                    f"{type(cell).__name__}")

  # The tied head reads E features; a recurrent part of another output size gets a projection.
  projection = None
  if tie_embeddings:
    abstract = jax.eval_shape(lambda k: cell.init(k, embed_dim), jax.random.key(0))
    if size_of(abstract) != embed_dim:
      projection = _heads.dense(embed_dim, use_bias=False, param_dtype=param_dtype)

  def init_head(key, hidden, table):
    if not tie_embeddings:
      return head.init(key, hidden)
    return {"b": jnp.zeros((table.shape[0],), table.dtype)}

  def logits(params, y):
    if not tie_embeddings:
      return head.apply(params["head"], y)
    if projection is not None:
      y = projection.apply(params["projection"], y)
    return head.apply({"w": params["embedding"]["table"].T, "b": params["head"]["b"]}, y)

  def init(key):
    k_e, k_c, k_h = jax.random.split(key, 3)
    cell_params = cell.init(k_c, embed_dim)
    hidden = size_of(cell_params)
    embed_params = embed.init(k_e)
    params = {"embedding": embed_params, "cell": cell_params,
              "head": init_head(k_h, hidden, embed_params["table"])}
    if projection is not None:
      # The tied head's bias starts at zero and draws no key, so the projection takes k_h.
      params["projection"] = projection.init(k_h, hidden)
    return params

  def apply(params, tokens, *, carry=None, lengths=None, resets=None, key=None, train=None):
    xs = embed.apply(params["embedding"], tokens)
    carry, ys = run(params["cell"], xs, carry, lengths, resets, key, train)
    return carry, logits(params, ys)

  def step(params, carry, token):
    x = embed.apply(params["embedding"], token)
    carry, y = advance(params["cell"], carry, x)
    return carry, logits(params, y)

  return LanguageModel(init=init, apply=apply, step=step, initial_carry=initial_carry)


def _causal_layer(layer: _types.Layer) -> _types.Layer:
  if layer.reverse or not layer.streamable:
    raise ValueError("language_model: the layer looks ahead in time (jr.bidirectional, or "
                     "jr.rnn(cell, reverse=True), alone or in a stack), so it cannot predict the "
                     "next token nor run one token at a time; use forward-running layers")
  return layer


def _no_initial_carry(batch_shape=(), dtype=None):
  raise TypeError("language_model: this jr.Layer has no initial_carry (a user-written layer); "
                  "build the carry for jr.generate yourself, e.g. from model.apply's returned "
                  "carry on a prompt")


def cell_output_size(cell: _types.Cell, params, input_size: int, dtype=jnp.float32) -> int:
  """The size of `cell.step`'s output for an input of `input_size` features (no computation)."""
  x = jax.ShapeDtypeStruct((input_size,), dtype)
  return jax.eval_shape(lambda p, x: cell.step(p, cell.initial_carry((), x.dtype), x)[1],
                        params, x).shape[-1]


def lm_step(embedding: _embedding.Embedding, cell: _types.Cell,
            head: _heads.Dense) -> Callable[..., tuple]:
  """Builds `step(params, carry, token (...)) -> (carry, logits (..., V))` from an embedding, a
  cell and a head, with `params = {"embedding": ..., "cell": ..., "head": ...}`: the `step_fn`
  of `jr.generate` for any model of that shape.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> embed, cell, head = jr.embedding(6, 4), jr.lstm(8), jr.dense(6)
  >>> ks = jax.random.split(jax.random.key(0), 3)
  >>> params = {"embedding": embed.init(ks[0]), "cell": cell.init(ks[1], 4),
  ...           "head": head.init(ks[2], 8)}
  >>> step = jr.lm_step(embed, cell, head)
  >>> carry, logits = step(params, cell.initial_carry((2,)), jnp.array([1, 2]))
  >>> logits.shape
  (2, 6)
  """

  def step(params, carry, token):
    x = embedding.apply(params["embedding"], token)
    carry, y = cell.step(params["cell"], carry, x)
    return carry, head.apply(params["head"], y)

  return step


# ---------------------------------------------------------------------------------------------
# Sampling


# The token id `jr.generate` writes where the logits gave nothing to pick from (see Generation).
INVALID_TOKEN = -1


class Generation(NamedTuple):
  """What `jr.generate` returns.

  Attributes:
    tokens: int32 `(..., max_length)`: the generated tokens (the first token fed is not
      included); after an EOS, `pad_id`. `INVALID_TOKEN` (-1) marks a step whose logits were
      not usable (a NaN or +inf among them, or all -inf: NaN parameters, or a fed token
      outside the embedding's vocabulary), and every later step of that sequence.
    lengths: int32 `(...)`: the number of generated tokens, the EOS included; `max_length` where
      no EOS came.
    carry: the carry after each sequence's last generated token was produced (frozen there).
  """

  tokens: jax.Array
  lengths: jax.Array
  carry: PyTree


def check_positive_int(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{what} must be an int, got {value!r}")
  if value < 1:
    raise ValueError(f"{what} must be >= 1, got {value}")
  return int(value)


def check_token_id(value, what: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{what} must be an int token id, got {value!r}")
  if value < 0:
    raise ValueError(f"{what} must be a non-negative token id, got {value}")
  return int(value)


def check_sampling(temperature, top_k, greedy):
  if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
    raise TypeError(f"temperature must be a positive float, got {temperature!r}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
  if top_k is not None:
    top_k = check_positive_int(top_k, "top_k")
  if not isinstance(greedy, bool):
    raise TypeError(f"greedy must be a bool, got {greedy!r}")
  return float(temperature), top_k


def unusable(logits):
  """Bool `(...)`: logits `(..., V)` that give no distribution to pick from: a NaN or +inf among
  them, or every one -inf (a -inf alone is a legitimately forbidden token)."""
  return (jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=-1)
          | jnp.all(logits == -jnp.inf, axis=-1))


def pick_token(key, logits, *, temperature: float, top_k: Optional[int], greedy: bool):
  """One token id `(...)` (int32) from `logits (..., V)`: argmax, or a sample from
  `softmax(logits / temperature)` restricted to the `top_k` largest logits."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.asarray(temperature, logits.dtype)
  if top_k is None:
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
  # Sampling among the top k candidates by their index (rather than masking logits below the
  # k-th value) keeps exactly k candidates even with ties, and top_k=1 is the argmax.
  values, index = jax.lax.top_k(scaled, top_k)
  choice = jax.random.categorical(key, values, axis=-1)
  return jnp.take_along_axis(index, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


def generate(step_fn: Callable[..., tuple], params: PyTree, carry: PyTree, first_token, key, *,
             max_length: int, temperature: float = 1.0, top_k: Optional[int] = None,
             greedy: bool = False, eos_id: Optional[int] = None, pad_id: int = 0) -> Generation:
  """Generates `max_length` tokens autoregressively, feeding each token back in.

  At step `t`: `carry, logits = step_fn(params, carry, token_{t-1})` (with `token_{-1} =
  first_token`, e.g. a BOS id or the last token of a prompt whose carry is `carry`), then
  `token_t` is the argmax (`greedy=True`) or a sample from `softmax(logits / temperature)`
  restricted to the `top_k` largest logits. Once a sequence has emitted `eos_id`, its later
  tokens are `pad_id`, its carry stays frozen and it no longer counts towards `lengths`.

  Failure is never hidden as a valid token: where a step's logits are unusable (NaN or +inf
  among them, or all -inf; from NaN parameters, or from a `first_token` outside the
  embedding's vocabulary, which `jr.embedding` turns into NaN), that step and every later one
  of that sequence emit `INVALID_TOKEN` (-1), which counts towards `lengths`, and its carry
  stays frozen. Under `jax.experimental.checkify.checkify` the same is reported as an error.

  The loop is one `lax.scan` over the fixed `max_length`, so the whole call is jit-able and
  vmap-able (wrap it in `jax.jit` with the keyword arguments bound, as below). The same key
  gives the same sample; the per-step keys are `jax.random.split(key, max_length)`.

  Args:
    step_fn: `step_fn(params, carry, token (...)) -> (carry, logits (..., V))`, e.g.
      `jr.lm_step(embedding, cell, head)`, `jr.language_model(...).step`, or a closure over a
      seq2seq decoder.
    params: passed to `step_fn` unchanged (an argument rather than a closure constant, so
      that a jitted `generate` takes new weights without recompiling).
    carry: the initial carry, with leading shape `(...)`.
    first_token: int `(...)`, the token fed at the first step.
    key: a PRNG key; unused (may be `None`) with `greedy=True`.
    max_length: the number of steps (>= 1).
    temperature: > 0; lower is closer to greedy.
    top_k: sample among the k most likely tokens only (>= 1, at most V); `None` for all.
    greedy: take the argmax (ignores `temperature`, `top_k` and `key`).
    eos_id: the end-of-sequence id, or `None` to always run `max_length` steps.
    pad_id: the token written after EOS.

  Returns:
    `Generation(tokens (..., max_length), lengths (...), carry)`.

  Raises:
    ValueError: `max_length < 1`, `temperature <= 0`, `top_k < 1` or `top_k > V`, or logits
      whose leading shape is not `first_token`'s.
    TypeError: non-integer `first_token`, `carry=None`, or `key=None` when sampling.

  >>> import functools, jax, jax.numpy as jnp, jaxrnn as jr
  >>> lm = jr.language_model(6, 4, jr.gru(8))
  >>> params = lm.init(jax.random.key(0))
  >>> sample = jax.jit(functools.partial(jr.generate, lm.step, max_length=5, top_k=3, eos_id=1))
  >>> out = sample(params, lm.initial_carry((2,)), jnp.array([0, 0]), jax.random.key(1))
  >>> out.tokens.shape, out.lengths.shape
  ((2, 5), (2,))
  """
  steps = check_positive_int(max_length, "max_length")
  temperature, top_k = check_sampling(temperature, top_k, greedy)
  eos_id = check_token_id(eos_id, "eos_id")
  pad_id = check_token_id(pad_id, "pad_id")
  first_token = _embedding.check_tokens(first_token, "generate: first_token")
  # Checked on the host wherever the ids are known (inside `jax.jit` a captured constant still
  # is, before any conversion traces it); a traced `first_token` cannot be checked here.
  if not isinstance(first_token, jax.core.Tracer) and (np.asarray(first_token) < 0).any():
    raise ValueError(f"generate: first_token holds negative ids "
                     f"{np.asarray(first_token).tolist()}; token ids are >= 0")
  first_token = first_token.astype(jnp.int32)
  if carry is None:
    raise TypeError("generate: carry is None; pass the initial carry for first_token's batch "
                    "shape, e.g. model.initial_carry(first_token.shape) for a "
                    "jr.language_model, or cell.initial_carry(first_token.shape) for the cell "
                    "inside step_fn")
  batch = first_token.shape
  if key is None:
    if not greedy:
      raise TypeError("generate: key is None, but sampling (greedy=False) needs a PRNG key")
    keys = jnp.zeros((steps,), jnp.uint32)  # placeholders the greedy pick ignores
  else:
    keys = jax.random.split(key, steps)

  def body(state, step_key):
    carry, prev, done, failed, length = state
    new_carry, logits = step_fn(params, carry, prev)
    if logits.shape[:-1] != batch:
      raise ValueError(f"generate: step_fn returned logits of shape {logits.shape}, expected "
                       f"{batch} + (vocab,) (the shape of first_token plus the vocabulary)")
    if top_k is not None and top_k > logits.shape[-1]:
      raise ValueError(f"top_k={top_k} exceeds the vocabulary size {logits.shape[-1]}")
    token = pick_token(step_key, logits, temperature=temperature, top_k=top_k, greedy=greedy)
    failed = failed | (~done & unusable(logits))
    checkify.debug_check(~jnp.any(failed), "generate: step_fn returned unusable logits (NaN, "
                         "+inf, or all -inf) for some sequence: NaN parameters, or a fed token "
                         "outside the vocabulary?")
    token = jnp.where(done, jnp.int32(pad_id), token)
    token = jnp.where(failed, jnp.int32(INVALID_TOKEN), token)
    carry = _types.tree_where(done | failed, carry, new_carry)
    length = length + (~done).astype(jnp.int32)
    # A finished sequence keeps feeding its last real token: its output is discarded anyway,
    # and pad_id need not be an id the embedding knows.
    prev = jnp.where(done | failed, prev, token)
    if eos_id is not None:
      done = done | (~failed & (token == eos_id))
    return (carry, prev, done, failed, length), token

  no = jnp.zeros(batch, bool)
  init = (carry, first_token, no, no, jnp.zeros(batch, jnp.int32))
  (carry, _, _, _, lengths), tokens = jax.lax.scan(body, init, keys)
  return Generation(tokens=jnp.moveaxis(tokens, 0, -1), lengths=lengths, carry=carry)
