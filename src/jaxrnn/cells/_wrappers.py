"""Regularised recurrence as cell wrappers: variational (recurrent) dropout and zoneout.

Both return an ordinary `jr.Cell`, so `jr.scan`, `jr.rnn` and every driver run them unchanged.
Randomness enters through the parameters: the wrapped cell's params are `{"cell": inner_params}`
(evaluation: deterministic) or `{"cell": inner_params, "key": key}` (training). The key lives in
the params rather than the carry because params are the same at every step and untouched by
`lengths` and `resets` (a reset replaces the carry with `initial_carry`, which has no key), which
is exactly what "one mask per sequence" needs. Both cells say so with `takes_key=True`, so a
layer running them (`jr.rnn(cell)`, alone or in a `jr.stack` or `jr.bidirectional`) puts its
own `key` there when training and strips it for `train=False`::

    layer = jr.rnn(jr.variational_dropout(jr.lstm(H), 0.25))
    loss = lambda params, xs, key: jnp.mean(layer.apply(params, xs, key=key)[1] ** 2)
    grads = jax.grad(loss)(params, xs, key)   # params hold no key: only floats are differentiated

With `jr.scan` directly, add the key inside the loss (`jr.scan(cell, {**params, "key": key},
xs)`), so that `jax.grad` sees only float parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _types


def _split_params(params, name: str):
  if not isinstance(params, dict) or "cell" not in params or set(params) - {"cell", "key"}:
    raise ValueError(f"{name}: params must be {{'cell': inner_params}} or {{'cell': "
                     f"inner_params, 'key': key}}, got keys {sorted(params) if isinstance(params, dict) else type(params).__name__}")
  return params["cell"], params.get("key")


def _keep_mask(key, rate: float, shape, dtype):
  """`1 / (1 - rate)` with probability `1 - rate`, else 0: inverted dropout's multiplier."""
  keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))


