"""What every built-in cell shares: initialisers, dtype policy, and assembling a `Cell`."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types

Initializer = Callable[[jax.Array, tuple, Any], jax.Array]
INIT_SCHEMES = ("default", "pytorch")
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def check_activation(activation: str) -> Callable:
  """The activation function named `activation` ("tanh" or "relu"), or `ValueError`."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
  return ACTIVATIONS[activation]


def check_scheme(init: str) -> str:
  if init not in INIT_SCHEMES:
    raise ValueError(f"init must be one of {INIT_SCHEMES}, got {init!r}")
  return init


def uniform(scale: float) -> Initializer:
  """U(-scale, scale): PyTorch's RNN initialisation with `scale = 1/sqrt(hidden_size)`."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def block_weights(key, fan_in: int, hidden: int, n_blocks: int, init: Initializer, dtype):
  """`(fan_in, n_blocks * hidden)`: each gate's `(fan_in, hidden)` block initialised on its own.

  Per-block initialisation keeps each gate's recurrent block orthogonal (Saxe et al. 2014), which
  one orthogonal `(H, 4H)` matrix would not.
  """
  keys = jax.random.split(key, n_blocks)
  return jnp.concatenate([init(k, (fan_in, hidden), dtype) for k in keys], axis=1)


def weight_inits(init: str, hidden: int, kernel_init, recurrent_init, bias_init):
  """Resolves the (kernel, recurrent, bias) initialisers of a scheme, with user overrides."""
  if init == "pytorch":
    k = r = b = uniform(1.0 / math.sqrt(hidden))
  else:
    k = jax.nn.initializers.glorot_uniform()
    r = _at_least_float32(jax.nn.initializers.orthogonal())
    b = jax.nn.initializers.zeros
  return kernel_init or k, recurrent_init or r, bias_init or b


def _at_least_float32(init: Initializer) -> Initializer:
  """Runs `init` in float32 or wider, then casts: the QR behind orthogonal initialisation has
  no bfloat16/float16 kernel."""

  def wrapped(key, shape, dtype=jnp.float32):
    wide = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype
    return init(key, shape, wide).astype(dtype)

  return wrapped


def compute_dtype(fixed: Optional[Any], x: jax.Array):
  """The dtype a cell computes in: its fixed `dtype` if given, else the input's."""
  return jnp.dtype(fixed) if fixed is not None else x.dtype


def check_matmul_dtype(matmul_dtype) -> Optional[jnp.dtype]:
  """`matmul_dtype` as a dtype: None, or a floating dtype."""
  if matmul_dtype is None:
    return None
  try:
    dt = jnp.dtype(matmul_dtype)
  except TypeError:
    raise TypeError(f"matmul_dtype must be a floating dtype or None, got {matmul_dtype!r}"
                    ) from None
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"matmul_dtype must be a floating dtype or None, got {dt}")
  return dt


def matmul(a: jax.Array, w: jax.Array, operand_dtype=None) -> jax.Array:
  """`a @ w` in `a`'s dtype (the compute dtype).

  Without `operand_dtype`, `w` is cast to `a`'s dtype. With it (say bfloat16), both operands are
  rounded to it and the products are accumulated in `a`'s dtype (bfloat16 products, float32
  sums: tensor-core matmuls on GPUs and TPUs), so that only the matmul inputs lose precision.
  """
  if operand_dtype is None:
    return a @ w.astype(a.dtype)
  return jnp.matmul(a.astype(operand_dtype), w.astype(operand_dtype),
                    preferred_element_type=a.dtype)


def affine_projection(dtype, bias_key: Optional[str], matmul_dtype=None):
  """`project_one(p, x) = x @ p["w_x"] + p[bias_key]` for one example, in the compute dtype
  (no bias when `bias_key` is None), the matmul's operands in `matmul_dtype` if given: the input
  projection every built-in cell shares."""

  def project_one(p, x):
    cd = compute_dtype(dtype, x)
    z = matmul(x.astype(cd), p["w_x"], matmul_dtype)
    return z if bias_key is None else z + p[bias_key].astype(cd)

  return project_one


def cast_tree(tree, dtype):
  return jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)


def make_initial_carry(hidden: int, fixed_dtype, carry_fn: Callable[[Callable], Any]):
  """Builds `initial_carry(batch_shape=(), dtype=None)`; `carry_fn(zeros)` assembles the carry."""

  def initial_carry(batch_shape=(), dtype=None):
    batch_shape = tuple(batch_shape)
    if fixed_dtype is not None:
      dtype = fixed_dtype
    elif dtype is None:
      dtype = jnp.float32
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.inexact):
      raise TypeError(f"initial_carry: dtype must be floating, got {jnp.dtype(dtype)}")
    return carry_fn(lambda: jnp.zeros(batch_shape + (hidden,), dtype))

  return initial_carry


