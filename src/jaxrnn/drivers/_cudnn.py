"""The cuDNN path: the built-in LSTM run by cuDNN's RNN kernel through `jax.experimental.rnn`.

On CUDA, `jax.experimental.rnn.lstm` runs one cuDNN call for a whole sequence (forward, and a
`jax.custom_vjp` whose backward is cuDNN's). It takes batch-major inputs, per-sequence
`seq_lengths` and every weight packed into one flat vector in cuDNN's layout. This module holds
what a driver needs to serve `jr.scan(jr.lstm(H), ...)` with it:

* `pack(params)`: `jr.lstm`'s parameters as that flat vector (differentiable);
* `applies(cell, params, xs, ...)`: `None` when the kernel can serve a call exactly, else why not;
* `run(params, xs, carry, lengths, ...)`: the call, with `jr.scan`'s conventions for lengths,
  reverse, padding and the returned carry. `use_reference=True` swaps the kernel for
  `jax.experimental.rnn.lstm_ref` on the unpacked weights, so that everything but the kernel
  (packing, layouts, lengths, reversal, masking, carries) runs and is tested on CPU.

What it does not serve, and why:

* other cells, `jr.lstm(proj_size=...)`, `jr.lstm(peephole=True)`, `matmul_dtype=bfloat16`, or a
  cell whose `step`, `project` or `recur` was replaced: `jax.experimental.rnn` builds the plain
  double-bias LSTM only, and a replaced function must run as written;
* any dtype but float32: its kernel hard-codes `CUDNN_DATA_FLOAT` (the lowering rejects half
  precision, and float64 buffers would be read as float32), and it raises for bfloat16 matmul
  precision, including a `jax_default_matmul_precision` of "bfloat16"/"default"/"fastest";
* `resets`: cuDNN cannot re-enter the initial carry in the middle of a sequence;
* `remat`: not implemented here (it would run the kernel chunk by chunk under
  `jax.checkpoint`, each chunk's lengths clipped), so not offered until it can be measured;
* backends other than CUDA: the kernel is cuDNN's. On ROCm `jax.experimental.rnn` calls MIOpen,
  whose gate order differs (the module has `swap_lstm_gates` for it): not handled, untested.

Transformations: reverse mode, first order only (`jax.grad`, `jax.vjp`), as the kernel is a
`jax.custom_vjp` whose backward is opaque, so `jax.jvp` and higher derivatives raise; its
primitives have no batching rule in `jax.experimental.rnn`, so `jax.vmap` over the kernel is
expected to fail too (not checkable without a GPU). `applies` cannot see those
transformations: a caller that needs them must not take this path. On a GPU, results equal the
reference scan up to cuDNN's summation order, and to TF32 accuracy on GPUs that have it unless
`precision="highest"` (cuDNN then runs FMA math).

Not measured: no GPU was available where this was written; the path is tested on CPU only,
through `use_reference=True`. Whether it is faster than the XLA scan, and from which sizes, is
for a benchmark on a GPU to say before a dispatcher prefers it.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import rnn

from jaxrnn import _types

PyTree = Any

_PARAM_KEYS = ("w_x", "w_h", "b")
# `jax_default_matmul_precision` values that mean bfloat16 passes, which the kernel refuses.
_BF16_PRECISIONS = ("bfloat16", "default", "fastest")


# ---------------------------------------------------------------------------------------------
# The weights


def pack(params) -> jax.Array:
  """`jr.lstm`'s parameters as cuDNN's flat weight vector for one unidirectional layer.

  The layout is the one `jax.experimental.rnn.unpack_lstm_weights(w, D, H, 1, False)` reads:
  `W_ih (4H, D) = w_x.T`, then `W_hh (4H, H) = w_h.T`, each flattened row-major, then
  `b_ih (4H,) = b` and `b_hh (4H,) = 0`. jaxrnn's one bias goes into `b_ih` (cuDNN adds both,
  and gives both the same gradient, so either would do); a cell without `b` packs zeros into
  both. Gate order along `4H` is i, f, g, o in jaxrnn, PyTorch and cuDNN alike, so no block is
  permuted. Differentiable: gradients with respect to the vector reach `params`.

  Args:
    params: a dict with `w_x (D, 4H)`, `w_h (H, 4H)` and optionally `b (4H,)`, float32.

  Returns:
    A vector of `4H (D + H + 2)` entries in `w_x`'s dtype.

  Raises:
    ValueError: if `params` does not have that layout.
  """
  w_x, w_h, b = _check_params(params)
  zeros = jnp.zeros((w_h.shape[1],), w_x.dtype)
  return jnp.concatenate([w_x.T.reshape(-1), w_h.T.reshape(-1),
                          zeros if b is None else b, zeros])


def _check_params(params):
  """`(w_x, w_h, b or None)` of an LSTM params dict, its shapes checked against each other."""
  if (not isinstance(params, dict) or not {"w_x", "w_h"} <= set(params)
      or not set(params) <= set(_PARAM_KEYS)):
    got = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"cudnn: params must be jr.lstm's dict with keys w_x, w_h and optionally "
                     f"b, got {got}")
  w_x, w_h, b = (params.get(k) for k in _PARAM_KEYS)
  if np.ndim(w_x) != 2 or np.ndim(w_h) != 2:
    raise ValueError(f"cudnn: params['w_x'] and params['w_h'] must be matrices, got shapes "
                     f"{np.shape(w_x)} and {np.shape(w_h)}")
  hidden = np.shape(w_h)[0]
  expected = {"w_x": (np.shape(w_x)[0], 4 * hidden), "w_h": (hidden, 4 * hidden),
              "b": (4 * hidden,)}
  for k in _PARAM_KEYS:
    if k in params and np.shape(params[k]) != expected[k]:
      raise ValueError(f"cudnn: params[{k!r}] has shape {np.shape(params[k])}, expected "
                       f"{expected[k]} (w_h is (H, 4H) with H = {hidden})")
  return w_x, w_h, b


# ---------------------------------------------------------------------------------------------
# When the kernel applies


def _unreplaced_fused_spec(cell: _types.Cell) -> Optional[_types.FusedSpec]:
  """The fused spec of a built-in cell whose functions are all its own, else None.

  A built-in cell records the functions it was built with (`Cell.built_from`) and its spec
  (`Cell.fused`); a cell whose `step`, `project` or `recur` was replaced no longer matches them.
  """
  return cell.fused if _types.built_functions_unchanged(cell) else None


def _platform(backend: Optional[str]) -> str:
  """The platform a call runs on: `backend` as given, or this process's default backend with
  "gpu" resolved to "cuda" or "rocm"."""
  if backend is not None:
    return backend
  backend = jax.default_backend()
  if backend == "gpu":
    version = jax.devices()[0].client.platform_version.lower()
    return "rocm" if "rocm" in version or "hip" in version else "cuda"
  return backend


def applies(cell: _types.Cell, params, xs, *, carry: PyTree = None, lengths=None,
            resets=None, remat=None, reverse: bool = False, dtype=None,
            backend: Optional[str] = None) -> Optional[str]:
  """Whether `run` can serve `jr.scan(cell, params, xs, ...)` exactly: `None`, or the reason why
  not (a sentence to put in an error message or a log).

  Serves: the built-in `jr.lstm(H)` (no `proj_size`, no peepholes, `matmul_dtype` None or
  float32) with its own `step`, `project` and `recur`; `params`, `xs`, `carry` and the compute
  dtype all float32; any `lengths`; `reverse` (each valid prefix reversed, as `jr.scan` does);
  any initial carry; on CUDA.

  Args:
    cell: the `jr.Cell` of the call.
    params: its parameters.
    xs: the inputs (either layout; only the dtype is read).
    carry: the initial carry, or None for the cell's.
    lengths, resets, remat, reverse: `jr.scan`'s arguments of those names (`lengths` and
      `reverse` are always served; `resets` and `remat` never).
    dtype: the dtype the call computes in; None reads it from the cell for `xs`
      (`cell.initial_carry((), xs.dtype)`).
    backend: "cuda" or "gpu" (taken to be CUDA) can be served; None takes this process's
      default backend and also checks that JAX has the cuDNN kernel registered.
  """
  del reverse, lengths  # both served
  spec = _unreplaced_fused_spec(cell)
  if (spec is None or spec.native != "lstm"
      or cell.family != "lstm"):
    return (f"{cell.name} is not the built-in jr.lstm (without proj_size, peephole or a "
            "bfloat16 matmul_dtype) with its own step, project and recur functions")
  if cell.takes_key:
    return f"{cell.name} draws random masks, which cuDNN's LSTM does not"
  if resets is not None:
    return "resets is not supported: cuDNN cannot restart from the initial carry mid-sequence"
  if remat is not None:
    return "remat is not supported: chunked recomputation is not implemented on the cuDNN path"
  try:
    _check_params(params)
  except ValueError as e:
    return str(e)
  xs_dtype = jnp.result_type(xs)
  if dtype is None:
    dtype = jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: cell.initial_carry((), xs_dtype)))[0].dtype
  dtypes = [("xs", xs_dtype), ("the compute dtype", dtype)]
  dtypes += [(f"params[{k!r}]", jnp.result_type(v)) for k, v in sorted(params.items())]
  if carry is not None:
    if not isinstance(carry, _types.LSTMState):
      return f"carry must be a jr.LSTMState, got {type(carry).__name__}"
    dtypes += [(f"carry.{k}", jnp.result_type(v)) for k, v in carry._asdict().items()]
  for what, dt in dtypes:
    if jnp.dtype(dt) != jnp.float32:
      return (f"cuDNN's LSTM in jax.experimental.rnn computes in float32 only, and {what} is "
              f"{jnp.dtype(dt).name}")
  default_precision = jax.config.jax_default_matmul_precision
  if default_precision is not None and str(default_precision).lower() in _BF16_PRECISIONS:
    return (f"jax_default_matmul_precision={default_precision!r} asks for bfloat16 matmuls, "
            "which cuDNN's LSTM in jax.experimental.rnn does not implement")
  platform = _platform(backend)
  if platform not in ("cuda", "gpu"):
    return f"cuDNN runs on CUDA GPUs only, and the backend is {platform!r}"
  if backend is None and getattr(getattr(rnn, "gpu_rnn", None),
                                 "compute_rnn_workspace_reserve_space_sizes", None) is None:
    return "this JAX has no cuDNN RNN kernel (its CUDA plugin's _rnn module did not load)"
  return None


# ---------------------------------------------------------------------------------------------
# The call


def _flip_valid(a, lengths):
  """`a (N, T, ...)` with each row's first `lengths[n]` steps reversed and the rest in place
  (its own inverse): the reverse run of a sequence is the forward run of this."""
  steps = a.shape[1]
  t = jnp.arange(steps, dtype=jnp.int32)[None, :]
  n = lengths[:, None]
  src = jnp.where(t < n, n - 1 - t, t)
  return jnp.take_along_axis(a, src.reshape(src.shape + (1,) * (a.ndim - 2)), axis=1)


def run(params, xs, carry: Optional[_types.LSTMState] = None, lengths=None, *,
        reverse: bool = False, time_major: bool = False, precision=None,
        use_reference: bool = False):
  """`jr.scan(jr.lstm(H), params, xs, carry=carry, lengths=lengths, reverse=reverse,
  time_major=time_major)` through cuDNN's LSTM (`jax.experimental.rnn.lstm`).

  The same results as `jr.scan`: outputs past a sequence's length are zeros, and the inputs
  there never enter the computation (NaN padding reaches no value or gradient); the returned
  carry is each sequence's state after its last valid step (the given carry for length 0);
  with `reverse`, each sequence's valid steps run from last to first, outputs staying at their
  time positions. Call `applies` first: this function checks shapes, not the cell or dtypes.

  Args:
    params: `jr.lstm(H)`'s parameters: `w_x (D, 4H)`, `w_h (H, 4H)`, optional `b (4H,)`.
    xs: inputs `(..., T, D)`, or `(T, ..., D)` with `time_major=True`.
    carry: `LSTMState(h, c)`, leaves `(..., H)`; None for zeros.
    lengths: optional int array `(...)`, clipped to `[0, T]`; None for `T` everywhere.
    reverse: run each sequence's valid steps backwards.
    time_major: the layout of `xs` and of the returned outputs.
    precision: passed to `jax.experimental.rnn.lstm` (None: TF32 allowed where the GPU has it;
      "highest": full float32).
    use_reference: run `jax.experimental.rnn.lstm_ref` on `unpack_lstm_weights(pack(params))`
      instead of the kernel (on any backend, any float dtype): the test path.

  Returns:
    `(LSTMState(h, c), ys)` with `ys (..., T, H)` (`(T, ..., H)` time-major).

  Raises:
    ValueError: for params, `xs`, `carry` or `lengths` of the wrong shapes.
  """
  w_x, w_h, _ = _check_params(params)
  d, hidden = w_x.shape[0], w_h.shape[0]
  xs = jnp.asarray(xs)
  if xs.ndim < 2 or xs.shape[-1] != d:
    layout = "(T, ..., D)" if time_major else "(..., T, D)"
    raise ValueError(f"cudnn: xs must have shape {layout} with D = {d} (from w_x), got "
                     f"{xs.shape}")
  batch = xs.shape[1:-1] if time_major else xs.shape[:-2]
  steps = xs.shape[0] if time_major else xs.shape[-2]
  if carry is None:
    zeros = jnp.zeros(batch + (hidden,), xs.dtype)
    carry = _types.LSTMState(zeros, zeros)
  for what, leaf in (("carry.h", carry.h), ("carry.c", carry.c)):
    if np.shape(leaf) != batch + (hidden,):
      raise ValueError(f"cudnn: {what} has shape {np.shape(leaf)}, expected "
                       f"{batch + (hidden,)} (the batch shape of xs + (H,))")
  n = _types.prod(batch)
  out_shape = ((steps,) + batch if time_major else batch + (steps,)) + (hidden,)
  if lengths is not None:
    lengths = _types.check_lengths(lengths, batch, steps, "cudnn")
  if steps == 0 or n == 0:
    return carry, jnp.zeros(out_shape, xs.dtype)

  # cuDNN is batch-major: (N, T, D).
  x = xs.reshape((steps, n, d)).transpose(1, 0, 2) if time_major else xs.reshape((n, steps, d))
  h0, c0 = carry.h.reshape((1, n, hidden)), carry.c.reshape((1, n, hidden))
  if lengths is None:
    full = jnp.full((n,), steps, jnp.int32)
    if reverse:
      x = x[:, ::-1]
  else:
    full = lengths.reshape((n,))
    valid = jnp.arange(steps, dtype=jnp.int32)[None, :] < full[:, None]
    x = _types.zero_padding(x, valid)
    if reverse:
      x = _flip_valid(x, full)
  # A sequence of length 0 runs one step of zeros that is then discarded (below), so that the
  # kernel never sees a zero length, which some cuDNN versions reject.
  seq_lengths = jnp.maximum(full, 1)

  w = pack(params)
  if use_reference:
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, d, hidden, 1, False)
    y, h_n, c_n = rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, d, hidden, 1,
                               0.0, False)
  else:
    y, h_n, c_n = rnn.lstm(x, h0, c0, w, seq_lengths, d, hidden, 1, 0.0, False, precision)

  # Padding outputs are zeros in jaxrnn whatever the kernel writes there (cuDNN's padding fill
  # is 0 too); the select also keeps their cotangents out of the kernel's backward pass.
  valid = jnp.arange(steps, dtype=jnp.int32)[None, :] < full[:, None]
  y = jnp.where(valid[..., None], y, jnp.zeros((), y.dtype))
  if reverse:
    y = y[:, ::-1] if lengths is None else _flip_valid(y, full)
  ran = (full > 0)[:, None]
  h_t = jnp.where(ran, h_n[0], carry.h.reshape((n, hidden)))
  c_t = jnp.where(ran, c_n[0], carry.c.reshape((n, hidden)))
  ys = y.transpose(1, 0, 2) if time_major else y
  return (_types.LSTMState(h_t.reshape(batch + (hidden,)), c_t.reshape(batch + (hidden,))),
          ys.reshape(out_shape))
