"""The protocol every part of jaxrnn shares: `Cell`, `Layer`, carries, and shape checks.

A cell is a NamedTuple of pure functions; configuration lives in the closure of the
factory that built it, parameters are a pytree of arrays only.
"""

from __future__ import annotations

import functools
import operator
import weakref
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

PyTree = Any
Array = jax.Array


class LinearRecurrence(NamedTuple):
  r"""A cell's state update written as a linear recurrence whose coefficients come from the input
  alone, which lets `jr.parallel_scan` run all steps at once:

  .. math::
      h_t = a_t \odot h_{t-1} + b_t, \qquad (a_t, b_t) = \mathrm{coefficients}(x_t), \qquad
      y_t = \mathrm{output}(h_t, x_t)

  Attributes:
    coefficients: `(params, xs) -> (a, b)` for inputs `xs (..., D)` with any leading axes; `a`
      and `b` have the carry's structure, with leaves `(..., *state)` (the product is
      elementwise). With `log_space`, they are `(log a, log b)` of positive `a` and `b`.
    output: `(params, carry, xs) -> ys`, the step's output from the carry it returns and its
      input, for any leading axes.
    step: the cell's `step` that these describe. `jr.parallel_scan` refuses a cell whose `step`
      is another function (a cell made by `cell._replace(step=f)` must run `f`), so a user's own
      linear cell passes its own `step` here.
    log_space: whether `coefficients` are logarithms (the cell's initial carry is then zero).
  """

  coefficients: Callable[..., tuple]
  output: Callable[..., Any]
  step: Callable[..., tuple]
  log_space: bool = False


class Cell(NamedTuple):
  """A recurrent cell: pure functions over an explicit parameter pytree.

  Attributes:
    init: `init(key, input_size) -> params`, a pytree of arrays only.
    initial_carry: `initial_carry(batch_shape=(), dtype=None) -> carry`, zeros whose leaves have
      shape `batch_shape + core_shape`. `dtype=None` means the cell's own compute dtype if it fixes
      one, else float32; a driver passes the inputs' dtype.
    step: `step(params, carry, x) -> (carry, y)` for one time step; `x` has shape `(..., D)` and the
      carry's leaves the same leading shape `(...)`.
    project: `project(params, xs) -> zs`, the input-only part of `step` for any number of steps at
      once (one big matmul), or `None` for cells without the split.
    recur: `recur(params, carry, z) -> (carry, y)` with
      `step(p, c, x) == recur(p, c, project(p, x))`, or `None`.
    name: a readable name used in error messages.
    takes_key: whether the cell draws randomness (dropout masks) from an optional PRNG key
      `params["key"]`, as `jr.variational_dropout` and `jr.zoneout` do. A layer that runs such
      a cell (`jr.rnn`) puts its own `key` there when training and removes any key when
      `train=False`, so `jax.grad` sees only the float parameters.
    linear: the cell's `LinearRecurrence` where its state update is linear with coefficients
      from the input alone (`jr.min_gru`, `jr.min_lstm`, `jr.lru`, `jr.linear_indrnn`), which
      `jr.parallel_scan` needs; `None` for other cells.
    input_rank: the number of feature axes of one step's input: 1 for vectors `(..., D)` (every
      cell but the convolutional ones), 3 for the frames `(..., H, W, C)` of `jr.conv_lstm` and
      `jr.conv_gru`. `jr.scan` and `jr.static_unroll` take the time axis of `xs` to be the one
      before these axes, and the batch shape to be the axes before time.
    family: the kernel family of a built-in cell ("lstm", "gru", "gru_reset_before",
      "simple_rnn", "indrnn", ...), set by its constructor; it keys the measured per-family
      choices of `jr.scan` (see `jr.scan_plan`). It applies only while `step`, `project` and
      `recur` are the ones the cell was built with: a cell whose functions were replaced runs
      them, whatever its family. `None` for a user's cell and for wrappers that change `step`.
    recur_in: for the GRU-style cells (`jr.gru`, `jr.layer_norm_gru`),
      `recur_in(params, h_in, h, z) -> (h, y)` for one example: `recur` with the hidden state
      that enters the recurrent matmuls (`h_in`) apart from the one in the update `u * h`
      (`h`), so that `jr.variational_dropout` can mask the first only; `None` for other cells.
    frame_shape: for a cell over frames (`input_rank` 3), the `(H, W)` of the frames it takes
      where its constructor fixes them (`jr.conv_lstm`, `jr.conv_gru`), which layers need to
      work out their output shapes at `init`; `None` for other cells.
    fused: a built-in cell's `FusedSpec`, the form in which `jr.scan`'s fused driver (and on
      CPU its native loops) runs it; it applies only while `built_from` holds. `None` for other
      cells.
    built_from: `(step, project, recur)` as a built-in cell's constructor made them, so that
      `jr.scan` can tell which of them a user has since replaced (`cell._replace(step=f)`) and
      run the replacement (see `built_functions_unchanged`); `None` for other cells.
  """

  init: Callable[..., PyTree]
  initial_carry: Callable[..., PyTree]
  step: Callable[..., tuple]
  project: Optional[Callable[..., Array]] = None
  recur: Optional[Callable[..., tuple]] = None
  name: str = "cell"
  takes_key: bool = False
  linear: Optional[LinearRecurrence] = None
  input_rank: int = 1
  family: Optional[str] = None
  recur_in: Optional[Callable[..., tuple]] = None
  frame_shape: Optional[tuple] = None
  fused: Optional["FusedSpec"] = None
  built_from: Optional[tuple] = None


