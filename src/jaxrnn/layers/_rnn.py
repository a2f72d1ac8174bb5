"""`jr.rnn`: a cell lifted to a sequence layer."""

from __future__ import annotations

from jaxrnn import _types
from jaxrnn.drivers import _scan


def rnn(cell: _types.Cell, *, reverse: bool = False, time_major: bool = False, unroll=1,
        remat=None) -> _types.Layer:
  """Lifts a cell to a `jr.Layer` that runs it over a sequence with `jr.scan`.

  `init(key, input_size)` is `cell.init`; `apply(params, xs, *, carry=None, lengths=None,
  resets=None, key=None, train=None) -> (carry, ys)` maps `xs (..., T, D)` to `ys (..., T, H)`
  (time first with `time_major=True`). `key` and `train` are accepted for a uniform layer
  interface and unused (wrap the cell, e.g. in `jr.variational_dropout`, for randomness inside).

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.rnn(jr.lstm(8))
  >>> params = layer.init(jax.random.key(0), 3)
  >>> carry, ys = layer.apply(params, jnp.ones((2, 6, 3)))
  >>> ys.shape
  (2, 6, 8)
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"rnn: cell must be a jr.Cell, got {type(cell).__name__}")

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    del key, train
    return _scan.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets,
                      reverse=reverse, unroll=unroll, time_major=time_major, remat=remat)

  return _types.Layer(init=cell.init, apply=apply)
