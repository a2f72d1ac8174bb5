"""Shared helpers of the foundation's tests: the cell registry, NumPy oracles, random data.

Not a test module (no `test_` prefix); imported as `_util` because pytest puts `tests/` on
`sys.path` (rootdir-relative "prepend" import mode), and `tests/parity_report.py` does the same.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn as jr


class CellSpec(NamedTuple):
  """One entry of the registry: `make(H, **kw) -> jr.Cell` and whether it is smooth."""

  name: str
  make: Callable[..., jr.Cell]
  smooth: bool  # no relu / clip kink: finite differences are valid everywhere


CELLS = {
    "simple_tanh": CellSpec("simple_tanh", lambda h, **kw: jr.simple_rnn(h, **kw), True),
    "simple_relu": CellSpec(
        "simple_relu", lambda h, **kw: jr.simple_rnn(h, activation="relu", **kw), False),
    "lstm": CellSpec("lstm", lambda h, **kw: jr.lstm(h, **kw), True),
    "gru": CellSpec("gru", lambda h, **kw: jr.gru(h, **kw), True),
    "indrnn_relu": CellSpec("indrnn_relu", lambda h, **kw: jr.indrnn(h, **kw), False),
    # A bound of 2 with u ~ U(0, 1) keeps every |u| away from the clip's kink, so this entry is
    # smooth where it is evaluated; `indrnn_bound_tight` exercises the clip itself.
    "indrnn_tanh": CellSpec(
        "indrnn_tanh",
        lambda h, **kw: jr.indrnn(h, activation="tanh", recurrent_bound=2.0, **kw), True),
    "indrnn_bound_tight": CellSpec(
        "indrnn_bound_tight",
        lambda h, **kw: jr.indrnn(h, recurrent_bound=0.3, recurrent_init=_wide_u, **kw), False),
}
ALL_CELLS = tuple(CELLS)
# Registry name -> (NumPy oracle family, its keyword arguments).
NUMPY_SPEC = {
    "simple_tanh": ("simple", {"activation": "tanh"}),
    "simple_relu": ("simple", {"activation": "relu"}),
    "lstm": ("lstm", {}),
    "gru": ("gru", {}),
    "indrnn_relu": ("indrnn", {"activation": "relu"}),
    "indrnn_tanh": ("indrnn", {"activation": "tanh", "bound": 2.0}),
    "indrnn_bound_tight": ("indrnn", {"activation": "relu", "bound": 0.3}),
}
SMOOTH_CELLS = tuple(n for n, s in CELLS.items() if s.smooth)


def _wide_u(key, shape, dtype):
  # Half the entries of u fall outside the bound 0.3, so the clip matters.
  return jax.random.uniform(key, shape, dtype, -0.9, 0.9)


def make(name: str, hidden: int, **kw) -> jr.Cell:
  return CELLS[name].make(hidden, **kw)


def init_params(cell: jr.Cell, key, input_size: int, dtype=jnp.float64, bias_scale=0.5):
  """Params in `dtype`, with random (non-zero) biases so that bias paths are exercised."""
  params = cell.init(key, input_size)
  keys = iter(jax.random.split(jax.random.fold_in(key, 7), len(params)))
  out = {}
  for name in sorted(params):
    a = params[name].astype(dtype)
    k = next(keys)
    if name.startswith("b"):
      a = a + bias_scale * jax.random.normal(k, a.shape, dtype)
    out[name] = a
  return out


def normal(key, shape, dtype=jnp.float64, scale=1.0):
  return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype) if dtype in (
      jnp.bfloat16, jnp.float16) else scale * jax.random.normal(key, shape, dtype)


def random_carry(cell: jr.Cell, key, batch: tuple, dtype):
  like = cell.initial_carry(batch, dtype)
  leaves, treedef = jax.tree_util.tree_flatten(like)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [0.5 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def assert_tree_close(actual, expected, *, rtol, atol, what=""):
  a_leaves, a_def = jax.tree_util.tree_flatten(actual)
  e_leaves, e_def = jax.tree_util.tree_flatten(expected)
  assert a_def == e_def, f"{what}: structure {a_def} != {e_def}"
  for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
    assert a.shape == e.shape, f"{what} leaf {i}: shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64),
                               rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}")


def max_abs_diff(a, b) -> float:
  diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
           if np.size(x) else 0.0
           for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  return max(diffs, default=0.0)


# ---------------------------------------------------------------------------------------------
# NumPy oracles, written from the cells' docstring equations, for ONE example in float64.


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _phi(activation):
  return np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))


def numpy_step(kind: str, p: dict, carry, x, *, activation="tanh", bound=None,
               operand_round=None):
  """One step of cell family `kind` ("simple", "lstm", "gru", "indrnn") on one example.

  `operand_round`, if given, is applied to both operands of every matmul (a cell's
  `matmul_dtype`); the products are summed in float64.
  """
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  r = (lambda a: a) if operand_round is None else operand_round
  dot = lambda a, w: r(a) @ r(w)
  b = p.get("b")
  if kind == "simple":
    a = dot(x, p["w_x"]) + dot(carry, p["w_h"]) + (0 if b is None else b)
    h = _phi(activation)(a)
    return h, h
  if kind == "lstm":
    h, c = carry
    a = dot(x, p["w_x"]) + dot(h, p["w_h"]) + (0 if b is None else b)
    i, f, g, o = np.split(a, 4)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return (h, c), h
  if kind == "gru":
    ax = dot(x, p["w_x"]) + (p["b_x"] if "b_x" in p else 0)
    gh = dot(carry, p["w_h"]) + (p["b_h"] if "b_h" in p else 0)
    a_r, a_z, a_n = np.split(ax, 3)
    g_r, g_z, g_n = np.split(gh, 3)
    r, z = _sigmoid(a_r + g_r), _sigmoid(a_z + g_z)
    n = np.tanh(a_n + r * g_n)
    h = (1 - z) * n + z * carry
    return h, h
  if kind == "indrnn":
    u = p["u"] if bound is None else np.clip(p["u"], -bound, bound)
    h = _phi(activation)(dot(x, p["w_x"]) + u * carry + (0 if b is None else b))
    return h, h
  raise ValueError(kind)


def numpy_run(kind, p, xs, carry, *, length=None, reverse=False, **kw):
  """Runs one example `xs (T, D)` over its valid part; padding outputs are zero."""
  steps = xs.shape[0]
  length = steps if length is None else int(length)
  hidden = (carry[0] if isinstance(carry, tuple) else carry).shape[-1]
  ys = np.zeros((steps, hidden))
  order = range(length - 1, -1, -1) if reverse else range(length)
  for t in order:
    carry, ys[t] = numpy_step(kind, p, carry, np.asarray(xs[t], np.float64), **kw)
  return carry, ys


# ---------------------------------------------------------------------------------------------
# Torch parity: one comparison, used by tests/test_interop_torch.py and tests/parity_report.py.

TORCH_KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


class TorchConfig(NamedTuple):
  num_layers: int
  bidirectional: bool
  batch_first: bool
  bias: bool
  padded: bool  # random lengths, torch run through pack_padded_sequence


# Every value of every option appears, and padding meets both directions and depth > 1.
# (Four configurations x 4 cells x 2 dtypes keeps the module near a minute on 2 cores.)
TORCH_CONFIGS = (
    TorchConfig(1, False, True, True, False),
    TorchConfig(2, True, False, True, True),
    TorchConfig(3, True, True, False, True),
    TorchConfig(2, False, False, False, True),
)


class ParityResult(NamedTuple):
  value_err: float  # largest |ours - torch| over outputs and final carries
  grad_err: float   # largest |ours - torch| over gradients (inputs and every parameter)
  value_scale: float
  grad_scale: float


def torch_parity(kind: str, cfg: TorchConfig, dtype: str, seed: int) -> ParityResult:
  """Runs a random torch module and its `from_torch` conversion on the same data.

  Compares outputs, final carries (torch's `h_n[2 * l + d]` / `c_n` against the carry tuple),
  and gradients of a random linear functional of all of them with respect to the input and to
  every torch parameter. Returns the largest absolute differences and the magnitudes compared.
  """
  import torch

  rng = np.random.default_rng(seed)
  t_dtype = torch.float32 if dtype == "float32" else torch.float64
  np_dtype = np.float32 if dtype == "float32" else np.float64
  d_in, hidden = int(rng.integers(2, 6)), int(rng.integers(2, 6))
  steps, batch = int(rng.integers(3, 7)), int(rng.integers(2, 4))
  torch.manual_seed(seed)
  common = dict(num_layers=cfg.num_layers, bias=cfg.bias, batch_first=cfg.batch_first,
                bidirectional=cfg.bidirectional)
  if kind.startswith("rnn"):
    module = torch.nn.RNN(d_in, hidden, nonlinearity=kind[4:], **common)
  else:
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](d_in, hidden, **common)
  module = module.to(t_dtype)
  n_dir = 2 if cfg.bidirectional else 1

  x_shape = (batch, steps, d_in) if cfg.batch_first else (steps, batch, d_in)
  x_np = rng.standard_normal(x_shape).astype(np_dtype)
  lengths_np = None
  if cfg.padded:
    lengths_np = rng.integers(1, steps + 1, size=batch)
    lengths_np[0] = steps  # torch pads to the longest; keep T fixed
    for b, n in enumerate(lengths_np):  # garbage (not zeros) in the padding
      idx = (b, slice(n, None)) if cfg.batch_first else (slice(n, None), b)
      x_np[idx] = 1e3
  y_shape = x_shape[:-1] + (n_dir * hidden,)
  w_y = rng.standard_normal(y_shape).astype(np_dtype)
  if lengths_np is not None:  # the functional ignores padding outputs (ours are zero anyway)
    for b, n in enumerate(lengths_np):
      idx = (b, slice(n, None)) if cfg.batch_first else (slice(n, None), b)
      w_y[idx] = 0.0
  w_h = rng.standard_normal((cfg.num_layers * n_dir, batch, hidden)).astype(np_dtype)
  w_c = rng.standard_normal((cfg.num_layers * n_dir, batch, hidden)).astype(np_dtype)

  # --- torch
  x_t = torch.tensor(x_np, requires_grad=True)
  if lengths_np is not None:
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_t, torch.tensor(lengths_np), batch_first=cfg.batch_first, enforce_sorted=False)
    out_p, state = module(packed)
    out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(
        out_p, batch_first=cfg.batch_first, total_length=steps)
  else:
    out_t, state = module(x_t)
  h_n, c_n = state if kind == "lstm" else (state, None)
  loss = (out_t * torch.tensor(w_y)).sum() + (h_n * torch.tensor(w_h)).sum()
  if c_n is not None:
    loss = loss + (c_n * torch.tensor(w_c)).sum()
  names = [n for n, _ in module.named_parameters()]
  grads_t = torch.autograd.grad(loss, [x_t] + [getattr(module, n) for n in names])
  g_x_t = grads_t[0].numpy()
  g_p_t = dict(zip(names, (g.numpy() for g in grads_t[1:])))

  # --- jaxrnn
  layer, params = jr.interop.from_torch(module)
  lengths = None if lengths_np is None else jnp.asarray(lengths_np, jnp.int32)

  def per_layer(carry, l, d):
    c = carry[l]
    return (c[d] if cfg.bidirectional else c)

  def run(params, xs):
    carry, ys = layer.apply(params, xs, lengths=lengths)
    hs = jnp.stack([_h(per_layer(carry, l, d)) for l in range(cfg.num_layers)
                    for d in range(n_dir)])
    cs = (jnp.stack([per_layer(carry, l, d).c for l in range(cfg.num_layers)
                     for d in range(n_dir)]) if kind == "lstm" else None)
    return ys, hs, cs

  def loss_fn(params, xs):
    ys, hs, cs = run(params, xs)
    total = jnp.sum(ys * jnp.asarray(w_y)) + jnp.sum(hs * jnp.asarray(w_h))
    return total + (jnp.sum(cs * jnp.asarray(w_c)) if cs is not None else 0.0)

  xs = jnp.asarray(x_np)
  ys, hs, cs = jax.jit(run)(params, xs)
  g_params, g_x = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(params, xs)

  assert ys.dtype == np_dtype and hs.dtype == np_dtype, (ys.dtype, hs.dtype)
  value_err = max(max_abs_diff(ys, out_t.detach().numpy()),
                  max_abs_diff(hs, h_n.detach().numpy()))
  value_scale = float(np.max(np.abs(out_t.detach().numpy())))
  if cs is not None:
    value_err = max(value_err, max_abs_diff(cs, c_n.detach().numpy()))
  grad_err = max_abs_diff(g_x, g_x_t)
  grad_scale = float(np.max(np.abs(g_x_t)))

  for l in range(cfg.num_layers):
    for d in range(n_dir):
      ours = g_params[l][("forward", "backward")[d]] if cfg.bidirectional else g_params[l]
      suffix = f"_l{l}" + ("_reverse" if d else "")
      pairs = [(ours["w_x"].T, g_p_t["weight_ih" + suffix]),
               (ours["w_h"].T, g_p_t["weight_hh" + suffix])]
      if cfg.bias:
        if kind == "gru":
          pairs += [(ours["b_x"], g_p_t["bias_ih" + suffix]),
                    (ours["b_h"], g_p_t["bias_hh" + suffix])]
        else:  # b = b_ih + b_hh, so both torch biases have our b's gradient
          pairs += [(ours["b"], g_p_t["bias_ih" + suffix]),
                    (ours["b"], g_p_t["bias_hh" + suffix])]
      else:
        assert not any(k.startswith("b") for k in ours), sorted(ours)
      for a, b in pairs:
        assert a.shape == b.shape, (a.shape, b.shape)
        grad_err = max(grad_err, max_abs_diff(a, b))
        grad_scale = max(grad_scale, float(np.max(np.abs(b))))
  return ParityResult(value_err, grad_err, value_scale, grad_scale)


def _h(carry):
  return carry.h if isinstance(carry, jr.LSTMState) else carry
