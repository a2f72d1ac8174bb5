"""What the drivers share: the masked scan body."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _types

def masked_body(fn, params, init_carry, lengths):
  """The scan body `(carry, (x, t, reset)) -> (carry, y)` around `fn(params, carry, x)`.

  A reset replaces the carry entering the step by `init_carry`; a step at `t >= lengths` keeps
  the carry it was given (the one before any reset) and outputs zeros.
  """

  def body(c, inp):
    x, t, r = inp
    c_in = c if r is None else _types.tree_where(r, init_carry, c)
    c_new, y = fn(params, c_in, x)
    if lengths is not None:
      valid = t < lengths
      c_new = _types.tree_where(valid, c_new, c)
      y = jax.tree_util.tree_map(lambda a: jnp.where(_types.expand_mask(valid, a), a, 0), y)
    return c_new, y

  return body
