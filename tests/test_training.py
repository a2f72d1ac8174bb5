"""The training toolkit: masked losses and metrics, `jr.train_step` with Optax clipping and
non-finite skipping, `jr.fit`, truncated BPTT, gradient diagnostics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr

D, H, T = 3, 4, 6


@pytest.fixture
def optax_promotion():
  """Optax's Adam raises a Python float to its int32 step count, which the suite's strict dtype
  promotion rejects; users run JAX's standard promotion, and so do the tests that use Adam."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _key(i):
  return jax.random.key(i)


def _assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Losses and metrics


LENGTHS = jnp.array([6, 3, 1, 0], jnp.int32)


def _per_sequence_mean(fn, *arrays):
  """The value over the valid tokens, from each unpadded sequence on its own."""
  total, count = 0.0, 0
  for b, n in enumerate(np.asarray(LENGTHS)):
    if n:
      total += float(fn(*(a[b:b + 1, :n] for a in arrays))) * n
      count += n
  return total / count


def test_masked_losses_equal_the_losses_of_the_unpadded_sequences():
  logits = jax.random.normal(_key(0), (4, T, 5), jnp.float64)
  targets = jax.random.randint(_key(1), (4, T), 0, 5)
  preds = jax.random.normal(_key(2), (4, T, 2), jnp.float64)
  truth = jax.random.normal(_key(3), (4, T, 2), jnp.float64)
  cases = {
      jr.masked_cross_entropy: (logits, targets),
      jr.masked_accuracy: (logits, targets),
      jr.masked_mse: (preds, truth),
      jr.masked_mae: (preds, truth),
  }
  for fn, args in cases.items():
    np.testing.assert_allclose(float(jax.jit(fn)(*args, LENGTHS)),
                               _per_sequence_mean(fn, *args), rtol=1e-12)
  # Against Optax and NumPy on one unpadded sequence.
  np.testing.assert_allclose(
      jr.masked_cross_entropy(logits, targets),
      optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), rtol=1e-12)
  np.testing.assert_allclose(jr.masked_mse(preds, truth), np.mean((preds - truth) ** 2),
                             rtol=1e-12)
  np.testing.assert_allclose(jr.masked_mae(preds, truth), np.mean(np.abs(preds - truth)),
                             rtol=1e-12)
  np.testing.assert_allclose(jr.masked_accuracy(logits, targets),
                             np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(targets)),
                             rtol=1e-12)
  loss = jr.masked_cross_entropy(logits, targets, LENGTHS)
  np.testing.assert_allclose(jr.perplexity(logits, targets, LENGTHS), np.exp(loss), rtol=1e-12)
  np.testing.assert_allclose(jr.bits_per_character(logits, targets, LENGTHS), loss / np.log(2),
                             rtol=1e-12)


def test_label_smoothing_matches_optax():
  logits = jax.random.normal(_key(0), (2, T, 5), jnp.float64)
  targets = jax.random.randint(_key(1), (2, T), 0, 5)
  want = optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(targets, 5, dtype=jnp.float64), 0.1)).mean()
  np.testing.assert_allclose(jr.masked_cross_entropy(logits, targets, label_smoothing=0.1),
                             want, rtol=1e-12)


def test_a_batch_without_valid_steps_gives_zero_and_finite_gradients():
  logits = jax.random.normal(_key(0), (2, T, 5), jnp.float32)
  targets = jnp.zeros((2, T), jnp.int32)
  none = jnp.zeros((2,), jnp.int32)
  for fn, args in ((jr.masked_cross_entropy, (logits, targets)),
                   (jr.masked_mse, (logits, logits + 1)), (jr.masked_mae, (logits, logits + 1))):
    value, grad = jax.value_and_grad(lambda l: fn(l, *args[1:], none))(args[0])
    assert float(value) == 0.0 and bool(jnp.all(grad == 0))
  assert float(jr.masked_accuracy(logits, targets, none)) == 0.0


