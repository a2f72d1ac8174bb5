"""jr.conv_lstm and jr.conv_gru: the equations against a NumPy oracle, gradients, lengths and
resets under jr.scan, and argument checks. Shapes are tiny: the file runs in seconds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn as jr

SIGMOID = lambda a: 1 / (1 + np.exp(-a))


def np_conv(x, w, strides, pads):
  """Cross-correlation of `x (N, H, W, C)` with `w (kh, kw, C, O)`, written out in NumPy."""
  (sh, sw), ((t, b), (l, r)) = strides, pads
  x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
  kh, kw = w.shape[:2]
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  out = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
      out[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
  return out


def same_pads(k):
  return (k - 1) // 2, k // 2


def np_run(kind, params, xs, strides, pads, features):
  """The cell's equations over `xs (N, T, H, W, C)`, one step at a time."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  kh, kw = p["w_h"].shape[:2]
  rec = (same_pads(kh), same_pads(kw))
  h = c = None
  ys = []
  for t in range(xs.shape[1]):
    zx = np_conv(xs[:, t], p["w_x"], strides, pads) + p["b"]
    if h is None:
      h = np.zeros(zx.shape[:3] + (features,))
      c = np.zeros_like(h)
    if kind == "lstm":
      a = zx + np_conv(h, p["w_h"], (1, 1), rec)
      i, f, g, o = np.split(a, 4, axis=-1)
      c = SIGMOID(f) * c + SIGMOID(i) * np.tanh(g)
      h = SIGMOID(o) * np.tanh(c)
    else:
      a_r, a_z, a_n = np.split(zx, 3, axis=-1)
      g = np_conv(h, p["w_h"][..., :2 * features], (1, 1), rec)
      r, z = SIGMOID(a_r + g[..., :features]), SIGMOID(a_z + g[..., features:])
      n = np.tanh(a_n + np_conv(r * h, p["w_h"][..., 2 * features:], (1, 1), rec))
      h = (1 - z) * n + z * h
    ys.append(h)
  return np.stack(ys, axis=1), h, c


FACTORIES = {"lstm": jr.conv_lstm, "gru": jr.conv_gru}
# (kernel, spatial, padding, strides, numpy pads)
GEOMETRIES = [
    (3, (5, 4), "SAME", 1, ((1, 1), (1, 1))),
    ((2, 3), (5, 6), "VALID", 2, ((0, 0), (0, 0))),
    (3, (4, 5), ((2, 0), (1, 1)), (1, 2), ((2, 0), (1, 1))),
]


@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_matches_numpy_equations(kind, geometry):
  kernel, spatial, padding, strides, pads = GEOMETRIES[geometry]
  features, channels = 2, 3
  cell = FACTORIES[kind](features, kernel, spatial_shape=spatial, padding=padding,
                         strides=strides)
  params = cell.init(jax.random.key(1), channels)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  params["b"] = jax.random.normal(jax.random.key(2), params["b"].shape, jnp.float64)
  xs = np.asarray(jax.random.normal(jax.random.key(3), (2, 3) + spatial + (channels,),
                                    jnp.float64))
  carry, ys = jax.jit(lambda p, x: jr.scan(cell, p, x))(params, xs)
  s = (strides, strides) if isinstance(strides, int) else strides
  want_ys, want_h, want_c = np_run(kind, params, xs, s, pads, features)
  np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
  if kind == "lstm":
    np.testing.assert_allclose(carry.h, want_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(carry.c, want_c, rtol=1e-12, atol=1e-12)
  else:
    np.testing.assert_allclose(carry, want_h, rtol=1e-12, atol=1e-12)
  if geometry:
    return
  # time-major and no batch axis give the same numbers
  _, ys_tm = jr.scan(cell, params, np.moveaxis(xs, 1, 0), time_major=True)
  np.testing.assert_allclose(np.moveaxis(ys_tm, 0, 1), ys, rtol=0, atol=0)
  _, ys_one = jr.scan(cell, params, xs[1])
  np.testing.assert_allclose(ys_one, ys[1], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradients_float64(kind):
  cell = FACTORIES[kind](2, 3, spatial_shape=(4, 4))
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  cell.init(jax.random.key(0), 2))
  xs = jax.random.normal(jax.random.key(1), (1, 3, 4, 4, 2), jnp.float64)
  loss = lambda p, x: jnp.sum(jr.scan(cell, p, x)[1] ** 2)
  check_grads(loss, (params, xs), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lengths_resets_and_nan_padding(kind):
  cell = FACTORIES[kind](2, 3, spatial_shape=(3, 4), strides=(1, 2))
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  cell.init(jax.random.key(0), 2))
  xs = jax.random.normal(jax.random.key(1), (3, 4, 3, 4, 2), jnp.float64)
  lengths = jnp.array([4, 2, 0])
  resets = jnp.zeros((3, 4), bool).at[0, 2].set(True).at[1, 1].set(True).at[1, 3].set(True)
  carry, ys = jr.scan(cell, params, xs, lengths=lengths, resets=resets)
  want_carry, want_ys = jr.static_unroll(cell, params, xs, lengths=lengths, resets=resets)
  np.testing.assert_allclose(ys, want_ys, rtol=1e-13, atol=1e-13)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13),
                         carry, want_carry)
  # a reset at step 2 equals running steps 2.. of the first sequence on their own
  _, tail = jr.scan(cell, params, xs[0, 2:])
  np.testing.assert_allclose(ys[0, 2:], tail, rtol=1e-13, atol=1e-13)
  assert np.all(np.asarray(ys[1, 2:]) == 0) and np.all(np.asarray(ys[2]) == 0)

  valid = (jnp.arange(4)[None, :] < lengths[:, None])[:, :, None, None, None]
  garbage = jnp.where(valid, xs, jnp.nan)
  zeros = jnp.where(valid, xs, 0.0)

  def loss(p, x):
    c, y = jr.scan(cell, p, x, lengths=lengths, resets=resets)
    return jnp.sum(y ** 2) + sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(c))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  (v_nan, (gp_nan, gx_nan)), (v_zero, (gp_zero, gx_zero)) = grad(params, garbage), grad(params,
                                                                                        zeros)
  assert np.isfinite(v_nan) and v_nan == v_zero
  for a, b in zip(jax.tree_util.tree_leaves((gp_nan, gx_nan)),
                  jax.tree_util.tree_leaves((gp_zero, gx_zero))):
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


