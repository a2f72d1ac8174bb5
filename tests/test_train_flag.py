"""The `train` flag of every layer: False is evaluation whatever the key, True needs a key, and
None lets the key decide (the layer contract's `key=None` rule)."""

import jax
import jax.numpy as jnp
import pytest

import jaxrnn as jr

XS = jax.random.normal(jax.random.key(0), (2, 5, 3), jnp.float32)
LAYERS = {
    "dropout": lambda: jr.dropout(0.5),
    "stack": lambda: jr.stack(jr.rnn(jr.gru(4)), jr.rnn(jr.gru(4)), dropout=0.5),
    "bidirectional": lambda: jr.bidirectional(jr.stack(jr.rnn(jr.lstm(3)), jr.dropout(0.5)),
                                              jr.stack(jr.rnn(jr.lstm(3)), jr.dropout(0.5))),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_train_flag(name):
  layer = LAYERS[name]()
  params = layer.init(jax.random.key(1), 3)
  key = jax.random.key(2)
  evaluation = layer.apply(params, XS)[1]
  training = layer.apply(params, XS, key=key)[1]
  assert not jnp.allclose(training, evaluation)  # the key switches dropout on
  assert jnp.array_equal(layer.apply(params, XS, key=key, train=False)[1], evaluation)
  assert jnp.array_equal(layer.apply(params, XS, key=key, train=True)[1], training)
  jitted = jax.jit(lambda p, x, k: layer.apply(p, x, key=k, train=False)[1])
  assert jnp.array_equal(jitted(params, XS, key), evaluation)
  with pytest.raises(ValueError, match="train=True needs a PRNG key"):
    layer.apply(params, XS, train=True)
  with pytest.raises(TypeError, match="train must be a bool"):
    layer.apply(params, XS, key=key, train="yes")


def test_rnn_follows_the_train_contract_and_user_layers_compose():
  """`jr.rnn` of a deterministic cell takes `train` (train=True still needs a key, as for every
  layer); a user layer without a `train` argument still works inside a stack called with
  `train=`, because the stack hands down only a key."""
  user = jr.Layer(init=lambda key, d: {}, apply=lambda p, xs, *, carry=None, lengths=None,
                  resets=None, key=None: (None, 2 * xs))
  net = jr.stack(jr.rnn(jr.lstm(3)), user)
  params = net.init(jax.random.key(0), 3)
  want = 2 * jr.rnn(jr.lstm(3)).apply(params[0], XS)[1]
  assert jnp.allclose(net.apply(params, XS, key=jax.random.key(1), train=False)[1], want)
  layer = jr.rnn(jr.lstm(3))
  assert jnp.allclose(layer.apply(params[0], XS, key=jax.random.key(1), train=True)[1], want / 2)
  with pytest.raises(ValueError, match="train=True needs a PRNG key"):
    layer.apply(params[0], XS, train=True)
