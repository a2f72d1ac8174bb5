"""Cell variants: the GRU in its original reset-before form, the LSTM with a projection and
with peepholes. Each is pinned to a NumPy loop of its docstring's equations, has float64
gradients checked by finite differences, and runs the same equations on every implementation
of `jr.scan` (no fast path serves them). The conformance battery runs them through
tests/test_registry.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn as jr
import jaxrnn.testing

H, P, D, T = 4, 2, 3, 5


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _numpy_gru_reset_before(p, xs, h):
  """One sequence `xs (T, D)` through the reset-before GRU, in NumPy float64."""
  w_x, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_x", "w_h", "b"))
  ys = []
  for x in xs:
    a_r, a_z, a_n = np.split(x @ w_x + b, 3)
    r = _sigmoid(a_r + h @ w_h[:, :H])
    z = _sigmoid(a_z + h @ w_h[:, H:2 * H])
    n = np.tanh(a_n + (r * h) @ w_h[:, 2 * H:])
    h = (1 - z) * n + z * h
    ys.append(h)
  return h, np.stack(ys)


def _numpy_lstm_variant(p, xs, h, c, *, proj: bool, peephole: bool):
  """One sequence through the projected and/or peephole LSTM, in NumPy float64."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  zero = np.zeros(H)
  w_ci, w_cf, w_co = (p[k] if peephole else zero for k in ("w_ci", "w_cf", "w_co"))
  ys = []
  for x in xs:
    a_i, a_f, a_g, a_o = np.split(x @ p["w_x"] + h @ p["w_h"] + p["b"], 4)
    i = _sigmoid(a_i + w_ci * c)
    f = _sigmoid(a_f + w_cf * c)
    c = f * c + i * np.tanh(a_g)
    o = _sigmoid(a_o + w_co * c)
    h = o * np.tanh(c)
    if proj:
      h = h @ p["w_p"]
    ys.append(h)
  return (h, c), np.stack(ys)


VARIANTS = {
    "gru_reset_before": lambda **kw: jr.gru(H, reset_after=False, **kw),
    "lstm_proj": lambda **kw: jr.lstm(H, proj_size=P, **kw),
    "lstm_peephole": lambda **kw: jr.lstm(H, peephole=True, **kw),
    "lstm_proj_peephole": lambda **kw: jr.lstm(H, proj_size=P, peephole=True, **kw),
}


def _setup(name, batch=(2,), dtype=jnp.float64, steps=T):
  # init="pytorch" draws every parameter (biases and peepholes included) at random.
  cell = VARIANTS[name](init="pytorch")
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  params = jax.tree_util.tree_map(lambda a: a.astype(dtype), cell.init(k1, D))
  xs = jax.random.normal(k2, batch + (steps, D), dtype)
  carry = jax.tree_util.tree_map(
      lambda a: jax.random.normal(k3, a.shape, dtype), cell.initial_carry(batch, dtype))
  return cell, params, xs, carry


@pytest.mark.parametrize("name", list(VARIANTS))
def test_scan_matches_numpy_loop(name):
  cell, params, xs, carry = _setup(name)
  got_carry, got_ys = jax.jit(lambda p, x, c: jr.scan(cell, p, x, carry=c))(params, xs, carry)
  for b in range(xs.shape[0]):
    x = np.asarray(xs[b])
    if name == "gru_reset_before":
      want_carry, want_ys = _numpy_gru_reset_before(params, x, np.asarray(carry[b]))
      got_b = np.asarray(got_carry[b])
    else:
      want_carry, want_ys = _numpy_lstm_variant(
          params, x, np.asarray(carry.h[b]), np.asarray(carry.c[b]),
          proj="proj" in name, peephole="peephole" in name)
      got_b = (np.asarray(got_carry.h[b]), np.asarray(got_carry.c[b]))
    # float64 on both sides, 5 steps of O(1) values: only summation order differs.
    np.testing.assert_allclose(got_ys[b], want_ys, rtol=1e-12, atol=1e-12)
    jax.tree_util.tree_map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12), got_b,
        want_carry)


# The registry's battery checks second-order gradients of "gru_reset_before" and of the LSTM
# with both options; these are the LSTM's options one at a time.
@pytest.mark.parametrize("name", ["lstm_proj", "lstm_peephole"])
def test_grads_float64(name):
  cell, params, xs, carry = _setup(name, steps=3)
  lengths = jnp.array([3, 1])
  fn = lambda p, x, c: jr.scan(cell, p, x, carry=c, lengths=lengths)
  check_grads(fn, (params, xs, carry), order=1, modes=("rev",), eps=1e-6, rtol=1e-5,
              atol=1e-5)


