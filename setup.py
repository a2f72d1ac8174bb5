"""Builds jaxrnn's optional native part: `jaxrnn._onednn`, a library of XLA FFI handlers for CPU:
oneDNN's LSTM primitive (src/jaxrnn/_native/onednn_rnn.cc, `implementation="onednn"`) and the
fused driver's native loops for the LSTM, GRU and simple RNN (src/jaxrnn/_native/lstm_loop.cc and
rnn_loops.cc, which call oneDNN's sgemm or their own packed AVX2 kernel; transpose.cc, a transpose
for their weight gradients).
All metadata is in pyproject.toml.

The extension is optional: when its build inputs are missing (the `onednn-devel-cpu-gomp` headers
and jaxlib's XLA FFI headers, both build requirements on Linux x86-64) or the compiler fails,
the install goes on without it and jaxrnn runs on its pure-JAX path. It is a plain shared
library, not a Python module: jaxrnn.drivers._onednn loads it with ctypes after loading
`libdnnl.so.3` (the `onednn` extra) globally, which is why it does not link libdnnl itself.
`-fno-trapping-math` lets the compiler vectorise the gates' selects (nothing here reads
floating-point exception flags); AVX2 code is chosen at run time (`target_clones`)."""

import importlib.metadata
import importlib.util
import os
import platform
import sys

from setuptools import Extension, setup


def _installed_file(dist: str, suffix: str):
  """The absolute path of the file of installed distribution `dist` ending with `suffix`."""
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if str(f).replace(os.sep, "/").endswith(suffix):
      return os.path.abspath(str(f.locate()))
  return None


def _include_dirs():
  """(onednn include dir, XLA FFI include dir), or a reason why the extension is skipped."""
  if sys.platform != "linux" or platform.machine() != "x86_64":
    return None, f"the oneDNN kernel is built on Linux x86-64 only (this is {sys.platform} " \
                 f"{platform.machine()})"
  dnnl_hpp = _installed_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  if dnnl_hpp is None or not os.path.exists(dnnl_hpp):
    return None, "the oneDNN headers (onednn-devel-cpu-gomp) are not installed"
  spec = importlib.util.find_spec("jaxlib")
  ffi_dir = None
  for root in (spec.submodule_search_locations or []) if spec else []:
    candidate = os.path.join(root, "include")
    if os.path.exists(os.path.join(candidate, "xla", "ffi", "api", "ffi.h")):
      ffi_dir = candidate
  if ffi_dir is None:
    return None, "jaxlib's XLA FFI headers (jaxlib/include/xla/ffi/api/ffi.h) are not installed"
  return (os.path.dirname(os.path.dirname(os.path.dirname(dnnl_hpp))), ffi_dir), None


def _extensions():
  if os.environ.get("JAXRNN_ONEDNN", "") == "0":
    print("jaxrnn: not building the oneDNN kernel (JAXRNN_ONEDNN=0)")
    return []
  dirs, why = _include_dirs()
  if dirs is None:
    print(f"jaxrnn: not building the oneDNN kernel: {why}; jaxrnn will use its pure-JAX path")
    return []
  return [Extension(
      "jaxrnn._onednn",
      sources=["src/jaxrnn/_native/onednn_rnn.cc", "src/jaxrnn/_native/lstm_loop.cc",
               "src/jaxrnn/_native/rnn_loops.cc", "src/jaxrnn/_native/transpose.cc"],
      depends=["src/jaxrnn/_native/loop_common.h"],
      include_dirs=list(dirs),
      language="c++",
      # -g0: Python's own CFLAGS ask for debug info, which only makes the library larger.
      extra_compile_args=["-O3", "-fno-trapping-math", "-std=c++17", "-fopenmp", "-g0"],
      extra_link_args=["-fopenmp"],
      # A failed compile skips the extension (setuptools prints why); the install goes on.
      optional=True,
  )]


setup(ext_modules=_extensions())
