"""What the drivers share: which of a cell's functions may run, and the masked scan body."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _types

# Whether the input projection is taken out of the sequential loop (one big matmul before it)
# when a cell allows either. GPUs and TPUs want the big matmul. On XLA:CPU (jax 0.10) the hoisted
# LSTM forward measured 1.2-1.85x slower, and a profile at (B, T, D, H) = (16, 2000, 64, 128) says
# why: XLA fuses the per-step slice of the projected `(T, B, 4H)` buffer into the gates'
# elementwise fusion, which then takes 40 us a step instead of 6 us; and the projected buffer is
# fresh memory each call, written twice (matmul, then bias), paying first-touch page faults.
# Chosen per backend by measurement (benchmarks/).
HOIST_BY_BACKEND = {"cpu": False}

# Per cell family and backend, where measurement says otherwise: `(inference, training)`, where
# training is the fused driver's forward that keeps residuals for the backward pass. On XLA:CPU
# (2 cores, the four benchmark shapes) hoisting made the IndRNN, whose recurrence is elementwise,
# 0.72-0.92x as long to train and 0.59-1.04x to run forward; the simple RNN 0.87-0.95x to train.
# The simple RNN's forward now runs in this XLA loop only below the native loop's batch
# (`_native.NATIVE_MIN_BATCH`) or without it; there hoisting took 0.74-0.90x as long at batches
# 1 to 8 and 0.95-1.00x at the three larger shapes with the native loop off. The LSTM and the GRU
# were slower hoisted (forward up to 1.85x and 2.6x, training 1.01-1.17x), so they keep the
# default; at batch 1 the GRU's forward still took 2.1x hoisted, the LSTM's 0.97-1.12x.
HOIST_BY_FAMILY = {("indrnn", "cpu"): (True, True), ("simple_rnn", "cpu"): (True, True)}

# Whether "auto" runs the fused driver for a cell family on a backend (default: wherever it
# applies). With its projection hoisted, the IndRNN's plain autodiff has no weight-gradient work
# in the loop (`u`'s gradient is elementwise), so the fused backward has nothing to take out: on
# XLA:CPU (2 cores, the four benchmark shapes, alternating A/B) the fused training step took
# 0.99x, 1.05x, 1.07x and 1.42x the reference's time.
FUSED_BY_FAMILY = {("indrnn", "cpu"): False}


# Whether the fused driver's XLA loop runs a cell's step as one matmul of `[x_t, h]` by the
# joined weights (`FusedSpec.joint`) rather than two, `x_t @ w_x` and `h @ w_h`, where the
# projection is not hoisted and the cell has that form. Per family and backend. On XLA:CPU one
# matmul thunk a step less is what matters at small batches, where the loop runs (the native loop
# takes batches of `NATIVE_MIN_BATCH` and more): the LSTM's forward took 0.65-0.74x as long at
# (B, T, D, H) = (1, 1000, 32, 64) and 0.89-0.90x at batches 4 and 8, its training step
# 0.92-1.04x; with the native loop off, the three larger shapes took 1.00-1.03x forward and
# 0.98-1.07x to train. The simple RNN hoists instead (faster than joined at batches 1 to 8), and
# the GRU's joined form, whose `n` gate keeps `h @ w_hn` apart, took 1.01-1.45x as long.
JOINT_BY_FAMILY = {("lstm", "cpu"): True}


def step_plan(cell: _types.Cell) -> str:
  """Which of a cell's functions a driver may run: "step", "split" (project + recur) or "either".

  Built-in cells mark `step` with the `(project, recur)` pair it composes. A user who replaced
  `step` must get their `step`; one who replaced `project` or `recur` must get those.
  """
  if cell.project is None or cell.recur is None:
    return "step"
  marked = getattr(cell.step, "jaxrnn_split", None)
  if marked is not None:
    return "either" if marked == (cell.project, cell.recur) else "split"
  builtin = getattr(cell.project, "jaxrnn_builtin", False) or getattr(
      cell.recur, "jaxrnn_builtin", False)
  return "step" if builtin else "either"


def hoist(cell: _types.Cell, training: bool = False) -> bool:
  """Whether a driver should run `project` once over all steps, then `recur` in the loop.

  `training` asks for the forward pass that keeps residuals for a backward pass (the fused
  driver's); a built-in cell's family may prefer another choice there than for inference.
  """
  plan = step_plan(cell)
  if plan == "either":
    backend = jax.default_backend()
    family = getattr(cell.recur, "jaxrnn_family", None)
    if (family, backend) in HOIST_BY_FAMILY:
      return HOIST_BY_FAMILY[family, backend][int(training)]
    return HOIST_BY_BACKEND.get(backend, True)
  return plan == "split"


def joins(cell: _types.Cell) -> bool:
  """Whether the fused driver's XLA loop runs the cell's joint step, where it has one."""
  family = getattr(cell.recur, "jaxrnn_family", None)
  return JOINT_BY_FAMILY.get((family, jax.default_backend()), False)


def auto_fuses(cell: _types.Cell) -> bool:
  """Whether `implementation="auto"` runs the fused driver for this cell, where it applies."""
  family = getattr(cell.recur, "jaxrnn_family", None)
  return FUSED_BY_FAMILY.get((family, jax.default_backend()), True)


def masked_body(fn, params, init_carry, lengths):
  """The scan body `(carry, (x, t, reset)) -> (carry, y)` around `fn(params, carry, x)`.

  A reset replaces the carry entering the step by `init_carry`; a step at `t >= lengths` keeps
  the carry it was given (the one before any reset) and outputs zeros.
  """

  def body(c, inp):
    x, t, r = inp
    c_in = c if r is None else _types.tree_where(r, init_carry, c)
    c_new, y = fn(params, c_in, x)
    if lengths is not None:
      valid = t < lengths
      c_new = _types.tree_where(valid, c_new, c)
      y = jax.tree_util.tree_map(lambda a: jnp.where(_types.expand_mask(valid, a), a, 0), y)
    return c_new, y

  return body