@pytest.mark.parametrize("name", ["gru_reset_before", "lstm_proj_peephole"])
def test_auto_runs_the_variant_equations(name):
  """No fast path serves a variant: "auto" equals "reference" in values and gradients, at a
  float32 batch the native loop would take (16) and with lengths; "fused" and "onednn"
  refuse."""
  cell, params, xs, carry = _setup(name, batch=(16,), dtype=jnp.float32, steps=3)
  lengths = jnp.arange(16, dtype=jnp.int32) % 4
  run = lambda impl: lambda p, x, c: jr.scan(cell, p, x, carry=c, lengths=lengths,
                                             implementation=impl)
  jaxrnn.testing.assert_same_function(run("auto"), run("reference"), (params, xs, carry))
  with pytest.raises(ValueError, match="no fused implementation"):
    run("fused")(params, xs, carry)
  with pytest.raises(ValueError):
    jr.scan(cell, params, xs, carry=carry, implementation="onednn")


def test_variant_params_differ_from_base_cell():
  """Each variant's layout is its own: a base cell's params are refused, naming the layout."""
  base_gru = jr.gru(H).init(jax.random.key(0), D)
  xs = jnp.ones((2, T, D))
  with pytest.raises(ValueError, match="layout"):
    jr.scan(jr.gru(H, reset_after=False), base_gru, xs)
  base_lstm = jr.lstm(H).init(jax.random.key(0), D)
  with pytest.raises(ValueError, match="layout"):
    jr.scan(jr.lstm(H, proj_size=P), base_lstm, xs)


@pytest.mark.parametrize("make, error, match", [
    (lambda: jr.gru(H, reset_after="False"), TypeError, "reset_after must be a bool"),
    (lambda: jr.lstm(H, peephole="True"), TypeError, "peephole must be a bool"),
    (lambda: jr.lstm(H, proj_size=H), ValueError, "smaller than hidden_size"),
    (lambda: jr.lstm(H, proj_size=H + 1), ValueError, "smaller than hidden_size"),
    (lambda: jr.lstm(H, proj_size=0), ValueError, "proj_size must be a positive int"),
    (lambda: jr.lstm(H, proj_size=-1), ValueError, "proj_size must be a positive int"),
    (lambda: jr.lstm(H, proj_size=2.0), TypeError, "proj_size must be a positive int"),
])
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_from_torch_lstm_proj_size_matches_pytorch():
  """`nn.LSTM(proj_size=P)`, two layers, bidirectional, batch-first, float64: outputs, final
  carries and gradients (inputs, `weight_hr`) equal PyTorch's."""
  import torch

  torch.manual_seed(0)
  module = torch.nn.LSTM(D, 5, num_layers=2, proj_size=P, bidirectional=True,
                         batch_first=True).double()
  layer, params = jr.interop.from_torch(module)
  xs = np.random.default_rng(0).normal(size=(2, T, D))
  xs_t = torch.tensor(xs, requires_grad=True)
  ys_t, (h_n, c_n) = module(xs_t)
  (ys_t.sin().sum() + h_n.sum()).backward()

  def loss(params, xs):
    carry, ys = layer.apply(params, xs)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(d.h) for c in carry for d in c), (carry, ys)

  (_, (carry, ys)), (g_params, g_xs) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, jnp.asarray(xs))
  # float64, <= 2 layers x 5 steps of O(1) values: only summation order differs.
  tol = dict(rtol=1e-11, atol=1e-11)
  np.testing.assert_allclose(ys, ys_t.detach().numpy(), **tol)
  for l in range(2):
    for d, half in enumerate(("forward", "backward")):
      np.testing.assert_allclose(carry[l][d].h, h_n[2 * l + d].detach().numpy(), **tol)
      np.testing.assert_allclose(carry[l][d].c, c_n[2 * l + d].detach().numpy(), **tol)
      suffix = "_reverse" if d else ""
      np.testing.assert_allclose(g_params[l][half]["w_p"].T,
                                 getattr(module, f"weight_hr_l{l}{suffix}").grad.numpy(), **tol)
  np.testing.assert_allclose(g_xs, xs_t.grad.numpy(), **tol)
