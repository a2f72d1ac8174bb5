"""Tests of `jaxrnn.testing`: the battery catches broken cells, each by the right property, and
passes a correct cell written by a user."""

import re

import jax
import jax.numpy as jnp
import pytest

import jaxrnn as jr
import jaxrnn.testing

H, D = 4, 3


# ---------------------------------------------------------------------------------------------
# Cells written the way a user would: the math for one example, vmapped over leading axes.


def _over_leading_axes(fn, x):
  for _ in range(x.ndim - 1):
    fn = jax.vmap(fn, in_axes=(None, 0, 0))
  return fn


def _elman_init(key, input_size):
  kx, kh, kb = jax.random.split(key, 3)
  return {"w_x": jax.random.normal(kx, (input_size, H), jnp.float32) / input_size ** 0.5,
          "w_h": jax.random.normal(kh, (H, H), jnp.float32) / H ** 0.5,
          "b": 0.1 * jax.random.normal(kb, (H,), jnp.float32)}


def _zeros_carry(batch_shape=(), dtype=None):
  return jnp.zeros(tuple(batch_shape) + (H,), dtype or jnp.float32)


def _cast(params, dtype):
  return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)


def _elman(name, step_one, initial_carry=_zeros_carry, **split):
  def step(params, h, x):
    return _over_leading_axes(step_one, x)(params, h, x)
  return jr.Cell(init=_elman_init, initial_carry=initial_carry, step=step, name=name, **split)


def minimal_gru():
  """A correct GRU (PyTorch form), with the project/recur split, written from scratch."""

  def init(key, input_size):
    kx, kh, kb = jax.random.split(key, 3)
    return {"w_x": jax.random.normal(kx, (input_size, 3 * H), jnp.float32) / input_size ** 0.5,
            "w_h": jax.random.normal(kh, (H, 3 * H), jnp.float32) / H ** 0.5,
            "b_x": jnp.zeros((3 * H,), jnp.float32), "b_h": jnp.zeros((3 * H,), jnp.float32)}

  def project_one(p, x):
    p = _cast(p, x.dtype)
    return x @ p["w_x"] + p["b_x"]

  def recur_one(p, h, z):
    p = _cast(p, z.dtype)
    a_r, a_z, a_n = jnp.split(z, 3)
    g_r, g_z, g_n = jnp.split(h @ p["w_h"] + p["b_h"], 3)
    r, u = jax.nn.sigmoid(a_r + g_r), jax.nn.sigmoid(a_z + g_z)
    h = (1 - u) * jnp.tanh(a_n + r * g_n) + u * h
    return h, h

  def project(p, xs):
    fn = lambda p, x: project_one(p, x)
    for _ in range(xs.ndim - 1):
      fn = jax.vmap(fn, in_axes=(None, 0))
    return fn(p, xs)

  def recur(p, h, z):
    return _over_leading_axes(recur_one, z)(p, h, z)

  def step(p, h, x):
    return recur(p, h, project(p, x))

  return jr.Cell(init=init, initial_carry=_zeros_carry, step=step, project=project,
                 recur=recur, name="minimal_gru")


def _tanh_step_one(p, h, x):
  p = _cast(p, x.dtype)
  h = jnp.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"])
  return h, h


@jax.custom_vjp
def _tanh_wrong_grad(z):
  return jnp.tanh(z)


def _tanh_fwd(z):
  y = jnp.tanh(z)
  return y, y


def _tanh_bwd(y, g):
  # The bug: the derivative of tanh is 1 - y^2; this is 1% off.
  return (g * (1 - y * y) * 1.01,)


_tanh_wrong_grad.defvjp(_tanh_fwd, _tanh_bwd)


def wrong_gradient_cell():
  def step_one(p, h, x):
    p = _cast(p, x.dtype)
    h = _tanh_wrong_grad(x @ p["w_x"] + h @ p["w_h"] + p["b"])
    return h, h
  return _elman("wrong_gradient", step_one)


def batch_mixing_cell():
  # Under jr.scan a cell cannot leak its own padding into its own carry: the driver keeps the
  # carry and zeroes the output at every padded step, whatever the step computes. What a cell CAN
  # do is break the contract that it works on the last axis and treats leading axes as
  # independent examples. This one centres its input over the batch (a "batch norm" on the
  # inputs, a plausible mistake), so the garbage at padded steps of one sequence enters the
  # valid steps of the others, whose carries then differ from those of a clean run.
  def step(p, h, x):
    batch_axes = tuple(range(x.ndim - 1))
    x = x - jnp.mean(x, axis=batch_axes, keepdims=True)
    return _over_leading_axes(_tanh_step_one, x)(p, h, x)
  return jr.Cell(init=_elman_init, initial_carry=_zeros_carry, step=step, name="batch_mixing")


def upcasting_cell():
  # Computes in at least float32 "for stability" and returns that: a bfloat16 run gets a float32
  # carry (float32 and float64 runs are unaffected).
  def step_one(p, h, x):
    dtype = x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32
    return _tanh_step_one(p, h.astype(dtype), x.astype(dtype))
  return _elman("upcasting", step_one)


