"""`jr.scan(..., implementation="onednn")`: oneDNN's LSTM kernel pinned to the reference scan.

On Linux x86-64 the kernel must be built and loadable (`pip install -e '.[test]'` builds it and
installs its runtime): a broken build fails here rather than being skipped.

Tolerances (float32): both sides compute the same recurrence in float32, but oneDNN sums the
gate pre-activations in its own order (one GEMM over [x, h] blocks) and evaluates sigmoid/tanh
with its own vectorised approximations, a few ulp (eps = 1.2e-7) apart from XLA's. Over the few
steps used here (T = 5) observed differences are ~2e-7 on values and gradients of size ~1;
RTOL = ATOL = 2e-5 (~150 ulp) leaves room for error growth through the recurrence without
hiding a wrong gate, layout or direction (those give differences of order 1e-1).
"""

import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn.drivers import _onednn

RTOL = ATOL = 2e-5

T, D, H = 5, 3, 4

ON_LINUX_X86 = sys.platform == "linux" and platform.machine() == "x86_64"
needs_kernel = pytest.mark.skipif(
    not ON_LINUX_X86, reason="the oneDNN kernel is built on Linux x86-64 only")


def _params(cell, key, scale=0.3):
  """The cell's parameters plus noise, so that every entry (the bias too) matters."""
  params = cell.init(key, D)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _inputs(batch, time_major, key=jax.random.key(2)):
  kx, kh, kc = jax.random.split(key, 3)
  shape = (T,) + batch + (D,) if time_major else batch + (T, D)
  xs = jax.random.normal(kx, shape, jnp.float32)
  carry = jr.LSTMState(jax.random.normal(kh, batch + (H,), jnp.float32),
                       jax.random.normal(kc, batch + (H,), jnp.float32))
  return xs, carry


def _loss(cell, implementation, reverse, time_major):
  """A scalar that weighs every output, the final h and the final c differently."""

  def loss(params, xs, carry):
    (h, c), ys = jr.scan(cell, params, xs, carry=carry, reverse=reverse, time_major=time_major,
                         implementation=implementation)
    w = jnp.sin(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)
    return jnp.sum(w * ys) + jnp.sum(jnp.cos(h)) + jnp.sum(c * c)

  return loss


def _assert_close(got, want):
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert g.dtype == w.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=RTOL, atol=ATOL)


def _check_against_reference(cell, params, xs, carry, reverse, time_major):
  run = lambda impl: jax.jit(lambda p, x, c: jr.scan(
      cell, p, x, carry=c, reverse=reverse, time_major=time_major, implementation=impl))
  got, want = run("onednn")(params, xs, carry), run("reference")(params, xs, carry)
  _assert_close(got, want)
  grad = lambda impl: jax.jit(jax.value_and_grad(
      _loss(cell, impl, reverse, time_major), argnums=(0, 1, 2)))
  got, want = grad("onednn")(params, xs, carry), grad("reference")(params, xs, carry)
  _assert_close(got, want)


def test_kernel_is_available_on_linux_x86_64():
  if not ON_LINUX_X86:
    assert not _onednn.available()
    assert _onednn.unavailable_reason()
    return
  assert _onednn.available(), f"oneDNN kernel unavailable: {_onednn.unavailable_reason()}"
  assert _onednn.unavailable_reason() == ""


def test_runtime_is_a_core_dependency_on_linux_x86_64():
  # The default CPU path's native loops load oneDNN's runtime, so a plain `pip install jaxrnn`
  # must bring it (no extra), and only where the native library can be built.
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  requires = importlib.metadata.requires("jaxrnn") or []
  core = [r for r in requires if r.startswith("onednn-cpu-gomp") and "extra ==" not in r]
  assert len(core) == 1, requires
  assert "sys_platform == \"linux\"" in core[0] and "platform_machine == \"x86_64\"" in core[0]


@needs_kernel
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=["no_batch", "batch3", "batch2x3"])
@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_values_and_grads_equal_reference(batch, time_major, reverse):
  cell = jr.lstm(H)
  params = _params(cell, jax.random.key(0))
  xs, carry = _inputs(batch, time_major)
  _check_against_reference(cell, params, xs, carry, reverse, time_major)


@needs_kernel
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_without_bias(reverse):
  cell = jr.lstm(H, use_bias=False)
  params = _params(cell, jax.random.key(3))
  assert set(params) == {"w_x", "w_h"}
  xs, carry = _inputs((2,), time_major=False)
  _check_against_reference(cell, params, xs, carry, reverse, time_major=False)
  grads = jax.grad(_loss(cell, "onednn", reverse, False))(params, xs, carry)
  assert set(grads) == {"w_x", "w_h"}


@needs_kernel
def test_float32_matmul_dtype_is_served():
  """`matmul_dtype=jnp.float32` with float32 everywhere computes what the default does, so the
  kernel serves it (a bfloat16 `matmul_dtype` is refused: `test_matmul_dtype.py`)."""
  cell = jr.lstm(H, matmul_dtype=jnp.float32)
  params = _params(cell, jax.random.key(11))
  xs, carry = _inputs((2,), time_major=False)
  _check_against_reference(cell, params, xs, carry, reverse=False, time_major=False)


@needs_kernel
def test_default_carry_and_dtype_with_x64():
  cell = jr.lstm(H)
  params = _params(cell, jax.random.key(4))
  xs, _ = _inputs((2,), time_major=False)
  got = jr.scan(cell, params, xs, implementation="onednn")
  want = jr.scan(cell, params, xs, implementation="reference")
  assert got[1].shape == (2, T, H)
  _assert_close(got, want)


