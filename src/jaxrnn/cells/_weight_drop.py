"""`jr.weight_drop`: DropConnect on the recurrent weight, the mask fixed over the sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _types


def weight_drop(cell: _types.Cell, rate: float, *, per_sequence: bool = False) -> _types.Cell:
  r"""Weight-dropped recurrence (Merity et al. 2018, AWD-LSTM): DropConnect (Wan et al. 2013)
  on the recurrent weight `w_h`, with one mask for the whole sequence,

  .. math::
      \tilde W_h = M \odot W_h, \qquad M_{jk} \in \{0, 1/(1-p)\}, \qquad
      (c_t, y_t) = \mathrm{cell.step}_{W_h \to \tilde W_h}(c_{t-1}, x_t)

  with `M` drawn once and used at every step. Unlike dropout on `h_{t-1}`, it drops single
  connections, and nothing else of the step changes (the input weights, the state itself).

  With `per_sequence=False` (AWD-LSTM's choice) one mask serves every sequence of the batch:
  `M = jax.random.bernoulli(key, 1 - p, w_h.shape) / (1 - p)`, and the recurrent matmul stays
  one batched matmul (no extra FLOPs beyond the elementwise mask). With `per_sequence=True`
  each sequence gets its own, `M[b] = jax.random.bernoulli(key, 1 - p, batch + w_h.shape)[b]
  / (1 - p)`, which needs a copy of `w_h` per sequence at each step (about twice the
  recurrent FLOPs, as `jr.variational_dropout`).

  Params: `{"cell": inner}` (from `init`; no dropping) or `{"cell": inner, "key": key}`
  (dropping). Carry and outputs are the inner cell's. The mask depends on the key (and, per
  sequence, the batch shape) only, so it is the same at every step, across resets and across
  chunks of a streamed sequence. `cell.takes_key` is True, so `jr.rnn(weight_drop(...))`
  puts the layer's `key` there when training and removes it for `train=False`; with `jr.scan`
  directly, add the key inside the loss (`{**params, "key": key}`).

  Args:
    cell: a `jr.Cell` whose params hold the recurrent weight `w_h` (`jr.simple_rnn`, `jr.lstm`,
      `jr.gru`, the layer-norm cells).
    rate: the drop probability `p` of each entry of `w_h`, in [0, 1).
    per_sequence: one mask per sequence (True) or one for the batch (False).

  Returns:
    A `jr.Cell` (no `project`/`recur` split).

  References:
    Merity, Keskar & Socher, "Regularizing and Optimizing LSTM Language Models", ICLR 2018.
    Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.rnn(jr.weight_drop(jr.lstm(8), 0.5))
  >>> params = layer.init(jax.random.key(0), 3)
  >>> _, ys = layer.apply(params, jnp.ones((2, 5, 3)), key=jax.random.key(1))   # training
  >>> ys.shape
  (2, 5, 8)
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"weight_drop: cell must be a jr.Cell, got {type(cell).__name__}")
  rate = _types.check_rate(rate, "weight_drop: rate")
  per_sequence = _types.check_flag(per_sequence, "weight_drop: per_sequence")
  name = f"weight_drop({cell.name}, {rate})"

  def init(key, input_size):
    return {"cell": cell.init(key, input_size)}

  def split(params):
    if not isinstance(params, dict) or "cell" not in params or set(params) - {"cell", "key"}:
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f"{name}: params must be {{'cell': inner_params}} or {{'cell': "
                       f"inner_params, 'key': key}}, got {got}")
    inner = params["cell"]
    if not isinstance(inner, dict) or "w_h" not in inner:
      raise TypeError(f"{name}: the inner cell's params have no 'w_h'; weight drop masks the "
                      "recurrent weight matrix")
    return inner, params.get("key")

  def mask(key, shape, dtype):
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))

  def step(params, carry, x):
    inner, key = split(params)
    if key is None or rate == 0.0:
      return cell.step(inner, carry, x)
    w_h = inner["w_h"]
    if not per_sequence:
      return cell.step({**inner, "w_h": w_h * mask(key, w_h.shape, w_h.dtype)}, carry, x)
    x = jnp.asarray(x)
    batch = x.shape[:-1]
    masks = mask(key, batch + w_h.shape, w_h.dtype)

    def one(c, x1, m1):
      return cell.step({**inner, "w_h": w_h * m1}, c, x1)

    return _types.over_leading_axes(one, len(batch), (0, 0, 0))(carry, x, masks)

  return _types.Cell(init=init, initial_carry=cell.initial_carry, step=step, name=name,
                     takes_key=True)