# The `project` and `recur` functions of every built-in cell made so far (weakly held).
BUILTIN_FUNCTIONS = weakref.WeakSet()


def is_builtin_function(f) -> bool:
  """Whether `f` is a built-in cell's `project` or `recur`."""
  try:
    return f in BUILTIN_FUNCTIONS
  except TypeError:  # not weakly referenceable, so not one of ours
    return False


def built_functions_unchanged(cell: Cell) -> bool:
  """Whether `cell` is a built-in cell whose `step`, `project` and `recur` are all still the
  ones its constructor made."""
  return cell.built_from is not None and (cell.step, cell.project, cell.recur) == cell.built_from


class _LayerFields(NamedTuple):
  init: Callable[..., PyTree]
  apply: Callable[..., tuple]


class Layer(_LayerFields):
  """A sequence layer: the pair `(init, apply)`, with
  `init(key, input_size) -> params` and
  `apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None)
  -> (carry, ys)`.

  `key` and `train` switch randomness such as dropout: with `train=None` a key means training;
  `train=False` is evaluation whatever the key; `train=True` needs a key. `xs` has shape
  `(..., T, D)` (or `(T, ..., D)` for a time-major layer) and `ys` the same layout with the
  layer's output size last.

  It unpacks and compares as the pair `(init, apply)`. Keyword-only traits, which are not part
  of the pair, let combinators refuse compositions that would compute a wrong answer, and say
  what carry the layer starts from:

  Attributes:
    time_major: the layout the layer expects: `False` for `(..., T, D)`, `True` for
      `(T, ..., D)`, `None` when it works with either or is unknown (a user-written layer).
    reverse: whether the layer runs each sequence backwards in time (`jr.rnn(cell,
      reverse=True)`, or a stack containing one).
    streamable: whether the layer can run a sequence chunk by chunk with its carry passed on
      (`jr.stream`): False for reverse and bidirectional layers, which need each sequence's end
      before their first output.
    initial_carry: `initial_carry(batch_shape=(), dtype=None) -> carry`, the carry `apply`
      starts from when given `carry=None`, for inputs of batch shape `batch_shape` and dtype
      `dtype` (`None`: float32, or the cells' own compute dtype where they fix one); or `None`
      where the layer does not say (a user-written layer).
    step_shape: the axes of one step's input between time and features: `()` for a layer over
      vectors `(..., T, D)`, `(H, W)` for one over frames `(..., T, H, W, C)` (`jr.rnn` of
      `jr.conv_lstm` or `jr.conv_gru`, and the stacks and bidirectional layers made of them;
      an entry is `None` where the size is not known); `None` where the layer does not say
      (`jr.dropout`, which takes either, or a user-written layer). The combinators need it to
      find the time axis and to refuse frames fed to a vector layer.
  """

  time_major: Optional[bool] = None
  reverse: bool = False
  streamable: bool = True
  initial_carry: Optional[Callable[..., Any]] = None
  step_shape: Optional[tuple] = None

  def __new__(cls, init, apply, *, time_major: Optional[bool] = None, reverse: bool = False,
              streamable: Optional[bool] = None, initial_carry: Optional[Callable] = None,
              step_shape: Optional[tuple] = None):
    layer = super().__new__(cls, init, apply)
    layer.time_major = time_major
    layer.reverse = bool(reverse)
    layer.streamable = (not reverse) if streamable is None else bool(streamable)
    layer.initial_carry = initial_carry
    layer.step_shape = None if step_shape is None else tuple(step_shape)
    return layer

  def _traits(self) -> dict:
    return {"time_major": self.time_major, "reverse": self.reverse,
            "streamable": self.streamable, "initial_carry": self.initial_carry,
            "step_shape": self.step_shape}

  def _replace(self, **changes):
    fields = dict(zip(self._fields, self))
    fields.update(changes)
    return Layer(**fields, **self._traits())

  def __getnewargs_ex__(self):
    return (tuple(self), self._traits())