def test_loss_argument_errors():
  logits = jnp.zeros((2, T, 5), jnp.float32)
  with pytest.raises(ValueError, match=r"targets has shape \(2, 5\), expected \(2, 6\)"):
    jr.masked_cross_entropy(logits, jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(TypeError, match="targets must have an integer dtype"):
    jr.masked_accuracy(logits, jnp.zeros((2, T), jnp.float32))
  with pytest.raises(ValueError, match="no broadcasting"):
    jr.masked_mse(logits, logits[:1])
  with pytest.raises(TypeError, match="predictions are float32 and targets float64"):
    jr.masked_mse(logits, logits.astype(jnp.float64))
  with pytest.raises(ValueError, match=r"lengths has shape \(3,\), expected \(2,\)"):
    jr.masked_mae(logits, logits, jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="label_smoothing must be in"):
    jr.masked_cross_entropy(logits, jnp.zeros((2, T), jnp.int32), label_smoothing=1.5)


# ---------------------------------------------------------------------------------------------
# train_step


def _regression():
  params = {"w": jnp.array([3.0, -2.0, 1.0]), "b": jnp.array(0.5)}
  batch = {"x": jax.random.normal(_key(0), (8, 3)), "y": jax.random.normal(_key(1), (8,))}

  def loss_fn(p, batch, key):
    return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)

  return params, batch, loss_fn


@pytest.mark.parametrize("clip", [0.1, 1.0, 100.0])
def test_clipping_bounds_the_update_and_grad_norm_is_taken_before_it(clip):
  params, batch, loss_fn = _regression()
  tx = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(1.0))
  new, _, metrics = jr.train_step(loss_fn, tx)(params, tx.init(params), batch, None)
  grads = jax.grad(loss_fn)(params, batch, None)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-12)
  update = jax.tree_util.tree_map(jnp.subtract, new, params)
  norm = float(optax.tree.norm(update))
  assert norm <= clip * (1 + 1e-12)
  np.testing.assert_allclose(norm, min(clip, float(optax.tree.norm(grads))), rtol=1e-12)
  assert bool(metrics["finite"]) and int(metrics["nonfinite_leaf"]) == -1


def test_a_nonfinite_batch_leaves_params_and_optimizer_state_unchanged(optax_promotion):
  params, batch, loss_fn = _regression()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  step = jr.train_step(loss_fn, tx)
  state = tx.init(params)
  params, state, _ = step(params, state, batch, None)  # a real step first: nonzero moments
  bad = {"x": batch["x"].at[0, 0].set(jnp.nan), "y": batch["y"]}
  new, new_state, metrics = step(params, state, bad, None)
  assert not bool(metrics["finite"])
  assert int(metrics["nonfinite_leaf"]) == 0  # leaves in order: b, w; b's gradient is NaN
  _assert_trees_close(new, params, 0, 0)
  _assert_trees_close(new_state, state, 0, 0)
  # Without skipping the NaN goes through, as asked.
  new, _, _ = jr.train_step(loss_fn, tx, skip_nonfinite=False)(params, state, bad, None)
  assert bool(jnp.isnan(new["w"]).any())


def test_train_step_aux_donation_and_errors():
  params, batch, loss_fn = _regression()
  tx = optax.sgd(0.1)
  step = jr.train_step(lambda p, b, k: (loss_fn(p, b, k), {"twice": 2 * loss_fn(p, b, k)}), tx,
                       has_aux=True)
  _, _, metrics = step(params, tx.init(params), batch, None)
  np.testing.assert_allclose(metrics["aux"]["twice"], 2 * metrics["loss"], rtol=1e-12)
  donated = jr.train_step(loss_fn, tx, donate=True)
  plain = jr.train_step(loss_fn, tx)
  want = plain(params, tx.init(params), batch, None)
  got = donated(jax.tree_util.tree_map(jnp.copy, params), tx.init(params), batch, None)
  _assert_trees_close(got[0], want[0], 0, 0)
  with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation"):
    jr.train_step(loss_fn, lambda g: g)
  with pytest.raises(TypeError, match="loss_fn must be callable"):
    jr.train_step(None, tx)
  with pytest.raises(ValueError, match="must return a scalar loss"):
    jr.train_step(lambda p, b, k: batch["x"] @ p["w"], tx)(params, tx.init(params), batch, None)
  with pytest.raises(TypeError, match="pass has_aux=True"):
    jr.train_step(lambda p, b, k: (loss_fn(p, b, k), 1.0), tx)(params, tx.init(params), batch,
                                                                None)


