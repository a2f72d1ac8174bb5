"""`jr.scan`: equals the `jr.static_unroll` oracle under every option; remat keeps gradients;
vmap, jit and dtypes; the semantics of lengths, padding, reverse and resets (the documented contract)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _util
import jaxrnn as jr

H, D, T, B = 3, 2, 7, 3
# float64 on both sides, the same step function: only XLA's fusion/summation order differs.
TOL64 = dict(rtol=1e-12, atol=1e-12)

LENGTHS = np.array([7, 3, 0])
RESETS = np.zeros((B, T), bool)
RESETS[0, [0, 3, 5]] = True
RESETS[1, [2, 5]] = True   # the reset at 5 lies in the padding of sequence 1 (length 3)
RESETS[2, 1] = True

# (id, kwargs of jr.scan, kwargs only jr.scan takes)
_OPTIONS = [
    ("plain", {}, {}),
    ("lengths", {"lengths": LENGTHS}, {}),
    ("resets", {"resets": RESETS}, {}),
    ("reverse", {"reverse": True}, {}),
    ("reverse-lengths-resets", {"reverse": True, "lengths": LENGTHS, "resets": RESETS}, {}),
    ("time_major-lengths-resets", {"time_major": True, "lengths": LENGTHS, "resets": RESETS}, {}),
    ("carry-lengths", {"carry": "random", "lengths": LENGTHS}, {}),
    ("carry-reverse-lengths-resets",
     {"carry": "random", "reverse": True, "lengths": LENGTHS, "resets": RESETS}, {}),
    ("unroll2-lengths", {"lengths": LENGTHS}, {"unroll": 2}),
    ("remat1-lengths-resets", {"lengths": LENGTHS, "resets": RESETS}, {"remat": 1}),
    ("remat3-reverse-lengths", {"lengths": LENGTHS, "reverse": True}, {"remat": 3}),
    ("rematsqrt-resets", {"resets": RESETS}, {"remat": "sqrt"}),
]


def _setup(name, key=0, batch=(B,), steps=T, dtype=jnp.float64):
  cell = _util.make(name, H)
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  params = _util.init_params(cell, k1, D, dtype=dtype)
  xs = _util.normal(k2, batch + (steps, D), dtype)
  carry = _util.random_carry(cell, k3, batch, dtype)
  return cell, params, xs, carry


def _resolve(kw, carry, time_major=False):
  kw = dict(kw)
  if kw.get("carry") == "random":
    kw["carry"] = carry
  if "lengths" in kw:
    kw["lengths"] = jnp.asarray(kw["lengths"], jnp.int32)
  if "resets" in kw:
    kw["resets"] = jnp.asarray(kw["resets"].T if time_major else kw["resets"])
  return kw


@pytest.mark.parametrize("option", _OPTIONS, ids=[o[0] for o in _OPTIONS])
@pytest.mark.parametrize("name", _util.ALL_CELLS)
def test_scan_equals_static_unroll(name, option):
  _, common, scan_only = option
  cell, params, xs, carry = _setup(name)
  time_major = common.get("time_major", False)
  if time_major:
    xs = jnp.moveaxis(xs, 1, 0)
  kw = _resolve(common, carry, time_major)
  want = jr.static_unroll(cell, params, xs, **kw)
  got = jr.scan(cell, params, xs, **kw, **scan_only)
  _util.assert_tree_close(got, want, **TOL64, what=f"{name} {option[0]}")


@pytest.mark.parametrize("remat", [1, 3, "sqrt"])
@pytest.mark.parametrize("name", ["lstm", "gru", "indrnn_relu"])
def test_remat_gradients_equal_plain(name, remat):
  cell, params, xs, carry = _setup(name)
  lengths, resets = jnp.asarray(LENGTHS, jnp.int32), jnp.asarray(RESETS)

  def loss(params, xs, carry, remat, reverse):
    c, ys = jr.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets,
                    reverse=reverse, remat=remat)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(c))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))
  for reverse in (False, True):
    _util.assert_tree_close(grad(params, xs, carry, remat, reverse),
                            grad(params, xs, carry, None, reverse), **TOL64,
                            what=f"remat={remat} reverse={reverse}")


# ---------------------------------------------------------------------------------------------
# Batching, jit, dtypes


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_relu", "indrnn_relu"])
def test_vmap_equals_leading_batch_axes(name):
  cell, params, xs, carry = _setup(name, batch=(2, 3))
  lengths = jnp.array([[7, 2, 0], [5, 7, 1]], jnp.int32)
  resets = jnp.zeros((2, 3, T), bool).at[0, 1, 3].set(True)
  kw = dict(reverse=True)
  explicit = jr.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets, **kw)

  def one(x, c, n, r):  # no batch axis at all
    return jr.scan(cell, params, x, carry=c, lengths=n, resets=r, **kw)

  mapped = jax.vmap(jax.vmap(one))(xs, carry, lengths, resets)
  _util.assert_tree_close(mapped, explicit, **TOL64, what="vmap x2 vs (2, 3) batch")
  flat = jr.scan(cell, params, xs.reshape(6, T, D),
                 carry=jax.tree_util.tree_map(lambda a: a.reshape(6, H), carry),
                 lengths=lengths.reshape(6), resets=resets.reshape(6, T), **kw)
  _util.assert_tree_close(jax.tree_util.tree_map(lambda a: a.reshape((2, 3) + a.shape[1:]),
                                                 flat), explicit, **TOL64, what="flattened")
  single = one(xs[1, 2], jax.tree_util.tree_map(lambda a: a[1, 2], carry), lengths[1, 2],
               resets[1, 2])
  _util.assert_tree_close(single, jax.tree_util.tree_map(lambda a: a[1, 2], explicit), **TOL64,
                          what="no batch axis")


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_public_functions_under_jit(name):
  cell, params, xs, carry = _setup(name)
  lengths, resets = jnp.asarray(LENGTHS, jnp.int32), jnp.asarray(RESETS)
  kw = dict(carry=carry, lengths=lengths, resets=resets)
  want = jr.scan(cell, params, xs, **kw)
  got = jax.jit(lambda p, x, c, n, r: jr.scan(cell, p, x, carry=c, lengths=n, resets=r,
                                              remat=2))(params, xs, carry, lengths, resets)
  _util.assert_tree_close(got, want, **TOL64, what="jit scan")
  got = jax.jit(cell.step)(params, carry, xs[:, 0])
  _util.assert_tree_close(got, cell.step(params, carry, xs[:, 0]), **TOL64, what="jit step")
  z = jax.jit(cell.project)(params, xs)
  _util.assert_tree_close(jax.jit(cell.recur)(params, carry, z[:, 0]),
                          cell.step(params, carry, xs[:, 0]), **TOL64, what="jit recur")
  init = jax.jit(cell.init, static_argnums=1)(jax.random.key(0), D)
  _util.assert_tree_close(init, cell.init(jax.random.key(0), D), rtol=0, atol=0, what="init")
  c0 = jax.jit(cell.initial_carry, static_argnums=(0, 1))((B,), jnp.float64)
  _util.assert_tree_close(c0, cell.initial_carry((B,), jnp.float64), rtol=0, atol=0,
                          what="initial_carry")
  layer = jr.stack(jr.rnn(cell), jr.bidirectional(jr.rnn(cell), jr.rnn(cell)))
  lp = layer.init(jax.random.key(1), D)
  lp = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), lp)
  got = jax.jit(lambda p, x, n, r: layer.apply(p, x, lengths=n, resets=r))(lp, xs, lengths,
                                                                           resets)
  _util.assert_tree_close(got, layer.apply(lp, xs, lengths=lengths, resets=resets), **TOL64,
                          what="jit layer")
  flipped = jax.jit(jr.flip_sequences)(xs, lengths)
  _util.assert_tree_close(flipped, jr.flip_sequences(xs, lengths), rtol=0, atol=0, what="flip")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize("name", _util.ALL_CELLS)
def test_dtypes_are_kept(name, dtype):
  """Outputs and carries keep the inputs' dtype; x64 is on, so float32 staying float32 checks
  that nothing is promoted. Params stay float32 (the default param_dtype) in every case."""
  cell = _util.make(name, H)
  params = cell.init(jax.random.key(0), D)
  xs = _util.normal(jax.random.key(1), (2, 4, D), dtype)
  for kw in ({}, {"lengths": jnp.array([4, 1], jnp.int32), "reverse": True, "remat": 2}):
    carry, ys = jr.scan(cell, params, xs, **kw)
    assert ys.dtype == dtype, kw
    assert all(a.dtype == dtype for a in jax.tree_util.tree_leaves(carry)), kw
  carry, ys = jr.scan(cell, params, xs, carry=carry)  # a carry of that dtype is accepted
  assert ys.dtype == dtype


# ---------------------------------------------------------------------------------------------
# Semantics


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", ["lstm", "gru", "indrnn_relu"])
def test_padding_invariance(name, reverse):
  """Appending garbage padding to sequences with `lengths` changes nothing on the valid part
  or in the final carry; padding outputs are zero."""
  cell, params, xs, carry = _setup(name, steps=4)
  lengths = jnp.array([4, 2, 0], jnp.int32)
  short = jr.scan(cell, params, xs, carry=carry, lengths=lengths, reverse=reverse)
  garbage = 1e3 * _util.normal(jax.random.key(9), (B, 5, D))
  # Also overwrite the padding already inside the first 4 steps.
  valid = (jnp.arange(4, dtype=jnp.int32)[None, :] < lengths[:, None])[..., None]
  xs_g = jnp.where(valid, xs, jnp.float64(-7e2))
  long_carry, long_ys = jr.scan(cell, params, jnp.concatenate([xs_g, garbage], axis=1),
                                carry=carry, lengths=lengths, reverse=reverse)
  _util.assert_tree_close(long_carry, short[0], **TOL64, what="final carry")
  np.testing.assert_allclose(long_ys[:, :4], short[1], **TOL64)
  np.testing.assert_array_equal(long_ys[:, 4:], 0.0)
  np.testing.assert_array_equal(long_ys[1, 2:], 0.0)
  np.testing.assert_array_equal(long_ys[2], 0.0)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_zero_length_returns_given_carry(reverse):
  cell, params, xs, carry = _setup("lstm")
  lengths = jnp.array([0, 0, 0], jnp.int32)
  got_carry, ys = jr.scan(cell, params, xs, carry=carry, lengths=lengths, reverse=reverse)
  _util.assert_tree_close(got_carry, carry, rtol=0, atol=0, what="carry")
  np.testing.assert_array_equal(ys, 0.0)


def test_reverse_with_lengths_enters_at_last_valid_step():
  """In reverse, the given carry enters at step length-1 of each sequence: the run equals a
  forward run over the valid part flipped, with outputs flipped back."""
  cell, params, xs, carry = _setup("gru")
  lengths = jnp.array([7, 3, 1], jnp.int32)
  got_carry, got_ys = jr.scan(cell, params, xs, carry=carry, lengths=lengths, reverse=True)
  for b, n in enumerate([7, 3, 1]):
    c, ys = jr.scan(cell, params, xs[b, :n][::-1], carry=carry[b])
    np.testing.assert_allclose(got_carry[b], c, **TOL64)
    np.testing.assert_allclose(got_ys[b, :n], ys[::-1], **TOL64)
    np.testing.assert_array_equal(got_ys[b, n:], 0.0)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_resets_equal_running_each_segment(reverse):
  """Segments [0, 3), [3, 5), [5, 7) of one sequence: the first one starts from `carry`,
  the others from the initial carry (the contract; in reverse the segments are the same, each
  run backwards, and `carry` enters the last one)."""
  cell, params, xs, carry = _setup("lstm", batch=())
  resets = jnp.zeros((T,), bool).at[jnp.array([3, 5])].set(True)
  got_carry, got_ys = jr.scan(cell, params, xs, carry=carry, resets=resets, reverse=reverse)
  segments = [(0, 3), (3, 5), (5, 7)]
  if reverse:
    segments = segments[::-1]
  fresh = cell.initial_carry((), jnp.float64)
  c = carry
  for i, (s, e) in enumerate(segments):
    c, ys = jr.scan(cell, params, xs[s:e], carry=carry if i == 0 else fresh, reverse=reverse)
    np.testing.assert_allclose(got_ys[s:e], ys, **TOL64)
  _util.assert_tree_close(got_carry, c, **TOL64, what="final carry")


def test_reset_at_step_zero_ignores_given_carry():
  cell, params, xs, carry = _setup("gru")
  resets = jnp.zeros((B, T), bool).at[:, 0].set(True)
  got = jr.scan(cell, params, xs, carry=carry, resets=resets)
  _util.assert_tree_close(got, jr.scan(cell, params, xs), **TOL64, what="reset at 0")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_reset_inside_padding_changes_nothing(reverse):
  cell, params, xs, carry = _setup("lstm")
  lengths = jnp.array([4, 2, 5], jnp.int32)
  base = jr.scan(cell, params, xs, carry=carry, lengths=lengths, reverse=reverse)
  resets = jnp.zeros((B, T), bool).at[0, 4:].set(True).at[1, 2].set(True).at[2, 5].set(True)
  got = jr.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets, reverse=reverse)
  _util.assert_tree_close(got, base, **TOL64, what="resets in padding")


def test_reverse_reset_replaces_carry_entering_previous_step():
  """The contract: in a reverse run `resets[t]` replaces the carry entering step t - 1, so the
  output at t - 1 is the fresh cell's output on x[t-1] alone, and steps >= t are untouched."""
  cell, params, xs, carry = _setup("simple_tanh", batch=())
  resets = jnp.zeros((T,), bool).at[4].set(True)
  _, ys = jr.scan(cell, params, xs, carry=carry, resets=resets, reverse=True)
  _, ys_plain = jr.scan(cell, params, xs, carry=carry, reverse=True)
  np.testing.assert_allclose(ys[4:], ys_plain[4:], **TOL64)
  _, y3 = cell.step(params, cell.initial_carry((), jnp.float64), xs[3])
  np.testing.assert_allclose(ys[3], y3, **TOL64)
  assert not np.allclose(ys[3], ys_plain[3])
