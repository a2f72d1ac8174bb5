"""What sits on top of a recurrent layer: a dense (softmax) head, pooling over valid steps
(many-to-one), and the masked token loss (many-to-many)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types


class Dense(NamedTuple):
  """An affine map on the last axis: `init(key, input_size) -> {"w": (D, N), "b": (N,)}` and
  `apply(params, x (..., D)) -> (..., N)`."""

  init: Callable[..., Any]
  apply: Callable[..., jax.Array]


def dense(out_size: int, *, use_bias: bool = True, kernel_init=None,
          param_dtype=jnp.float32) -> Dense:
  """A linear head `x @ w + b` on the last axis: per-step logits `(..., T, V)` from a layer's
  outputs `(..., T, H)`, or class logits `(..., C)` from pooled features `(..., H)`.

  Softmax is not applied: losses take logits (`jr.masked_cross_entropy`), and sampling
  (`jr.generate`) applies its own temperature. Parameters compute in the input's dtype.

  Args:
    out_size: N, the number of outputs (vocabulary or classes).
    use_bias: whether there is `b` (zeros at init).
    kernel_init: `(key, shape, dtype) -> array` for `w (D, N)`; default Glorot uniform.
    param_dtype: the dtype `init` stores parameters in.

  Returns:
    A `Dense(init, apply)`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> head = jr.dense(5)
  >>> params = head.init(jax.random.key(0), 3)
  >>> head.apply(params, jnp.ones((2, 4, 3))).shape
  (2, 4, 5)
  """
  n = _types.check_hidden_size(out_size, "out_size")
  w_init = kernel_init or jax.nn.initializers.glorot_uniform()

  def init(key, input_size):
    d = _types.check_hidden_size(input_size, "input_size")
    params = {"w": w_init(key, (d, n), param_dtype)}
    if use_bias:
      params["b"] = jnp.zeros((n,), param_dtype)
    return params

  def apply(params, x):
    x = jnp.asarray(x)
    _types.check_float(x, "dense: x")
    w = params["w"]
    _types.check_features(x, w.shape[0], "x", f"dense({n})")
    y = x @ w.astype(x.dtype)
    return y + _types.last_axis(params["b"].astype(x.dtype), y) if use_bias else y

  return Dense(init=init, apply=apply)


# ---------------------------------------------------------------------------------------------
# Masks and pooling


def _check_sequences(ys, what: str) -> jax.Array:
  ys = jnp.asarray(ys)
  if ys.ndim < 2:
    raise ValueError(f"{what}: ys must have shape (..., T, H), got {ys.shape}")
  return ys


def sequence_mask(lengths, steps: int) -> jax.Array:
  """`mask[..., t] = t < lengths[...]`: bool `(..., steps)` marking each sequence's valid steps.

  Lengths outside `[0, steps]` mean what they mean everywhere in jaxrnn: clipped (reported
  under `jax.experimental.checkify.checkify`).

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> jr.sequence_mask(jnp.array([2, 0]), 3).tolist()
  [[True, True, False], [False, False, False]]
  """
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"sequence_mask: steps must be a non-negative int, got {steps!r}")
  steps = int(steps)
  lengths = jnp.asarray(lengths)
  lengths = _types.check_lengths(lengths, lengths.shape, steps, "sequence_mask")
  return _types.valid_steps(lengths, steps, time_major=False)


def last_valid(ys, lengths=None) -> jax.Array:
  """Many-to-one pooling: each sequence's output at its last valid step, `ys[..., lengths-1, :]`.

  For the outputs of a forward layer this is the summary of the whole sequence. With
  `lengths=None` it is the last step, `ys[..., -1, :]`. A sequence of length 0 gives zeros.
  For a reverse layer (`jr.rnn(cell, reverse=True)`), whose summary of the whole sequence is
  its output at step 0, take `ys[..., 0, :]` instead; for `jr.bidirectional`, use
  `jr.bidirectional_last`.

  Args:
    ys: `(..., T, H)` outputs.
    lengths: optional int `(...)`, valid lengths, clipped to `[0, T]`.

  Returns:
    `(..., H)`.

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> ys = jnp.arange(6.0).reshape(1, 3, 2)
  >>> jr.last_valid(ys, jnp.array([2])).tolist()
  [[2.0, 3.0]]
  """
  ys = _check_sequences(ys, "last_valid")
  if lengths is None:
    return ys[..., -1, :]
  lengths = _types.check_lengths(lengths, ys.shape[:-2], ys.shape[-2], "last_valid")
  index = jnp.maximum(lengths - 1, 0)
  picked = jnp.take_along_axis(ys, index[..., None, None], axis=-2)[..., 0, :]
  return jnp.where((lengths > 0)[..., None], picked, jnp.zeros((), ys.dtype))


def bidirectional_last(ys, lengths=None) -> jax.Array:
  """Many-to-one pooling of `jr.bidirectional(..., merge="concat")` outputs `(..., T, 2H)`: the
  forward half's output at each sequence's last valid step, `ys[..., lengths-1, :H]`, and the
  backward half's at step 0, `ys[..., 0, H:]` (where the backward pass ends, having read the
  whole sequence), concatenated to `(..., 2H)`.

  `jr.last_valid` on the same outputs would take the backward half after it has read a single
  step. Both halves must have the same size H (the feature size must be even). With
  `lengths=None` the forward half is taken at the last step. A sequence of length 0 gives zeros;
  padding (`t >= lengths`) never reaches the values or the gradients.

  Args:
    ys: `(..., T, 2H)` outputs of a concatenating `jr.bidirectional`.
    lengths: optional int `(...)`, valid lengths, clipped to `[0, T]`.

  Returns:
    `(..., 2H)`.

  Raises:
    ValueError: `ys` of rank < 2 or of an odd feature size.

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> ys = jnp.arange(12.0).reshape(1, 3, 4)
  >>> jr.bidirectional_last(ys, jnp.array([2])).tolist()
  [[4.0, 5.0, 2.0, 3.0]]
  """
  ys = _check_sequences(ys, "bidirectional_last")
  features = ys.shape[-1]
  if features % 2:
    raise ValueError(f"bidirectional_last: ys must hold two halves of equal size (..., T, 2H), "
                     f"got an odd feature size {features} (shape {ys.shape}); for halves of "
                     "different sizes, pool them separately with jr.last_valid and ys[..., 0, :]")
  half = features // 2
  forward = last_valid(ys[..., :half], lengths)
  backward = ys[..., 0, half:]
  if lengths is not None:
    lengths = _types.check_lengths(lengths, ys.shape[:-2], ys.shape[-2], "bidirectional_last")
    backward = jnp.where((lengths > 0)[..., None], backward, jnp.zeros((), ys.dtype))
  return jnp.concatenate([forward, backward], axis=-1)


def masked_mean(ys, lengths=None) -> jax.Array:
  """Many-to-one pooling: the mean of `ys (..., T, H)` over each sequence's valid steps,
  `(..., H)`. Lengths are clipped to `[0, T]`, so the mean is over the steps actually summed;
  a sequence of length 0 gives zeros. Padding never enters the sum (NaN there is harmless,
  values and gradients).

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> ys = jnp.arange(6.0).reshape(1, 3, 2)
  >>> jr.masked_mean(ys, jnp.array([2])).tolist()
  [[1.0, 2.0]]
  """
  ys = _check_sequences(ys, "masked_mean")
  if lengths is None:
    return jnp.mean(ys, axis=-2)
  steps = ys.shape[-2]
  lengths = _types.check_lengths(lengths, ys.shape[:-2], steps, "masked_mean")
  total = jnp.sum(_types.zero_padding(ys, _types.valid_steps(lengths, steps, False)), axis=-2)
  count = jnp.maximum(lengths, 1).astype(ys.dtype)[..., None]
  return total / count
