"""Gradient flow over time and the spectra of recurrent matrices: the vanishing and exploding
gradient problem (Bengio et al. 1994; Pascanu et al. 2013), made visible.

* `state_gradients`: `dL/dh_t` for every step `t`, from ONE backward pass.
* `recurrent_spectra`: singular values and spectral radius of the recurrent weights, per gate.
* `jacobian_product`: `d h_T / d h_0`, the product of the step Jacobians over a window.
* `plot_gradient_norms`: `||dL/dh_t||` against `t` for several models on one figure
  (matplotlib, an optional dependency: `pip install 'jaxrnn[examples]'`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.drivers import _scan

PyTree = Any

GATE_NAMES = {1: ("h",), 3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}


def _hidden(tree):
  return tree.h if isinstance(tree, _types.LSTMState) else tree


def state_gradients(cell: _types.Cell, params: PyTree, xs, loss_fn: Callable, *,
                    carry: PyTree = None, lengths=None, time_major: bool = False) -> PyTree:
  """`dL/dh_t` for every step, with `L = loss_fn(ys, final_carry)` over `jr.scan(cell, params,
  xs, carry=carry, lengths=lengths)`: one forward and one backward pass, not `T`.

  `h_t` is the carry after step `t` (0-based), and the derivative is the total one, through
  every later step and through the output `y_t`: a zero perturbation `d_t` is added to the new
  carry of every step (and to the output, which is the hidden state `h` for every built-in
  cell; for a cell whose output is another function of its carry, only the path through the
  carry is counted), and `dL/dd_t` is `dL/dh_t`. Steps past a sequence's length get zeros.

  Args:
    cell: a `jr.Cell`; params: its parameters.
    xs: `(..., T, D)` (`(T, ..., D)` with `time_major=True`).
    loss_fn: `(ys, final_carry) -> scalar`.
    carry, lengths: as in `jr.scan`.

  Returns:
    A pytree shaped like the carry, each leaf `(..., T, *state)` (`(T, ..., *state)`
    time-major): for an LSTM, `LSTMState(h=dL/dh_t, c=dL/dc_t)`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.gru(4)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> g = jr.diagnostics.state_gradients(cell, params, jnp.ones((2, 6, 3)),
  ...                                    lambda ys, c: jnp.sum(ys[:, -1]))
  >>> g.shape
  (2, 6, 4)
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"state_gradients: cell must be a jr.Cell, got {type(cell).__name__}")
  if not callable(loss_fn):
    raise TypeError("state_gradients: loss_fn must be callable: (ys, final_carry) -> scalar")
  xs = jnp.asarray(xs)
  _types.check_float(xs, "state_gradients: xs")
  xs_t = xs if time_major else jnp.moveaxis(xs, -2, 0)
  steps, batch, d_in = xs_t.shape[0], xs_t.shape[1:-1], xs_t.shape[-1]
  like = jax.eval_shape(lambda: cell.initial_carry(batch, xs_t.dtype))
  leaves, treedef = jax.tree_util.tree_flatten(like)
  cores = [a.shape[len(batch):] for a in leaves]
  sizes = [_types.prod(c) for c in cores]

  def unflatten(d):
    """`(..., S)` -> a carry-shaped perturbation."""
    parts = jnp.split(d, np.cumsum(sizes)[:-1], axis=-1)
    return jax.tree_util.tree_unflatten(treedef, [
        p.reshape(p.shape[:-1] + core).astype(a.dtype) for p, core, a in zip(parts, cores,
                                                                                leaves)])

  def step(p, c, x):
    # The perturbation rides along the input's feature axis, so that `jr.scan`'s lengths and
    # padding rules apply to it unchanged.
    x, d = x[..., :d_in], unflatten(x[..., d_in:])
    c, y = cell.step(p, c, x)
    c = jax.tree_util.tree_map(jnp.add, c, d)
    d_h = _hidden(d)
    if jax.tree_util.tree_structure(y) == jax.tree_util.tree_structure(d_h) and all(
        a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(y),
                                           jax.tree_util.tree_leaves(d_h))):
      y = jax.tree_util.tree_map(jnp.add, y, d_h)
    return c, y

  probe = cell._replace(step=step, project=None, recur=None, name=f"probe({cell.name})")

  def loss(d):
    final, ys = _scan.scan(probe, params, jnp.concatenate([xs_t, d], axis=-1), carry=carry,
                           lengths=lengths, time_major=True, implementation="reference")
    ys = ys if time_major else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, -2), ys)
    value = loss_fn(ys, final)
    if jnp.ndim(value) != 0:
      raise ValueError(f"state_gradients: loss_fn must return a scalar, got shape "
                       f"{jnp.shape(value)}")
    return value

  flat = jax.grad(loss)(jnp.zeros((steps,) + batch + (sum(sizes),), xs_t.dtype))
  grads = unflatten(flat)
  return grads if time_major else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, -2),
                                                         grads)