def one_batch_axis_cell():
  # Written for exactly one leading batch axis.
  def step(p, h, x):
    p = _cast(p, x.dtype)
    h = jnp.tanh(jnp.einsum("bd,dh->bh", x, p["w_x"]) + jnp.einsum("bh,hk->bk", h, p["w_h"])
                 + p["b"][None, :])
    return h, h
  return jr.Cell(init=_elman_init, initial_carry=_zeros_carry, step=step, name="one_batch_axis")


def inconsistent_split_cell():
  # step adds the bias; the project/recur pair forgets it.
  def project(p, xs):
    return xs @ p["w_x"].astype(xs.dtype)

  def recur(p, h, z):
    h = jnp.tanh(z + h @ p["w_h"].astype(z.dtype))
    return h, h

  return _elman("inconsistent_split", _tanh_step_one, project=project, recur=recur)


def _failed_properties(message):
  return re.findall(r"property '(\w+)' failed", message)


# ---------------------------------------------------------------------------------------------
# The battery


def test_properties_are_named_and_unique():
  names = jaxrnn.testing.properties()
  assert len(names) == len(set(names)) == 9
  assert set(names) == {"scan_vs_unroll", "split", "grads", "vmap_jit", "padding", "resets",
                        "chunking", "dtypes", "fast_path"}
  assert set(jaxrnn.testing.describe()) == set(names)


def test_a_correct_user_cell_passes_every_property():
  report = jaxrnn.testing.check_cell(minimal_gru(), D)
  assert set(report) == set(jaxrnn.testing.properties())
  assert all(v.startswith("ok") for v in report.values()), report


@pytest.mark.parametrize("make_cell, prop, expected", [
    (wrong_gradient_cell, "grads", r"JVP|VJP"),
    (batch_mixing_cell, "padding", r"padding = "),
    (upcasting_cell, "dtypes", r"bfloat16"),
    (one_batch_axis_cell, "vmap_jit", r"batch \(2, 3\)"),
    (inconsistent_split_cell, "split", r"largest \|got - want\|"),
], ids=["wrong_gradient", "padding_leak", "bf16_upcast", "one_batch_axis", "bad_split"])
def test_broken_cell_is_caught_by_its_property(make_cell, prop, expected):
  with pytest.raises(AssertionError) as info:
    jaxrnn.testing.check_property(make_cell(), D, prop)
  message = str(info.value)
  assert _failed_properties(message) == [prop]
  assert re.search(expected, message), message
  assert "xs (" in message  # the inputs' shape and dtype are named


@pytest.mark.parametrize("make_cell, passes", [
    (wrong_gradient_cell, ["scan_vs_unroll", "padding", "dtypes", "fast_path"]),
    (upcasting_cell, ["scan_vs_unroll", "grads"]),
    (inconsistent_split_cell, ["padding", "resets"] if jax.default_backend() == "cpu" else []),
], ids=["wrong_gradient", "bf16_upcast", "bad_split"])
def test_broken_cell_passes_the_properties_it_does_not_break(make_cell, passes):
  # The battery is specific: a bug shows in the property about it, not as noise elsewhere. (On
  # CPU jr.scan runs `step` of a user cell with a split; elsewhere it runs the split, so the bad
  # split breaks everything there.)
  # The wrong-gradient cell is built on jax.custom_vjp, which has no forward mode.
  jaxrnn.testing.check_cell(make_cell(), D, only=passes, grad_modes=("rev",))


def test_bf16_upcast_message_names_the_dtypes():
  with pytest.raises(AssertionError) as info:
    jaxrnn.testing.check_property(upcasting_cell(), D, "dtypes")
  message = str(info.value)
  assert "xs (2, 5, 3) bfloat16" in message and "has dtype float32, expected bfloat16" in message


def test_an_exception_inside_a_property_is_its_failure():
  # A shape bug: JAX raises inside the property, which reports it as that property's failure.
  cell = _elman("shape_bug", lambda p, h, x: _tanh_step_one(p, h, x[..., :1]))
  with pytest.raises(AssertionError) as info:
    jaxrnn.testing.check_property(cell, D, "scan_vs_unroll")
  message = str(info.value)
  assert _failed_properties(message) == ["scan_vs_unroll"]
  assert "xs (3, 5, 3) float32" in message and "TypeError raised inside the property" in message


def test_padding_leak_shows_in_the_carry():
  with pytest.raises(AssertionError, match="final carry differs from running each sequence"):
    jaxrnn.testing.check_property(batch_mixing_cell(), D, "padding")


def test_wrong_gradient_message_has_the_largest_error():
  # Reverse mode runs first and finds the wrong VJP; a cell built on jax.custom_vjp has no
  # forward mode at all, so checking only reverse mode (grad_modes) still catches it.
  for modes in [("fwd", "rev"), ("rev",)]:
    with pytest.raises(AssertionError,
                       match=r"(?s)mode rev; xs \(2, 5, 3\) float64.*VJP.*Max absolute difference"):
      jaxrnn.testing.check_property(wrong_gradient_cell(), D, "grads", grad_modes=modes)


