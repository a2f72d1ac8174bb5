"""Losses and metrics over sequences, masked by `lengths`.

Every function takes per-step predictions `(..., T, ...)` and an optional `lengths (...)`; steps
`t >= lengths` (lengths clipped to `[0, T]`) never enter the arithmetic, so garbage there (NaN
included) changes neither the value nor the gradient. The average is over the valid steps of the
whole batch, each weighing the same; a batch with no valid step gives 0, never NaN.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.models import _embedding


def _check_logits(logits, targets, what: str):
  logits = jnp.asarray(logits)
  _types.check_float(logits, f"{what}: logits")
  if logits.ndim < 2:
    raise ValueError(f"{what}: logits must have shape (..., T, V), got {logits.shape}")
  targets = _embedding.check_tokens(targets, f"{what}: targets")
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"{what}: targets has shape {targets.shape}, expected {logits.shape[:-1]} "
                     "(the shape of logits without the vocabulary axis)")
  return logits, targets.astype(jnp.int32)


def _step_mask(lengths, leading: tuple, what: str) -> Optional[jax.Array]:
  """Bool `(..., T)` of valid steps for per-step values of leading shape `(..., T)`, or None."""
  if lengths is None:
    return None
  steps = leading[-1]
  lengths = _types.check_lengths(lengths, leading[:-1], steps, what)
  return _types.valid_steps(lengths, steps, time_major=False)


def _masked_average(per_step: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """The mean of `per_step (..., T)` over the valid steps (`mask`), 0 where there is none."""
  if mask is None:
    return jnp.mean(per_step) if per_step.size else jnp.zeros((), per_step.dtype)
  total = jnp.sum(jnp.where(mask, per_step, jnp.zeros((), per_step.dtype)))
  count = jnp.maximum(jnp.sum(mask, dtype=jnp.int32), 1).astype(per_step.dtype)
  return total / count


def _token_nll(logits, targets, mask, label_smoothing: float):
  """Per-step `-log p(target)` (smoothed), NaN for a target outside `[0, V)`."""
  if mask is not None:
    logits = _types.zero_padding(logits, mask)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, jnp.clip(targets, 0, vocab - 1)[..., None], axis=-1)
  nll = log_z - picked[..., 0]
  if label_smoothing:
    eps = jnp.asarray(label_smoothing, nll.dtype)
    nll = (1 - eps) * nll + eps * (log_z - jnp.mean(logits, axis=-1))
  in_range = (targets >= 0) & (targets < vocab)
  return jnp.where(in_range, nll, jnp.full((), jnp.nan, nll.dtype))


def masked_cross_entropy(logits, targets, lengths=None, *, label_smoothing: float = 0.0
                         ) -> jax.Array:
  """The softmax cross-entropy of `logits (..., T, V)` against token ids `targets (..., T)`,
  averaged over the valid tokens (`t < lengths`) of the whole batch: a scalar (nats).

      loss = sum_{b, t < len_b} [logsumexp(logits[b, t]) - logits[b, t, targets[b, t]]]
             / sum_b len_b

  Every valid token weighs the same, as in a language model's per-token loss (perplexity is
  `exp(loss)`). Padding steps (`t >= lengths`, lengths clipped to `[0, T]`) never enter the
  arithmetic: their targets may hold any id and their logits any value, NaN included, without
  changing the loss or its gradient. With no valid token at all the loss is 0. A target outside
  `[0, V)` at a valid step gives NaN (never another class's score: negative ids do not wrap).

  Args:
    logits: float `(..., T, V)`.
    targets: int `(..., T)`.
    lengths: optional int `(...)`; `None` counts every step.
    label_smoothing: `eps` in [0, 1): the target distribution is `(1 - eps) one_hot + eps / V`
      (Szegedy et al. 2016; as `optax.smooth_labels`).

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> logits = jnp.zeros((1, 3, 4))
  >>> round(float(jr.masked_cross_entropy(logits, jnp.array([[0, 1, 2]]), jnp.array([2]))), 4)
  1.3863
  """
  logits, targets = _check_logits(logits, targets, "masked_cross_entropy")
  eps = _types.check_rate(label_smoothing, "masked_cross_entropy: label_smoothing")
  mask = _step_mask(lengths, targets.shape, "masked_cross_entropy")
  return _masked_average(_token_nll(logits, targets, mask, eps), mask)


def masked_accuracy(logits, targets, lengths=None) -> jax.Array:
  """The fraction of valid steps whose argmax of `logits (..., T, V)` equals `targets (..., T)`
  (0 with no valid step). For one label per sequence, pass `(B, C)` logits and `(B,)` labels.

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> logits = jnp.array([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
  >>> float(jr.masked_accuracy(logits, jnp.array([[1, 1, 0]]), jnp.array([2])))
  0.5
  """
  logits, targets = _check_logits(logits, targets, "masked_accuracy")
  mask = _step_mask(lengths, targets.shape, "masked_accuracy")
  hit = (jnp.argmax(logits, axis=-1).astype(jnp.int32) == targets).astype(logits.dtype)
  return _masked_average(hit, mask)


def perplexity(logits, targets, lengths=None) -> jax.Array:
  """`exp(masked_cross_entropy(logits, targets, lengths))`: the per-token perplexity."""
  return jnp.exp(masked_cross_entropy(logits, targets, lengths))


def bits_per_character(logits, targets, lengths=None) -> jax.Array:
  """`masked_cross_entropy(logits, targets, lengths) / ln 2`: the loss in bits per token
  (per character for a character-level model)."""
  loss = masked_cross_entropy(logits, targets, lengths)
  return loss / jnp.asarray(math.log(2.0), loss.dtype)


def _regression(predictions, targets, lengths, what: str, error):
  predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
  _types.check_float(predictions, f"{what}: predictions")
  _types.check_float(targets, f"{what}: targets")
  if predictions.shape != targets.shape:
    raise ValueError(f"{what}: predictions have shape {predictions.shape} and targets "
                     f"{targets.shape}; they must be equal (no broadcasting)")
  if predictions.dtype != targets.dtype:
    raise TypeError(f"{what}: predictions are {predictions.dtype} and targets {targets.dtype}; "
                    "cast one of them")
  if predictions.ndim < 2:
    raise ValueError(f"{what}: predictions must have shape (..., T, F), got {predictions.shape}")
  mask = _step_mask(lengths, predictions.shape[:-1], what)
  if mask is not None:
    predictions = _types.zero_padding(predictions, mask)
    targets = _types.zero_padding(targets, mask)
  per_step = jnp.mean(error(predictions - targets), axis=-1)
  return _masked_average(per_step, mask)


def masked_mse(predictions, targets, lengths=None) -> jax.Array:
  """The mean squared error of `predictions (..., T, F)` against `targets (..., T, F)`, over the
  valid steps and all features (0 with no valid step).

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> p, y = jnp.array([[[1.0], [3.0], [9.0]]]), jnp.zeros((1, 3, 1))
  >>> float(jr.masked_mse(p, y, jnp.array([2])))
  5.0
  """
  return _regression(predictions, targets, lengths, "masked_mse", jnp.square)


def masked_mae(predictions, targets, lengths=None) -> jax.Array:
  """The mean absolute error of `predictions (..., T, F)` against `targets (..., T, F)`, over
  the valid steps and all features (0 with no valid step)."""
  return _regression(predictions, targets, lengths, "masked_mae", jnp.abs)