class FusedSpec(NamedTuple):
  """A built-in cell's recurrence written for the fused driver (`drivers/_fused.py`).

  Every function works on batched arrays `(..., G)`; `rp` are the recurrent parameters in the
  compute dtype (a recurrent matmul's weight in the cell's `matmul_dtype`, where one is set).
  The tangent of one step is split in two: the part through the parameters, computed for all
  steps at once outside the loop (`rec_tangent`, one big matmul), and the part
  through the carry (`tangent`), linear with coefficients that `step` emits. JAX's transpose of
  that linear loop is then a backward pass with no weight-gradient work inside the loop.

  Attributes:
    rec_params: `(params, dtype) -> rp`, plain differentiable JAX (casts, clipping).
    step: `(rp, carry, z) -> (carry, y, res)`, equal to the cell's `recur`, plus the per-step
      coefficients `res` of the step's tangent.
    rec_tangent: `(drp, carries_in) -> dr`, linear in `drp`; `carries_in` has leaves `(T, ..., H)`.
    force: `(dz, dr) -> forcing`, the per-step tangent input (computed once, outside the loop).
    tangent: `(rp, res, dcarry, forcing) -> (dcarry, dy)`, linear in `dcarry` and `forcing`.
    native: the family of the native CPU loop that runs this recurrence ("lstm", "gru", "rnn"
      or "rnn_relu"; `drivers/_native.py`), or None where none does.
    joint: `(params, rp, x_dtype, carry_dtype) -> step_x` or None. `step_x(carry, x)` returns
      `step(rp, carry, project(params, x))` for one step's raw input `x (..., D)`, with the
      input and recurrent matmuls done as one, `[x, h] @ [[w_x], [w_h]]` (the weights joined
      once, outside the loop). `joint` returns None where that form does not apply (operands
      of different dtypes). None for cells without such a form.
  """

  rec_params: Callable
  step: Callable
  rec_tangent: Callable
  force: Callable
  tangent: Callable
  native: Optional[str] = None
  joint: Optional[Callable] = None


class LSTMState(NamedTuple):
  """The LSTM carry: hidden state `h (..., H)` and cell state `c (..., H)`."""

  h: Array
  c: Array


# ---------------------------------------------------------------------------------------------
# Checks shared by cells, drivers and layers. They run at trace time on static shapes.


