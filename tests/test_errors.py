"""Bad input fails at trace time with `ValueError`/`TypeError` naming the argument and the
expected and actual shapes or dtypes (the library's error convention)."""

import re

import jax
import jax.numpy as jnp
import pytest

import jaxrnn as jr

H, D, T, B = 4, 3, 5, 2


@pytest.fixture(scope="module")
def lstm():
  cell = jr.lstm(H)
  return cell, cell.init(jax.random.key(0), D)


def _xs(shape=(B, T, D), dtype=jnp.float32):
  return jnp.zeros(shape, dtype)


def _traced(fn):
  """Runs `fn` under `jax.jit`, so that the error is raised while tracing."""
  return jax.jit(fn)()


def test_wrong_rank(lstm):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"xs must have shape \(\.\.\., T, D\).*\(3,\)"):
    _traced(lambda: jr.scan(cell, params, _xs((D,))))
  with pytest.raises(ValueError, match=r"xs must have shape \(T, \.\.\., D\)"):
    jr.scan(cell, params, _xs((D,)), time_major=True)


def test_feature_size_mismatch(lstm):
  cell, params = lstm
  # Either the whole xs or one step's x may be named (the driver or the cell checks first).
  expected = r"has shape \((2, 5, 7|2, 7)\), but the parameters expect \(\.\.\., 3\)"
  with pytest.raises(ValueError, match=expected):
    _traced(lambda: jr.scan(cell, params, _xs((B, T, 7))))
  with pytest.raises(ValueError, match=re.escape("x has shape (2, 7)")):
    cell.step(params, cell.initial_carry((B,)), _xs((B, 7)))


@pytest.mark.parametrize("lengths,exc,pattern", [
    (jnp.zeros((3,), jnp.int32), ValueError, r"lengths has shape \(3,\), expected .*\(2,\)"),
    (jnp.zeros((B, 1), jnp.int32), ValueError, r"lengths has shape \(2, 1\)"),
    (jnp.zeros((B,), jnp.float32), TypeError, r"lengths must have an integer dtype.*float32"),
])
def test_bad_lengths(lstm, lengths, exc, pattern):
  cell, params = lstm
  with pytest.raises(exc, match=pattern):
    _traced(lambda: jr.scan(cell, params, _xs(), lengths=lengths))


def test_bad_carry(lstm):
  cell, params = lstm
  good = cell.initial_carry((B,), jnp.float32)
  with pytest.raises(ValueError, match="carry has structure"):
    jr.scan(cell, params, _xs(), carry=good.h)                       # h alone for an LSTM
  with pytest.raises(ValueError, match=r"carry has structure"):
    jr.scan(cell, params, _xs(), carry=(good.h, good.c, good.c))
  bad_shape = jr.LSTMState(jnp.zeros((3, H), jnp.float32), good.c)
  with pytest.raises(ValueError, match=r"carry leaf has shape \(3, 4\), expected \(2, 4\)"):
    _traced(lambda: jr.scan(cell, params, _xs(), carry=bad_shape))
  bad_hidden = jr.LSTMState(jnp.zeros((B, H + 1), jnp.float32), good.c)
  with pytest.raises(ValueError, match=r"carry leaf has shape \(2, 5\), expected \(2, 4\)"):
    jr.scan(cell, params, _xs(), carry=bad_hidden)
  bad_dtype = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), good)
  with pytest.raises(TypeError, match="carry leaf has dtype float64, expected float32"):
    jr.scan(cell, params, _xs(), carry=bad_dtype)


def test_step_rejects_broadcast_carry(lstm):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"carry leaf of shape \(4,\).*\(2,\)"):
    cell.step(params, cell.initial_carry(()), _xs((B, D)))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_non_float_inputs(lstm, dtype):
  cell, params = lstm
  with pytest.raises(TypeError, match=r"xs must have a floating-point dtype, got " +
                     jnp.dtype(dtype).name):
    jr.scan(cell, params, _xs(dtype=dtype))
  with pytest.raises(TypeError, match="x must have a floating-point dtype"):
    cell.step(params, cell.initial_carry((B,)), _xs((B, D), dtype))


@pytest.mark.parametrize("factory", [jr.simple_rnn, jr.lstm, jr.gru, jr.indrnn])
def test_bad_hidden_size(factory):
  for bad in (0, -3):
    with pytest.raises(ValueError, match=f"hidden_size must be a positive int, got {bad}"):
      factory(bad)
  for bad in (4.0, "4", True, None):
    with pytest.raises(TypeError, match="hidden_size must be a positive int"):
      factory(bad)
  with pytest.raises(TypeError, match="input_size must be a positive int"):
    factory(3).init(jax.random.key(0), 2.5)


@pytest.mark.parametrize("factory", [jr.simple_rnn, jr.indrnn])
def test_bad_activation(factory):
  with pytest.raises(ValueError, match=r"activation must be one of .*'sigmoid'"):
    factory(3, activation="sigmoid")


def test_bad_init_and_bound():
  with pytest.raises(ValueError, match=r"init must be one of .*'xavier'"):
    jr.lstm(3, init="xavier")
  with pytest.raises(ValueError, match="recurrent_bound must be positive"):
    jr.indrnn(3, recurrent_bound=0.0)


@pytest.mark.parametrize("remat", [0, -1, 2.5, "log", True])
def test_bad_remat(lstm, remat):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"remat must be None, an int >= 1 or 'sqrt', got " +
                     re.escape(repr(remat))):
    jr.scan(cell, params, _xs(), remat=remat)


def test_bad_implementation(lstm):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"implementation must be one of .*'cudnn'.*got 'cuda'"):
    jr.scan(cell, params, _xs(), implementation="cuda")


def test_bad_resets(lstm):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"resets has shape \(5, 2\), expected \(2, 5\)"):
    _traced(lambda: jr.scan(cell, params, _xs(), resets=jnp.zeros((T, B), bool)))
  with pytest.raises(ValueError, match=r"resets has shape \(2, 5\), expected \(5, 2\)"):
    jr.scan(cell, params, _xs((T, B, D)), resets=jnp.zeros((B, T), bool), time_major=True)
  with pytest.raises(TypeError, match="resets must be boolean, got int32"):
    jr.scan(cell, params, _xs(), resets=jnp.zeros((B, T), jnp.int32))


def test_not_a_cell_or_layer():
  with pytest.raises(TypeError, match="cell must be a jr.Cell"):
    jr.scan(object(), {}, _xs())
  with pytest.raises(TypeError, match="rnn: cell must be a jr.Cell"):
    jr.rnn("lstm")
  with pytest.raises(TypeError, match="stack: layer 1 must be a jr.Layer"):
    jr.stack(jr.rnn(jr.gru(2)), jr.gru(2))
  with pytest.raises(ValueError, match=r"merge must be one of .*'mean'"):
    jr.bidirectional(jr.rnn(jr.gru(2)), jr.rnn(jr.gru(2)), merge="mean")
