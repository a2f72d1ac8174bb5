"""`jr.dropout`: inverted dropout as a sequence layer, switched on by a PRNG key.

Train or eval: every layer's `apply` takes `key=None` and `train=None`. With `train=None` the
key decides (a key means training, `key=None` evaluation), so "no key, no randomness" keeps every
deterministic call deterministic. `train=False` is evaluation whatever the key; `train=True`
demands a key. A combinator resolves `train` once (`training_key`) and hands its children only a
key or `None`, so a user-written layer without a `train` argument still composes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _types


def training_key(key, train, what: str = "apply"):
  """The key to draw dropout masks from, or `None` for evaluation (see the module docstring)."""
  if train is None:
    return key
  if not isinstance(train, bool):
    raise TypeError(f"{what}: train must be a bool or None, got {train!r}")
  if train and key is None:
    raise ValueError(f"{what}: train=True needs a PRNG key (key=...)")
  return key if train else None


def drop(key, rate: float, xs):
  """Inverted dropout of `xs`: each entry is kept with probability `1 - rate` and scaled by
  `1 / (1 - rate)`, so the expectation is `xs`. `key=None` or `rate == 0` returns `xs`."""
  if key is None or rate == 0.0:
    return xs
  keep = jax.random.bernoulli(key, 1.0 - rate, xs.shape)
  return jnp.where(keep, xs / jnp.asarray(1.0 - rate, xs.dtype), jnp.zeros((), xs.dtype))


def dropout(rate: float) -> _types.Layer:
  """A dropout layer: zeroes each entry of `xs (..., T, D)` with probability `rate` and scales
  the rest by `1 / (1 - rate)` when training (a `key` given, and `train` not False); the
  identity in evaluation (`key=None` or `train=False`).

  Params are `{}` and the carry is `None`, so the layer composes in `jr.stack` like any other.
  The mask is drawn independently for every entry (every step and feature); for one mask per
  sequence inside a recurrence, wrap the cell in `jr.variational_dropout`. Padding (zeros)
  stays zero.

  Args:
    rate: the drop probability, in [0, 1).

  Returns:
    A `jr.Layer` with `apply(params, xs, *, carry=None, lengths=None, resets=None, key=None,
    train=None) -> (None, ys)`, `ys` of the shape and dtype of `xs`.

  References:
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
    JMLR 2014.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.dropout(0.5)
  >>> xs = jnp.ones((2, 3, 4))
  >>> bool((layer.apply({}, xs)[1] == xs).all())          # no key: identity
  True
  >>> ys = layer.apply({}, xs, key=jax.random.key(0))[1]   # entries are 0 or 2
  >>> sorted(set(ys.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
  True
  >>> bool((layer.apply({}, xs, key=jax.random.key(0), train=False)[1] == xs).all())
  True
  """
  rate = _types.check_rate(rate, "dropout: rate")

  def init(key, input_size):
    del key
    _types.check_hidden_size(input_size, "input_size")
    return {}

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    del params, carry, lengths, resets
    xs = jnp.asarray(xs)
    _types.check_float(xs, "dropout: xs")
    return None, drop(training_key(key, train, "dropout"), rate, xs)

  def initial_carry(batch_shape=(), dtype=None):
    del batch_shape, dtype
    return None

  return _types.Layer(init=init, apply=apply, initial_carry=initial_carry)