def test_check_cell_runs_every_property_and_lists_all_failures():
  with pytest.raises(AssertionError) as info:
    jaxrnn.testing.check_cell(one_batch_axis_cell(), D, only=["vmap_jit", "split", "dtypes"])
  message = str(info.value)
  assert message.startswith("jaxrnn.testing: 1 of 3 properties failed for cell one_batch_axis")
  assert _failed_properties(message) == ["vmap_jit"]


def test_options_select_and_skip():
  report = jaxrnn.testing.check_cell(jr.simple_rnn(H), D, only=["split", "dtypes", "resets"],
                                     skip="resets", seed=3)
  assert list(report) == ["split", "dtypes"]
  with pytest.raises(ValueError, match="unknown properties"):
    jaxrnn.testing.check_cell(jr.simple_rnn(H), D, only=["no_such_property"])
  with pytest.raises(TypeError, match="jr.Cell"):
    jaxrnn.testing.check_cell(object(), D)


def test_split_is_not_applicable_without_project_and_recur():
  report = jaxrnn.testing.check_property(jr.simple_rnn(H)._replace(project=None, recur=None), D,
                                         "split")
  assert report["split"].startswith("not applicable")


def test_tolerances_are_per_dtype_and_used():
  # An absurdly tight float32 tolerance turns float32 reassociation noise into a failure,
  # which shows the option reaches the comparison; the float64 default is untouched.
  with pytest.raises(AssertionError, match="rtol=0, atol=0"):
    jaxrnn.testing.check_property(jr.lstm(H), D, "dtypes", tolerances={"float32": (0.0, 0.0)})


def test_battery_runs_without_x64_and_restores_it():
  with jax.enable_x64(False):
    jaxrnn.testing.check_cell(jr.gru(H), D, only=["grads", "dtypes"])
    assert not jax.config.jax_enable_x64
  assert jax.config.jax_enable_x64


def test_fixed_compute_dtype_cell():
  cell = jr.gru(H, dtype=jnp.float32)
  jaxrnn.testing.check_property(cell, D, "dtypes", compute_dtype=jnp.float32)
  with pytest.raises(AssertionError, match="dtypes"):
    jaxrnn.testing.check_property(cell, D, "dtypes")


# ---------------------------------------------------------------------------------------------
# assert_same_function


def test_assert_same_function_passes_on_equal_functions():
  x = jnp.linspace(-2.0, 2.0, 7, dtype=jnp.float32)
  jaxrnn.testing.assert_same_function(jnp.tanh, lambda x: 2 * jax.nn.sigmoid(2 * x) - 1, (x,))


def test_assert_same_function_catches_each_kind_of_difference():
  x = jnp.linspace(-2.0, 2.0, 7, dtype=jnp.float64)
  with pytest.raises(AssertionError, match="values differ"):
    jaxrnn.testing.assert_same_function(jnp.tanh, lambda x: jnp.tanh(x) * 1.001, (x,))
  with pytest.raises(AssertionError, match="reverse-mode"):
    jaxrnn.testing.assert_same_function(jnp.tanh, _tanh_wrong_grad, (x,), modes=("rev",))

  @jax.custom_jvp
  def tanh_wrong_tangent(z):
    return jnp.tanh(z)

  tanh_wrong_tangent.defjvp(lambda primals, tangents: (
      jnp.tanh(primals[0]), tangents[0] * (1 - jnp.tanh(primals[0]) ** 2) * 0.99))
  with pytest.raises(AssertionError, match="forward-mode"):
    jaxrnn.testing.assert_same_function(jnp.tanh, tanh_wrong_tangent, (x,), modes=("fwd",))
  with pytest.raises(TypeError, match="floating"):
    jaxrnn.testing.assert_same_function(jnp.tanh, jnp.tanh, (jnp.arange(3),))


# ---------------------------------------------------------------------------------------------
# The README example runs as written


def _readme_example() -> str:
  doc = jaxrnn.testing.__doc__
  block = doc.split(".. code-block:: python\n", 1)[1]
  lines = []
  for line in block.splitlines():
    if line.strip() and not line.startswith("    "):
      break
    lines.append(line[4:])
  return "\n".join(lines)


def test_readme_example_runs():
  code = _readme_example()
  assert "def test_leaky_rnn(prop)" in code
  namespace = {}
  exec(compile(code, "<jaxrnn.testing docstring>", "exec"), namespace)  # noqa: S102
  marks = namespace["test_leaky_rnn"].pytestmark
  assert list(marks[0].args[1]) == list(jaxrnn.testing.properties())
  # The example's test function, called as pytest would for a few of its cases (the whole
  # battery runs on a user cell in test_a_correct_user_cell_passes_every_property).
  for prop in ["scan_vs_unroll", "padding", "dtypes"]:
    namespace["test_leaky_rnn"](prop)