def state_gradient_norms(cell: _types.Cell, params: PyTree, xs, loss_fn: Callable, **kwargs):
  """`||dL/dh_t||` over the hidden state `h` (the carry's `h` for an LSTM), `(..., T)`; the
  arguments are those of `state_gradients`."""
  grads = _hidden(state_gradients(cell, params, xs, loss_fn, **kwargs))
  return jnp.linalg.norm(grads, axis=-1)


def recurrent_spectra(params: Mapping) -> dict:
  """Singular values and spectral radius of a built-in cell's recurrent weights, per gate.

  `w_h (H, G H)` is cut into its `G` gate blocks `(H, H)`: `i, f, g, o` for an LSTM, `r, z, n`
  for a GRU, `h` for a simple RNN; the IndRNN's diagonal `u (H,)` is one block `u`. A spectral
  radius above 1 lets a linearised recurrence grow, below 1 makes it decay (Pascanu et al. 2013).

  Returns:
    `{gate: {"singular_values": (H,) descending, "spectral_radius": float}}` (NumPy, float64).

  >>> import jax, jaxrnn as jr
  >>> spectra = jr.diagnostics.recurrent_spectra(jr.lstm(8).init(jax.random.key(0), 3))
  >>> sorted(spectra), round(spectra["f"]["spectral_radius"], 6)   # orthogonal blocks
  (['f', 'g', 'i', 'o'], 1.0)
  """
  if not isinstance(params, Mapping):
    raise TypeError(f"recurrent_spectra: params must be a built-in cell's dict, got "
                    f"{type(params).__name__}")
  if "w_h" in params:
    w = np.asarray(params["w_h"], np.float64)
    if w.ndim != 2 or w.shape[1] % w.shape[0] or w.shape[1] // w.shape[0] not in GATE_NAMES:
      raise ValueError(f"recurrent_spectra: w_h has shape {w.shape}; expected (H, G H) with G "
                       f"in {sorted(GATE_NAMES)}")
    h = w.shape[0]
    names = GATE_NAMES[w.shape[1] // h]
    blocks = {name: w[:, i * h:(i + 1) * h] for i, name in enumerate(names)}
  elif "u" in params:
    blocks = {"u": np.diag(np.asarray(params["u"], np.float64))}
  else:
    raise ValueError(f"recurrent_spectra: params hold neither 'w_h' nor 'u' (keys "
                     f"{sorted(params)})")
  return {name: {"singular_values": np.linalg.svd(b, compute_uv=False),
                 "spectral_radius": float(np.max(np.abs(np.linalg.eigvals(b))))}
          for name, b in blocks.items()}


def jacobian_product(cell: _types.Cell, params: PyTree, xs, carry: PyTree = None) -> jax.Array:
  """`d h_T / d h_0`: the Jacobian of the carry after the last step of `xs (T, D)` (one example,
  no batch axis) with respect to the carry before the first, i.e. the product of the step
  Jacobians over the window. The carry is flattened (`h` then `c` for an LSTM): `(S, S)`.

  Its singular values say how much of a perturbation of the state survives `T` steps.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.simple_rnn(4)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> jr.diagnostics.jacobian_product(cell, params, jnp.ones((5, 3))).shape
  (4, 4)
  """
  xs = jnp.asarray(xs)
  if xs.ndim != 2:
    raise ValueError(f"jacobian_product: xs must be one example (T, D), got {xs.shape}")
  carry = cell.initial_carry((), xs.dtype) if carry is None else carry
  flat, unravel = jax.flatten_util.ravel_pytree(carry)

  def final(v):
    c, _ = _scan.scan(cell, params, xs, carry=unravel(v))
    return jax.flatten_util.ravel_pytree(c)[0]

  return jax.jacfwd(final)(flat)


def plot_gradient_norms(norms: Mapping[str, Any], *, path: Optional[str] = None,
                        title: str = "gradient norm over time", log_scale: bool = True):
  """One figure of `||dL/dh_t||` against `t` for several models: `norms` maps a label to a
  `(T,)` array (average a batch first). Returns the matplotlib figure; saves it to `path` if
  given. Needs matplotlib."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("plot_gradient_norms needs matplotlib: pip install 'jaxrnn[examples]'"
                      ) from None
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, values in norms.items():
    values = np.asarray(values, np.float64)
    if values.ndim != 1:
      raise ValueError(f"plot_gradient_norms: {label!r} has shape {values.shape}; expected (T,)")
    ax.plot(np.arange(len(values)), values, label=label)
  if log_scale:
    ax.set_yscale("log")
  ax.set_xlabel("step t")
  ax.set_ylabel("||dL/dh_t||")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig
