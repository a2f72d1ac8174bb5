"""Which path a `jr.scan` call takes: `plan`, the one function that decides, and the tables of
measured choices it reads.

A call's plan depends only on what the call shows: the cell (its functions, and the kernel
family it declares), the `implementation` and options asked for, the shapes and dtypes of
`params`, `xs` and `carry`, and the machine (backend, native library). The tables hold the
choices measured per family and backend; `benchmarks/DISPATCH.md` has the measurements behind
every entry.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.drivers import _library

DRIVERS = ("reference", "fused", "native", "onednn", "cudnn")

# Whether the input projection runs once before the loop, per backend, where a cell allows
# either (default: yes). DISPATCH.md, "Hoisting the input projection".
HOIST_BY_BACKEND = {"cpu": False}

# Per (family, backend), where measurement says otherwise than `HOIST_BY_BACKEND`:
# `(inference, training)`, training being the fused driver's forward that keeps residuals.
# DISPATCH.md, "Hoisting the input projection".
HOIST_BY_FAMILY = {("indrnn", "cpu"): (True, True), ("simple_rnn", "cpu"): (True, True)}

# Whether "auto" runs the fused driver for a family on a backend (default: wherever it
# applies). DISPATCH.md, "The fused driver under auto".
FUSED_BY_FAMILY = {("indrnn", "cpu"): False}

# Whether the fused driver's XLA loop runs the step as one matmul of `[x_t, h]` by the joined
# weights, where the projection is not hoisted and the cell has that form (default: no).
# DISPATCH.md, "One matmul a step".
JOINT_BY_FAMILY = {("lstm", "cpu"): True}

# Whether the fused driver runs its loops natively on a backend, where the native library is
# built and the call qualifies (`why_not_native`). DISPATCH.md, "The native loops".
NATIVE_BY_BACKEND = {"cpu": True}

# The smallest batch (examples in one call, leading axes flattened) each family's native loop
# runs, `(inference, training)`, where a step's weights fit in one core's L2 cache; families
# not listed: none. Where they do not fit, at least `NATIVE_MIN_BATCH_UNCACHED[kernel]`, by the
# kernel of the loop's step matmuls (`_library.step_matmul()`): with oneDNN's sgemm each thread
# then streams the weights from L3 every step, which paid only over enough examples; the
# packed kernel (4 examples and up) beat XLA's loop from 4 examples. DISPATCH.md, "The native
# loops" and "The packed step kernel".
NATIVE_MIN_BATCH = {"lstm": (1, 1), "gru": (8, 1), "simple_rnn": (8, 1)}
NATIVE_MIN_BATCH_UNCACHED = {"sgemm": (16, 4), "packed": (4, 4)}
# Gates per hidden unit: a step's weights are `(D + H) x GATES[family] * H` float32s.
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
# Where the step matmuls run on oneDNN's sgemm on a CPU without AVX-512 (an AVX2 machine with
# JAXRNN_NATIVE_GEMM=sgemm, or a CPU without AVX2 and FMA): the largest step weights, as a
# multiple of one core's L2 cache, at which each family's native loop runs, `(inference,
# training)`; None: no limit (none measured). Above them XLA's loop was faster. With the packed
# kernel, the default on AVX2 CPUs, the native loops were faster at every size measured.
# DISPATCH.md, "The native loops on an AVX2 machine".
NATIVE_MAX_L2_MULTIPLE_WITHOUT_AVX512 = {"lstm": (1, 4), "gru": (4, None),
                                         "simple_rnn": (None, None)}


def l2_cache_bytes() -> int:
  """The L2 cache of one core of this machine in bytes, from Linux's sysfs; 0 where unknown
  (then no step's weights count as fitting)."""
  root = "/sys/devices/system/cpu/cpu0/cache"
  try:
    for index in sorted(os.listdir(root)):
      read = lambda name: open(os.path.join(root, index, name)).read().strip()
      if read("level") == "2" and read("type") in ("Unified", "Data"):
        size = read("size")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
        return int(size.rstrip("KMGkmg")) * scale
  except (OSError, ValueError):
    pass
  return 0


def cpu_flags() -> frozenset:
  """The feature flags of this machine's CPU from Linux's /proc/cpuinfo (`avx2`, `fma`,
  `avx512f`, ...); empty where unknown."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[-1].split())
  except OSError:
    pass
  return frozenset()


def cpu_has_avx512() -> bool:
  """Whether this machine's CPU has AVX-512 (the `avx512f` flag); False where unknown."""
  return "avx512f" in cpu_flags()


_L2_BYTES = None
_AVX512 = None
_STEP_MATMUL = None


def _l2_bytes() -> int:
  global _L2_BYTES
  if _L2_BYTES is None:
    _L2_BYTES = l2_cache_bytes()
  return _L2_BYTES


def _avx512() -> bool:
  global _AVX512
  if _AVX512 is None:
    _AVX512 = cpu_has_avx512()
  return _AVX512


def _step_matmul() -> str:
  """The native loops' step-matmul kernel here, "packed" or "sgemm" (see
  `_library.step_matmul`; "sgemm" where the library is not available)."""
  global _STEP_MATMUL
  if _STEP_MATMUL is None:
    _STEP_MATMUL = _library.step_matmul() or "sgemm"
  return _STEP_MATMUL


def native_max_l2_multiple(family: str, training: bool) -> Optional[int]:
  """The largest step weights, as a multiple of one core's L2 cache, at which the native loop
  of `family` runs on this machine; None: no limit (see
  `NATIVE_MAX_L2_MULTIPLE_WITHOUT_AVX512`)."""
  if _avx512() or _step_matmul() == "packed":
    return None
  return NATIVE_MAX_L2_MULTIPLE_WITHOUT_AVX512[family][int(training)]


def step_weight_bytes(family: str, d: int, hidden: int) -> int:
  """The bytes of one step's float32 weights, `(d + hidden) x GATES[family] * hidden`."""
  return 4 * (d + hidden) * GATES[family] * hidden


def native_min_batch(family: str, d: int, hidden: int, training: bool) -> int:
  """The smallest batch the native loop of `family` runs for input size `d` and hidden size
  `hidden` on this machine (see `NATIVE_MIN_BATCH`)."""
  smallest = NATIVE_MIN_BATCH[family][int(training)]
  if step_weight_bytes(family, d, hidden) > _l2_bytes():
    smallest = max(smallest, NATIVE_MIN_BATCH_UNCACHED[_step_matmul()][int(training)])
  return smallest


class Plan(NamedTuple):
  """The path of one `jr.scan` call.

  Attributes:
    driver: "reference" (`lax.scan` differentiated by JAX), "fused" (the fused driver's XLA
      loop), "native" (the fused driver with its loops in C++), "onednn" (oneDNN's LSTM) or
      "cudnn" (cuDNN's LSTM through `jax.experimental.rnn`).
    hoist: whether the input projection `cell.project` runs once over all steps before the
      loop (then `cell.recur` runs in it) rather than inside each step. For "native", the XLA
      loop that forward-mode derivatives of the native loop run; False for "onednn".
    joint: whether the fused loop runs each step's input and recurrent matmuls as one.
    reasons: why each of those choices was made, in words.
    family: the cell's kernel family where the drivers may use it (its functions are the
      built-in ones), else None.
  """

  driver: str
  hoist: bool
  joint: bool
  reasons: tuple
  family: Optional[str] = None


def functions_run(cell: _types.Cell) -> str:
  """Which of a cell's functions a driver may run: "step", "split" (project + recur) or "either".

  Built-in cells record the `(step, project, recur)` they were built with (`Cell.built_from`).
  A user who replaced `step` must get their `step`; one who replaced `project` or `recur` must
  get those.
  """
  if cell.project is None or cell.recur is None:
    return "step"
  if cell.built_from is not None and cell.step == cell.built_from[0]:
    return "either" if (cell.project, cell.recur) == cell.built_from[1:] else "split"
  builtin = _types.is_builtin_function(cell.project) or _types.is_builtin_function(cell.recur)
  return "step" if builtin else "either"


def spec_for(cell: _types.Cell) -> Optional[_types.FusedSpec]:
  """The cell's fused recurrence, if it is a built-in cell whose functions are unchanged."""
  return cell.fused if _types.built_functions_unchanged(cell) else None


def _hoist(cell: _types.Cell, family: Optional[str], backend: str, training: bool):
  """`(hoist, reason)`."""
  functions = functions_run(cell)
  if functions == "split":
    return True, ("hoisted: the cell's project or recur was replaced, and a replaced function "
                  "runs as given (project over all steps, then recur in the loop)")
  if functions == "step":
    return False, ("not hoisted: the cell runs its step (no project/recur split, or a replaced "
                   "step)")
  if (family, backend) in HOIST_BY_FAMILY:
    hoisted = HOIST_BY_FAMILY[family, backend][int(training)]
    return hoisted, (f"{'' if hoisted else 'not '}hoisted: measured for the {family} family on "
                     f"{backend} (HOIST_BY_FAMILY)")
  hoisted = HOIST_BY_BACKEND.get(backend, True)
  return hoisted, (f"{'' if hoisted else 'not '}hoisted: the default on {backend} "
                   "(HOIST_BY_BACKEND)")


def why_not_native(cell: _types.Cell, spec, params, xs_t, carry, resets,
                   backend: Optional[str] = None, training: bool = False) -> Optional[str]:
  """Why the native loop does not serve this fused-driver call, or None when it does. Only the
  shapes and dtypes of `params`, `xs_t (T, ..., D)` and `carry` are read."""
  backend = jax.default_backend() if backend is None else backend
  family = getattr(spec, "native", None)
  if family is None:
    return "it runs only the built-in LSTM, GRU and simple RNN cells with float32 matmuls"
  if os.environ.get("JAXRNN_NATIVE", "") == "0":
    return "disabled by the environment variable JAXRNN_NATIVE=0"
  if not NATIVE_BY_BACKEND.get(backend, False):
    return f"not used on the {backend} backend"
  if resets is not None:
    return "resets is not supported"
  if not isinstance(params, dict) or not {"w_x", "w_h"} <= set(params):
    return f"params must be the dict of the built-in cell {cell.name}"
  leaves = [xs_t] + jax.tree_util.tree_leaves(carry) + jax.tree_util.tree_leaves(params)
  if any(jnp.result_type(a) != jnp.float32 for a in leaves):
    return "it computes in float32 only"
  if xs_t.shape[0] == 0:
    return "the input is empty"
  if cell.family not in NATIVE_MIN_BATCH:
    return f"no native loop is measured for the {cell.family} family (NATIVE_MIN_BATCH)"
  hidden = jax.tree_util.tree_leaves(carry)[0].shape[-1]
  smallest = native_min_batch(cell.family, xs_t.shape[-1], hidden, training)
  if _types.prod(xs_t.shape[1:-1]) < smallest:
    return (f"the batch is smaller than {smallest}, where the {cell.family} loop starts "
            f"{'with a backward pass' if training else 'without a backward pass'} at this "
            "size on this machine (NATIVE_MIN_BATCH)")
  multiple = native_max_l2_multiple(cell.family, training)
  weights = step_weight_bytes(cell.family, xs_t.shape[-1], hidden)
  if multiple is not None and weights > multiple * _l2_bytes():
    return (f"a step's weights ({weights / 2**20:.2f} MiB) exceed {multiple}x one core's L2 "
            f"cache ({_l2_bytes() // 1024} KiB) on a CPU without AVX-512 whose loops multiply "
            f"with oneDNN's sgemm, where XLA's loop ran the {cell.family} "
            f"{'training step' if training else 'forward'} faster "
            "(NATIVE_MAX_L2_MULTIPLE_WITHOUT_AVX512)")
  if not _library.available():
    return f"the native library is not available here: {_library.unavailable_reason()}"
  return None


def why_not_onednn(cell: _types.Cell, params, xs_t, carry, lengths, resets, remat,
                   backend: Optional[str] = None) -> Optional[str]:
  """Why oneDNN's LSTM kernel does not apply to this call, or None. Only the shapes and dtypes
  of `params`, `xs_t (T, ..., D)` and `carry` are read, and whether the options are given."""
  backend = jax.default_backend() if backend is None else backend
  # A fused spec whose native family is "lstm" marks the built-in LSTM with its functions
  # unchanged (`spec_for`) and float32-or-compute-dtype matmuls (no bfloat16 matmul_dtype).
  spec = spec_for(cell)
  if spec is None or spec.native != "lstm":
    return ("it runs only the built-in LSTM cell (jr.lstm, matmul_dtype None or float32) "
            "with its own functions; this cell is not one")
  if lengths is not None:
    return "lengths is not supported"
  if resets is not None:
    return "resets is not supported"
  if remat is not None:
    return "remat is not supported"
  dtypes = [("xs", xs_t.dtype)]
  dtypes += [(f"carry.{k}", v.dtype) for k, v in carry._asdict().items()]
  if not isinstance(params, dict) or not {"w_x", "w_h"} <= set(params) or not set(params) <= {
      "w_x", "w_h", "b"}:
    return "params must be jr.lstm's dict with keys w_x, w_h and optionally b"
  dtypes += [(f"params[{k!r}]", jnp.result_type(v)) for k, v in sorted(params.items())]
  for what, dtype in dtypes:
    if dtype != jnp.float32:
      return (f"it computes in float32 only, and {what} is {np.dtype(dtype).name} (or the "
              "cell's compute dtype is not float32)")
  if backend != "cpu":
    return f"it runs on CPU only, and the default backend is {backend}"
  if not _library.available():
    return f"the kernel is not available here: {_library.unavailable_reason()}"
  return None


def _joint_applies(spec: _types.FusedSpec, params, x_dtype, carry_dtype) -> bool:
  """Whether the cell's joint step applies to these dtypes (`FusedSpec.joint` is not None for
  them), found by abstract evaluation: nothing is computed."""
  applies = []

  def probe(p):
    applies.append(spec.joint(p, spec.rec_params(p, carry_dtype), x_dtype, carry_dtype)
                   is not None)

  jax.eval_shape(probe, params)
  return applies[0]


def plan(cell: _types.Cell, params, xs_t, carry, *, lengths=None, resets=None, remat=None,
         implementation: str = "auto", training: bool = False,
         backend: Optional[str] = None) -> Plan:
  """The path `jr.scan` takes for a call on time-major `xs_t (T, ..., D)` from `carry`.

  Only the shapes and dtypes of `params`, `xs_t` and `carry` are read (arrays or
  `jax.ShapeDtypeStruct`s), and of `lengths`, `resets` and `remat` only whether they are given.
  `training` asks for the forward pass that keeps residuals for a backward pass: the fused
  driver chooses its hoisting for it separately, the reference driver once for both.
  `backend` defaults to JAX's default backend.

  Raises:
    ValueError: where `implementation` ("fused" or "onednn") names a path that does not apply
      to the call, saying why.
  """
  asked_backend, backend = backend, jax.default_backend() if backend is None else backend
  functions = functions_run(cell)
  # A family's choices were measured on its own functions: they apply only while the cell has
  # them (`Cell.family`).
  family = cell.family if functions == "either" else None
  reasons = []
  if functions != "either" and cell.family is not None:
    reasons.append(f"the {cell.family} family's choices do not apply: the cell's step, "
                   "project or recur was replaced")

  if implementation == "onednn":
    why = why_not_onednn(cell, params, xs_t, carry, lengths, resets, remat, backend)
    if why is not None:
      raise ValueError(f"{cell.name}: implementation='onednn' does not apply: {why}. Use "
                       "implementation='auto', 'fused' or 'reference'")
    reasons.append("onednn: asked for with implementation='onednn', and it applies")
    return Plan("onednn", False, False, tuple(reasons), family)

  if implementation == "cudnn":
    from jaxrnn.drivers import _cudnn  # jax.experimental.rnn is imported only when asked for
    why = _cudnn.applies(cell, params, xs_t, carry=carry, lengths=lengths, resets=resets,
                         remat=remat, backend=asked_backend)
    if why is not None:
      raise ValueError(f"{cell.name}: implementation='cudnn' does not apply: {why}. Use "
                       "implementation='auto', 'fused' or 'reference'")
    reasons.append("cudnn: asked for with implementation='cudnn', and it applies")
    return Plan("cudnn", False, False, tuple(reasons), family)

  spec = spec_for(cell)
  if implementation == "fused":
    if spec is None:
      raise ValueError(f"{cell.name}: no fused implementation applies (its functions are not "
                       "the built-in ones); use implementation='auto' or 'reference'")
    reasons.append("fused: asked for with implementation='fused'")
  elif implementation == "auto" and spec is not None:
    if FUSED_BY_FAMILY.get((family, backend), True):
      reasons.append(f"fused: the cell has a fused form, and 'auto' takes it for the {family} "
                     f"family on {backend}")
    else:
      spec = None
      reasons.append(f"reference: measured as fast as the fused driver for the {family} family "
                     f"on {backend} (FUSED_BY_FAMILY)")
  elif implementation == "auto":
    reasons.append("reference: no fused form serves this cell (only built-in cells with their "
                   "own functions have one)")
  elif implementation == "reference":
    spec = None
    reasons.append("reference: asked for with implementation='reference'")
  else:
    raise ValueError("implementation must be one of 'auto', 'reference', 'fused', 'onednn' or "
                     f"'cudnn', got {implementation!r}")

  if spec is None:
    hoist, why = _hoist(cell, family, backend, training=False)
    reasons.append(why + (" (the reference driver decides once, with or without a backward "
                          "pass)" if training else ""))
    return Plan("reference", hoist, False, tuple(reasons), family)

  why = why_not_native(cell, spec, params, xs_t, carry, resets, backend, training)
  if why is None:
    driver = "native"
    reasons.append(f"native: the {spec.native} loop in C++ serves this call")
  else:
    driver = "fused"
    reasons.append(f"not native: {why}")
  hoist, why = _hoist(cell, family, backend, training)
  reasons.append(why)
  joint = False
  if hoist:
    reasons.append("no joint matmul: the projection is hoisted")
  elif spec.joint is None:
    reasons.append("no joint matmul: the cell has no joint form")
  elif not JOINT_BY_FAMILY.get((family, backend), False):
    reasons.append(f"no joint matmul: not measured faster for the {family} family on {backend} "
                   "(JOINT_BY_FAMILY)")
  elif not _joint_applies(spec, params, xs_t.dtype, jax.tree_util.tree_leaves(carry)[0].dtype):
    reasons.append("no joint matmul: the input, carry and recurrent weight dtypes differ")
  else:
    joint = True
    reasons.append(f"joint matmul: measured faster for the {family} family on {backend} "
                   "(JOINT_BY_FAMILY)")
  return Plan(driver, hoist, joint, tuple(reasons), family)
