"""The oneDNN driver: `jr.scan(cell, ..., implementation="onednn")` for the built-in LSTM on CPU.

oneDNN's LSTM primitive (what PyTorch's `nn.LSTM` runs on CPU) is called from jitted JAX through
`jax.ffi`. The handlers live in the optional native library `jaxrnn._onednn`
(`src/jaxrnn/_native/onednn_rnn.cc`, built by `pip install` where oneDNN's headers are available),
which needs oneDNN's runtime `libdnnl.so.3` (the `onednn-cpu-gomp` package, a dependency of the
install on Linux x86-64).
Both are loaded lazily, on first use: importing jaxrnn never fails because of them, and
`available()` / `unavailable_reason()` say whether the kernel can run here.

Set `JAXRNN_ONEDNN=0` to disable the kernel, and `JAXRNN_ONEDNN_THREADS` (default 1) for the
number of OpenMP threads each call uses.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.drivers import _fused

_FORWARD = "jaxrnn_lstm_forward"
_BACKWARD = "jaxrnn_lstm_backward"
# The fused driver's native loops (_native/lstm_loop.cc and rnn_loops.cc, used by
# jaxrnn.drivers._native): a forward loop and its tangent loop's transpose per cell family.
LOOPS = {family: (f"jaxrnn_{family}_loop", f"jaxrnn_{family}_loop_transpose")
         for family in ("lstm", "gru", "rnn")}

_lock = threading.Lock()
_state: dict = {}  # after the first load: {"lib": ctypes.CDLL} or {"error": str}


def _find_libdnnl() -> str:
  """The path of `libdnnl.so.3` from the `onednn-cpu-gomp` wheel (installed in the
  environment's `lib/`, outside site-packages), else the bare name for the system's loader."""
  try:
    for f in importlib.metadata.files("onednn-cpu-gomp") or []:
      if f.name == "libdnnl.so.3":
        path = str(f.locate())
        if os.path.exists(path):
          return path
  except importlib.metadata.PackageNotFoundError:
    pass
  return "libdnnl.so.3"


def _load() -> dict:
  if os.environ.get("JAXRNN_ONEDNN", "") == "0":
    return {"error": "disabled by the environment variable JAXRNN_ONEDNN=0"}
  spec = importlib.util.find_spec("jaxrnn._onednn")
  if spec is None or not spec.origin:
    return {"error": "the native library jaxrnn._onednn was not built at install time (it needs "
                     "Linux x86-64, a C++ compiler and the onednn-devel-cpu-gomp headers; see "
                     "the output of `pip install -v`)"}
  dnnl = _find_libdnnl()
  try:
    # Global, so that the handler library (which does not link libdnnl) resolves against it.
    ctypes.CDLL(dnnl, mode=ctypes.RTLD_GLOBAL)
  except OSError as e:
    return {"error": f"oneDNN's runtime libdnnl.so.3 could not be loaded ({e}); install it with "
                     "`pip install onednn-cpu-gomp==2023.2.0` (a dependency of jaxrnn on Linux "
                     "x86-64)"}
  try:
    # Never imported: it is a plain shared library with no Python module init.
    lib = ctypes.CDLL(spec.origin)
    lib.jaxrnn_lstm_workspace_bytes.restype = ctypes.c_int64
    lib.jaxrnn_lstm_workspace_bytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
    for name in (_FORWARD, _BACKWARD) + sum(LOOPS.values(), ()):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  except Exception as e:  # noqa: BLE001 -- whatever fails here, jaxrnn falls back, saying why
    return {"error": f"the native library {spec.origin} could not be loaded: "
                     f"{type(e).__name__}: {e}"}
  return {"lib": lib}


def _loaded() -> dict:
  with _lock:
    if not _state:
      _state.update(_load())
    return _state


def available() -> bool:
  """Whether the oneDNN LSTM kernel can run in this process (loads it on first call)."""
  return "lib" in _loaded()


def unavailable_reason() -> str:
  """Why the kernel cannot run here, or "" when it can."""
  return _loaded().get("error", "")


# ---------------------------------------------------------------------------------------------
# The kernel as a differentiable JAX function


def _workspace_bytes(steps: int, n: int, d: int, h: int, reverse: bool) -> int:
  size = int(_loaded()["lib"].jaxrnn_lstm_workspace_bytes(steps, n, d, h, int(reverse)))
  if size < 0:
    raise ValueError(f"oneDNN has no LSTM for T={steps}, N={n}, D={d}, H={h}")
  return size


def _forward(x, h0, c0, w_x, w_h, b, reverse: bool, training: bool):
  steps, n, d = x.shape
  h = w_h.shape[0]
  ws = _workspace_bytes(steps, n, d, h, reverse) if training else 0
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  call = jax.ffi.ffi_call(
      _FORWARD, (f32(steps, n, h), f32(n, h), f32(n, h), jax.ShapeDtypeStruct((ws,), jnp.uint8)),
      vmap_method="sequential")
  return call(x, h0, c0, w_x, w_h, b, reverse=reverse, training=training)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _lstm(x, h0, c0, w_x, w_h, b, reverse):
  ys, h_t, c_t, _ = _forward(x, h0, c0, w_x, w_h, b, reverse, training=False)
  return ys, h_t, c_t


def _lstm_fwd(x, h0, c0, w_x, w_h, b, reverse):
  ys, h_t, c_t, ws = _forward(x, h0, c0, w_x, w_h, b, reverse, training=True)
  return (ys, h_t, c_t), (x, h0, c0, w_x, w_h, b, ys, h_t, c_t, ws)


def _lstm_bwd(reverse, res, cotangents):
  x, h0, c0, w_x, w_h, b = res[:6]
  dys, dh_t, dc_t = cotangents
  call = jax.ffi.ffi_call(
      _BACKWARD, tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, h0, c0, w_x, w_h, b)),
      vmap_method="sequential")
  return tuple(call(*res, dys, dh_t, dc_t, reverse=reverse))


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm(params, xs_t, h0, c0, reverse: bool):
  """oneDNN's LSTM over time-major `xs_t (T, N, D)` from `h0, c0 (N, H)`: `(ys (T, N, H), h_T,
  c_T)`, all float32. `params` is `jr.lstm`'s (`w_x (D, 4H)`, `w_h (H, 4H)`, optional `b (4H,)`).

  A `jax.custom_vjp`: called without differentiation it runs oneDNN's inference forward; under
  `jax.grad`/`jax.vjp` the training forward (keeping oneDNN's workspace) and its backward.
  Forward mode and higher-order derivatives are not defined. Shapes and dtypes are checked by
  the caller (`scan`): the native code trusts them.
  """
  b = params.get("b")
  if b is None:
    b = jnp.zeros((params["w_h"].shape[1],), jnp.float32)  # its gradient is dropped
  return _lstm(xs_t, h0, c0, params["w_x"], params["w_h"], b, bool(reverse))


# ---------------------------------------------------------------------------------------------
# The driver


def _why_not(cell, params, xs_t, carry, lengths, resets, remat) -> Optional[str]:
  """Why the kernel does not apply to this call, or None."""
  # A fused spec whose native family is "lstm" marks the built-in LSTM with its functions
  # unchanged (`spec_for`) and float32-or-compute-dtype matmuls (no bfloat16 matmul_dtype).
  spec = _fused.spec_for(cell)
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
  if jax.default_backend() != "cpu":
    return f"it runs on CPU only, and the default backend is {jax.default_backend()}"
  if not available():
    return f"the kernel is not available here: {unavailable_reason()}"
  return None


def _check_shapes(cell_name: str, params, xs_t, hidden: int):
  d = xs_t.shape[-1]
  expected = {"w_x": (d, 4 * hidden), "w_h": (hidden, 4 * hidden), "b": (4 * hidden,)}
  for k, v in params.items():
    if np.shape(v) != expected[k]:
      raise ValueError(f"{cell_name}: params[{k!r}] has shape {np.shape(v)}, expected "
                       f"{expected[k]} for inputs of size {d}")


def scan(cell: _types.Cell, params, xs_t, carry, *, lengths=None, resets=None,
         reverse: bool = False, remat=None):
  """`jr.scan(..., implementation="onednn")` on time-major `xs_t (T, ..., D)` and a checked
  carry `LSTMState(h, c)` with leaves `(..., H)`: returns `(carry, ys (T, ..., H))`.
  Raises `ValueError` saying why when the kernel does not apply."""
  why = _why_not(cell, params, xs_t, carry, lengths, resets, remat)
  if why is not None:
    raise ValueError(f"{cell.name}: implementation='onednn' does not apply: {why}. Use "
                     "implementation='auto', 'fused' or 'reference'")
  steps, batch, d = xs_t.shape[0], tuple(xs_t.shape[1:-1]), xs_t.shape[-1]
  hidden = carry.h.shape[-1]
  _check_shapes(cell.name, params, xs_t, hidden)
  n = _types.prod(batch)
  if steps == 0 or n == 0:
    return carry, jnp.zeros((steps,) + batch + (hidden,), jnp.float32)
  ys, h_t, c_t = lstm(params, xs_t.reshape(steps, n, d), carry.h.reshape(n, hidden),
                      carry.c.reshape(n, hidden), reverse)
  return (_types.LSTMState(h_t.reshape(batch + (hidden,)), c_t.reshape(batch + (hidden,))),
          ys.reshape((steps,) + batch + (hidden,)))