def param_checker(name: str, init) -> Callable[[Any], int]:
  """`check(params) -> input_size` for a built-in cell whose input weight is `params["w_x"]`.

  The keys and shapes of `params` must be those `init(key, D)` gives for `D = w_x.shape[0]`
  (found by abstract evaluation, once per `D`); otherwise a `ValueError` names the expected and
  the actual layout, so that another cell's parameters (a GRU's given to an LSTM, a
  `lstm(8)`'s given to `lstm(16)`) are caught before any matmul.
  """

  @functools.lru_cache(maxsize=None)
  def expected(input_size: int) -> dict:
    shapes = jax.eval_shape(lambda k: init(k, input_size), jax.random.key(0))
    return {k: tuple(v.shape) for k, v in shapes.items()}

  def layout(shapes: Mapping) -> str:
    return "{" + ", ".join(f"{k!r}: {shapes[k]}" for k in sorted(shapes)) + "}"

  def check(params) -> int:
    if not isinstance(params, Mapping):
      raise TypeError(f"{name}: params must be the dict that {name}.init returns, got "
                      f"{type(params).__name__}")
    w_x = params.get("w_x")
    if w_x is None or jnp.ndim(w_x) != 2:
      raise ValueError(f"{name}: params must hold 'w_x' of shape (D, G) (from {name}.init); "
                       f"got keys {sorted(params)}")
    want = expected(int(jnp.shape(w_x)[0]))
    got = {k: tuple(jnp.shape(v)) for k, v in params.items()}
    if got != want:
      raise ValueError(f"{name}: params have the layout {layout(got)}, but {name} with input "
                       f"size {jnp.shape(w_x)[0]} expects {layout(want)} (are these another "
                       "cell's parameters?)")
    return int(jnp.shape(w_x)[0])

  return check


def build_cell(name: str, init, initial_carry, project_one, recur_one, z_size: int, *,
               family: str, fused: Optional[_types.FusedSpec] = None,
               recur_in: Optional[Callable] = None) -> _types.Cell:
  """Assembles a `Cell` from one-example `project_one(p, x)` and `recur_one(p, c, z)`.

  `step` is their composition; `Cell.built_from` records the three, so that a driver can tell
  whether a user has since replaced `step`, `project` or `recur` (and must then run theirs), and
  `project` and `recur` are registered as built-in functions (`_types.is_builtin_function`) for cells a
  user assembles from them. `fused` (`Cell.fused`) lets the fused driver serve the cell while
  its functions are these ones. Every function first checks the parameters' layout against `init`'s
  (`param_checker`); `z_size` is the size of the projected input. `family` (`Cell.family`)
  keys the drivers' per-family choices (`drivers/_plan.py`); a variant whose equations differ
  from its family's (a GRU with the reset gate before the matmul) passes its own, so that no
  table entry measured on the other equations applies to it. `recur_in` is `Cell.recur_in`,
  for one example.
  """
  input_size = param_checker(name, init)

  def checked_z_size(p):
    input_size(p)
    return z_size

  project = _types.broadcasting_project(project_one, name, input_size)
  recur = _types.broadcasting_recur(recur_one, name, checked_z_size)
  step = _types.broadcasting_step(
      lambda p, c, x: recur_one(p, c, project_one(p, x)), name, input_size)
  _types.BUILTIN_FUNCTIONS.update((project, recur))
  return _types.Cell(init=init, initial_carry=initial_carry, step=step, project=project,
                     recur=recur, name=name, family=family, recur_in=recur_in, fused=fused,
                     built_from=(step, project, recur))


def matmul_rec_params(key: str, matmul_dtype=None):
  """`rec_params` for cells whose only recurrent parameter is the matmul weight `p[key]`: it in
  the compute dtype, or in `matmul_dtype` if given (cast once, outside the loop)."""
  return lambda p, cd: {key: p[key].astype(cd if matmul_dtype is None else matmul_dtype)}


def matmul_tangent(key: str, matmul_dtype=None):
  """`rec_tangent` for cells whose recurrence is `h @ w_h`: `(drp, carries) -> h_in @ d w_h`
  (operands in `matmul_dtype` if given, as in the step)."""

  def rec_tangent(drp, carries_in):
    h = carries_in.h if isinstance(carries_in, _types.LSTMState) else carries_in
    return matmul(h, drp[key], matmul_dtype)

  return rec_tangent


def joint_matmul(dtype, bias_key: Optional[str], post: Callable, hidden_of: Callable):
  """`FusedSpec.joint` for a cell whose fused step is `post(carry, a)` with pre-activations
  `a = x @ w_x + b + h @ w_h` (`b = p[bias_key]`, none when `bias_key` is None; `h` is
  `hidden_of(carry)`): one matmul of `[x, h] (..., D + H)` by `[[w_x], [w_h]] (D + H, G)`.

  It applies only where the input's compute dtype (`dtype` if fixed), the carry's and the
  recurrent weight's (`rp["w_h"]`) are one dtype, so that no operand is rounded differently
  from the separate matmuls; otherwise it returns None.
  """

  def joint(params, rp, x_dtype, carry_dtype):
    cd = jnp.dtype(dtype) if dtype is not None else jnp.dtype(x_dtype)
    if not rp["w_h"].dtype == jnp.dtype(carry_dtype) == cd:
      return None
    w = jnp.concatenate([params["w_x"].astype(cd), rp["w_h"]], axis=0)
    b = None if bias_key is None else params[bias_key].astype(cd)

    def step_x(carry, x):
      a = jnp.concatenate([x.astype(cd), hidden_of(carry)], axis=-1) @ w
      return post(carry, a if b is None else a + _types.last_axis(b, a))

    return step_x

  return joint
