"""Checkpoints of a training run with Orbax: params, optimizer state, step, PRNG key and the
data position, written atomically, the last N kept."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

PyTree = Any
_STEP_DIR = re.compile(r"^\d+$")
_ORBAX_TMP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def _orbax():
  try:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("jr.Checkpointer needs orbax-checkpoint: pip install 'jaxrnn[training]'"
                      ) from None
  return ocp


def _is_key(a) -> bool:
  return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  """Typed PRNG keys become their raw `uint32` data (what a file can hold)."""
  return jax.tree_util.tree_map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def _data_to_keys(tree, like):
  return jax.tree_util.tree_map(
      lambda a, l: jax.random.wrap_key_data(a, impl=jax.random.key_impl(l)) if _is_key(l) else a,
      tree, like)


class Checkpointer:
  """Saves and restores a training state in `directory`, one subfolder a step.

  The state is a dict of pytrees (params, optimizer state, PRNG keys: typed keys are stored as
  their data and rebuilt on restore) plus `meta`, a JSON-serialisable dict for what is not an
  array (the data position, the config). Orbax writes each step into a temporary folder and
  renames it when complete, so a save that is killed halfway leaves the previous checkpoints
  intact (the leftover is ignored and cleaned up); only the last `keep` steps are kept.

  >>> import tempfile, jax, jax.numpy as jnp, jaxrnn as jr
  >>> ckpt = jr.Checkpointer(tempfile.mkdtemp() + "/run", keep=2)
  >>> state = {"params": {"w": jnp.ones(3)}, "key": jax.random.key(0)}
  >>> ckpt.save(10, state, meta={"position": 1234})
  >>> restored, meta = ckpt.restore(like=state)
  >>> ckpt.latest_step(), meta["position"], bool((restored["params"]["w"] == 1).all())
  (10, 1234, True)

  Args:
    directory: the run's folder; created if missing. A folder that holds anything other than
      step checkpoints raises `ValueError` rather than be written into.
    keep: how many of the latest steps to keep (>= 1).
  """

  def __init__(self, directory, *, keep: int = 3):
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
      raise ValueError(f"Checkpointer: keep must be an int >= 1, got {keep!r}")
    path = pathlib.Path(os.fspath(directory)).absolute()
    if path.exists() and not path.is_dir():
      raise ValueError(f"Checkpointer: directory {str(path)!r} is a file, not a folder")
    if path.is_dir():
      foreign = sorted(p.name for p in path.iterdir()
                       if not (_STEP_DIR.match(p.name) or _ORBAX_TMP.match(p.name)))
      if foreign:
        raise ValueError(f"Checkpointer: directory {str(path)!r} holds other things "
                         f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                         "give an empty folder or one written by jr.Checkpointer")
    ocp = _orbax()
    self.directory = path
    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                   enable_async_checkpointing=False))

  def save(self, step: int, state: Mapping[str, PyTree], *, meta: Optional[dict] = None
           ) -> None:
    """Writes `state` (a dict of pytrees) and `meta` (JSON) as checkpoint `step`."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      raise ValueError(f"Checkpointer.save: step must be an int >= 0, got {step!r}")
    if not isinstance(state, Mapping):
      raise TypeError(f"Checkpointer.save: state must be a dict of pytrees, got "
                      f"{type(state).__name__}")
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(dict(state))),
        meta=ocp.args.JsonSave(dict(meta or {}))))
    self._manager.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    """The steps of the complete checkpoints kept, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(self, *, like: Mapping[str, PyTree], step: Optional[int] = None) -> tuple:
    """`(state, meta)` of checkpoint `step` (default: the latest). `like` is a state of the same
    structure (the freshly initialised one): it gives the tree structure, shapes and dtypes,
    NamedTuples of optimizer states and typed PRNG keys included."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"Checkpointer.restore: no checkpoint in {str(self.directory)!r}")
    elif step not in self.all_steps():
      raise FileNotFoundError(f"Checkpointer.restore: no checkpoint of step {step} in "
                              f"{str(self.directory)!r} (kept: {self.all_steps()})")
    ocp = self._ocp
    template = _keys_to_data(dict(like))
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), template)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                         jax.tree_util.tree_leaves(restored.state))
    return _data_to_keys(state, dict(like)), dict(restored.meta or {})

  def close(self) -> None:
    self._manager.close()
