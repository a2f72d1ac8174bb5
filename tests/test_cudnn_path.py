"""The cuDNN LSTM path (`jaxrnn.drivers._cudnn`), everything but the kernel, on CPU.

`run(..., use_reference=True)` runs `jax.experimental.rnn.lstm_ref` on the weights `pack` built
and `unpack_lstm_weights` read back, so the packing, layouts, lengths, reversal, masking and
carries are pinned here to `jr.scan(..., implementation="reference")`; the kernel's own call is
pinned by a stand-in with its signature.

Tolerances. Both sides compute the same equations and differ only in summation order
(`lstm_ref` adds `x W_ii^T + b_ii + h W_hi^T + b_hi` per gate, jaxrnn `(x w_x + b) + h w_h`).
Over these T = 5 steps, on values and gradients of size up to ~2.5, the observed differences
are 1.2e-7 in float32 (1 ulp, eps = 1.2e-7) and 4.4e-16 in float64 (2 ulp, eps = 2.2e-16).
RTOL = ATOL = 2e-5 in float32 and 1e-12 in float64 leave room for error growth through the
recurrence (~150 and ~4500 ulp), while a wrong gate, transpose, direction, mask or carry gives
differences of order 1e-1.
"""

import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import jaxrnn as jr
from jaxrnn.drivers import _cudnn

T, D, H = 5, 3, 4
TOL = {jnp.float32: 2e-5, jnp.float64: 1e-12}


def _params(cell, seed, dtype=jnp.float32):
  """Random parameters of `cell` for inputs of size D, every entry (the bias too) of size ~0.5.
  Drawn with NumPy at the shapes `cell.init` gives (traced, not run), so that no random
  initialiser is compiled for these tiny tests."""
  shapes = jax.eval_shape(lambda key: cell.init(key, D), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), dtype), shapes)


def _inputs(batch, time_major, dtype, seed=2):
  """`(xs, carry)`: standard normal inputs `(..., T, D)` (`(T, ..., D)` time-major) and an
  `LSTMState` with leaves `(..., H)`."""
  rng = np.random.default_rng(seed)
  shape = (T,) + batch + (D,) if time_major else batch + (T, D)
  normal = lambda shape: jnp.asarray(rng.standard_normal(shape), dtype)
  return normal(shape), jr.LSTMState(normal(batch + (H,)), normal(batch + (H,)))


def _assert_close(got, want, dtype):
  tol = TOL[dtype]
  g_leaves, g_def = jax.tree_util.tree_flatten(got)
  w_leaves, w_def = jax.tree_util.tree_flatten(want)
  assert g_def == w_def
  for g, w in zip(g_leaves, w_leaves):
    assert g.shape == w.shape and g.dtype == w.dtype == dtype
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# pack


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_pack_is_the_layout_unpack_reads(use_bias):
  params = _params(jr.lstm(H, use_bias=use_bias), 0)
  w = _cudnn.pack(params)
  assert w.shape == (rnn.get_num_params_in_lstm(D, H, 1, False),)
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, 1, False)
  np.testing.assert_array_equal(w_ih[0], params["w_x"].T)
  np.testing.assert_array_equal(w_hh[0], params["w_h"].T)
  np.testing.assert_array_equal(b_ih[0], params["b"] if use_bias else np.zeros(4 * H))
  np.testing.assert_array_equal(b_hh[0], np.zeros(4 * H))
  # Gate blocks line up without permutation: cuDNN's i, f, g, o rows are jaxrnn's i, f, g, o
  # columns (the forget gate is the second block of both).
  np.testing.assert_array_equal(w_ih[0][H:2 * H], params["w_x"][:, H:2 * H].T)


def test_pack_gradient_reaches_params():
  params = _params(jr.lstm(H), 1, jnp.float64)
  r = jnp.asarray(np.random.default_rng(2).standard_normal(_cudnn.pack(params).shape))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(r * _cudnn.pack(p))))(params)
  r_ih, r_hh, r_bih, r_bhh = rnn.unpack_lstm_weights(r, D, H, 1, False)
  np.testing.assert_array_equal(grads["w_x"], r_ih[0].T)
  np.testing.assert_array_equal(grads["w_h"], r_hh[0].T)
  np.testing.assert_array_equal(grads["b"], r_bih[0])
  del r_bhh  # the zero block depends on no parameter


