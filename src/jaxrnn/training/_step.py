"""`jr.train_step`: one jitted optimisation step with Optax, and what it reports."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def check_optimizer(tx, what: str = "train_step") -> optax.GradientTransformation:
  """`tx` if it is an Optax `GradientTransformation`, else `TypeError` naming what it is."""
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(f"{what}: tx must be an optax.GradientTransformation (e.g. "
                    "optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))), got "
                    f"{type(tx).__name__}")
  return tx


def check_loss(loss, what: str) -> None:
  """Raises unless `loss` is a float scalar (what `jax.grad` differentiates)."""
  if isinstance(loss, (tuple, list, dict)):
    raise TypeError(f"{what}: loss_fn returned a {type(loss).__name__}, not a scalar loss; if "
                    "it returns (loss, aux), pass has_aux=True")
  if jnp.ndim(loss) != 0:
    raise ValueError(f"{what}: loss_fn must return a scalar loss, got shape {jnp.shape(loss)} "
                     "(with has_aux=True, return (loss, aux))")
  if not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
    raise TypeError(f"{what}: the loss must be a float scalar, got {jnp.result_type(loss)}")


def first_nonfinite_leaf(tree) -> jax.Array:
  """int32: the index (in `jax.tree_util.tree_leaves` order) of the first leaf holding a NaN or
  Inf, or -1 when all are finite."""
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.int32(-1)
  finite = jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves])
  return jnp.where(jnp.all(finite), jnp.int32(-1), jnp.argmin(finite).astype(jnp.int32))


def leaf_name(tree, index: int) -> str:
  """The path (`jax.tree_util.keystr`) of leaf `index` of `tree`, for messages."""
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return jax.tree_util.keystr(paths[index][0]) if 0 <= index < len(paths) else "<none>"


# `optax.global_norm` is deprecated in favour of `optax.tree.norm` (the same number) where it exists.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def apply_gradients(tx, params, opt_state, grads, loss, skip_nonfinite: bool):
  """`(params, opt_state, metrics)` after one Optax update with `grads` (see `train_step`)."""
  grad_norm = _global_norm(grads)
  bad_leaf = first_nonfinite_leaf(grads)
  finite = jnp.isfinite(loss) & (bad_leaf < 0)
  updates, new_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_params, new_state = keep(new_params, params), keep(new_state, opt_state)
  metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "nonfinite_leaf": bad_leaf}
  return new_params, new_state, metrics


def train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, has_aux: bool = False,
               skip_nonfinite: bool = True, donate: bool = False) -> Callable:
  """A jitted `step(params, opt_state, batch, key) -> (params, opt_state, metrics)`.

  The step computes `jax.value_and_grad(loss_fn)(params, batch, key)` and applies the Optax
  transformation `tx`. Clipping is `tx`'s business: chain Optax's own, global-norm clipping
  being the usual choice for recurrent networks (Pascanu et al. 2013)::

      tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

  `metrics` holds `"loss"`, `"grad_norm"` (`optax.global_norm` of the gradients BEFORE any
  clipping), `"finite"` (bool: the loss and every gradient are finite), `"nonfinite_leaf"`
  (int32: the index of the first gradient leaf with a NaN or Inf, in `tree_leaves(params)`
  order, -1 if none; `jr.fit` names it) and, with `has_aux=True`, `"aux"`.

  With `skip_nonfinite=True` a non-finite loss or gradient returns `params` and `opt_state`
  unchanged (and `finite=False`), so one bad batch never overwrites good weights (nor Adam's
  moments). The same code runs unchanged when `batch` is sharded over a `jax.sharding.Mesh`
  (data parallel): the gradient's reduction over the batch is what jit compiles for the
  sharding it is given.

  Args:
    loss_fn: `loss_fn(params, batch, key) -> loss` (a float scalar), or `(loss, aux)` with
      `has_aux=True`. `key` is what the step is given (`None` is passed through).
    tx: an `optax.GradientTransformation`.
    has_aux: whether `loss_fn` returns `(loss, aux)`.
    skip_nonfinite: keep `params` and `opt_state` when the loss or a gradient is not finite.
    donate: donate the buffers of `params` and `opt_state` to the step (less memory; the
      arrays passed in are then deleted, so use only the returned ones). Off by default, since
      a caller that still reads the old params would get an error.

  Returns:
    The jitted step.

  >>> import jax, jax.numpy as jnp, optax, jaxrnn as jr
  >>> def loss_fn(params, batch, key):
  ...   return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
  >>> tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
  >>> step = jr.train_step(loss_fn, tx)
  >>> params = {"w": jnp.zeros((3,))}
  >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.ones((4,))}
  >>> params, opt_state, metrics = step(params, tx.init(params), batch, None)
  >>> sorted(metrics)
  ['finite', 'grad_norm', 'loss', 'nonfinite_leaf']
  """
  if not callable(loss_fn):
    raise TypeError(f"train_step: loss_fn must be callable, got {type(loss_fn).__name__}")
  tx = check_optimizer(tx)
  for name, flag in (("has_aux", has_aux), ("skip_nonfinite", skip_nonfinite),
                     ("donate", donate)):
    if not isinstance(flag, bool):
      raise TypeError(f"train_step: {name} must be a bool, got {flag!r}")

  def scalar_loss(params, batch, key):
    out = loss_fn(params, batch, key)
    check_loss(out[0] if has_aux else out, "train_step")
    return out

  def step(params, opt_state, batch, key):
    out, grads = jax.value_and_grad(scalar_loss, has_aux=has_aux)(params, batch, key)
    loss, aux = out if has_aux else (out, None)
    params, opt_state, metrics = apply_gradients(tx, params, opt_state, grads, loss,
                                                 skip_nonfinite)
    if has_aux:
      metrics["aux"] = aux
    return params, opt_state, metrics

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())
