"""The optional native library `jaxrnn._onednn`: loading it, and the FFI targets it registers.

It holds oneDNN's LSTM kernel (`_native/onednn_rnn.cc`, served by `jaxrnn.drivers._onednn`)
and the fused driver's native loops (`_native/lstm_loop.cc`, `_native/rnn_loops.cc`, served
by `jaxrnn.drivers._native`, with a transpose, `_native/transpose.cc`, for their weight
gradients); it needs oneDNN's runtime `libdnnl.so.3` (the `onednn-cpu-gomp`
package). Both are loaded lazily, on first use: importing jaxrnn never fails because of them,
and `available()` / `unavailable_reason()` say whether the kernels can run here. Set
`JAXRNN_ONEDNN=0` to disable the library.

The drivers that call the library and the dispatch that asks whether it is there all import
this module, and it imports none of them.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import threading

import jax

FORWARD = "jaxrnn_lstm_forward"
BACKWARD = "jaxrnn_lstm_backward"
# The fused driver's native loops: a forward loop and its tangent loop's transpose per family.
LOOPS = {family: (f"jaxrnn_{family}_loop", f"jaxrnn_{family}_loop_transpose")
         for family in ("lstm", "gru", "rnn")}
# A float32 matrix's transpose that XLA cannot fold into a matmul (`_native.rows_matmul`).
TRANSPOSE = "jaxrnn_transpose"

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
    lib.jaxrnn_native_step_matmul_packed.restype = ctypes.c_int
    lib.jaxrnn_native_step_matmul_packed.argtypes = []
    for name in (FORWARD, BACKWARD, TRANSPOSE) + sum(LOOPS.values(), ()):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  except Exception as e:  # noqa: BLE001 -- whatever fails here, jaxrnn falls back, saying why
    return {"error": f"the native library {spec.origin} could not be loaded: "
                     f"{type(e).__name__}: {e}"}
  return {"lib": lib}


def loaded() -> dict:
  """`{"lib": ctypes.CDLL}` once loaded, or `{"error": reason}` (loads it on first call)."""
  with _lock:
    if not _state:
      _state.update(_load())
    return _state


def available() -> bool:
  """Whether the native kernels can run in this process (loads the library on first call)."""
  return "lib" in loaded()


def step_matmul() -> str:
  """The kernel of the native loops' step matmuls in this process: "packed" (jaxrnn's AVX2
  kernel over weights packed once per call, the default on x86-64 CPUs with AVX2 and FMA but
  without AVX-512), "sgemm" (oneDNN's), or "" where the library is not available. Calls of
  fewer than 4 examples use the sgemm either way. `JAXRNN_NATIVE_GEMM=sgemm` or `=packed`,
  set before the library loads, overrides the choice."""
  state = loaded()
  if "lib" not in state:
    return ""
  return "packed" if state["lib"].jaxrnn_native_step_matmul_packed() else "sgemm"


def unavailable_reason() -> str:
  """Why the native kernels cannot run here, or "" when they can."""
  return loaded().get("error", "")