def test_pack_rejects_other_params():
  with pytest.raises(ValueError, match="keys w_x, w_h"):
    _cudnn.pack(_params(jr.gru(H), 0))
  params = _params(jr.lstm(H), 0)
  with pytest.raises(ValueError, match=r"params\['b'\] has shape \(8,\), expected \(16,\)"):
    _cudnn.pack(dict(params, b=jnp.zeros(8)))


# ---------------------------------------------------------------------------------------------
# run(use_reference=True) against jr.scan


CASES = [
    # batch, lengths (None: all T), initial carry, reverse, time_major, dtype
    ((1,), None, False, False, False, jnp.float32),
    ((3,), [5, 2, 0], True, False, False, jnp.float32),
    ((1,), [3], True, True, True, jnp.float32),
    ((3,), None, True, True, True, jnp.float64),
    ((3,), [5, 2, 0], True, True, False, jnp.float64),
    ((2, 2), [[5, 1], [0, 3]], True, True, True, jnp.float64),
    ((), [4], True, False, False, jnp.float64),
]


def _case_id(case):
  batch, lengths, carry, reverse, time_major, dtype = case
  return "-".join([f"b{'x'.join(map(str, batch)) or 'none'}",
                   "lengths" if lengths is not None else "full",
                   "carry" if carry else "zero_carry", "reverse" if reverse else "forward",
                   "tm" if time_major else "bm", jnp.dtype(dtype).name])


def _values_and_grads(scan_fn, with_carry: bool):
  """A jitted `(params, xs[, carry]) -> (scan_fn(params, xs, carry), grads)`: the grads are the
  pullback of a cotangent that weighs every output and carry entry differently, with respect to
  params, xs and (`with_carry`) the carry."""

  def run(*args):
    out, pullback = jax.vjp(lambda *a: scan_fn(*a, *([None] * (3 - len(a)))), *args)
    cotangent = jax.tree_util.tree_map(
        lambda a: jnp.sin(jnp.arange(a.size, dtype=a.dtype) + a.ndim).reshape(a.shape), out)
    return out, pullback(cotangent)

  return jax.jit(run) if with_carry else jax.jit(lambda p, x: run(p, x))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_run_equals_reference_scan(case):
  batch, lengths, with_carry, reverse, time_major, dtype = case
  cell = jr.lstm(H)
  params = _params(cell, 0, dtype)
  xs, carry = _inputs(batch, time_major, dtype)
  if not with_carry:
    carry = None
  if lengths is not None:
    lengths = jnp.asarray(lengths if batch else lengths[0], jnp.int32)

  def cudnn(p, x, c):
    return _cudnn.run(p, x, c, lengths, reverse=reverse, time_major=time_major,
                      use_reference=True)

  def reference(p, x, c):
    return jr.scan(cell, p, x, carry=c, lengths=lengths, reverse=reverse,
                   time_major=time_major, implementation="reference")

  args = (params, xs) + ((carry,) if with_carry else ())
  _assert_close(_values_and_grads(cudnn, with_carry)(*args),
                _values_and_grads(reference, with_carry)(*args), dtype)


def test_run_empty_inputs():
  params = _params(jr.lstm(H), 3)
  xs, carry = _inputs((2,), False, jnp.float32)
  got_carry, ys = _cudnn.run(params, xs[:, :0], carry, jnp.zeros((2,), jnp.int32),
                             use_reference=True)
  assert ys.shape == (2, 0, H) and ys.dtype == jnp.float32
  np.testing.assert_array_equal(got_carry.h, carry.h)
  np.testing.assert_array_equal(got_carry.c, carry.c)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_nan_padding_reaches_nothing(reverse):
  params = _params(jr.lstm(H), 4)
  xs, carry = _inputs((3,), False, jnp.float32)
  lengths = jnp.array([5, 2, 0], jnp.int32)
  pad = np.arange(T)[None, :, None] >= np.asarray(lengths)[:, None, None]
  garbage = jnp.where(jnp.asarray(pad), jnp.nan, xs)
  clean = jnp.where(jnp.asarray(pad), 0.0, xs)
  run = lambda p, x, c: _cudnn.run(p, x, c, lengths, reverse=reverse, use_reference=True)
  values_and_grads = _values_and_grads(run, with_carry=True)
  got = values_and_grads(params, garbage, carry)
  want = values_and_grads(params, clean, carry)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, w)
  ((_, ys), (_, d_xs, _)) = got
  assert not np.any(np.asarray(ys)[np.broadcast_to(pad, ys.shape)])
  assert not np.any(np.asarray(d_xs)[np.broadcast_to(pad, d_xs.shape)])