def check_hidden_size(hidden_size: Any, what: str = "hidden_size") -> int:
  """Returns `hidden_size` as an int, or raises for a non-integer or non-positive value."""
  if isinstance(hidden_size, bool) or not isinstance(hidden_size, (int, np.integer)):
    raise TypeError(f"{what} must be a positive int, got {hidden_size!r}")
  if hidden_size <= 0:
    raise ValueError(f"{what} must be a positive int, got {hidden_size}")
  return int(hidden_size)


def check_float(x: Any, what: str) -> None:
  """Raises `TypeError` unless `x` is a floating-point array."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{what} must have a floating-point dtype, got {dtype}")


class FeatureSizeError(ValueError):
  """An input whose last axis is not the size the parameters expect (`expected`, `got`).

  A `ValueError`; drivers catch it to report the whole sequence's shape rather than one step's.
  """

  def __init__(self, message: str, expected: int, got: int):
    super().__init__(message)
    self.expected, self.got = expected, got


def check_features(x: Array, expected: int, what: str, cell_name: str) -> None:
  """Raises `ValueError` unless `x` has rank >= 1 and last axis `expected`."""
  if x.ndim < 1:
    raise ValueError(f"{cell_name}: {what} must have shape (..., {expected}), got a scalar")
  if x.shape[-1] != expected:
    raise FeatureSizeError(
        f"{cell_name}: {what} has shape {tuple(x.shape)}, but the parameters expect "
        f"(..., {expected}) (last axis = input size)", expected, int(x.shape[-1]))


def check_flag(value: Any, what: str) -> bool:
  """`value` as a bool, or `TypeError`: a string such as "False" is truthy, and would silently
  mean the opposite of what it says."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{what} must be a bool, got {value!r}")
  return bool(value)


def check_rate(rate: Any, what: str = "rate") -> float:
  """Returns a drop (or zoneout) probability as a float in [0, 1), or raises `TypeError` /
  `ValueError` naming `what`."""
  if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
    raise TypeError(f"{what} must be a float in [0, 1), got {rate!r}")
  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"{what} must be in [0, 1), got {rate}")
  return float(rate)


def check_lengths(lengths: Any, batch: tuple, steps: int, what: str) -> Array:
  """Validates per-sequence `lengths (...)` against `batch` and returns them as int32 clipped
  to `[0, steps]`, the one meaning of out-of-range lengths everywhere in jaxrnn.

  Raises `TypeError` for a non-integer dtype and `ValueError` for a shape other than `batch`
  (no broadcasting). Out-of-range values are clipped, silently by default; under
  `jax.experimental.checkify.checkify` (the checked mode) they are reported as a check error
  naming `what`, whether the lengths are concrete or traced.
  """
  lengths = jnp.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"{what}: lengths must have an integer dtype, got {lengths.dtype}")
  if lengths.shape != tuple(batch):
    raise ValueError(f"{what}: lengths has shape {lengths.shape}, expected {tuple(batch)} (the "
                     "batch shape of the sequences; lengths are never broadcast)")
  lengths = lengths.astype(jnp.int32)
  checkify.debug_check(
      jnp.all((lengths >= 0) & (lengths <= steps)),
      f"{what}: lengths must lie in [0, T] = [0, {steps}]; got min {{}} and max {{}} "
      "(outside checkify they are clipped to that range)",
      jnp.min(lengths, initial=0), jnp.max(lengths, initial=0))
  return jnp.clip(lengths, 0, steps)


def valid_steps(lengths: Array, steps: int, time_major: bool) -> Array:
  """Bool `(..., T)` (or `(T, ...)` when `time_major`): which steps lie inside each sequence."""
  t = jnp.arange(steps, dtype=jnp.int32)
  if time_major:
    return t.reshape((steps,) + (1,) * lengths.ndim) < lengths[None]
  return t.reshape((1,) * lengths.ndim + (steps,)) < lengths[..., None]


