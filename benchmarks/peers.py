"""The implementations the benchmark compares: jaxrnn and its peers, each behind one interface.

Every implementation is a builder `build(problem) -> Runner`. A builder raises `Missing` when its
package is not installed or does not provide the cell (the harness then reports "missing" with
the reason, never drops the entry). A `Runner` holds its own parameters and inputs and runs:

- `forward()`: the output sequence `(B, T, H)` of a one-layer recurrent net, batch-major;
- `forward_backward()`: the gradients of `mean(ys ** 2)` with respect to the parameters AND the
  inputs;

each call waiting for the result (`jax.block_until_ready`, `torch.cuda.synchronize`). JAX runners
are compiled ahead of time with `jax.jit(f).lower(...).compile()`, which is how compile time is
measured, and report XLA's planned memory (`compiled.memory_analysis()`).

All implementations compute in float32 on the default JAX device (PyTorch on CUDA when both JAX
and torch see one, else on the CPU).

Neither PyTorch nor Flax ships an IndRNN cell, so for that kind the PyTorch and Flax linen rows
are the modules a user of each would write (`TorchIndRNN` below, `_linen_indrnn_cell`); they run
the same weights as jaxrnn, and the harness checks their outputs too.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("lstm", "gru", "rnn", "indrnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "indrnn": 1}
# Kinds whose recurrence is a matmul by `w_h (H, G*H)`; the IndRNN's is elementwise (`u * h`).
DENSE_RECURRENCE = ("lstm", "gru", "rnn")
KIND_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "indrnn": "IndRNN"}
MODES = ("fwd", "fwdbwd")


class Missing(Exception):
  """The implementation cannot run here (package not installed, cell not provided, no GPU)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem: a one-layer recurrent net of `kind` on inputs `(B, T, D)`."""
  kind: str      # "lstm" | "gru" | "rnn" (tanh Elman) | "indrnn" (ReLU, jr.indrnn's default)
  batch: int     # B
  steps: int     # T
  features: int  # D
  hidden: int    # H
  seed: int = 0

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (self.batch, self.steps, self.features, self.hidden)

  def inputs(self) -> np.ndarray:
    rng = np.random.default_rng(self.seed + 1)
    return rng.standard_normal((self.batch, self.steps, self.features), dtype=np.float32)

  def torch_weights(self) -> dict[str, np.ndarray]:
    """PyTorch-layout weights (`w_ih (G*H, D)`, `w_hh (G*H, H)`, `b_ih`, `b_hh`), U(-k, k) with
    k = 1/sqrt(H) as `torch.nn.LSTM` initialises them. Shared by PyTorch and jaxrnn.

    IndRNN: `w_ih (H, D)` and one bias `b (H,)`, U(-k, k), and the recurrent vector `u (H,)`
    ~ U(0, 1) as Li et al. (and `jr.indrnn`'s default init) draw it. Shared by jaxrnn and the
    user-written PyTorch and Flax linen IndRNNs."""
    rng = np.random.default_rng(self.seed)
    gh, k = GATES[self.kind] * self.hidden, 1.0 / np.sqrt(self.hidden)
    u = lambda *shape: rng.uniform(-k, k, shape).astype(np.float32)
    if self.kind == "indrnn":
      return {"w_ih": u(gh, self.features),
              "u": rng.uniform(0.0, 1.0, (self.hidden,)).astype(np.float32), "b": u(gh)}
    return {"w_ih": u(gh, self.features), "w_hh": u(gh, self.hidden), "b_ih": u(gh),
            "b_hh": u(gh)}


def matmul_flops(problem: Problem, mode: str) -> int:
  """Matmul FLOPs of the cell over the whole sequence (elementwise gate work not counted).

  Forward: each step multiplies `[x_t, h_{t-1}]` (B, D+H) by the stacked weights (D+H, G*H):
  `2 * B * T * (D + H) * G * H`. The IndRNN's recurrence is elementwise (`u * h_{t-1}`), so only
  its input projection `x_t` (B, D) by `w_x` (D, H) counts: `2 * B * T * D * H`. The backward
  pass does two matmuls of the same size per step (the gradient with respect to the matmul's
  input and the one with respect to its weights), so forward+backward is three times the forward.
  """
  b, t, d, h = problem.shape
  recurrent = h if problem.kind in DENSE_RECURRENCE else 0
  forward = 2 * b * t * (d + recurrent) * GATES[problem.kind] * h
  return forward if mode == "fwd" else 3 * forward


# ---------------------------------------------------------------------------------------------
# Runners


class Runner:
  """Runs one implementation on one problem. Subclasses fill in the methods."""

  device = "?"
  # True when the runner computes with `problem.torch_weights()`: its outputs are then checked
  # against PyTorch's (`max_abs_diff_vs_torch`).
  torch_weights = False

  def prepare(self, mode: str, compiler_options: Optional[dict] = None) -> None:
    """Builds (and, for JAX, compiles with `compiler_options`) what `mode` needs."""

  def call(self, mode: str) -> None:
    """One synchronised call of `mode`."""
    raise NotImplementedError

  def compile_seconds(self, mode: str) -> Optional[float]:
    return None

  def memory(self, mode: str) -> tuple[Optional[int], str]:
    """(bytes, source) of the memory a call of `mode` needs, or (None, reason)."""
    return None, "n/a"

  def output(self) -> np.ndarray:
    """The forward outputs, for the cross-check against PyTorch."""
    raise NotImplementedError


class JaxRunner(Runner):
  """A pure `apply(params, xs) -> ys` compiled ahead of time for both modes."""

  def __init__(self, apply: Callable, params: Any, xs, torch_weights: bool = False):
    self.apply, self.params, self.xs = apply, params, jnp.asarray(xs)
    self.torch_weights = torch_weights
    self.device = str(jax.devices()[0].platform)
    self._compiled: dict[str, Any] = {}
    self._compile_s: dict[str, float] = {}

  def _function(self, mode: str):
    if mode == "fwd":
      return self.apply

    def loss(params, xs):
      return jnp.mean(jnp.square(self.apply(params, xs)))
    return jax.grad(loss, argnums=(0, 1))

  def prepare(self, mode: str, compiler_options: Optional[dict] = None) -> None:
    if mode not in self._compiled:
      self.compile_fresh(mode, compiler_options)

  def compile_fresh(self, mode: str, compiler_options: Optional[dict] = None) -> float:
    """Traces, lowers and compiles `mode` (again, where `prepare` already did), from a new
    function object, so that `jax.jit`'s own cache does not serve it; returns the seconds it
    took. Callers that want a compile from scratch clear JAX's caches first
    (`compile_time.py`)."""
    function = self._function(mode)
    start = time.perf_counter()
    lowered = jax.jit(lambda params, xs: function(params, xs)).lower(self.params, self.xs)
    self._compiled[mode] = lowered.compile(compiler_options)
    self._compile_s[mode] = time.perf_counter() - start
    return self._compile_s[mode]

  def call(self, mode: str) -> None:
    jax.block_until_ready(self._compiled[mode](self.params, self.xs))

  def compile_seconds(self, mode: str) -> Optional[float]:
    return self._compile_s.get(mode)

  def memory(self, mode: str) -> tuple[Optional[int], str]:
    try:
      stats = self._compiled[mode].memory_analysis()
    except Exception:  # Not every backend implements it.
      stats = None
    if stats is None:
      return None, "n/a"
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes), "xla-plan"

  def output(self) -> np.ndarray:
    self.prepare("fwd")
    return np.asarray(self._compiled["fwd"](self.params, self.xs))


def torch_indrnn(features: int, hidden: int):
  """The IndRNN module a PyTorch user writes, since torch.nn has none: the input projection of
  every step in one `F.linear` over the whole sequence, then a Python loop over time. Called
  like `nn.RNN(batch_first=True)`: `(B, T, D) -> (ys (B, T, H), h_T (1, B, H))`."""
  import torch
  import torch.nn.functional as F

  class IndRNN(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.weight_ih = torch.nn.Parameter(torch.empty(hidden, features))
      self.u = torch.nn.Parameter(torch.empty(hidden))
      self.bias = torch.nn.Parameter(torch.empty(hidden))
      k = hidden ** -0.5
      torch.nn.init.uniform_(self.weight_ih, -k, k)
      torch.nn.init.uniform_(self.u, 0.0, 1.0)
      torch.nn.init.uniform_(self.bias, -k, k)

    def forward(self, xs):
      zs = F.linear(xs, self.weight_ih, self.bias)
      h = zs.new_zeros(zs.shape[0], hidden)
      ys = []
      for z in zs.unbind(1):
        h = torch.relu(z + self.u * h)
        ys.append(h)
      return torch.stack(ys, 1), h[None]

  return IndRNN()


class TorchRunner(Runner):
  """`torch.nn.LSTM/GRU/RNN` (one layer, batch_first), or `torch_indrnn`, in eager mode."""

  torch_weights = True

  def __init__(self, problem: Problem, torch_device: str):
    import torch
    self.torch, self.device = torch, torch_device
    weights = problem.torch_weights()
    if problem.kind == "indrnn":
      self.module = torch_indrnn(problem.features, problem.hidden)
      names = {"w_ih": "weight_ih", "u": "u", "b": "bias"}
    else:
      cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[problem.kind]
      self.module = cls(problem.features, problem.hidden, batch_first=True)
      names = {k: k.replace("w_", "weight_").replace("b_", "bias_") + "_l0" for k in weights}
    self.module = self.module.to(torch_device)
    with torch.no_grad():
      for name, value in weights.items():
        getattr(self.module, names[name]).copy_(torch.from_numpy(value))
    self.xs = torch.from_numpy(problem.inputs()).to(torch_device)
    self.params = list(self.module.parameters())
    self._peak: dict[str, int] = {}

  def _sync(self) -> None:
    if self.device.startswith("cuda"):
      self.torch.cuda.synchronize()

  def call(self, mode: str) -> None:
    torch = self.torch
    if mode == "fwd":
      with torch.inference_mode():
        self.module(self.xs)
    else:
      xs = self.xs.detach().requires_grad_(True)
      loss = self.module(xs)[0].square().mean()
      torch.autograd.grad(loss, self.params + [xs])
    self._sync()

  def prepare(self, mode: str, compiler_options: Optional[dict] = None) -> None:
    if not self.device.startswith("cuda") or mode in self._peak:
      return
    torch = self.torch
    self._sync()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    self.call(mode)
    self._peak[mode] = torch.cuda.max_memory_allocated() - before

  def memory(self, mode: str) -> tuple[Optional[int], str]:
    if mode in self._peak:
      return self._peak[mode], "cuda-peak"
    return None, "n/a (CPU allocator not instrumented)"

  def output(self) -> np.ndarray:
    with self.torch.inference_mode():
      return self.module(self.xs)[0].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Builders


def _require(module: str):
  try:
    return importlib.import_module(module)
  except Exception as e:  # ImportError, or a package that fails on import with this jax.
    raise Missing(f"{module} not importable: {type(e).__name__}: {e}") from None


def build_jaxrnn(implementation: str, unroll: int):
  def build(problem: Problem) -> Runner:
    jr = _require("jaxrnn")
    w = {k: jnp.asarray(v) for k, v in problem.torch_weights().items()}
    if problem.kind == "indrnn":
      cell = jr.indrnn(problem.hidden)  # ReLU, unbounded u: the defaults
      params = {"w_x": w["w_ih"].T, "u": w["u"], "b": w["b"]}
    else:
      params = {"w_x": w["w_ih"].T, "w_h": w["w_hh"].T}
    if problem.kind == "gru":
      cell = jr.gru(problem.hidden)
      params["b_x"], params["b_h"] = w["b_ih"], w["b_hh"]
    elif problem.kind in ("lstm", "rnn"):
      cell = jr.lstm(problem.hidden) if problem.kind == "lstm" else jr.simple_rnn(problem.hidden)
      params["b"] = w["b_ih"] + w["b_hh"]

    def apply(p, xs):
      return jr.scan(cell, p, xs, unroll=unroll, implementation=implementation)[1]
    return JaxRunner(apply, params, problem.inputs(), torch_weights=True)
  return build


def torch_device() -> str:
  """CUDA when both JAX's default backend and torch see a GPU, else the CPU."""
  try:
    import torch
  except Exception:
    return "cpu"
  if jax.default_backend() == "gpu" and torch.cuda.is_available():
    return "cuda"
  return "cpu"


def build_torch(problem: Problem) -> Runner:
  _require("torch")
  return TorchRunner(problem, torch_device())


_LINEN_CELLS = {"OptimizedLSTMCell": "lstm", "LSTMCell": "lstm", "GRUCell": "gru",
                "SimpleCell": "rnn"}


def _linen_indrnn_cell(nn):
  """The IndRNN cell a Flax linen user writes, since flax.linen has none: an `nn.Dense` input
  projection and a recurrent vector `u`, as an `nn.RNNCellBase` for `nn.RNN`."""

  class IndRNNCell(nn.RNNCellBase):
    features: int

    @nn.compact
    def __call__(self, carry, inputs):
      z = nn.Dense(self.features, name="i")(inputs)
      u = self.param("u", nn.initializers.uniform(1.0), (self.features,))
      h = nn.relu(z + u * carry)
      return h, h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
      return jnp.zeros(input_shape[:-1] + (self.features,), jnp.float32)

    @property
    def num_feature_axes(self) -> int:
      return 1

  return IndRNNCell


def build_linen_indrnn(problem: Problem) -> Runner:
  """`nn.RNN` over the user-written linen IndRNN cell, with `problem.torch_weights()`."""
  nn = _require("flax.linen")
  model = nn.RNN(_linen_indrnn_cell(nn)(problem.hidden))
  xs = jnp.asarray(problem.inputs())
  initial = model.init(jax.random.key(problem.seed), xs)
  w = problem.torch_weights()
  variables = {"params": {"cell": {"i": {"kernel": jnp.asarray(w["w_ih"].T),
                                         "bias": jnp.asarray(w["b"])},
                                   "u": jnp.asarray(w["u"])}}}
  layout = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  if layout(variables) != layout(initial):  # the weight mapping no longer fits the module
    raise RuntimeError(f"IndRNN weights {layout(variables)} do not fit {layout(initial)}")
  return JaxRunner(model.apply, variables, xs, torch_weights=True)


def build_linen(cell_name: str):
  def build(problem: Problem) -> Runner:
    nn = _require("flax.linen")
    if not hasattr(nn, cell_name):
      raise Missing(f"flax.linen has no {cell_name}")
    model = nn.RNN(getattr(nn, cell_name)(problem.hidden))
    xs = jnp.asarray(problem.inputs())
    variables = model.init(jax.random.key(problem.seed), xs)
    return JaxRunner(model.apply, variables, xs)
  return build


def build_nnx(cell_name: str):
  def build(problem: Problem) -> Runner:
    nnx = _require("flax.nnx")
    if not hasattr(nnx, cell_name) or not hasattr(nnx, "RNN"):
      raise Missing(f"flax.nnx has no {cell_name} or RNN")
    cell = getattr(nnx, cell_name)(problem.features, problem.hidden,
                                   rngs=nnx.Rngs(problem.seed))
    model = nnx.RNN(cell)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # A concrete initial carry: without it nnx.RNN draws one from its Rngs inside the traced
    # function, which NNX refuses under jax.grad.
    carry0 = cell.initialize_carry((problem.batch, problem.features), nnx.Rngs(problem.seed))

    def apply(p, xs):
      return nnx.merge(graphdef, p, rest)(xs, initial_carry=carry0)
    return JaxRunner(apply, params, problem.inputs())
  return build


def missing(reason: str):
  """A builder for a framework without the cell: its row says "missing" and why."""
  def build(problem: Problem) -> Runner:
    raise Missing(reason)
  return build


def build_equinox(problem: Problem) -> Runner:
  # The cells Equinox lacks are missing whether or not it is installed: check before importing.
  cls = {"lstm": "LSTMCell", "gru": "GRUCell"}.get(problem.kind)
  if problem.kind == "indrnn":
    raise Missing("equinox.nn has no IndRNN cell")
  if cls is None:
    raise Missing("equinox.nn has no simple (Elman) RNN cell")
  eqx = _require("equinox")
  cell = getattr(eqx.nn, cls)(problem.features, problem.hidden,
                              key=jax.random.key(problem.seed))
  params, static = eqx.partition(cell, eqx.is_array)
  zeros = jnp.zeros((problem.hidden,), jnp.float32)
  carry0 = (zeros, zeros) if problem.kind == "lstm" else zeros

  def apply(p, xs):
    cell = eqx.combine(p, static)

    def one_sequence(seq):  # Equinox cells are written for one example; vmap batches them.
      def body(carry, x):
        carry = cell(x, carry)
        return carry, carry[0] if problem.kind == "lstm" else carry
      return jax.lax.scan(body, carry0, seq)[1]
    return jax.vmap(one_sequence)(xs)
  return JaxRunner(apply, params, problem.inputs())


def _haiku_tanh_core(hk):
  """The tanh Elman core a Haiku user writes: `hk.VanillaRNN` applies ReLU, which is another
  function than `torch.nn.RNN`'s and the other rows' tanh. Like `hk.VanillaRNN`, two
  `hk.Linear`s, here with one bias (the sum of PyTorch's two)."""

  class TanhRNN(hk.RNNCore):
    def __init__(self, hidden_size: int, name: Optional[str] = None):
      super().__init__(name=name)
      self.hidden_size = hidden_size

    def __call__(self, inputs, prev_state):
      out = jnp.tanh(hk.Linear(self.hidden_size, name="input")(inputs)
                     + hk.Linear(self.hidden_size, with_bias=False, name="hidden")(prev_state))
      return out, out

    def initial_state(self, batch_size: Optional[int]):
      shape = (self.hidden_size,) if batch_size is None else (batch_size, self.hidden_size)
      return jnp.zeros(shape, jnp.float32)

  return TanhRNN


def build_haiku(problem: Problem) -> Runner:
  """`hk.LSTM` and `hk.GRU` with Haiku's own initialisation; for the simple RNN the
  user-written tanh core (`_haiku_tanh_core`) with `problem.torch_weights()`."""
  if problem.kind == "indrnn":  # missing whether or not haiku is installed
    raise Missing("haiku has no IndRNN core")
  hk = _require("haiku")

  def forward(xs):
    if problem.kind == "rnn":
      core = _haiku_tanh_core(hk)(problem.hidden, name="tanh_rnn")
    else:
      core = getattr(hk, {"lstm": "LSTM", "gru": "GRU"}[problem.kind])(problem.hidden)
    state = core.initial_state(xs.shape[0])
    return hk.dynamic_unroll(core, xs, state, time_major=False)[0]
  model = hk.without_apply_rng(hk.transform(forward))
  xs = jnp.asarray(problem.inputs())
  params = model.init(jax.random.key(problem.seed), xs)
  if problem.kind != "rnn":
    return JaxRunner(model.apply, params, xs)
  w = problem.torch_weights()
  weights = {"tanh_rnn/input": {"w": jnp.asarray(w["w_ih"].T),
                                  "b": jnp.asarray(w["b_ih"] + w["b_hh"])},
             "tanh_rnn/hidden": {"w": jnp.asarray(w["w_hh"].T)}}
  layout = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  if layout(weights) != layout(dict(params)):  # the weight mapping no longer fits the core
    raise RuntimeError(f"tanh RNN weights {layout(weights)} do not fit {layout(dict(params))}")
  return JaxRunner(model.apply, weights, xs, torch_weights=True)


def build_cudnn(problem: Problem) -> Runner:
  """`jax.experimental.rnn.lstm`: JAX's own binding of cuDNN's LSTM (CUDA only)."""
  if problem.kind != "lstm":
    raise Missing("jax.experimental.rnn binds only cuDNN's LSTM")
  if jax.default_backend() != "gpu":
    raise Missing("jax.experimental.rnn runs on CUDA GPUs only")
  rnn = _require("jax.experimental.rnn")
  b, t, d, h = problem.shape
  weights = rnn.init_lstm_weight(jax.random.key(problem.seed), d, h, 1, False)
  zeros = jnp.zeros((1, b, h), jnp.float32)
  lengths = jnp.full((b,), t, jnp.int32)

  def apply(w, xs):
    return rnn.lstm(xs, zeros, zeros, w, lengths, input_size=d, hidden_size=h, num_layers=1,
                    dropout=0.0, bidirectional=False)[0]
  return JaxRunner(apply, weights, problem.inputs())


@dataclasses.dataclass(frozen=True)
class Impl:
  key: str                  # stable id, unique, used in the JSON and for the baselines
  framework: str            # "jaxrnn" | "pytorch" | "flax.linen" | ...
  labels: dict              # kind -> what the table shows; the kinds this entry has a row for
  build: Callable[[Problem], Runner]


def registry(unrolls=(1,)) -> list[Impl]:
  """Every implementation, in table order, with a row for each kind in its `labels`.

  A framework without a cell of some kind keeps its row (Equinox's simple RNN; the IndRNN of
  NNX, Equinox, Haiku and cuDNN): it is reported "missing" with the reason, so that absence is
  visible.
  """
  impls = []
  for u in unrolls:
    tag = "" if u == 1 else f"-unroll{u}"
    for implementation in ("auto", "reference"):
      label = f"jaxrnn jr.scan ({implementation}" + ("" if u == 1 else f", unroll={u}") + ")"
      impls.append(Impl(f"jaxrnn-{implementation}{tag}", "jaxrnn",
                        {k: label for k in KINDS}, build_jaxrnn(implementation, u)))
    # oneDNN's LSTM primitive through XLA FFI (CPU, float32, LSTM only); missing where the
    # native part is not built or not on the CPU backend.
    impls.append(Impl(f"jaxrnn-onednn{tag}", "jaxrnn",
                      {"lstm": "jaxrnn jr.scan (onednn" + ("" if u == 1 else f", unroll={u}")
                       + ")"}, build_jaxrnn("onednn", u)))
  # PyTorch and Flax ship no IndRNN: their IndRNN rows are what a user of each would write.
  impls.append(Impl("pytorch", "pytorch", {"lstm": "PyTorch nn.LSTM", "gru": "PyTorch nn.GRU",
                                           "rnn": "PyTorch nn.RNN",
                                           "indrnn": "PyTorch IndRNN module (user-written loop)"},
                    build_torch))
  impls.append(Impl("flax-linen-optimized", "flax.linen",
                    {"lstm": "Flax linen OptimizedLSTMCell"}, build_linen("OptimizedLSTMCell")))
  impls.append(Impl("flax-linen", "flax.linen",
                    {"lstm": "Flax linen LSTMCell", "gru": "Flax linen GRUCell",
                     "rnn": "Flax linen SimpleCell",
                     "indrnn": "Flax linen IndRNN cell (user-written) + nn.RNN"},
                    _by_kind(build_linen("LSTMCell"), build_linen("GRUCell"),
                             build_linen("SimpleCell"), build_linen_indrnn)))
  impls.append(Impl("flax-nnx-optimized", "flax.nnx", {"lstm": "Flax NNX OptimizedLSTMCell"},
                    build_nnx("OptimizedLSTMCell")))
  impls.append(Impl("flax-nnx", "flax.nnx",
                    {"lstm": "Flax NNX LSTMCell", "gru": "Flax NNX GRUCell",
                     "rnn": "Flax NNX SimpleCell", "indrnn": "Flax NNX (no IndRNN cell)"},
                    _by_kind(build_nnx("LSTMCell"), build_nnx("GRUCell"),
                             build_nnx("SimpleCell"),
                             missing("flax.nnx has no IndRNN cell (the Flax linen row is a "
                                     "user-written one)"))))
  impls.append(Impl("equinox", "equinox",
                    {"lstm": "Equinox LSTMCell + scan", "gru": "Equinox GRUCell + scan",
                     "rnn": "Equinox (no simple cell)", "indrnn": "Equinox (no IndRNN cell)"},
                    build_equinox))
  impls.append(Impl("haiku", "haiku",
                    {"lstm": "Haiku LSTM + dynamic_unroll", "gru": "Haiku GRU + dynamic_unroll",
                     "rnn": "Haiku tanh RNN core (user-written) + dynamic_unroll",
                     "indrnn": "Haiku (no IndRNN core)"}, build_haiku))
  impls.append(Impl("jax-cudnn", "jax.experimental.rnn",
                    {"lstm": "JAX cuDNN LSTM (jax.experimental.rnn)",
                     "indrnn": "JAX cuDNN (no IndRNN)"}, build_cudnn))
  return impls


def _by_kind(lstm_build, gru_build, rnn_build, indrnn_build):
  builds = {"lstm": lstm_build, "gru": gru_build, "rnn": rnn_build, "indrnn": indrnn_build}
  return lambda problem: builds[problem.kind](problem)


TORCH_BASELINE = "pytorch"
# The Flax baseline per kind: linen's OptimizedLSTMCell for the LSTM, its GRUCell and SimpleCell,
# and the user-written linen IndRNN cell.
FLAX_BASELINE = {"lstm": "flax-linen-optimized", "gru": "flax-linen", "rnn": "flax-linen",
                 "indrnn": "flax-linen"}