def test_fit_logs_and_reports_the_nonfinite_step(tmp_path, capsys, optax_promotion):
  params, batch, loss_fn = _regression()
  tx = optax.adam(1e-2)
  bad = {"x": batch["x"].at[0, 0].set(jnp.inf), "y": batch["y"]}
  batches = [batch] * 4 + [bad] + [batch] * 5
  path = tmp_path / "metrics.jsonl"
  logged = []
  result = jr.fit(jr.train_step(loss_fn, tx), params, tx.init(params), iter(batches),
                  log_every=4, progress=False, metrics_file=str(path), tokens_per_batch=8,
                  steps=9, on_log=lambda record, p, s: logged.append((record["step"], p)))
  assert [r["step"] for r in result.history] == [4, 8, 9]
  assert [n for n, _ in logged] == [4, 8, 9]
  _assert_trees_close(logged[-1][1], result.params, 0, 0)
  assert result.nonfinite == [{"step": 5, "leaf": "['b']"}]
  assert "step 5: non-finite" in capsys.readouterr().err
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in lines] == [4, 8, 9]
  assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in lines)
  assert lines[-1]["loss"] < lines[0]["loss"]
  # The same run by hand: fit adds nothing to the arithmetic.
  step = jr.train_step(loss_fn, tx)
  p, s = params, tx.init(params)
  for b in batches[:9]:
    p, s, _ = step(p, s, b, None)
  _assert_trees_close(result.params, p, 0, 0)


# ---------------------------------------------------------------------------------------------
# Truncated BPTT


def _lm_problem(hidden=H, batch=2, steps=12):
  f64 = jnp.float64
  layer = jr.stack(jr.rnn(jr.lstm(hidden, param_dtype=f64)), jr.rnn(jr.gru(hidden, param_dtype=f64)))
  params = {"rnn": layer.init(_key(0), D), "w": jax.random.normal(_key(1), (hidden, 1), f64)}
  xs = jax.random.normal(_key(2), (batch, steps, D), f64)
  ys = jax.random.normal(_key(3), (batch, steps, 1), f64)

  def loss_fn(p, carry, chunk, key):
    x, y = chunk
    carry, out = layer.apply(p["rnn"], x, carry=carry)
    return jnp.mean((out @ p["w"] - y) ** 2), carry

  return layer, params, (xs, ys), loss_fn


def test_tbptt_with_one_window_equals_full_bptt(optax_promotion):
  _, params, seq, loss_fn = _lm_problem()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  run = jr.tbptt_step(loss_fn, tx, window=12)
  got = run(params, tx.init(params), None, seq, None)
  full = jr.train_step(lambda p, b, k: loss_fn(p, None, b, k)[0], tx)
  want = full(params, tx.init(params), seq, None)
  _assert_trees_close(got[0], want[0])
  np.testing.assert_allclose(got[3]["loss"], [want[2]["loss"]], rtol=1e-12)
  np.testing.assert_allclose(got[3]["grad_norm"], [want[2]["grad_norm"]], rtol=1e-12)