def zero_padding(xs: Array, valid: Array) -> Array:
  """`xs (..., *core)` with every entry where `valid (...)` is False replaced by zero.

  A select, so that padding never enters later arithmetic: NaN or Inf garbage there gives the
  same values AND gradients as zeros (the gradient of a select is zero where it was not taken).
  """
  return jnp.where(expand_mask(valid, xs), xs, jnp.zeros((), xs.dtype))


def check_carry_batch(carry: PyTree, batch_shape: tuple, cell_name: str) -> None:
  """Raises `ValueError` unless every carry leaf starts with `batch_shape` (no broadcasting)."""
  for leaf in jax.tree_util.tree_leaves(carry):
    if tuple(leaf.shape[:len(batch_shape)]) != tuple(batch_shape) or leaf.ndim <= len(batch_shape):
      raise ValueError(
          f"{cell_name}: carry leaf of shape {tuple(leaf.shape)} does not match the input's "
          f"leading (batch) shape {tuple(batch_shape)}; pass a carry of shape "
          f"{tuple(batch_shape)} + (hidden,) (jaxrnn never broadcasts carries silently)")


def over_leading_axes(fn: Callable, n: int, in_axes: Sequence) -> Callable:
  """Maps `fn`, written for one example, over `n` leading axes with `jax.vmap`."""
  for _ in range(n):
    fn = jax.vmap(fn, in_axes=tuple(in_axes))
  return fn


def broadcasting_step(core: Callable, cell_name: str, input_size: Callable[[PyTree], int]):
  """Lifts `core(params, carry, x)`, written for one example (`x: (D,)`), to any leading shape.

  The returned function checks that `x` is floating with last axis `input_size(params)` and
  that the carry's leaves start with `x.shape[:-1]`, then vmaps `core` over those axes.
  Writing the math for one example keeps gate code readable and free of implicit broadcasting.
  """

  def step(params, carry, x):
    x = jnp.asarray(x)
    check_float(x, f"{cell_name}: x")
    check_features(x, input_size(params), "x", cell_name)
    batch = x.shape[:-1]
    check_carry_batch(carry, batch, cell_name)
    return over_leading_axes(core, len(batch), (None, 0, 0))(params, carry, x)

  return step


def broadcasting_project(core: Callable, cell_name: str, input_size: Callable[[PyTree], int]):
  """Lifts `core(params, x)` (one example, `x: (D,)`) to `xs: (..., D)`."""

  def project(params, xs):
    xs = jnp.asarray(xs)
    check_float(xs, f"{cell_name}: xs")
    check_features(xs, input_size(params), "xs", cell_name)
    return over_leading_axes(core, xs.ndim - 1, (None, 0))(params, xs)

  return project


def broadcasting_recur(core: Callable, cell_name: str, z_size: Callable[[PyTree], int]):
  """Lifts `core(params, carry, z)` (one example) to any leading shape."""

  def recur(params, carry, z):
    z = jnp.asarray(z)
    check_features(z, z_size(params), "z (the projected input)", cell_name)
    batch = z.shape[:-1]
    check_carry_batch(carry, batch, cell_name)
    return over_leading_axes(core, len(batch), (None, 0, 0))(params, carry, z)

  return recur


def expand_mask(mask: Array, like: Array) -> Array:
  """Reshapes a `(...)` mask to broadcast explicitly against `like` of shape `(..., *core)`."""
  return jnp.reshape(mask, mask.shape + (1,) * (like.ndim - mask.ndim))


def tree_where(mask: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """`jnp.where` leaf by leaf, with `mask (...)` broadcast over each leaf's trailing axes."""
  return jax.tree_util.tree_map(
      lambda a, b: jnp.where(expand_mask(mask, a), a, b), on_true, on_false)


def last_axis(v: Array, like: Array) -> Array:
  """Reshapes a `(H,)` vector to broadcast explicitly against `like (..., H)`."""
  return jnp.reshape(v, (1,) * (like.ndim - v.ndim) + v.shape)


def prod(shape: Sequence[int]) -> int:
  return functools.reduce(operator.mul, shape, 1)
