"""jr.language_model(tie_embeddings=True) with a recurrent output size H other than the embedding
size E: a learned projection (H -> E) before the tied head, against a hand computation, with
jr.generate and gradients; equal sizes keep the params without a projection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr

V, E, T = 7, 4, 5
F64 = jnp.float64
LENGTHS = jnp.array([5, 3])


def close(a, b):
  # float64 throughout; the two sides differ only in the order XLA sums in.
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12)


def gru6():
  cell = jr.gru(6, param_dtype=F64)
  return cell, lambda p, xs: jr.scan(cell, p, xs, lengths=LENGTHS)[1]


def stack53():
  c1, c2 = jr.gru(5, param_dtype=F64), jr.lstm(3, param_dtype=F64)

  def run(p, xs):
    return jr.scan(c2, p[1], jr.scan(c1, p[0], xs, lengths=LENGTHS)[1], lengths=LENGTHS)[1]

  return jr.stack(jr.rnn(c1), jr.rnn(c2)), run


def model(make):
  recurrent, run = make()
  lm = jr.language_model(V, E, recurrent, tie_embeddings=True, param_dtype=F64)
  params = lm.init(jax.random.key(0))
  # A non-zero head bias, so that the hand computation checks where it enters.
  params["head"]["b"] = jax.random.normal(jax.random.key(4), (V,), F64)
  return lm, params, run


def by_hand(params, tokens, run, table_in=None, table_out=None):
  """`(y @ w) @ table.T + b` with `y` the recurrent outputs over the embedded tokens."""
  table = params["embedding"]["table"]
  table_in = table if table_in is None else table_in
  table_out = table if table_out is None else table_out
  ys = run(params["cell"], table_in[tokens])
  return (ys @ params["projection"]["w"]) @ table_out.T + params["head"]["b"][None, None]


TOKENS = jax.random.randint(jax.random.key(1), (2, T), 0, V, jnp.int32)


def test_logits_equal_the_projection_then_the_transposed_table():
  lm, params, run = model(stack53)
  assert set(params) == {"embedding", "cell", "head", "projection"}
  assert params["projection"]["w"].shape == (3, E) and set(params["projection"]) == {"w"}
  assert set(params["head"]) == {"b"}
  _, logits = jax.jit(lambda p: lm.apply(p, TOKENS, lengths=LENGTHS))(params)
  close(logits, by_hand(params, TOKENS, run))
  # Padding steps have zero outputs, so their logits are the head's bias.
  close(logits[1, 3:], jnp.broadcast_to(params["head"]["b"][None], (2, V)))


@pytest.mark.parametrize("make", [gru6, stack53], ids=["cell", "stack"])
def test_step_and_generate_follow_apply(make):
  lm, params, _ = model(make)
  first = jnp.array([1, 2], jnp.int32)
  out = jax.jit(lambda p, f: jr.generate(lm.step, p, lm.initial_carry((2,), F64), f, None,
                                         max_length=T, greedy=True))(params, first)
  fed = jnp.concatenate([first[:, None], out.tokens[:, :-1]], axis=1)
  _, logits = jax.jit(lambda p: lm.apply(p, fed))(params)
  np.testing.assert_array_equal(out.tokens, jnp.argmax(logits, axis=-1))
  # The steps' logits, fed the same tokens, are apply's.
  step = jax.jit(lm.step)
  carry, stepped = lm.initial_carry((2,), F64), []
  for t in range(T):
    carry, l = step(params, carry, fed[:, t])
    stepped.append(l)
  close(jnp.stack(stepped, axis=1), logits)


def test_logits_and_gradients_the_table_gets_from_both_ends():
  lm, params, run = model(gru6)
  assert params["projection"]["w"].shape == (6, E)
  targets = jax.random.randint(jax.random.key(2), (2, T), 0, V, jnp.int32)
  loss = lambda logits: (jr.masked_cross_entropy(logits, targets, LENGTHS), logits)
  table = params["embedding"]["table"]

  @jax.jit
  def both(p):
    model_side = jax.grad(lambda p: loss(lm.apply(p, TOKENS, lengths=LENGTHS)[1]),
                          has_aux=True)(p)
    hand_side = jax.grad(lambda t_in, t_out, p: loss(by_hand(p, TOKENS, run, t_in, t_out)),
                         argnums=(0, 1, 2), has_aux=True)(table, table, p)
    return model_side, hand_side

  (grads, logits), ((g_in, g_out, g_hand), want_logits) = both(params)
  close(logits, want_logits)
  assert float(jnp.abs(g_in).max()) > 0 and float(jnp.abs(g_out).max()) > 0
  close(grads["embedding"]["table"], g_in + g_out)
  close((grads["projection"], grads["cell"], grads["head"]),
        (g_hand["projection"], g_hand["cell"], g_hand["head"]))
  assert float(jnp.abs(grads["projection"]["w"]).max()) > 0


def test_equal_sizes_keep_the_params_without_a_projection():
  key = jax.random.key(3)
  tied = jr.language_model(V, E, jr.gru(E), tie_embeddings=True).init(key)
  untied = jr.language_model(V, E, jr.gru(E)).init(key)
  assert set(tied) == {"embedding", "cell", "head"} and set(tied["head"]) == {"b"}
  close((tied["embedding"], tied["cell"]), (untied["embedding"], untied["cell"]))
  np.testing.assert_array_equal(tied["head"]["b"], np.zeros(V, np.float32))
  # Untied models never project, whatever the sizes.
  assert "projection" not in jax.eval_shape(jr.language_model(V, E, jr.gru(6)).init, key)


def test_projection_follows_param_dtype():
  params = jax.eval_shape(jr.language_model(V, E, jr.gru(6), tie_embeddings=True).init,
                          jax.random.key(0))
  assert params["projection"]["w"].dtype == jnp.float32