def test_carry_dtype_follows_inputs():
  cell = jr.conv_gru(2, 3, spatial_shape=(4, 4))
  params = cell.init(jax.random.key(0), 1)
  carry, ys = jr.scan(cell, params, jnp.ones((2, 4, 4, 1), jnp.float32))
  assert carry.dtype == ys.dtype == jnp.float32 and carry.shape == (4, 4, 2)
  assert cell.input_rank == 3 and jr.lstm(2).input_rank == 1


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(padding="FULL"), ValueError, "padding"),
    (dict(padding=((1, 1),)), ValueError, "padding"),
    (dict(padding=((1, -1), (0, 0))), ValueError, "padding"),
    (dict(strides=0), ValueError, "strides"),
    (dict(strides=(1, 2, 3)), TypeError, "strides"),
    (dict(strides=1.5), TypeError, "strides"),
    (dict(padding="VALID", spatial_shape=(2, 5)), ValueError, "no output pixels"),
    (dict(spatial_shape=(4, 0)), ValueError, "spatial_shape"),
])
def test_bad_arguments(kwargs, error, match):
  args = dict(spatial_shape=(4, 4))
  args.update(kwargs)
  for factory in FACTORIES.values():
    with pytest.raises(error, match=match):
      factory(2, 3, **args)
  with pytest.raises(ValueError, match="kernel_size"):
    jr.conv_lstm(2, 0, spatial_shape=(4, 4))
  with pytest.raises(ValueError, match="features"):
    jr.conv_gru(0, 3, spatial_shape=(4, 4))


def test_bad_inputs():
  cell = jr.conv_lstm(2, 3, spatial_shape=(4, 4))
  params = cell.init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="last axis, here 3"):
    jr.scan(cell, params, jnp.ones((1, 2, 4, 4, 3)))
  with pytest.raises(ValueError, match="spatial_shape"):
    jr.scan(cell, params, jnp.ones((1, 2, 4, 5, 2)))
  with pytest.raises(ValueError, match=r"rank >= 4"):
    jr.scan(cell, params, jnp.ones((4, 4, 2)))
  with pytest.raises(ValueError, match="params"):
    jr.scan(cell, jr.conv_gru(2, 3, spatial_shape=(4, 4)).init(jax.random.key(0), 2),
            jnp.ones((2, 4, 4, 2)))
  with pytest.raises(ValueError, match="carry leaf"):
    jr.scan(cell, params, jnp.ones((1, 2, 4, 4, 2)),
            carry=jr.conv_lstm(2, 3, spatial_shape=(4, 4), strides=2).initial_carry((1,)))
  with pytest.raises(ValueError, match="newton_scan"):
    jr.newton_scan(cell, params, jnp.ones((2, 4, 4, 2)))
  with pytest.raises(ValueError, match="no fused implementation"):
    jr.scan(cell, params, jnp.ones((2, 4, 4, 2)), implementation="fused")
