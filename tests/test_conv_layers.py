"""Convolutional cells in the layers: jr.stack, jr.bidirectional, jr.stream and jr.step_layer
over frames (..., T, H, W, C), each against a composition of jr.scan calls, in float64 with
4x5 frames, 2-3 channels and T=5."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr

# float64 parameters too, so that gradients are float64 sums on both sides.
conv_lstm = functools.partial(jr.conv_lstm, param_dtype=jnp.float64)
conv_gru = functools.partial(jr.conv_gru, param_dtype=jnp.float64)
FRAME = (4, 5)
T = 5
LENGTHS = jnp.array([5, 3, 0])
# A new segment at step 2 of the first sequence and at step 1 of the second.
RESETS = jnp.zeros((3, T), bool).at[0, 2].set(True).at[1, 1].set(True)


def close(a, b):
  # Both sides run the same float64 operations in the same order; only XLA's fusion choices
  # differ, so they agree to a few ulps.
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)


def init(layer, seed, channels):
  return layer.init(jax.random.key(seed), channels)


def abstract_init(layer):
  """`layer.init` traced, not run: the shape checks raise without compiling anything."""
  return jax.eval_shape(lambda key: layer.init(key, 2), jax.random.key(0))


def frames(key, channels=2, batch=3, steps=T):
  return jax.random.normal(key, (batch, steps) + FRAME + (channels,), jnp.float64)


def with_nan_padding(xs, lengths):
  pad = jnp.arange(xs.shape[1])[None, :] >= lengths[:, None]
  return jnp.where(pad[:, :, None, None, None], jnp.nan, xs)


def two_cells():
  return conv_lstm(3, 3, spatial_shape=FRAME), conv_gru(2, (3, 3), spatial_shape=FRAME)


def test_stack_equals_layer_by_layer_scans_and_drops_pixels_between_them():
  c1, c2 = two_cells()
  rate, key = 0.5, jax.random.key(7)
  net = jr.stack(jr.rnn(c1), jr.rnn(c2), dropout=rate)
  params = init(net, 0, 2)
  assert params[0]["w_x"].shape == (3, 3, 2, 12) and params[1]["w_x"].shape == (3, 3, 3, 6)
  xs = frames(jax.random.key(1))
  # The stack's key split: one key a layer, then one a dropout site.
  keep = jax.random.bernoulli(jax.random.split(key, 4)[2], 1 - rate, (3, T) + FRAME + (3,))

  @jax.jit
  def both(p, x):
    k1, y1 = jr.scan(c1, p[0], x, lengths=LENGTHS, resets=RESETS)
    k2, y2 = jr.scan(c2, p[1], y1, lengths=LENGTHS, resets=RESETS)
    dropped = jnp.where(keep, y1 / (1 - rate), 0.0)
    _, y2_dropped = jr.scan(c2, p[1], dropped, lengths=LENGTHS, resets=RESETS)
    run = lambda key: net.apply(p, x, lengths=LENGTHS, resets=RESETS, key=key)
    return (run(None), run(key)[1]), (((k1, k2), y2), y2_dropped)

  got, want = both(params, xs)
  assert got[0][1].shape == (3, T) + FRAME + (2,)
  close(got, want)
  assert 0 < int(keep.sum()) < keep.size  # the mask drops single pixels, not whole frames


def test_stack_gradients_equal_the_composition_and_ignore_nan_padding():
  c1, c2 = two_cells()
  net = jr.stack(jr.rnn(c1), jr.rnn(c2))
  params = init(net, 0, 2)
  xs = frames(jax.random.key(1))
  garbage = with_nan_padding(xs, LENGTHS)
  zeros = jnp.where(jnp.isnan(garbage), 0.0, garbage)

  def manual(p, x):
    y1 = jr.scan(c1, p[0], x, lengths=LENGTHS)[1]
    return jnp.sum(jnp.tanh(jr.scan(c2, p[1], y1, lengths=LENGTHS)[1]))

  layered = lambda p, x: jnp.sum(jnp.tanh(net.apply(p, x, lengths=LENGTHS)[1]))
  grad = lambda f, x: jax.value_and_grad(f, argnums=(0, 1))(params, x)
  got, want = jax.jit(lambda: (grad(layered, garbage), grad(manual, zeros)))()
  assert np.isfinite(float(got[0]))
  close(got, want)


def test_stack_residual_adds_frames_and_keeps_padding_zero():
  cell = conv_gru(2, 3, spatial_shape=FRAME)
  net = jr.stack(jr.rnn(cell), jr.rnn(cell), residual=True)
  params = init(net, 0, 2)
  xs = frames(jax.random.key(1))
  valid = (jnp.arange(T)[None, :] < LENGTHS[:, None])[:, :, None, None, None]

  @jax.jit
  def both(p, x):
    x1 = jr.scan(cell, p[0], x, lengths=LENGTHS)[1] + jnp.where(valid, x, 0.0)
    return net.apply(p, x, lengths=LENGTHS)[1], jr.scan(cell, p[1], x1, lengths=LENGTHS)[1] + x1

  ys, want = both(params, xs)
  close(ys, want)
  assert not np.any(np.asarray(ys)[~np.asarray(valid[..., 0, 0, 0])])


def test_stack_residual_refuses_a_change_of_shape():
  c1, c2 = two_cells()  # 2 channels in, 3 out
  with pytest.raises(ValueError, match=r"residual.*layer 0 maps steps of shape \(4, 5, 2\) to "
                                       r"\(4, 5, 3\)"):
    abstract_init(jr.stack(jr.rnn(c1), jr.rnn(c2), residual=True))


def test_stack_refuses_frames_into_a_vector_layer():
  conv = jr.rnn(conv_gru(2, 3, spatial_shape=FRAME))
  vec = jr.rnn(jr.lstm(4))
  with pytest.raises(ValueError, match=r"layer 1 takes vectors \(\.\.\., T, D\), but layer 0 "
                                       r"outputs frames \(\.\.\., T, 4, 5, 2\).*reshape"):
    abstract_init(jr.stack(conv, vec))
  with pytest.raises(ValueError, match=r"layer 1 takes frames \(\.\.\., T, 4, 5, C\), but "
                                       r"layer 0 outputs vectors \(\.\.\., T, 4\).*reshape"):
    abstract_init(jr.stack(vec, conv))
  # Params made by hand do not get past apply either: the LSTM would take an image axis for
  # time and return frames of the right shape.
  params = (init(conv, 0, 2), init(vec, 1, 2))
  with pytest.raises(ValueError, match="layer 1 takes vectors"):
    jax.eval_shape(lambda p, x: jr.stack(conv, vec).apply(p, x), params,
                   frames(jax.random.key(2)))


def test_stack_refuses_frames_of_another_size():
  small = jr.rnn(conv_gru(2, 3, spatial_shape=FRAME, strides=2))  # 4x5 -> 2x3
  with pytest.raises(ValueError, match=r"layer 1 takes frames \(\.\.\., T, 4, 5, C\), but "
                                       r"layer 0 outputs frames \(\.\.\., T, 2, 3, 2\)"):
    abstract_init(jr.stack(small, jr.rnn(conv_gru(2, 3, spatial_shape=FRAME))))
  # The right size goes through: a stride-2 layer's output feeds the next.
  net = jr.stack(small, jr.rnn(conv_lstm(3, 3, spatial_shape=(2, 3))))
  params = init(net, 0, 2)
  out = jax.eval_shape(lambda p, x: net.apply(p, x)[1], params, frames(jax.random.key(1)))
  assert out.shape == (3, T, 2, 3, 3)


def test_stack_passes_frames_through_a_reshaping_layer():
  conv_cell = conv_gru(2, 3, spatial_shape=FRAME)
  flatten = jr.Layer(lambda key, size: {},
                     lambda p, xs, **kw: (None, xs.reshape(xs.shape[:2] + (-1,))))
  net = jr.stack(jr.rnn(conv_cell), jr.dropout(0.1), flatten, jr.rnn(jr.gru(3)))
  params = init(net, 0, 2)
  assert params[3]["w_x"].shape[0] == 4 * 5 * 2
  xs = frames(jax.random.key(1))

  @jax.jit
  def both(p, x):
    y1 = jr.scan(conv_cell, p[0], x)[1]
    return net.apply(p, x)[1], jr.scan(jr.gru(3), p[3], y1.reshape(3, T, -1))[1]

  close(*both(params, xs))


def test_bidirectional_equals_forward_and_reverse_scans_and_ignores_nan_padding():
  c1, _ = two_cells()
  c2 = conv_lstm(2, 3, spatial_shape=FRAME)
  layer = jr.bidirectional(jr.rnn(c1), jr.rnn(c2))
  params = init(layer, 0, 2)
  xs = frames(jax.random.key(1))
  garbage = with_nan_padding(xs, LENGTHS)
  zeros = jnp.where(jnp.isnan(garbage), 0.0, garbage)

  def manual(p, x):
    kf, yf = jr.scan(c1, p["forward"], x, lengths=LENGTHS, resets=RESETS)
    kb, yb = jr.scan(c2, p["backward"], x, lengths=LENGTHS, resets=RESETS, reverse=True)
    ys = jnp.concatenate([yf, yb], axis=-1)
    return jnp.sum(jnp.tanh(ys)), ((kf, kb), ys)

  def layered(p, x):
    carry, ys = layer.apply(p, x, lengths=LENGTHS, resets=RESETS)
    return jnp.sum(jnp.tanh(ys)), (carry, ys)

  grad = lambda f, x: jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, x)
  got, want = jax.jit(lambda: (grad(layered, garbage), grad(manual, zeros)))()
  assert got[0][1][1].shape == (3, T) + FRAME + (5,)  # channels 3 + 2
  assert np.isfinite(float(got[0][0]))
  close(got, want)


def test_bidirectional_time_major_frames_and_sum():
  cell = conv_gru(2, 3, spatial_shape=FRAME)
  layer = jr.bidirectional(jr.rnn(cell, time_major=True), jr.rnn(cell, time_major=True),
                           merge="sum")
  params = init(layer, 0, 2)
  xs = frames(jax.random.key(1))

  @jax.jit
  def both(p, x):
    yf = jr.scan(cell, p["forward"], x, lengths=LENGTHS, resets=RESETS)[1]
    yb = jr.scan(cell, p["backward"], x, lengths=LENGTHS, resets=RESETS, reverse=True)[1]
    ys = layer.apply(p, jnp.moveaxis(x, 1, 0), lengths=LENGTHS, resets=RESETS.T)[1]
    return jnp.moveaxis(ys, 0, 1), yf + yb

  close(*both(params, xs))


def test_bidirectional_refuses_halves_over_different_inputs():
  conv = jr.rnn(conv_gru(2, 3, spatial_shape=FRAME))
  with pytest.raises(ValueError, match=r"forward layer takes frames .* backward layer vectors"):
    jr.bidirectional(conv, jr.rnn(jr.gru(2)))
  with pytest.raises(ValueError, match=r"takes frames \(\.\.\., T, 4, 5, C\) and the backward "
                                       r"layer frames \(\.\.\., T, 6, 6, C\)"):
    jr.bidirectional(conv, jr.rnn(conv_gru(2, 3, spatial_shape=6)))
  layer = jr.bidirectional(conv, conv)
  params = init(layer, 0, 2)
  with pytest.raises(ValueError, match=r"xs must have shape \(\.\.\., T, 4, 5, C\)"):
    layer.apply(params, jnp.ones((3, T, 5, 4, 2)))


def test_stack_of_bidirectional_frame_layers():
  cell = conv_gru(2, 3, spatial_shape=FRAME)
  bi = jr.bidirectional(jr.rnn(cell), jr.rnn(cell))
  net = jr.stack(bi, jr.rnn(conv_lstm(3, 3, spatial_shape=FRAME)))
  params = init(net, 0, 2)
  assert params[1]["w_x"].shape == (3, 3, 4, 12)  # the two halves' 2 + 2 channels
  out = jax.eval_shape(lambda p, x: net.apply(p, x, lengths=LENGTHS)[1], params,
                       frames(jax.random.key(1)))
  assert out.shape == (3, T) + FRAME + (3,)
  with pytest.raises(ValueError, match=r"layer 1 takes vectors .* layer 0 outputs frames "
                                       r"\(\.\.\., T, 4, 5, 4\)"):
    abstract_init(jr.stack(bi, jr.rnn(jr.gru(3))))


def test_stream_frames_in_chunks_equals_one_scan():
  cell, _ = two_cells()
  net = jr.rnn(cell)
  params = init(net, 0, 2)
  xs = frames(jax.random.key(1), steps=6)
  resets = jnp.zeros((3, 6), bool).at[0, 4].set(True).at[2, 1].set(True)
  want_carry, want = jax.jit(lambda p, x: net.apply(p, x, resets=resets))(params, xs)
  run = jr.stream(net)
  carry, parts, carries = None, [], []
  for lo in (0, 2, 4):
    carry, ys = run(params, carry, xs[:, lo:lo + 2], resets=resets[:, lo:lo + 2])
    parts.append(ys)
    carries.append(carry)
  close((carry, jnp.concatenate(parts, axis=1)), (want_carry, want))
  # Per-chunk lengths: in the last chunk the second sequence stops after one step, the third
  # has none, and their carries stay where those steps left them.
  carry, ys = run(params, carries[1], xs[:, 4:], resets=resets[:, 4:],
                  lengths=jnp.array([2, 1, 0]))
  close(ys[:, :1][:2], want[:2, 4:5])
  close(ys[0], want[0, 4:])
  assert not np.any(np.asarray(ys[1, 1:])) and not np.any(np.asarray(ys[2]))
  close(jax.tree_util.tree_map(lambda a: a[2], carry),
        jax.tree_util.tree_map(lambda a: a[2], carries[1]))


def test_step_layer_frames_equals_scan():
  cell = conv_lstm(3, 3, spatial_shape=FRAME)
  params = init(cell, 0, 2)
  xs = frames(jax.random.key(1))
  want_carry, want = jax.jit(lambda p, x: jr.scan(cell, p, x))(params, xs)
  for layer in (cell, jr.rnn(cell)):
    step = jax.jit(lambda p, c, x, layer=layer: jr.step_layer(layer, p, c, x))
    carry, ys = cell.initial_carry((3,), jnp.float64), []
    for t in range(T):
      carry, y = step(params, carry, xs[:, t])
      ys.append(y)
    close((carry, jnp.stack(ys, axis=1)), (want_carry, want))
  # A time-major layer, one unbatched frame and carry=None.
  carry, y = jr.step_layer(jr.rnn(cell, time_major=True), params, None, xs[0, 0])
  close(y, want[0, 0])
  with pytest.raises(ValueError, match=r"x must be one step .*\(4, 5, C\)"):
    jr.step_layer(cell, params, None, jnp.ones((5, 2)))
