"""The conformance battery jaxrnn runs on its own cells, public so that your cell gets it too.

Testing your own cell
---------------------

Any object that follows the `jr.Cell` protocol can be checked against everything jaxrnn's
drivers assume of a cell: `jr.scan` equals the Python-loop oracle `jr.static_unroll`;
`step == recur(project)` where the cell has the split; second-order gradients are right in
float64 (forward and reverse mode, with `lengths` and `reverse=True`); `jax.vmap` equals explicit
batch axes and `jax.jit` equals eager; garbage padding changes nothing; resets equal separate
segments and chunked streaming equals one call; float32 and bfloat16 stay float32 and bfloat16;
the fast path of `jr.scan` equals the plain autodiff path. A failure is an `AssertionError`
naming the property, the inputs' shapes and dtype, and the largest error found.

Each property is its own pytest case:

.. code-block:: python

    import jax
    import jax.numpy as jnp
    import pytest

    import jaxrnn as jr
    import jaxrnn.testing


    def leaky_rnn(hidden_size, leak=0.5):
      # h_t = (1 - leak) h_{t-1} + leak tanh(x_t W_x + h_{t-1} W_h + b), written for ONE example
      # and vmapped over any leading axes, computing in the inputs' dtype.

      def init(key, input_size):
        kx, kh = jax.random.split(key)
        return {"w_x": jax.random.normal(kx, (input_size, hidden_size)) / input_size ** 0.5,
                "w_h": jax.random.normal(kh, (hidden_size, hidden_size)) / hidden_size ** 0.5,
                "b": jnp.zeros((hidden_size,))}

      def initial_carry(batch_shape=(), dtype=None):
        return jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype or jnp.float32)

      def step_one(params, h, x):
        p = jax.tree_util.tree_map(lambda a: a.astype(x.dtype), params)
        h = (1 - leak) * h + leak * jnp.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"])
        return h, h

      def step(params, h, x):
        fn = step_one
        for _ in range(x.ndim - 1):
          fn = jax.vmap(fn, in_axes=(None, 0, 0))
        return fn(params, h, x)

      return jr.Cell(init=init, initial_carry=initial_carry, step=step, name="leaky_rnn")


    @pytest.mark.parametrize("prop", jaxrnn.testing.properties())
    def test_leaky_rnn(prop):
      jaxrnn.testing.check_property(leaky_rnn(8), 3, prop)

`jaxrnn.testing.check_cell(cell, input_size)` runs the whole battery in one call (options:
`only=`, `skip=`, `tolerances=`, `seed=`, `params=`, `compute_dtype=`), and
`jaxrnn.testing.assert_same_function(f, g, args)` pins a fast implementation of anything to a
reference one: values, forward-mode and reverse-mode derivatives.

.. end of the section shown in the docs (testing your own cell)
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import test_util as jax_test_util

from jaxrnn import _types
from jaxrnn.drivers import scan, static_unroll

__all__ = ["DEFAULT_TOLERANCES", "assert_same_function", "check_cell", "check_property",
           "properties"]

PyTree = Any

# (rtol, atol) for comparing two computations that should agree up to floating-point
# reassociation, by dtype. float32: eps is 1.2e-7; a value that went through T = 5..7 steps of a
# few dozen ops, with sums reassociated (fused paths, hoisted matmuls, XLA fusion versus eager),
# drifts by tens of ulps, so 1e-5 keeps two orders of magnitude of headroom while a wrong gate
# or a wrong gradient (errors of 1e-3 and up) fails. float64: the same argument at eps = 2.2e-16.
# bfloat16 and float16 are only ever compared against a float64 run of the same (rounded) inputs
# and params: every op rounds to 8 (11) mantissa bits, half an ulp is 2e-3 (2.4e-4), and T steps
# compound it, so a few percent; a silently wrong bfloat16 path is off by O(1).
DEFAULT_TOLERANCES: Mapping[str, tuple] = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-5, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


# The finite-difference step of the float64 gradient check. Central differences err by
# O(eps^2 |f'''|) (truncation) plus O(1e-16 |f| / eps) (rounding). JAX's default eps = 1e-4 left a
# truncation error of 1.4e-5 to 2.3e-4 relative on correct cells (a tanh RNN's second-order VJP,
# a layer-norm GRU's first-order VJP; both implementations of jr.scan agree and the error grows
# 100-fold at eps = 1e-3), over the check's 1e-5 tolerance. eps = 1e-6 brings both errors near
# 1e-10, while a wrong derivative (off by 1e-3 or more) still fails by orders of magnitude.
_GRAD_EPS = 1e-6


class _Property(NamedTuple):
  name: str
  fn: Callable
  doc: str


_REGISTRY: dict = {}


def _property(name: str):
  def register(fn):
    _REGISTRY[name] = _Property(name, fn, (fn.__doc__ or "").strip().splitlines()[0])
    return fn
  return register


def properties() -> tuple:
  """The names of the battery's properties, in the order `check_cell` runs them.

  Pass them to `pytest.mark.parametrize` so each property is its own test case with a readable
  id, and run one with `check_property(cell, input_size, name)`.
  """
  return tuple(_REGISTRY)


def describe() -> dict:
  """`{property name: one-line description}`."""
  return {name: p.doc for name, p in _REGISTRY.items()}


# ---------------------------------------------------------------------------------------------
# Comparing trees, with a message that says how far apart they are


def _tolerance(dtype, tolerances: Mapping[str, tuple]) -> tuple:
  if jnp.issubdtype(dtype, jnp.complexfloating):  # a complex carry: its parts' precision
    dtype = jnp.finfo(dtype).dtype
  name = jnp.dtype(dtype).name
  if name not in tolerances:
    raise ValueError(f"no tolerance for dtype {name}; pass tolerances={{'{name}': (rtol, atol)}}")
  return tolerances[name]


def _leaf_dtype(tree):
  leaves = [jnp.asarray(a) for a in jax.tree_util.tree_leaves(tree)]
  inexact = [a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.inexact)]
  return inexact[0] if inexact else jnp.dtype(jnp.float32)


def _as64(a) -> np.ndarray:
  """`a` in float64, or complex128 for a complex leaf (a complex carry)."""
  return np.asarray(a, np.complex128 if np.iscomplexobj(a) else np.float64)


def _largest_error(got, want) -> str:
  """A one-line summary of the worst leaf: largest |got - want| and the |want| there."""
  worst = None
  paths_got = jax.tree_util.tree_flatten_with_path(got)[0]
  paths_want = jax.tree_util.tree_leaves(want)
  for (path, a), b in zip(paths_got, paths_want):
    a, b = _as64(a), _as64(b)
    if a.shape != b.shape:
      return f"leaf {jax.tree_util.keystr(path)} has shape {a.shape}, expected {b.shape}"
    if a.size == 0:
      continue
    err = np.abs(a - b)
    bad_nan = np.isnan(a) != np.isnan(b)
    if bad_nan.any():
      return f"leaf {jax.tree_util.keystr(path)} {a.shape} has NaN where the other has not"
    err = np.where(np.isnan(a) & np.isnan(b), 0.0, err)
    i = np.unravel_index(np.argmax(err), err.shape)
    if worst is None or err[i] > worst[0]:
      worst = (float(err[i]), float(np.abs(b[i])), jax.tree_util.keystr(path), a.shape, i)
  if worst is None:
    return "no elements to compare"
  err, ref, path, shape, index = worst
  return (f"largest |got - want| = {err:.3g} (where |want| = {ref:.3g}) at leaf "
          f"{path or '<root>'} of shape {shape}, index {tuple(int(j) for j in index)}")


def _assert_close(got, want, *, rtol: float, atol: float, what: str) -> None:
  """`chex.assert_trees_all_close`, with the largest error named in the message."""
  got_def, want_def = jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want)
  if got_def != want_def:
    raise AssertionError(f"{what}: structures differ: {got_def} vs {want_def}")
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    if jnp.asarray(a).dtype != jnp.asarray(b).dtype:
      raise AssertionError(f"{what}: dtypes differ: {jnp.asarray(a).dtype} vs "
                           f"{jnp.asarray(b).dtype}")
  # chex compares in the leaves' own dtype; bfloat16 has no numpy isclose, so compare in float64.
  as64 = lambda t: jax.tree_util.tree_map(_as64, t)
  try:
    chex.assert_trees_all_close(as64(got), as64(want), rtol=rtol, atol=atol)
  except AssertionError as e:
    raise AssertionError(f"{what}: {_largest_error(got, want)}; tolerance rtol={rtol:g}, "
                         f"atol={atol:g}\n{e}") from None


# ---------------------------------------------------------------------------------------------
# assert_same_function


def _float_leaves_only(args, what: str):
  for leaf in jax.tree_util.tree_leaves(args):
    if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
      raise TypeError(f"{what}: every leaf of args must be floating (close over integer or boolean "
                      f"arguments such as lengths), got a leaf of dtype {jnp.asarray(leaf).dtype}")


def _random_like(key, tree, scale: float = 1.0):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  out = [jax.random.normal(k, jnp.shape(a), jnp.asarray(a).dtype) * scale
         if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact) else a
         for k, a in zip(keys, leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def assert_same_function(f: Callable, g: Callable, args: Sequence, *, rtol: Optional[float] = None,
                         atol: Optional[float] = None, modes: Iterable[str] = ("fwd", "rev"),
                         seed: int = 0, tolerances: Optional[Mapping[str, tuple]] = None,
                         jit: bool = True) -> None:
  """Asserts that two implementations of one function agree: values and derivatives.

  What every fast path (fused loop, custom VJP, kernel) is pinned to its reference with. It
  compares `f(*args)` with `g(*args)`; for mode "fwd", `jax.jvp` of both along one random tangent
  direction; for mode "rev", `jax.vjp` of both applied to one random cotangent (a random direction
  checks the whole Jacobian with high probability at the cost of one derivative evaluation).

  Args:
    f, g: functions of `*args` returning pytrees of floating arrays of the same structure.
    args: a tuple of pytrees of floating arrays (close over integer arguments such as lengths).
    rtol, atol: tolerances; by default `tolerances[dtype of the outputs]`.
    modes: any of "fwd", "rev".
    seed: seed of the random tangents and cotangents.
    tolerances: per-dtype `(rtol, atol)` overriding `DEFAULT_TOLERANCES`.
    jit: compile each implementation's values and derivatives as one `jax.jit` call (set False
      for a function that needs concrete values, such as a Python-loop oracle).

  Raises:
    AssertionError: naming what differs (values, forward- or reverse-mode derivatives) and the
      largest error.

  >>> import jax.numpy as jnp, jaxrnn.testing
  >>> jaxrnn.testing.assert_same_function(jnp.tanh, lambda x: 2 * jax.nn.sigmoid(2 * x) - 1,
  ...                                     (jnp.linspace(-2.0, 2.0, 5),))
  """
  args = tuple(args)
  _float_leaves_only(args, "assert_same_function")
  modes = tuple(modes)
  unknown = set(modes) - {"fwd", "rev"}
  if unknown:
    raise ValueError(f"assert_same_function: modes must be 'fwd' and/or 'rev', got {modes}")
  key_t, key_c = jax.random.split(jax.random.key(seed))
  tangents = _random_like(key_t, args)
  out_shape = jax.eval_shape(f, *args)
  cotangent = _random_like(key_c, jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype), out_shape))

  def everything(fn):
    # Values, JVP and VJP in one jitted call: one compilation per implementation, not three.
    def run(args, tangents, cotangent):
      out, vjp_fn = jax.vjp(fn, *args)
      results = {"values": out}
      if "fwd" in modes:
        results["fwd"] = jax.jvp(fn, args, tangents)[1]
      if "rev" in modes:
        results["rev"] = vjp_fn(cotangent)
      return results
    return jax.jit(run) if jit else run

  got = everything(f)(args, tangents, cotangent)
  want = everything(g)(args, tangents, cotangent)
  table = dict(DEFAULT_TOLERANCES, **(tolerances or {}))
  default_rtol, default_atol = _tolerance(_leaf_dtype(got["values"]), table)
  rtol = default_rtol if rtol is None else rtol
  atol = default_atol if atol is None else atol
  what = {"values": "values differ",
          "fwd": "forward-mode derivatives (JVP along a random tangent) differ",
          "rev": "reverse-mode derivatives (VJP of a random cotangent) differ"}
  for part in [p for p in ("values", "fwd", "rev") if p in got]:  # jit sorts dict keys
    _assert_close(got[part], want[part], rtol=rtol, atol=atol, what=what[part])


# ---------------------------------------------------------------------------------------------
# The state of one property run: random inputs, the case being checked (for messages)


class _Checker:
  """What a property needs: the cell, its params, random inputs, and a comparison that names the
  case being checked."""

  def __init__(self, cell, input_size: int, params, seed: int, tolerances, steps: int,
               compute_dtype, compiled: dict, grad_modes=("fwd", "rev")):
    self.cell = cell
    self.grad_modes = tuple(grad_modes)
    self._compiled = compiled
    self.input_size = int(input_size)
    self.steps = int(steps)
    self.tolerances = tolerances
    self.compute_dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)
    self._key = jax.random.key(seed)
    if params is None:
      k_init, k_noise = jax.random.split(self.next_key())
      params = cell.init(k_init, self.input_size)
      # Built-in initialisers zero the biases, which would hide a bias applied twice or not at
      # all; a small perturbation of every floating leaf makes each parameter matter.
      params = jax.tree_util.tree_map(
          lambda a, n: a + n, params, _random_like(k_noise, params, scale=0.1))
    self.params = params
    self.case = "setting up"
    self.inputs = ""

  def next_key(self):
    self._key, key = jax.random.split(self._key)
    return key

  def at(self, case: str, xs) -> None:
    """Records the case being checked, named in any failure that follows."""
    self.case = case
    self.inputs = f"xs {tuple(xs.shape)} {jnp.dtype(xs.dtype).name}"

  def xs(self, batch: tuple, dtype=jnp.float32, steps: Optional[int] = None):
    steps = self.steps if steps is None else steps
    shape = tuple(batch) + (steps, self.input_size)
    return jax.random.normal(self.next_key(), shape, jnp.float32).astype(dtype)

  def carry(self, batch: tuple, dtype=jnp.float32):
    """A random carry (every floating leaf ~ N(0, 0.5^2)), so that a carry that is ignored or
    confused with `initial_carry` shows."""
    return _random_like(self.next_key(), self.cell.initial_carry(tuple(batch), dtype), scale=0.5)

  def params_as(self, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a,
        self.params)

  def close(self, what: str, got, want, dtype=None) -> None:
    rtol, atol = _tolerance(_leaf_dtype(want) if dtype is None else dtype, self.tolerances)
    _assert_close(got, want, rtol=rtol, atol=atol, what=what)

  def scan_fn(self, **static):
    """`jax.jit` of `jr.scan(cell, params, xs, carry=, lengths=, resets=)` with `static` options.

    One jitted function per set of options, shared by every property of a `check_cell` call, so
    that the same shapes compile once (compiling, not running, is what the battery spends time on).
    """
    key = ("scan",) + tuple(sorted(static.items()))
    if key not in self._compiled:
      cell = self.cell

      @jax.jit
      def run(params, xs, carry=None, lengths=None, resets=None):
        return scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets, **static)

      self._compiled[key] = run
    return self._compiled[key]

  def jitted_step_cell(self):
    """The cell with `step` jitted, for Python-loop oracles (one compile per batch shape instead
    of op-by-op dispatch)."""
    if "step_cell" not in self._compiled:
      self._compiled["step_cell"] = self.cell._replace(step=jax.jit(self.cell.step))
    return self._compiled["step_cell"]


def _lengths(*values) -> jax.Array:
  return jnp.asarray(values, jnp.int32)


def _index(tree, *idx):
  return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _stack(trees, axis=0):
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a, axis=axis), *trees)


def _concat_time(trees):
  """Concatenates `(..., t_i, H)` outputs along time (axis -2)."""
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=-2), *trees)


def _resets(batch: int, steps: int) -> jax.Array:
  """A reset pattern with a reset at step 0, one at the last step, and one in the middle."""
  r = np.zeros((batch, steps), bool)
  r[0, steps // 2] = True
  r[1 % batch, 0] = r[1 % batch, steps - 2] = True
  r[2 % batch, 1] = r[2 % batch, steps - 1] = True
  return jnp.asarray(r)


def _loop(step, params, carry, xs, reverse: bool):
  """Runs one sequence `xs (t, D)` through `step` in a Python loop; outputs `(t, ...)`."""
  ys = [None] * xs.shape[0]
  for t in (range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])):
    carry, ys[t] = step(params, carry, xs[t])
  return carry, _stack(ys)


# ---------------------------------------------------------------------------------------------
# The properties


@_property("scan_vs_unroll")
def _scan_vs_unroll(ck: _Checker):
  """`jr.scan` equals the Python-loop oracle `jr.static_unroll`: outputs and final carry, with a
  given carry, lengths (one of them 0), resets and reverse."""
  steps = ck.steps
  xs = ck.xs((3,))
  carry = ck.carry((3,))
  lengths = _lengths(steps, 2, 0)
  resets = _resets(3, steps)
  cases = [
      ("given carry", {"carry": carry}, {}),
      ("given carry, reverse", {"carry": carry}, {"reverse": True}),
      ("lengths (T, 2, 0), given carry", {"carry": carry, "lengths": lengths}, {}),
      ("resets, given carry", {"carry": carry, "resets": resets}, {}),
      ("resets, lengths (T, 2, 0), reverse", {"carry": carry, "resets": resets,
                                               "lengths": lengths}, {"reverse": True}),
  ]
  oracle_cell = ck.jitted_step_cell()
  for name, dynamic, static in cases:
    ck.at(name, xs)
    got = ck.scan_fn(**static)(ck.params, xs, **dynamic)
    want = static_unroll(oracle_cell, ck.params, xs, **dynamic, **static)
    ck.close("final carry differs from jr.static_unroll's", got[0], want[0])
    ck.close("outputs differ from jr.static_unroll's", got[1], want[1])


@_property("split")
def _split(ck: _Checker):
  """`step(p, c, x) == recur(p, c, project(p, x))` for any leading shape, and `project` of a
  whole sequence equals `project` of each step (vacuous for a cell without the split)."""
  cell = ck.cell
  if cell.project is None and cell.recur is None:
    return "not applicable: the cell has no project/recur split"
  if cell.project is None or cell.recur is None:
    raise AssertionError("a cell must have both project and recur, or neither; got project="
                         f"{cell.project!r}, recur={cell.recur!r}")
  both = jax.jit(lambda p, c, x: (cell.step(p, c, x), cell.recur(p, c, cell.project(p, x))))
  for batch in [(), (2, 3)]:
    x = ck.xs(batch, steps=1)[..., 0, :]
    c = ck.carry(batch)
    ck.at(f"one step, batch shape {batch}, random carry", x)
    want, got = both(ck.params, c, x)
    ck.close("carry of recur(project(x)) differs from step's", got[0], want[0])
    ck.close("output of recur(project(x)) differs from step's", got[1], want[1])
  xs = ck.xs((2,))
  ck.at("project of a whole sequence versus each step", xs)
  whole, per_step = jax.jit(lambda p, xs: (cell.project(p, xs), jnp.stack(
      [cell.project(p, xs[:, t]) for t in range(xs.shape[1])], axis=1)))(ck.params, xs)
  ck.close("project(xs)[:, t] differs from project(xs[:, t])", whole, per_step)


@_property("grads")
def _grads(ck: _Checker):
  """`jax.test_util.check_grads`, order 2, modes fwd and rev, in float64, through `jr.scan` with
  and without lengths, forward and reverse, with respect to params, inputs and initial carry."""
  with jax.enable_x64(True):
    params = ck.params_as(jnp.float64)
    xs = ck.xs((2,), jnp.float64)
    carry = ck.carry((2,), jnp.float64)
    lengths = _lengths(ck.steps, 3)
    # Each case costs a dozen compilations (JVPs and VJPs of JVPs and VJPs), so two cases cover
    # the four options: the plain path, and lengths together with reverse.
    for given, reverse in ((None, False), (lengths, True)):
      ck.at(f"lengths={None if given is None else '(T, 3)'}, reverse={reverse}", xs)
      run = ck.scan_fn(reverse=reverse)
      f = lambda p, x, c, run=run, given=given: run(p, x, c, given)
      # Reverse mode first, then forward mode, each on its own, so that the message says which
      # one is wrong (a cell with a `jax.custom_vjp` has no forward mode at all).
      for mode in [m for m in ("rev", "fwd") if m in ck.grad_modes]:
        ck.case = ck.case.split("; mode")[0] + f"; mode {mode}"
        jax_test_util.check_grads(f, (params, xs, carry), order=2, modes=(mode,),
                                  eps=_GRAD_EPS)


@_property("vmap_jit")
def _vmap_jit(ck: _Checker):
  """`jax.vmap` over examples equals explicit leading batch axes (two of them) and a Python loop
  over examples; `jax.jit` equals eager; with lengths, resets and reverse."""
  cell, params, steps = ck.cell, ck.params, ck.steps
  xs = ck.xs((2, 3))
  carry = ck.carry((2, 3))
  lengths = jnp.asarray([[steps, 2, 0], [1, steps, 3]], jnp.int32)
  resets = jnp.stack([_resets(3, steps), _resets(3, steps)[::-1]])
  args = (xs, carry, lengths, resets)
  for reverse in (False, True):
    ck.at(f"batch (2, 3), lengths, resets, reverse={reverse}", xs)
    one = lambda x, c, n, r, reverse=reverse: scan(cell, params, x, carry=c, lengths=n,
                                                   resets=r, reverse=reverse)
    explicit = jax.jit(one)(*args)
    vmapped = jax.jit(jax.vmap(jax.vmap(one)))(*args)
    ck.close("vmap over both batch axes differs from explicit batch axes", vmapped, explicit)
    if reverse:
      continue  # the rest is about batching and jit, not about the direction
    ck.close("jax.jit(jr.scan) differs from eager jr.scan", explicit, one(*args))
    single = jax.jit(one)
    loop = _stack([_stack([single(*_index(args, i, j)) for j in range(3)]) for i in range(2)])
    ck.close("a Python loop over examples differs from explicit batch axes", loop, explicit)


@_property("padding")
def _padding(ck: _Checker):
  """Garbage padding (large values, NaN, Inf) changes neither the outputs, the final carry nor
  any gradient: outputs and carry equal each sequence run alone on its valid part."""
  params, steps = ck.params, ck.steps
  xs = ck.xs((3,))
  carry = ck.carry((3,))
  lengths = _lengths(steps, 2, 0)
  valid = (jnp.arange(steps, dtype=jnp.int32)[None, :] < lengths[:, None])[..., None]
  garbage = {"zeros": jnp.zeros_like(xs),
             "large (100 N(0, 1) + 50)": 100 * ck.xs((3,)) + 50,
             "NaN": jnp.full_like(xs, jnp.nan),
             "Inf": jnp.full_like(xs, jnp.inf)}
  for reverse in (False, True):
    run = ck.scan_fn(reverse=reverse)
    per_seq = []
    for b in range(3):
      n = int(lengths[b])
      c_b = _index(carry, b)
      if n == 0:
        per_seq.append((c_b, jnp.zeros((0,))))
      else:
        per_seq.append(run(params, xs[b, :n], c_b))
    y_size = jax.eval_shape(lambda: run(params, xs[:1, :1], _index(carry, slice(0, 1))))[1]
    want_ys = []
    for b in range(3):
      n = int(lengths[b])
      pad = jax.tree_util.tree_map(
          lambda s: jnp.zeros((steps - n,) + s.shape[2:], s.dtype), y_size)
      want_ys.append(pad if n == 0 else _concat_time([per_seq[b][1], pad]))
    want = (_stack([s[0] for s in per_seq]), _stack(want_ys))
    for name, fill in garbage.items():
      padded = jnp.where(valid, xs, fill)
      ck.at(f"lengths (T, 2, 0), padding = {name}, reverse={reverse}", padded)
      got = run(params, padded, carry, lengths)
      ck.close("final carry differs from running each sequence on its valid part", got[0], want[0])
      ck.close("outputs differ from running each sequence on its valid part (zeros in the "
               "padding)", got[1], want[1])

    # Gradients (params, inputs, initial carry) of a fixed random projection of the results:
    # padding must not enter the arithmetic, so no garbage, NaN and Inf included, reaches them.
    probe = _random_like(ck.next_key(), want)
    loss = lambda p, x, c: sum(jnp.real(jnp.vdot(a, b)) for a, b in zip(
        jax.tree_util.tree_leaves(run(p, x, c, lengths)), jax.tree_util.tree_leaves(probe)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    clean = grad(params, jnp.where(valid, xs, 0), carry)
    for name, fill in garbage.items():
      if name == "zeros":
        continue
      padded = jnp.where(valid, xs, fill)
      ck.at(f"gradients, lengths (T, 2, 0), padding = {name}, reverse={reverse}", padded)
      dirty = grad(params, padded, carry)
      ck.close("gradients with garbage padding differ from those with zero padding", dirty,
               clean)
      ck.close("gradient with respect to padded inputs is not zero", dirty[1],
               jnp.where(valid, dirty[1], 0))


@_property("resets")
def _resets_property(ck: _Checker):
  """A run with resets equals each segment run on its own (forward and reverse), the given carry
  entering only the first segment (the last one in reverse) and `initial_carry` the others."""
  cell, params, steps = ck.cell, ck.params, ck.steps + 1
  step = ck.jitted_step_cell().step
  xs = ck.xs((3,), steps=steps)
  carry = ck.carry((3,))
  resets = _resets(3, steps)
  for reverse in (False, True):
    run = ck.scan_fn(reverse=reverse)
    finals, outputs = [], []
    for b in range(3):
      starts = [0] + [t for t in range(1, steps) if resets[b, t]]
      segments = list(zip(starts, starts[1:] + [steps]))
      # The given carry enters the segment that runs first, unless a reset at step 0 (forward)
      # replaces it.
      given_enters = reverse or not bool(resets[b, 0])
      order = segments[::-1] if reverse else segments
      ys = {}
      c = None
      for i, (s, e) in enumerate(order):
        c = _index(carry, b) if (i == 0 and given_enters) else cell.initial_carry((), xs.dtype)
        c, ys[s] = _loop(step, params, c, xs[b, s:e], reverse)
      finals.append(c)
      outputs.append(_concat_time([ys[s] for s, _ in segments]))
    ck.at(f"resets at steps {[list(np.flatnonzero(r)) for r in np.asarray(resets)]}, "
          f"reverse={reverse}", xs)
    got = run(params, xs, carry, None, resets)
    ck.close("final carry differs from running each segment on its own", got[0], _stack(finals))
    ck.close("outputs differ from running each segment on its own", got[1], _stack(outputs))


@_property("chunking")
def _chunking(ck: _Checker):
  """Chunked streaming (T split into chunks, the carry passed between jitted `jr.scan` calls)
  equals one call: with lengths and resets, and in reverse (chunks last to first)."""
  params, steps = ck.params, ck.steps + 2
  xs = ck.xs((2,), steps=steps)
  carry = ck.carry((2,))
  lengths = _lengths(steps, 4)
  resets = _resets(2, steps)
  bounds = [(0, 3), (3, 4), (4, steps)]
  # Resets are forward-only here: in a reverse run a reset at a chunk's first step acts on the
  # step before it, in the chunk that runs next, which a chunked caller has to do by hand.
  cases = [("lengths (T, 4), resets", True, True, False), ("lengths (T, 4), reverse", True, False, True)]
  for name, use_lengths, use_resets, reverse in cases:
    run = ck.scan_fn(reverse=reverse)
    full_lengths = lengths if use_lengths else None
    full_resets = resets if use_resets else None
    ck.at(f"{name}, chunks {bounds}", xs)
    want = run(params, xs, carry, full_lengths, full_resets)
    c, ys = carry, {}
    for s, e in (bounds[::-1] if reverse else bounds):
      chunk_lengths = None if not use_lengths else jnp.clip(lengths - s, 0, e - s)
      chunk_resets = None if not use_resets else resets[:, s:e]
      c, ys[s] = run(params, xs[:, s:e], c, chunk_lengths, chunk_resets)
    ck.close("final carry of the chunked run differs from one call's", c, want[0])
    ck.close("outputs of the chunked run differ from one call's",
             _concat_time([ys[s] for s, _ in bounds]), want[1])


@_property("dtypes")
def _dtypes(ck: _Checker):
  """float32 in gives float32 carries and outputs (with x64 on), bfloat16 stays bfloat16,
  float64 stays float64 (from `initial_carry`, `step` and `jr.scan`), and the values agree with a
  float64 run of the same inputs."""
  cell, params = ck.cell, ck.params
  with jax.enable_x64(True):
    xs64 = ck.xs((2,), jnp.float64)
    lengths = _lengths(ck.steps, 2)
    run = ck.scan_fn()
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float64):
      expected = ck.compute_dtype or jnp.dtype(dtype)
      xs = xs64.astype(dtype)
      ck.at(f"inputs {jnp.dtype(dtype).name}, expected compute dtype {expected.name}", xs)

      def check(what, tree):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
          if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != expected:
            raise AssertionError(f"{what}{jax.tree_util.keystr(path)} has dtype {leaf.dtype}, "
                                 f"expected {expected.name}")

      c0 = cell.initial_carry((2,), dtype)
      check("initial_carry((2,), dtype)", c0)
      check("step's carry and output", jax.jit(cell.step)(params, c0, xs[:, 0]))
      got = run(params, xs, None, lengths)
      check("jr.scan's carry and outputs", got)
      # The reference: the same rounded inputs, computed in float64. A cell that fixes its
      # compute dtype is compared at that dtype's tolerance.
      want = run(ck.params_as(jnp.float64), xs.astype(jnp.float64), None, lengths)
      # Leaves that are complex (a complex carry) stay complex, in the dtype the run gave them.
      want = jax.tree_util.tree_map(
          lambda w, g: w.astype(g.dtype if jnp.issubdtype(g.dtype, jnp.complexfloating) else
                                (dtype if ck.compute_dtype is None else ck.compute_dtype)),
          want, got)
      ck.close(f"jr.scan in {expected.name} differs from float64", got, want, dtype=expected)


@_property("fast_path")
def _fast_path(ck: _Checker):
  """`jr.scan`'s fast path (`implementation="auto"`) equals the plain autodiff path
  (`implementation="reference"`) in float32: values, forward- and reverse-mode derivatives with
  respect to params, inputs and initial carry; with lengths, resets and reverse."""
  cell = ck.cell
  xs = ck.xs((3,))
  carry = ck.carry((3,))
  lengths = _lengths(ck.steps, 2, 0)
  resets = _resets(3, ck.steps)
  cases = [("plain", None, None, False), ("lengths (T, 2, 0), reverse", lengths, None, True),
           ("resets, lengths (T, 2, 0)", lengths, resets, False)]
  for name, n, r, reverse in cases:
    ck.at(name, xs)

    def run(implementation, n=n, r=r, reverse=reverse):
      return lambda p, x, c: scan(cell, p, x, carry=c, lengths=n, resets=r, reverse=reverse,
                                  implementation=implementation)

    assert_same_function(run("auto"), run("reference"), (ck.params, xs, carry),
                         tolerances=ck.tolerances, seed=int(ck.steps), modes=ck.grad_modes)


# ---------------------------------------------------------------------------------------------
# Entry points


@functools.lru_cache(maxsize=16)
def _compiled_for(cell) -> dict:
  """The jitted functions of one cell, kept across `check_cell` calls, so that a test suite that
  runs one property per test case (and keeps its cell objects) compiles each shape once."""
  return {}


def _select(only, skip) -> list:
  names = properties()
  chosen = list(names) if only is None else ([only] if isinstance(only, str) else list(only))
  skip = [skip] if isinstance(skip, str) else list(skip)
  unknown = [n for n in chosen + skip if n not in _REGISTRY]
  if unknown:
    raise ValueError(f"unknown properties {unknown}; the battery has {list(names)}")
  return [n for n in chosen if n not in skip]


def _check_protocol(cell) -> None:
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"check_cell needs a jr.Cell, got {type(cell).__name__}")


def check_cell(cell: _types.Cell, input_size: int, *, only=None, skip=(), params: PyTree = None,
               tolerances: Optional[Mapping[str, tuple]] = None, seed: int = 0, steps: int = 5,
               compute_dtype=None, grad_modes: Sequence[str] = ("fwd", "rev")) -> dict:
  """Runs the conformance battery on `cell` (see `properties()` and `describe()`).

  Every selected property runs, then one `AssertionError` lists every failure: the property, the
  case (options such as lengths, resets, reverse), the inputs' shape and dtype, and the largest
  error found. An exception raised inside a property (by JAX or by the cell) is that property's
  failure.

  Args:
    cell: a `jr.Cell`.
    input_size: D, the size of the inputs' last axis.
    only: a property name or names to run (default: all).
    skip: property names not to run.
    params: the parameters to check at; by default `cell.init(key, input_size)` with a small
      random perturbation of every floating leaf (so that zero-initialised biases count).
    tolerances: `{dtype name: (rtol, atol)}` overriding `DEFAULT_TOLERANCES` for comparisons.
      The float64 gradient check uses `jax.test_util.check_grads`' own tolerances.
    seed: seed of every random input.
    steps: T, the length of the test sequences (some properties use T + 1 or T + 2). At least 4.
    compute_dtype: the dtype a cell with a fixed compute dtype computes in (default: the inputs').
    grad_modes: the derivative modes of "grads" and "fast_path"; `("rev",)` for a cell built on
      `jax.custom_vjp`, which JAX cannot differentiate in forward mode (jaxrnn's contract asks
      for both).

  Returns:
    `{property name: "ok" | "not applicable: ..."}`, with the wall time of each.

  Raises:
    AssertionError: if any property fails.

  >>> import jaxrnn as jr, jaxrnn.testing
  >>> report = jaxrnn.testing.check_cell(jr.gru(4), 3, only=["scan_vs_unroll", "split"])
  >>> sorted(report)
  ['scan_vs_unroll', 'split']
  """
  _check_protocol(cell)
  if steps < 4:
    raise ValueError(f"steps must be at least 4 (lengths and resets need room), got {steps}")
  table = dict(DEFAULT_TOLERANCES, **{jnp.dtype(k).name: tuple(v)
                                      for k, v in (tolerances or {}).items()})
  names = _select(only, skip)
  if not grad_modes or set(grad_modes) - {"fwd", "rev"}:
    raise ValueError(f"grad_modes must be a non-empty subset of ('fwd', 'rev'), got {grad_modes}")
  report, failures, failed = {}, [], []
  try:
    compiled = _compiled_for(cell)
  except TypeError:  # a cell holding an unhashable callable: compile per call
    compiled = {}
  for name in names:
    ck = _Checker(cell, input_size, params, seed, table, steps, compute_dtype, compiled,
                  grad_modes)
    start = time.perf_counter()
    try:
      note = _REGISTRY[name].fn(ck)
    except Exception as e:  # noqa: BLE001 -- any exception inside a property is its failure
      if isinstance(e, AssertionError):
        detail = str(e)
      else:
        detail = f"{type(e).__name__} raised inside the property: {e}"
      failed.append(name)
      failures.append(f"property '{name}' failed for cell {cell.name} (case: {ck.case}; "
                      f"{ck.inputs}): {detail}")
      report[name] = "failed"
      continue
    report[name] = f"{note or 'ok'} ({time.perf_counter() - start:.1f}s)"
  if failures:
    head = (f"jaxrnn.testing: {len(failures)} of {len(names)} properties failed for cell "
            f"{cell.name}: {failed}")
    raise AssertionError("\n\n".join([head] + failures))
  return report


def check_property(cell: _types.Cell, input_size: int, name: str, **options) -> dict:
  """Runs one property of the battery: `check_cell(cell, input_size, only=[name], **options)`."""
  if not isinstance(name, str):
    raise TypeError(f"name must be a property name (a str), got {name!r}")
  return check_cell(cell, input_size, only=[name], **options)
