"""The linear-recurrence cells (jr.min_gru, jr.min_lstm, jr.lru, jr.linear_indrnn): values
against independent NumPy loops, the LRU's initialisation and errors, the `Cell.linear` field,
and the cells inside layers and streams. The conformance battery runs on them in
tests/test_registry.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr

D, H = 3, 5


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def _numpy_min_gru(p, xs, log_space):
  """Feng et al.'s equations, one step at a time, in float64 NumPy."""
  w, b = np.asarray(p["w_x"], np.float64), np.asarray(p["b"], np.float64)
  h = np.zeros((xs.shape[0], H))
  ys = []
  for t in range(xs.shape[1]):
    k, v = np.split(xs[:, t] @ w + b, 2, axis=-1)
    if log_space:
      v = np.where(v >= 0, v + 0.5, _sigmoid(v))
    z = _sigmoid(k)
    h = (1 - z) * h + z * v
    ys.append(h)
  return h, np.stack(ys, 1)


def _numpy_min_lstm(p, xs):
  w, b = np.asarray(p["w_x"], np.float64), np.asarray(p["b"], np.float64)
  h = np.zeros((xs.shape[0], H))
  for t in range(xs.shape[1]):
    kf, ki, v = np.split(xs[:, t] @ w + b, 3, axis=-1)
    f, i = _sigmoid(kf), _sigmoid(ki)
    h = f / (f + i) * h + i / (f + i) * v
  return h


def _numpy_lru(p, xs):
  """Orvieto et al.'s LRU written from the paper, complex128 NumPy."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  n = p["nu_log"].shape[0]
  lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
  b = p["w_x"][:, :n] + 1j * p["w_x"][:, n:]
  c = p["c_re"] + 1j * p["c_im"]
  h = np.zeros((xs.shape[0], n), np.complex128)
  ys = []
  for t in range(xs.shape[1]):
    h = lam * h + np.exp(p["gamma_log"]) * (xs[:, t] @ b)
    ys.append((h @ c).real + xs[:, t] @ p["d"])
  return h, np.stack(ys, 1)


def _params64(cell, seed=0):
  p = cell.init(jax.random.key(seed), D)
  # Perturb zero-initialised biases so that they matter.
  return {k: np.asarray(v, np.float64) + (0.3 * np.random.default_rng(seed).normal(size=v.shape)
                                          if k == "b" else 0.0) for k, v in p.items()}


@pytest.mark.parametrize("log_space", [False, True])
def test_min_gru_matches_numpy(log_space):
  cell = jr.min_gru(H, log_space=log_space)
  p = _params64(cell)
  xs = np.random.default_rng(1).normal(size=(2, 9, D))
  carry, ys = jr.scan(cell, p, jnp.asarray(xs))
  want_h, want_ys = _numpy_min_gru(p, xs, log_space)
  np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(carry, want_h, rtol=1e-12, atol=1e-12)
  pcarry, pys = jr.parallel_scan(cell, p, jnp.asarray(xs), strategy="associative")
  np.testing.assert_allclose(pys, want_ys, rtol=1e-12, atol=1e-12)


def test_min_lstm_matches_numpy():
  cell = jr.min_lstm(H)
  p = _params64(cell)
  xs = np.random.default_rng(2).normal(size=(2, 9, D))
  carry, _ = jr.scan(cell, p, jnp.asarray(xs))
  np.testing.assert_allclose(carry, _numpy_min_lstm(p, xs), rtol=1e-12, atol=1e-12)


def test_lru_matches_numpy_and_parallel_scan():
  cell = jr.lru(H, output_size=4, r_min=0.5, r_max=0.95, max_phase=math.pi)
  p = _params64(cell)
  xs = np.random.default_rng(3).normal(size=(2, 11, D))
  want_h, want_ys = _numpy_lru(p, xs)
  for run in (jr.scan, jr.parallel_scan):
    carry, ys = run(cell, p, jnp.asarray(xs))
    assert carry.dtype == jnp.complex128 and ys.dtype == jnp.float64
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(carry, want_h, rtol=1e-12, atol=1e-12)


def test_lru_dtypes_float32_and_bfloat16():
  cell = jr.lru(H, output_size=2)
  p = cell.init(jax.random.key(0), D)
  for dtype, cdtype in ((jnp.float32, jnp.complex64), (jnp.bfloat16, jnp.complex64),
                        (jnp.float64, jnp.complex128)):
    carry, ys = jr.scan(cell, p, jnp.ones((1, 4, D), dtype))
    assert (carry.dtype, ys.dtype) == (cdtype, dtype)


def test_lru_ring_initialisation():
  r_min, r_max, max_phase = 0.4, 0.8, 0.5
  p = jr.lru(2000, r_min=r_min, r_max=r_max, max_phase=max_phase).init(jax.random.key(0), 2)
  modulus = np.exp(-np.exp(np.asarray(p["nu_log"], np.float64)))
  phase = np.exp(np.asarray(p["theta_log"], np.float64))
  assert modulus.min() >= r_min - 1e-6 and modulus.max() <= r_max + 1e-6
  # Uniform in area on the ring: |lambda|^2 is uniform on [r_min^2, r_max^2], mean in the middle.
  assert abs(np.mean(modulus ** 2) - (r_min ** 2 + r_max ** 2) / 2) < 0.01
  assert phase.min() >= 0 and phase.max() <= max_phase + 1e-6
  np.testing.assert_allclose(np.exp(np.asarray(p["gamma_log"], np.float64)),
                             np.sqrt(1 - modulus ** 2), rtol=1e-5)


@pytest.mark.parametrize("kw", [{"r_min": 0.0}, {"r_max": 1.0}, {"r_min": -0.1},
                                {"r_max": 1.5}, {"r_min": 0.9, "r_max": 0.5},
                                {"max_phase": 0.0}])
def test_lru_bad_radii(kw):
  with pytest.raises(ValueError, match="lru"):
    jr.lru(4, **kw)


def test_cell_positional_construction_keeps_working():
  cell = jr.gru(3)
  old = jr.Cell(cell.init, cell.initial_carry, cell.step, cell.project, cell.recur, "g", False)
  assert old.linear is None and old.takes_key is False
  cell = jr.min_gru(3)
  assert isinstance(cell.linear, jr.LinearRecurrence) and cell.linear.step is cell.step


@pytest.mark.parametrize("make", [lambda: jr.min_gru(H), lambda: jr.lru(H, output_size=4)])
def test_linear_cells_in_layers_and_streams(make):
  cell = make()
  xs = jax.random.normal(jax.random.key(0), (2, 8, D), jnp.float32)
  net = jr.stack(jr.bidirectional(jr.rnn(cell), jr.rnn(make())), jr.rnn(jr.min_lstm(3)))
  params = net.init(jax.random.key(1), D)
  _, ys = jax.jit(net.apply)(params, xs, lengths=jnp.array([8, 5]))
  assert ys.shape == (2, 8, 3) and bool(jnp.all(ys[1, 5:] == 0))
  layer = jr.rnn(cell)
  p = layer.init(jax.random.key(2), D)
  run = jr.stream(layer)
  c, y1 = run(p, None, xs[:, :5])
  c, y2 = run(p, c, xs[:, 5:])
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), layer.apply(p, xs)[1],
                             rtol=1e-5, atol=1e-5)
