"""Data parallelism with JAX's own sharding: the batch split over a device mesh, parameters
replicated, and the same jitted step on one device, many devices, or many processes."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh named `"data"` over `devices` (default: every device of every process,
  `jax.devices()`), for data-parallel training.

  >>> import jaxrnn as jr
  >>> jr.data_mesh().axis_names
  ('data',)
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("data_mesh: no devices given")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def _check_mesh(mesh) -> Mesh:
  if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
    raise TypeError(f"expected a jax.sharding.Mesh with a {DATA_AXIS!r} axis (jr.data_mesh()), "
                    f"got {mesh!r}")
  return mesh


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of `tree` (params, optimizer state) whole on every device of `mesh`."""
  sharding = NamedSharding(_check_mesh(mesh), PartitionSpec())
  return jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding), tree)


def shard_batch(batch: PyTree, mesh: Mesh, *, axis: int = 0) -> PyTree:
  """Splits every leaf of `batch` along `axis` (the batch axis) over the mesh's `"data"` axis.

  In a single process `batch` is the global batch. With several processes
  (`jax.distributed.initialize`), each process passes its own share (its local batch, the
  global batch divided by `jax.process_count()`), and the result is the global array that
  `jr.train_step` consumes unchanged. The batch size must divide evenly: `ValueError`
  otherwise, naming the leaf.
  """
  mesh = _check_mesh(mesh)
  n_devices = mesh.shape[DATA_AXIS]
  n_local = n_devices // jax.process_count()

  def place(path, a):
    a = np.asarray(a) if not isinstance(a, jax.Array) else a
    if a.ndim <= axis:
      raise ValueError(f"shard_batch: leaf {jax.tree_util.keystr(path)} has shape {a.shape}, "
                       f"without a batch axis {axis}")
    if a.shape[axis] % n_local:
      raise ValueError(f"shard_batch: leaf {jax.tree_util.keystr(path)} has {a.shape[axis]} "
                       f"examples along axis {axis}, not a multiple of the {n_local} devices "
                       "of this process")
    spec = PartitionSpec(*([None] * axis + [DATA_AXIS]))
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
      return jax.device_put(a, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(a))

  return jax.tree_util.tree_map_with_path(place, batch)