def test_run_calls_the_kernel_with_its_signature(monkeypatch):
  """The kernel branch (`use_reference=False`) passes `jax.experimental.rnn.lstm` the arguments
  it names, batch-major, with int32 lengths >= 1: a stand-in with its signature checks that and
  answers with `lstm_ref`, and the result must be the reference scan's."""
  signature = inspect.signature(rnn.lstm)
  calls = []

  def stand_in(*args, **kwargs):
    a = signature.bind(*args, **kwargs).arguments
    assert a["x"].shape == (3, T, D) and a["h_0"].shape == a["c_0"].shape == (1, 3, H)
    assert (a["input_size"], a["hidden_size"], a["num_layers"]) == (D, H, 1)
    assert a["dropout"] == 0.0 and a["bidirectional"] is False
    assert a["seq_lengths"].dtype == jnp.int32 and int(jnp.min(a["seq_lengths"])) >= 1
    calls.append(a.get("precision"))
    weights = rnn.unpack_lstm_weights(a["weights"], D, H, 1, False)
    return rnn.lstm_ref(a["x"], a["h_0"], a["c_0"], *weights, a["seq_lengths"], D, H, 1, 0.0,
                        False)

  monkeypatch.setattr(rnn, "lstm", stand_in)
  cell = jr.lstm(H)
  params = _params(cell, 5)
  xs, carry = _inputs((3,), True, jnp.float32)
  lengths = jnp.array([5, 0, 3], jnp.int32)
  got = _cudnn.run(params, xs, carry, lengths, reverse=True, time_major=True,
                   precision="highest")
  want = jr.scan(cell, params, xs, carry=carry, lengths=lengths, reverse=True, time_major=True,
                 implementation="reference")
  _assert_close(got, want, jnp.float32)
  assert calls == ["highest"]


def test_run_rejects_wrong_shapes():
  params = _params(jr.lstm(H), 6)
  xs, carry = _inputs((3,), False, jnp.float32)
  with pytest.raises(ValueError, match=r"xs must have shape \(\.\.\., T, D\) with D = 3"):
    _cudnn.run(params, xs[..., :2], use_reference=True)
  with pytest.raises(ValueError, match=r"carry.h has shape \(2, 4\), expected \(3, 4\)"):
    _cudnn.run(params, xs, jr.LSTMState(carry.h[:2], carry.c), use_reference=True)
  with pytest.raises(ValueError, match="lengths"):
    _cudnn.run(params, xs, carry, jnp.array([1, 2], jnp.int32), use_reference=True)


# ---------------------------------------------------------------------------------------------
# applies


def _applies(cell, *, data_dtype=jnp.float32, backend="gpu", **kw):
  params = _params(cell, 7, data_dtype)
  xs, carry = _inputs((3,), False, data_dtype)
  return _cudnn.applies(cell, params, xs, carry=carry, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["gpu", "cuda"])
def test_applies_to_the_plain_float32_lstm_on_gpu(backend):
  assert _applies(jr.lstm(H), backend=backend) is None
  assert _applies(jr.lstm(H), backend=backend, lengths=jnp.array([5, 2, 0]),
                  reverse=True) is None
  assert _applies(jr.lstm(H, use_bias=False, matmul_dtype=jnp.float32),
                  backend=backend) is None


