"""`jr.learned_initial_carry`: a layer whose starting carry is a trained parameter."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _types


def learned_initial_carry(layer: _types.Layer) -> _types.Layer:
  r"""Wraps a layer so that, with `carry=None`, it starts from a learned carry `c_0` instead of
  zeros: one parameter vector per carry leaf, shared by every sequence of the batch,

  .. math::
      (c_T, y_{1:T}) = \mathrm{layer}(x_{1:T};\ c_0), \qquad c_0 \in \theta .

  Params: `{"layer": inner_params, "carry": c0}`, where `c0` has the structure of
  `layer.initial_carry(())` (no batch axes; `init` starts it at that value, zeros for the
  built-in cells, in float32 unless the cells fix a dtype). `apply` broadcasts `c0` over the
  batch axes of `xs` and casts it to the dtype the layer's own initial carry has for `xs`, so
  `jax.grad` reaches `params["carry"]`. A `carry` passed to `apply` is used as given (as when
  streaming: pass the returned carry on). Works for `jr.rnn`, `jr.stack` and
  `jr.bidirectional` (one `c0` per layer and per direction).

  `resets` raise `ValueError`: a reset restarts a segment from the cell's zero carry, not from
  `c0`, so a run with resets would not equal each segment run on its own with `c0`.

  Args:
    layer: a `jr.Layer` with `initial_carry` (every layer that jaxrnn builds from cells), whose
      initial carry has floating-point leaves.

  Returns:
    A `jr.Layer` with the same traits (layout, direction, streamability).

  References:
    Mohajerin & Waslander, "State Initialization for Recurrent Neural Network Modeling of
    Time-Series Data", IJCNN 2017 (a trained initial state).

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.learned_initial_carry(jr.rnn(jr.gru(4)))
  >>> params = layer.init(jax.random.key(0), 3)
  >>> params["carry"].shape
  (4,)
  >>> carry, ys = layer.apply(params, jnp.ones((2, 5, 3)))
  >>> ys.shape
  (2, 5, 4)
  """
  if not isinstance(layer, _types.Layer):
    raise TypeError(f"learned_initial_carry: layer must be a jr.Layer, got "
                    f"{type(layer).__name__}")
  if layer.initial_carry is None:
    raise TypeError("learned_initial_carry: the layer has no initial_carry (a user-written "
                    "jr.Layer); build it with jr.Layer(init, apply, initial_carry=...)")
  for leaf in jax.tree_util.tree_leaves(jax.eval_shape(lambda: layer.initial_carry(()))):
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(f"learned_initial_carry: the layer's carry has a {leaf.dtype} leaf, which "
                      "cannot be learned (only floating-point carries can)")
  time_major = bool(layer.time_major)

  def init(key, input_size):
    return {"layer": layer.init(key, input_size), "carry": layer.initial_carry(())}

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    if not isinstance(params, dict) or set(params) != {"layer", "carry"}:
      raise ValueError("learned_initial_carry: params must be {'layer': ..., 'carry': ...} (from "
                       "its init)")
    if resets is not None:
      raise ValueError("learned_initial_carry: resets are not supported: a reset restarts from "
                       "the cell's zero carry, not from the learned one")
    xs = jnp.asarray(xs)
    if carry is None:
      batch = xs.shape[1:-1] if time_major else xs.shape[:-2]
      like = layer.initial_carry(batch, xs.dtype)
      structure = jax.tree_util.tree_structure(like)
      if jax.tree_util.tree_structure(params["carry"]) != structure:
        raise ValueError(f"learned_initial_carry: params['carry'] has structure "
                         f"{jax.tree_util.tree_structure(params['carry'])}, expected {structure}")
      carry = jax.tree_util.tree_map(
          lambda c0, t: jnp.broadcast_to(jnp.asarray(c0).astype(t.dtype), t.shape),
          params["carry"], like)
    return layer.apply(params["layer"], xs, carry=carry, lengths=lengths, key=key, train=train)

  return _types.Layer(init=init, apply=apply, time_major=layer.time_major,
                      reverse=layer.reverse, streamable=layer.streamable)
