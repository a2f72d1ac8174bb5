"""`jr.stack`: layers applied one after another, each over the whole sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _types


def output_size(layer: _types.Layer, params, input_size: int, dtype=jnp.float32) -> int:
  """The feature size of `layer.apply(params, xs)[1]` for `xs (1, 1, input_size)`, found by
  abstract evaluation (no computation)."""
  xs = jax.ShapeDtypeStruct((1, 1, input_size), dtype)
  return jax.eval_shape(lambda p, x: layer.apply(p, x)[1], params, xs).shape[-1]


def stack(*layers: _types.Layer) -> _types.Layer:
  """Composes layers in depth: layer `i + 1` reads the whole output sequence of layer `i`.

  Running layer by layer (rather than step by step through all layers) keeps each layer's input
  projection one matmul over the whole sequence.

  Params are a tuple, one entry a layer; so is the carry (`carry=None` or a tuple whose entries
  may be `None`). `lengths` and `resets` go to every layer; `key` is split once per layer.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> net = jr.stack(jr.rnn(jr.gru(8)), jr.rnn(jr.gru(4)))
  >>> params = net.init(jax.random.key(0), 3)
  >>> carry, ys = net.apply(params, jnp.ones((2, 5, 3)))
  >>> ys.shape, len(carry)
  ((2, 5, 4), 2)
  """
  if not layers:
    raise ValueError("stack needs at least one layer")
  for i, layer in enumerate(layers):
    if not isinstance(layer, _types.Layer):
      raise TypeError(f"stack: layer {i} must be a jr.Layer, got {type(layer).__name__}")

  def init(key, input_size):
    params, size = [], input_size
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
      params.append(layer.init(k, size))
      size = output_size(layer, params[-1], size)
    return tuple(params)

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None):
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
      raise ValueError(f"stack: params must be a sequence of {len(layers)} layer params")
    carries = (None,) * len(layers) if carry is None else tuple(carry)
    if len(carries) != len(layers):
      raise ValueError(f"stack: carry must have one entry per layer ({len(layers)}), "
                       f"got {len(carries)}")
    keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
    finals = []
    for i, (layer, p, c, k) in enumerate(zip(layers, params, carries, keys)):
      c, xs = layer.apply(p, xs, carry=c, lengths=lengths, resets=resets, key=k)
      finals.append(c)
    return tuple(finals), xs

  return _types.Layer(init=init, apply=apply)
