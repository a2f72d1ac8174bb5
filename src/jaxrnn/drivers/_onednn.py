"""The oneDNN driver: `jr.scan(cell, ..., implementation="onednn")` for the built-in LSTM on CPU.

oneDNN's LSTM primitive (what PyTorch's `nn.LSTM` runs on CPU) is called from jitted JAX through
`jax.ffi`. The handlers live in the optional native library `jaxrnn._onednn`
(`src/jaxrnn/_native/onednn_rnn.cc`, built by `pip install` where oneDNN's headers are available),
which needs oneDNN's runtime `libdnnl.so.3` (the `onednn-cpu-gomp` package, a dependency of the
install on Linux x86-64).
Both are loaded lazily, on first use (`drivers/_library.py`): importing jaxrnn never fails
because of them, and `available()` / `unavailable_reason()` say whether the kernel can run here.

Set `JAXRNN_ONEDNN=0` to disable the kernel, and `JAXRNN_ONEDNN_THREADS` (default 1) for the
number of OpenMP threads each call uses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.drivers._library import BACKWARD, FORWARD, available, loaded, unavailable_reason

__all__ = ["available", "lstm", "scan", "unavailable_reason"]


# ---------------------------------------------------------------------------------------------
# The kernel as a differentiable JAX function


def _workspace_bytes(steps: int, n: int, d: int, h: int, reverse: bool) -> int:
  size = int(loaded()["lib"].jaxrnn_lstm_workspace_bytes(steps, n, d, h, int(reverse)))
  if size < 0:
    raise ValueError(f"oneDNN has no LSTM for T={steps}, N={n}, D={d}, H={h}")
  return size


def _forward(x, h0, c0, w_x, w_h, b, reverse: bool, training: bool):
  steps, n, d = x.shape
  h = w_h.shape[0]
  ws = _workspace_bytes(steps, n, d, h, reverse) if training else 0
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  call = jax.ffi.ffi_call(
      FORWARD, (f32(steps, n, h), f32(n, h), f32(n, h), jax.ShapeDtypeStruct((ws,), jnp.uint8)),
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
      BACKWARD, tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, h0, c0, w_x, w_h, b)),
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


def _check_shapes(cell_name: str, params, xs_t, hidden: int):
  d = xs_t.shape[-1]
  expected = {"w_x": (d, 4 * hidden), "w_h": (hidden, 4 * hidden), "b": (4 * hidden,)}
  for k, v in params.items():
    if np.shape(v) != expected[k]:
      raise ValueError(f"{cell_name}: params[{k!r}] has shape {np.shape(v)}, expected "
                       f"{expected[k]} for inputs of size {d}")


def scan(cell: _types.Cell, params, xs_t, carry, *, reverse: bool = False):
  """`jr.scan(..., implementation="onednn")` on time-major `xs_t (T, ..., D)` and a checked
  carry `LSTMState(h, c)` with leaves `(..., H)`: returns `(carry, ys (T, ..., H))`. Only for
  calls whose plan (`drivers/_plan.py`) says the kernel applies; raises `ValueError` for
  parameters of the wrong shapes."""
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
