"""`jr.embedding`: token ids to vectors, the first layer of a language or translation model."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _types


class Embedding(NamedTuple):
  """A token embedding: `init(key) -> {"table": (vocab_size, dim)}` and
  `apply(params, tokens (...)) -> (..., dim)`."""

  init: Callable[..., Any]
  apply: Callable[..., jax.Array]


def check_tokens(tokens, what: str = "tokens") -> jax.Array:
  """Returns `tokens` as an array, or raises `TypeError` unless its dtype is an integer one."""
  tokens = jnp.asarray(tokens)
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"{what} must have an integer dtype (token ids), got {tokens.dtype}")
  return tokens


def embedding(vocab_size: int, dim: int, *, embedding_init=None, dtype=None,
              param_dtype=jnp.float32) -> Embedding:
  """A lookup table mapping token ids `tokens (..., T)` to vectors `(..., T, dim)`.

  Parameters (a dict): `table (vocab_size, dim)`, PyTorch's `nn.Embedding.weight`. Ids outside
  `[0, vocab_size)`, negative ones included (they never wrap around to the end of the table),
  give NaN rows, so a bad id shows up in the loss instead of silently reading another token's
  vector; their rows get no gradient. At padding steps such rows are harmless: `jr.scan` with
  `lengths` never lets padding enter its arithmetic.

  Args:
    vocab_size: the number of token ids V.
    dim: the vector size.
    embedding_init: `(key, shape, dtype) -> array`; default N(0, 1), as `torch.nn.Embedding`.
    dtype: the output dtype; `None` keeps the table's dtype.
    param_dtype: the dtype `init` stores the table in.

  Returns:
    An `Embedding(init, apply)`: `init(key) -> params`, `apply(params, tokens) -> vectors`
    (any leading shape; `TypeError` for non-integer tokens).

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> embed = jr.embedding(10, 4)
  >>> params = embed.init(jax.random.key(0))
  >>> embed.apply(params, jnp.array([[1, 2, 3]])).shape
  (1, 3, 4)
  """
  vocab = _types.check_hidden_size(vocab_size, "vocab_size")
  size = _types.check_hidden_size(dim, "dim")
  table_init = embedding_init or jax.nn.initializers.normal(stddev=1.0)

  def init(key):
    return {"table": table_init(key, (vocab, size), param_dtype)}

  def apply(params, tokens):
    tokens = check_tokens(tokens, "embedding: tokens")
    table = params["table"]
    if table.shape != (vocab, size):
      raise ValueError(f"embedding: table has shape {table.shape}, expected {(vocab, size)}")
    # A select after a clipped gather: `take(mode="fill")` would wrap negative ids first.
    in_range = (tokens >= 0) & (tokens < vocab)
    rows = jnp.take(table, jnp.clip(tokens, 0, vocab - 1), axis=0)
    out = jnp.where(in_range[..., None], rows, jnp.full((), jnp.nan, rows.dtype))
    return out if dtype is None else out.astype(dtype)

  return Embedding(init=init, apply=apply)