@pytest.mark.parametrize("cell, kw, reason", [
    (jr.lstm(H), {"resets": jnp.zeros((3, T), bool)}, "resets is not supported"),
    (jr.lstm(H), {"remat": 2}, "remat is not supported"),
    (jr.lstm(H), {"dtype": jnp.float64}, "float32 only, and the compute dtype is float64"),
    (jr.lstm(H, dtype=jnp.bfloat16), {}, "float32 only, and the compute dtype is bfloat16"),
    (jr.lstm(H), {"backend": "cpu"}, "CUDA GPUs only, and the backend is 'cpu'"),
    (jr.lstm(H), {"backend": "rocm"}, "CUDA GPUs only, and the backend is 'rocm'"),
    (jr.lstm(H, proj_size=2), {}, "not the built-in jr.lstm"),
    (jr.lstm(H, peephole=True), {}, "not the built-in jr.lstm"),
    (jr.lstm(H, matmul_dtype=jnp.bfloat16), {}, "not the built-in jr.lstm"),
    (jr.gru(H), {}, "not the built-in jr.lstm"),
    (jr.layer_norm_lstm(H), {}, "not the built-in jr.lstm"),
    (jr.variational_dropout(jr.lstm(H), 0.25), {}, "not the built-in jr.lstm"),
], ids=["resets", "remat", "compute_f64", "cell_bf16", "cpu", "rocm", "proj", "peephole",
        "matmul_bf16", "gru", "layer_norm_lstm", "dropout_wrapped"])
def test_applies_gives_the_reason(cell, kw, reason):
  assert reason in _applies(cell, **kw)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float16, jnp.bfloat16])
def test_applies_refuses_other_dtypes(dtype):
  assert f"float32 only, and xs is {jnp.dtype(dtype).name}" in _applies(jr.lstm(H),
                                                                      data_dtype=dtype)
  cell = jr.lstm(H)
  params = _params(cell, 8)
  xs, carry = _inputs((3,), False, jnp.float32)
  carry = jr.LSTMState(carry.h, carry.c.astype(dtype))
  why = _cudnn.applies(cell, params, xs, carry=carry, backend="gpu")
  assert f"carry.c is {jnp.dtype(dtype).name}" in why
  params = dict(params, w_h=params["w_h"].astype(dtype))
  why = _cudnn.applies(cell, params, xs, backend="gpu")
  assert f"params['w_h'] is {jnp.dtype(dtype).name}" in why


def test_applies_refuses_replaced_functions():
  cell = jr.lstm(H)
  replaced = [cell._replace(step=lambda p, c, x: cell.step(p, c, x)),
              cell._replace(recur=lambda p, c, z: cell.recur(p, c, z)),
              cell._replace(project=lambda p, xs: cell.project(p, xs))]
  for other in replaced:
    assert "with its own step, project and recur" in _applies(other)


def test_applies_refuses_bfloat16_default_precision():
  cell = jr.lstm(H)
  params = _params(cell, 9)
  xs, carry = _inputs((3,), False, jnp.float32)
  with jax.default_matmul_precision("bfloat16"):
    assert "bfloat16 matmuls" in _cudnn.applies(cell, params, xs, carry=carry, backend="gpu")
  with jax.default_matmul_precision("highest"):
    assert _cudnn.applies(cell, params, xs, carry=carry, backend="gpu") is None


def _fake_gpu(platform_version):
  """A stand-in for `jax.devices()` on a GPU whose runtime reports `platform_version`."""
  client = types.SimpleNamespace(platform_version=platform_version)
  return lambda *args, **kwargs: [types.SimpleNamespace(client=client)]


def test_applies_reads_this_process_backend(monkeypatch):
  """`backend=None` reads the default backend, tells CUDA from ROCm on "gpu", and checks that
  JAX has the cuDNN RNN kernel (this CPU-only install has none)."""
  cell = jr.lstm(H)
  for backend in ("cpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert f"the backend is '{backend}'" in _applies(cell, backend=None)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", _fake_gpu("rocm 6.0.2"))
  assert "the backend is 'rocm'" in _applies(cell, backend=None)
  monkeypatch.setattr(jax, "devices", _fake_gpu("cuda 12040"))
  monkeypatch.setattr(rnn, "gpu_rnn", types.SimpleNamespace())
  assert "no cuDNN RNN kernel" in _applies(cell, backend=None)
  monkeypatch.setattr(rnn, "gpu_rnn", types.SimpleNamespace(
      compute_rnn_workspace_reserve_space_sizes=lambda *args: (0, 0)))
  assert _applies(cell, backend=None) is None


# ---------------------------------------------------------------------------------------------
# jr.scan(..., implementation="cudnn"): the wiring


def test_scan_cudnn_where_it_does_not_apply_says_why():
  from jaxrnn.drivers import _plan
  cell = jr.lstm(H)
  params = _params(cell, 0)
  xs = jnp.ones((2, T, D), jnp.float32)
  carry = cell.initial_carry((2,), jnp.float32)
  with pytest.raises(ValueError, match="implementation='cudnn' does not apply: .*cpu"):
    _plan.plan(cell, params, jnp.swapaxes(xs, 0, 1), carry, implementation="cudnn",
               backend="cpu")
  if jax.default_backend() == "cpu":  # the public calls plan for this process's backend
    for call in (jr.scan, jr.scan_plan):
      with pytest.raises(ValueError, match="implementation='cudnn' does not apply: .*cpu"):
        call(cell, params, xs, implementation="cudnn")
  # Not an LSTM: refused on every backend.
  with pytest.raises(ValueError, match="implementation='cudnn' does not apply"):
    jr.scan(jr.gru(H), jr.gru(H).init(jax.random.key(0), D), xs, implementation="cudnn")


def test_auto_never_plans_cudnn_and_cudnn_is_planned_where_it_applies():
  from jaxrnn.drivers import _plan
  cell = jr.lstm(H)
  params = _params(cell, 0)
  xs_t = jnp.ones((T, 2, D), jnp.float32)
  carry = cell.initial_carry((2,), jnp.float32)
  for backend in ("cuda", "gpu"):
    assert _plan.plan(cell, params, xs_t, carry, backend=backend).driver != "cudnn"
    got = _plan.plan(cell, params, xs_t, carry, implementation="cudnn", backend=backend)
    assert got.driver == "cudnn" and "cudnn" in got.reasons[-1]
  with pytest.raises(ValueError, match="resets"):
    _plan.plan(cell, params, xs_t, carry, resets=jnp.zeros((T, 2), bool),
               implementation="cudnn", backend="cuda")


def test_scan_cudnn_wiring_equals_reference(monkeypatch):
  """With the kernel swapped for `lstm_ref` (what runs on a CPU), `jr.scan(...,
  implementation="cudnn")` goes through the cuDNN path's packing, layout, lengths, reversal
  and masking, and equals the reference scan in values, final carries and gradients."""
  real_run = _cudnn.run
  calls = []

  def run_on_cpu(*args, **kwargs):
    calls.append(kwargs)
    return real_run(*args, use_reference=True, **kwargs)

  monkeypatch.setattr(_cudnn, "applies", lambda *a, **k: None)
  monkeypatch.setattr(_cudnn, "run", run_on_cpu)
  cell = jr.lstm(H)
  params = _params(cell, 1)
  xs = jax.random.normal(jax.random.key(2), (3, T, D), jnp.float32)
  lengths = jnp.array([T, 2, 0])
  xs = jnp.where(jnp.arange(T)[None, :, None] < lengths[:, None, None], xs, jnp.nan)
  assert jr.scan_plan(cell, params, xs, lengths=lengths, implementation="cudnn").driver == "cudnn"
  for reverse in (False, True):
    def loss(p, x, implementation):
      carry, ys = jr.scan(cell, p, x, lengths=lengths, reverse=reverse,
                          implementation=implementation)
      return jnp.sum(ys ** 2) + jnp.sum(carry.h) + jnp.sum(carry.c ** 2), (carry, ys)
    (l_c, (c_c, y_c)), g_c = jax.value_and_grad(loss, has_aux=True)(params, xs, "cudnn")
    (l_r, (c_r, y_r)), g_r = jax.value_and_grad(loss, has_aux=True)(params, xs, "reference")
    np.testing.assert_allclose(y_c, y_r, rtol=TOL[jnp.float32], atol=TOL[jnp.float32])
    for a, b in zip(jax.tree.leaves((c_c, g_c)), jax.tree.leaves((c_r, g_r))):
      np.testing.assert_allclose(a, b, rtol=TOL[jnp.float32], atol=TOL[jnp.float32])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g_c))
  assert [c["reverse"] for c in calls] == [False, True]