def variational_dropout(cell: _types.Cell, rate: float, *, input_rate: float = 0.0
                        ) -> _types.Cell:
  r"""Variational (recurrent) dropout (Gal & Ghahramani 2016): one dropout mask per sequence,
  the same at every time step, on the recurrent input `h_{t-1}` and optionally on `x_t`.

  .. math::
      \text{step}(h_{t-1}, x_t) \text{ computed with } h_{t-1} W_h \to (m_h \odot h_{t-1}) W_h,
      \quad x_t \to m_x \odot x_t

  with :math:`m \in \{0, 1/(1-p)\}` drawn once per sequence. The recurrent mask acts as
  `diag(m_h) W_h` (for IndRNN, `m_h * u`), so it drops only the state's path through the
  recurrent weights, never the state itself: in a GRU the `z * h_{t-1}` term is untouched
  (Gal & Ghahramani's tied-weight variant; one mask shared by all gates). Each sequence gets
  its own mask, applied as `(m_h * h_{t-1}) W_h`, which equals `h_{t-1} diag(m_h) W_h` with no
  per-example weight copy: for `jr.lstm` (with or without projection and peepholes),
  `jr.layer_norm_lstm`, `jr.simple_rnn` and `jr.indrnn` the carried `h` is masked before the
  step; for `jr.gru` (both forms) and `jr.layer_norm_gru` the masked `h` feeds the recurrent
  matmuls only. Any other cell with `w_h` or `u` (a user's, or a built-in cell whose
  functions were replaced) runs per example with the rows of its recurrent weight scaled
  (about twice the recurrent FLOPs). For `jr.indrnn(..., recurrent_bound=b)` the bound now
  clips `u` before the mask, not the scaled `m_h * u`.

  Params: `{"cell": inner}` (from `init`; dropout off) or `{"cell": inner, "key": key}`
  (dropout on). Carry and outputs: the inner cell's. Same key, same masks; masks are drawn from
  the key and the batch shape only, so they are constant across time, across chunks of a
  streamed sequence and across resets.

  Args:
    cell: a `jr.Cell` whose params hold `w_h (H, G)` (simple_rnn, lstm, gru, layer-norm cells)
      or `u (H,)` (indrnn).
    rate: the drop probability of the recurrent input, in [0, 1).
    input_rate: the drop probability of `x_t`, in [0, 1).

  Returns:
    A `jr.Cell` (no `project`/`recur` split).

  References:
    Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks", NeurIPS 2016.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.variational_dropout(jr.lstm(8), 0.25, input_rate=0.1)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> xs = jnp.ones((2, 5, 3))
  >>> _, ys_eval = jr.scan(cell, params, xs)                                 # no key: no dropout
  >>> _, ys_train = jr.scan(cell, {**params, "key": jax.random.key(1)}, xs)  # dropout
  >>> ys_train.shape
  (2, 5, 8)
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"variational_dropout: cell must be a jr.Cell, got {type(cell).__name__}")
  rate = _types.check_rate(rate, "variational_dropout: rate")
  input_rate = _types.check_rate(input_rate, "variational_dropout: input_rate")
  name = f"variational_dropout({cell.name}, {rate})"

  def init(key, input_size):
    return {"cell": cell.init(key, input_size)}

  def step(params, carry, x):
    inner, key = _split_params(params, name)
    if key is None:
      return cell.step(inner, carry, x)
    x = jnp.asarray(x)
    batch = x.shape[:-1]
    kx, kh = jax.random.split(key)
    if input_rate > 0.0:
      x = x * _keep_mask(kx, input_rate, x.shape, x.dtype)
    if rate == 0.0:
      return cell.step(inner, carry, x)
    if "w_h" in inner:
      field, weight = "w_h", inner["w_h"]
      scale = lambda w, m: w * m[:, None]
    elif "u" in inner:
      field, weight = "u", inner["u"]
      scale = lambda w, m: w * m
    else:
      raise TypeError(f"{name}: the inner cell's params have neither 'w_h' nor 'u'; recurrent "
                      "dropout needs the recurrent weight to mask")
    m_h = _keep_mask(kh, rate, batch + weight.shape[:1], weight.dtype)
    route = _masking_route(cell)
    if route == "state":
      # h_{t-1} enters these cells only through the recurrent weight: diag(m) W_h acting on
      # h is W_h acting on m * h, so mask the carried state (one elementwise product).
      if isinstance(carry, _types.LSTMState):
        return cell.step(inner, carry._replace(h=carry.h * m_h.astype(carry.h.dtype)), x)
      return cell.step(inner, carry * m_h.astype(carry.dtype), x)
    if route == "split":
      # GRUs also use h_{t-1} outside the matmul (`u * h`): the masked state feeds only the
      # matmul, through the cell's own equations (`cell.recur_in`).
      z = cell.project(inner, x)
      one = lambda c, z1, m1: cell.recur_in(inner, c * m1.astype(c.dtype), c, z1)
      return _types.over_leading_axes(one, len(batch), (0, 0, 0))(carry, z, m_h)

    def per_example(c, x1, m1):
      return cell.step({**inner, field: scale(weight, m1)}, c, x1)

    return _types.over_leading_axes(per_example, len(batch), (0, 0, 0))(carry, x, m_h)

  return _types.Cell(init=init, initial_carry=cell.initial_carry, step=step, name=name,
                     takes_key=True)


# Built-in families whose carried `h` (an array, or an `LSTMState`'s `h`) enters the step only
# through the recurrent weight (`h @ w_h`, or `u * h` for IndRNN).
_STATE_ONLY_FAMILIES = frozenset({"lstm", "lstm_proj", "lstm_peephole", "lstm_proj_peephole",
                                  "layer_norm_lstm", "simple_rnn", "indrnn"})


def _masking_route(cell: _types.Cell) -> str:
  """How `variational_dropout` applies the recurrent mask to `cell`: "state" (mask the carried
  `h`), "split" (the cell's `recur_in` with the masked `h` on the matmul only) or "weights"
  (a per-example copy of the scaled recurrent weight: any other cell)."""
  if not _types.built_functions_unchanged(cell):
    return "weights"     # not a built-in cell, or one whose functions were replaced
  if cell.recur_in is not None:
    return "split"
  if cell.family in _STATE_ONLY_FAMILIES:
    return "state"
  return "weights"


class ZoneoutState(NamedTuple):
  """The zoneout carry: the inner cell's `carry` and `step (...)`, int32, the number of steps
  taken so far (it indexes the per-step masks)."""

  carry: Any
  step: jax.Array


def zoneout(cell: _types.Cell, rate) -> _types.Cell:
  r"""Zoneout (Krueger et al. 2017): each unit of the state keeps its previous value with
  probability `rate` at each step, instead of taking the new one.

  .. math::
      \text{train: } s_t = d_t \odot s_{t-1} + (1 - d_t) \odot \tilde s_t,\; d_t \sim
      \mathrm{Bernoulli}(r) \qquad \text{eval: } s_t = r\, s_{t-1} + (1 - r)\, \tilde s_t

  where :math:`\tilde s_t` is the inner cell's new state. Unlike dropout the evaluation rule is
  not the identity: it is the expectation over masks, as in the paper. Masks differ per step,
  per unit and per sequence; they are drawn from the key in params, the step count in the carry
  and the position in the batch, so the same key gives the same masks (after a reset the step
  count restarts at zero).

  Params: `{"cell": inner}` (evaluation) or `{"cell": inner, "key": key}` (training). Carry:
  `ZoneoutState(carry=inner_carry, step=int32 (...))`. Output: the new (zoned) state when the
  inner carry is an array, its `h` when it is an `LSTMState`.

  Args:
    cell: a `jr.Cell` whose carry is an array or a `jr.LSTMState`.
    rate: the zoneout probability in [0, 1), or an `LSTMState(h=r_h, c=r_c)` of two (the paper
      uses 0.05 for `h` and 0.5 for `c`).

  Returns:
    A `jr.Cell` (no `project`/`recur` split).

  References:
    Krueger et al., "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations",
    ICLR 2017.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.zoneout(jr.lstm(8), jr.LSTMState(h=0.05, c=0.5))
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, ys = jr.scan(cell, {**params, "key": jax.random.key(1)}, jnp.ones((2, 5, 3)))
  >>> ys.shape, carry.step.tolist()
  ((2, 5, 8), [5, 5])
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"zoneout: cell must be a jr.Cell, got {type(cell).__name__}")
  if isinstance(rate, _types.LSTMState):
    rates = _types.LSTMState(*(_types.check_rate(r, "zoneout: rate") for r in rate))
  else:
    rates = _types.check_rate(rate, "zoneout: rate")
  name = f"zoneout({cell.name})"

  def init(key, input_size):
    return {"cell": cell.init(key, input_size)}

  def initial_carry(batch_shape=(), dtype=None):
    batch_shape = tuple(batch_shape)
    return ZoneoutState(cell.initial_carry(batch_shape, dtype),
                        jnp.zeros(batch_shape, jnp.int32))

  def leaf_rates(carry):
    if isinstance(carry, _types.LSTMState):
      return rates if isinstance(rates, _types.LSTMState) else _types.LSTMState(rates, rates)
    if isinstance(carry, jax.Array) or hasattr(carry, "shape"):
      if isinstance(rates, _types.LSTMState):
        raise TypeError(f"{name}: an LSTMState of rates needs an LSTMState carry")
      return rates
    raise TypeError(f"{name}: the inner carry must be an array or a jr.LSTMState, got "
                    f"{type(carry).__name__}")

  def step(params, state, x):
    inner, key = _split_params(params, name)
    if not isinstance(state, ZoneoutState):
      raise TypeError(f"{name}: carry must be a ZoneoutState, got {type(state).__name__}")
    old = state.carry
    new, _ = cell.step(inner, old, x)
    r = leaf_rates(old)
    leaves_old, treedef = jax.tree_util.tree_flatten(old)
    leaves_new = treedef.flatten_up_to(new)
    leaves_r = treedef.flatten_up_to(r)
    batch = state.step.shape
    if key is not None:
      n = _types.prod(batch)
      index = jnp.arange(n, dtype=jnp.int32)
      example_keys = jax.vmap(lambda c, i: jax.random.fold_in(jax.random.fold_in(key, c), i))(
          state.step.reshape(n), index)
    out = []
    for j, (a, b, rj) in enumerate(zip(leaves_old, leaves_new, leaves_r)):
      if rj == 0.0:
        out.append(b)
      elif key is None:
        out.append(jnp.asarray(rj, b.dtype) * a + jnp.asarray(1.0 - rj, b.dtype) * b)
      else:
        core = a.shape[len(batch):]
        d = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, j), rj, core))(
            example_keys).reshape(a.shape)
        out.append(jnp.where(d, a, b))
    carry = jax.tree_util.tree_unflatten(treedef, out)
    y = carry.h if isinstance(carry, _types.LSTMState) else carry
    return ZoneoutState(carry, state.step + jnp.ones((), jnp.int32)), y

  return _types.Cell(init=init, initial_carry=initial_carry, step=step, name=name,
                     takes_key=True)