@pytest.mark.parametrize("accumulate", [False, True])
def test_tbptt_equals_explicit_chunks_with_stop_gradient(accumulate, optax_promotion):
  _, params, seq, loss_fn = _lm_problem()
  tx = optax.adam(1e-2)
  run = jr.tbptt_step(loss_fn, tx, window=4, accumulate=accumulate)
  got_params, _, got_carry, metrics = run(params, tx.init(params), None, seq, None)

  p, state, carry, losses, total = params, tx.init(params), None, [], None
  for start in range(0, 12, 4):
    chunk = jax.tree_util.tree_map(lambda a: a[:, start:start + 4], seq)
    (loss, new_carry), grads = jax.value_and_grad(
        lambda q: loss_fn(q, carry, chunk, None), has_aux=True)(p)
    carry = jax.lax.stop_gradient(new_carry)
    losses.append(float(loss))
    if accumulate:
      total = grads if total is None else jax.tree_util.tree_map(jnp.add, total, grads)
    else:
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
  if accumulate:
    updates, state = tx.update(jax.tree_util.tree_map(lambda g: g / 3, total), state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-10)
  _assert_trees_close(got_params, p)
  _assert_trees_close(got_carry, carry)


def test_tbptt_stride_shorter_than_the_window():
  layer, params, seq, _ = _lm_problem()
  stride, window = 2, 4

  def loss_fn(p, carry, chunk, key):
    x, y = chunk
    mid, out_a = layer.apply(p["rnn"], x[:, :stride], carry=carry)
    _, out_b = layer.apply(p["rnn"], x[:, stride:], carry=mid)
    out = jnp.concatenate([out_a, out_b], axis=1)
    return jnp.mean((out @ p["w"] - y) ** 2), mid

  tx = optax.sgd(0.05)
  _, _, carry, metrics = jr.tbptt_step(loss_fn, tx, window=window, stride=stride)(
      params, tx.init(params), None, seq, _key(5))
  assert metrics["loss"].shape == (5,)  # windows at 0, 2, 4, 6, 8
  # The carry handed on is the one after step 10 of the sequence: windows overlap.
  assert all(c is not None for c in jax.tree_util.tree_leaves(carry))


def test_tbptt_argument_errors():
  _, params, seq, loss_fn = _lm_problem()
  tx = optax.sgd(0.1)
  for kw, err, match in (({"window": 0}, ValueError, "window must be >= 1"),
                         ({"window": 2.5}, TypeError, "window must be a positive int"),
                         ({"window": 2, "stride": 3}, ValueError, "stride=3 exceeds window=2")):
    with pytest.raises(err, match=match):
      jr.tbptt_step(loss_fn, tx, **kw)
  with pytest.raises(ValueError, match=r"window=13 is longer than the sequence \(T = 12\)"):
    jr.tbptt_step(loss_fn, tx, window=13)(params, tx.init(params), None, seq, None)
  with pytest.raises(ValueError, match="not a multiple of stride=5"):
    jr.tbptt_step(loss_fn, tx, window=5)(params, tx.init(params), None, seq, None)
  with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation"):
    jr.tbptt_step(loss_fn, object(), window=4)
  with pytest.raises(TypeError, match=r"must return \(loss, carry_next\)"):
    jr.tbptt_step(lambda p, c, b, k: loss_fn(p, c, b, k)[0], tx, window=4)(
        params, tx.init(params), None, seq, None)


# ---------------------------------------------------------------------------------------------
# Gradient diagnostics


def _linear_cell(w):
  def step(params, h, x):
    h = h @ params["w"] + x
    return h, h

  return jr.Cell(init=lambda key, d: {"w": w},
                 initial_carry=lambda batch_shape=(), dtype=None: jnp.zeros(
                     tuple(batch_shape) + (w.shape[0],), dtype or jnp.float32),
                 step=step, name="linear")


def test_state_gradient_norms_of_a_linear_rnn_follow_the_closed_form():
  w = 0.9 * jax.random.normal(_key(0), (H, H), jnp.float64) / np.sqrt(H)
  cell = _linear_cell(w)
  xs = jax.random.normal(_key(1), (T, H), jnp.float64)
  g = jax.random.normal(_key(2), (H,), jnp.float64)
  norms = jr.diagnostics.state_gradient_norms(cell, {"w": w}, xs,
                                              lambda ys, c: jnp.vdot(g, ys[-1]))
  # h_t = h_{t-1} W + x_t, L = g . h_{T-1}: dL/dh_t = W^(T-1-t) g.
  want = [np.linalg.norm(np.linalg.matrix_power(np.asarray(w), T - 1 - t) @ np.asarray(g))
          for t in range(T)]
  np.testing.assert_allclose(norms, want, rtol=1e-12)


