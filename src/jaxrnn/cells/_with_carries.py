"""`jr.with_carries`: a cell whose output at each step also holds the carry after that step."""

from __future__ import annotations

from jaxrnn import _types


def with_carries(cell: _types.Cell) -> _types.Cell:
  r"""The same recurrence, with each step's output `(y_t, carry_t)` instead of `y_t`.

  .. math::
      (c_t, y_t) = \mathrm{cell.step}(c_{t-1}, x_t) \quad\longrightarrow\quad
      (c_t, (y_t, c_t))

  Run under `jr.scan` (or `jr.rnn`) it returns every step's carry, cell state included, as
  recurrent RL needs (R2D2 stores them with its replay sequences), while `jr.scan` itself keeps
  returning `(carry, ys)`: here `ys` is the pair `(ys (..., T, H), carries)`, where `carries`
  has the carry's structure with leaves `(..., T, *state)` (`(T, ..., *state)` time-major);
  `carries[..., t, :]` is the carry after step `t` (for `reverse=True`, after running step `t`
  backwards). Steps past a sequence's length output zeros in both, as outputs always do.

  Params, `init` and `initial_carry` are the cell's own, so the same params serve both.
  The wrapper has no `project`/`recur` split and no fast path: it runs `cell.step` in the
  reference scan (a fast loop does not keep every step's carry).

  Args:
    cell: a `jr.Cell`.

  Returns:
    A `jr.Cell`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.lstm(4)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> final, (ys, carries) = jr.scan(jr.with_carries(cell), params, jnp.ones((2, 5, 3)))
  >>> ys.shape, carries.c.shape
  ((2, 5, 4), (2, 5, 4))
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"with_carries: cell must be a jr.Cell, got {type(cell).__name__}")
  inner = cell.step

  def step(params, carry, x):
    carry, y = inner(params, carry, x)
    return carry, (y, carry)

  # No family: no kernel of the inner cell's family returns the carries.
  return cell._replace(step=step, project=None, recur=None, linear=None, family=None,
                       recur_in=None, name=f"with_carries({cell.name})")