@needs_kernel
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_vmap_equals_reference(reverse):
  """vmap over the inputs, over per-example parameters, and of the gradient."""
  cell = jr.lstm(H)
  keys = jax.random.split(jax.random.key(5), 3)
  params = jax.vmap(lambda k: _params(cell, k))(keys)
  xs, carry = _inputs((3, 2), time_major=False)  # the vmapped axis first, then a batch axis

  def run(impl):
    scan = lambda p, x, c: jr.scan(cell, p, x, carry=c, reverse=reverse, implementation=impl)
    shared = jax.jit(jax.vmap(scan, in_axes=(None, 0, 0)))(
        jax.tree_util.tree_map(lambda a: a[0], params), xs, carry)
    per_example = jax.jit(jax.vmap(scan))(params, xs, carry)
    grads = jax.jit(jax.vmap(jax.grad(_loss(cell, impl, reverse, False), argnums=(0, 1, 2))))(
        params, xs, carry)
    return shared, per_example, grads

  _assert_close(run("onednn"), run("reference"))


@needs_kernel
def test_repeated_calls_are_identical():
  cell = jr.lstm(H)
  params = _params(cell, jax.random.key(6))
  xs, carry = _inputs((3,), time_major=False)
  fwd = jax.jit(lambda p, x, c: jr.scan(cell, p, x, carry=c, implementation="onednn"))
  grad = jax.jit(jax.grad(_loss(cell, "onednn", False, False), argnums=(0, 1, 2)))
  eager = lambda: jr.scan(cell, params, xs, carry=carry, implementation="onednn")
  for run in (lambda: fwd(params, xs, carry), lambda: grad(params, xs, carry), eager):
    first, second = run(), run()
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_kernel
def test_zero_steps():
  cell = jr.lstm(H)
  params = _params(cell, jax.random.key(7))
  xs = jnp.zeros((2, 0, D), jnp.float32)
  _, carry = _inputs((2,), time_major=False)
  (h, c), ys = jr.scan(cell, params, xs, carry=carry, implementation="onednn")
  assert ys.shape == (2, 0, H)
  np.testing.assert_array_equal(np.asarray(h), np.asarray(carry.h))
  np.testing.assert_array_equal(np.asarray(c), np.asarray(carry.c))


@needs_kernel
def test_forward_mode_raises():
  """A custom_vjp: jax.jvp is not defined (documented; "auto"/"fused" support it)."""
  cell = jr.lstm(H)
  params = _params(cell, jax.random.key(8))
  xs, carry = _inputs((2,), time_major=False)
  f = lambda x: jr.scan(cell, params, x, carry=carry, implementation="onednn")[1]
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(f, (xs,), (xs,))


def _error_cases():
  lstm = jr.lstm(H)
  p = _params(lstm, jax.random.key(9))
  xs, carry = _inputs((2,), time_major=False)
  gru = jr.gru(H)
  custom = lstm._replace(step=lambda params, c, x: lstm.step(params, c, 2 * x))
  bf16 = jr.lstm(H, dtype=jnp.bfloat16)
  return [
      ("float64", lstm, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p),
       xs.astype(jnp.float64), {}, "float32"),
      ("float64_params", lstm, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p), xs,
       {}, "float32"),
      ("bf16_compute", bf16, p, xs, {}, "float32"),
      ("lengths", lstm, p, xs, {"lengths": jnp.array([T, 2])}, "lengths is not supported"),
      ("resets", lstm, p, xs, {"resets": jnp.zeros((2, T), bool)}, "resets is not supported"),
      ("remat", lstm, p, xs, {"remat": 2}, "remat is not supported"),
      ("gru", gru, _params(gru, jax.random.key(10)), xs, {}, "built-in LSTM"),
      ("replaced_step", custom, p, xs, {}, "built-in LSTM"),
      ("bad_shape", lstm, dict(p, b=p["b"][:-1]), xs, {}, r"params\['b'\] has shape"),
  ]


@needs_kernel
@pytest.mark.parametrize("case", _error_cases(), ids=lambda c: c[0])
def test_errors_say_why(case):
  _, cell, params, xs, kwargs, message = case
  with pytest.raises(ValueError, match=message) as info:
    jr.scan(cell, params, xs, implementation="onednn", **kwargs)
  if "shape" not in message:
    assert "implementation='onednn' does not apply" in str(info.value)


def test_disabled_by_environment():
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, jaxrnn as jr
      from jaxrnn.drivers import _onednn
      assert not _onednn.available()
      print("REASON", _onednn.unavailable_reason())
      cell = jr.lstm(4)
      params = cell.init(jax.random.key(0), 3)
      xs = jnp.ones((2, 5, 3), jnp.float32)
      try:
        jr.scan(cell, params, xs, implementation="onednn")
      except ValueError as e:
        print("RAISED", e)
      carry, ys = jr.scan(cell, params, xs)
      ref = jr.scan(cell, params, xs, implementation="reference")[1]
      assert jnp.allclose(ys, ref), "auto differs from reference"
      print("AUTO OK", ys.shape)
  """)
  env = dict(os.environ, JAXRNN_ONEDNN="0", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  assert "REASON disabled by the environment variable JAXRNN_ONEDNN=0" in out.stdout
  assert "RAISED" in out.stdout and "JAXRNN_ONEDNN=0" in out.stdout.split("RAISED")[1]
  assert "AUTO OK (2, 5, 4)" in out.stdout