def test_state_gradients_equal_autodiff_of_an_unrolled_lstm():
  cell = jr.lstm(H)
  params = cell.init(_key(0), D)
  xs = jax.random.normal(_key(1), (2, T, D), jnp.float64)
  lengths = jnp.array([T, 4], jnp.int32)
  loss = lambda ys, c: jnp.sum(jnp.sin(ys)) + jnp.sum(c.c ** 2)
  got = jr.diagnostics.state_gradients(cell, params, xs, loss, lengths=lengths)

  # Reference: perturb the carry after step t by hand and differentiate.
  def run(deltas):
    carry, ys = cell.initial_carry((2,), jnp.float64), []
    for t in range(T):
      new, y = cell.step(params, carry, xs[:, t])
      new = jr.LSTMState(new.h + deltas.h[:, t], new.c + deltas.c[:, t])
      valid = (t < lengths)[:, None]
      carry = jr.LSTMState(jnp.where(valid, new.h, carry.h), jnp.where(valid, new.c, carry.c))
      ys.append(jnp.where(valid, new.h, 0.0))
    return loss(jnp.stack(ys, 1), carry)

  zeros = jr.LSTMState(jnp.zeros((2, T, H)), jnp.zeros((2, T, H)))
  want = jax.grad(run)(zeros)
  _assert_trees_close(got, want)
  assert not bool(jnp.any(got.h[1, 4:]))


def test_recurrent_spectra_and_jacobian_product():
  w = np.diag([0.5, 2.0, -3.0, 1.0])
  simple = jr.diagnostics.recurrent_spectra({"w_h": w})
  np.testing.assert_allclose(simple["h"]["singular_values"], [3.0, 2.0, 1.0, 0.5])
  assert simple["h"]["spectral_radius"] == 3.0
  with pytest.raises(ValueError, match=r"w_h has shape \(4, 8\)"):
    jr.diagnostics.recurrent_spectra({"w_h": np.concatenate([w, 2 * w], axis=1)})
  gru = jr.gru(H).init(_key(0), D)
  spectra = jr.diagnostics.recurrent_spectra(gru)
  assert sorted(spectra) == ["n", "r", "z"]
  block = np.asarray(gru["w_h"][:, :H], np.float64)
  np.testing.assert_allclose(spectra["r"]["singular_values"],
                             np.linalg.svd(block, compute_uv=False), rtol=1e-12)
  ind = jr.diagnostics.recurrent_spectra({"u": jnp.array([0.5, -2.0, 1.0])})
  np.testing.assert_allclose(ind["u"]["singular_values"], [2.0, 1.0, 0.5])
  assert ind["u"]["spectral_radius"] == 2.0
  with pytest.raises(ValueError, match="neither 'w_h' nor 'u'"):
    jr.diagnostics.recurrent_spectra({"w_x": jnp.ones((2, 2))})

  # The product of the step Jacobians, by hand for a simple RNN.
  cell = jr.simple_rnn(H)
  params = cell.init(_key(1), D)
  xs = jax.random.normal(_key(2), (T, D), jnp.float64)
  got = jr.diagnostics.jacobian_product(cell, params, xs)
  h, want = jnp.zeros((H,), jnp.float64), np.eye(H)
  for t in range(T):
    step_jac = jax.jacfwd(lambda c: cell.step(params, c, xs[t])[0])(h)
    want = np.asarray(step_jac) @ want
    h = cell.step(params, h, xs[t])[0]
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_plot_gradient_norms_writes_a_figure(tmp_path):
  path = tmp_path / "norms.png"
  fig = jr.diagnostics.plot_gradient_norms({"a": np.linspace(1, 2, 5), "b": np.ones(5)},
                                           path=str(path))
  assert path.stat().st_size > 1000 and len(fig.axes[0].lines) == 2
