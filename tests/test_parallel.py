"""Data parallelism: `jr.train_step` on a batch sharded over 4 host devices, and over 2
processes x 2 devices under `jax.distributed` (CPU collectives on 127.0.0.1), equals the
single-device run: losses, gradient norms and updated parameters, through the native loops.

Each run is a subprocess, because the number of host devices and the distributed runtime are
set before JAX starts."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent("""
    import json, os, sys
    mode, out = sys.argv[1], sys.argv[2]
    import jax
    if mode.startswith("process"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[3],
                                 num_processes=2, process_id=int(mode[-1]))
    import jax.numpy as jnp, numpy as np, optax
    import jaxrnn as jr

    layer = jr.rnn(jr.lstm(8))
    params = {"rnn": layer.init(jax.random.key(0), 4),
              "w": jax.random.normal(jax.random.key(1), (8, 1)) * 0.3}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

    def loss_fn(p, batch, key):
      xs, ys, lengths = batch
      _, out = layer.apply(p["rnn"], xs, lengths=lengths)
      return jr.masked_mse(out @ p["w"], ys, lengths)

    step = jr.train_step(loss_fn, tx)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(64, 6, 4)).astype(np.float32),
                rng.normal(size=(64, 6, 1)).astype(np.float32),
                rng.integers(1, 7, size=64).astype(np.int32)) for _ in range(3)]
    opt_state = tx.init(params)
    if mode != "single":
      mesh = jr.data_mesh()
      if mode == "sharded":
        try:
          jr.shard_batch({"x": np.zeros((6, 2))}, mesh)
          raise SystemExit("shard_batch took 6 examples over 4 devices")
        except ValueError as e:
          assert "has 6 examples along axis 0, not a multiple of the 4 devices" in str(e), e
      params, opt_state = jr.replicate(params, mesh), jr.replicate(opt_state, mesh)
      share = 64 // jax.process_count()
      lo = jax.process_index() * share
      batches = [jr.shard_batch(tuple(a[lo:lo + share] for a in b), mesh) for b in batches]
      compiled = step.lower(params, opt_state, batches[0], None).compile().as_text()
      assert "jaxrnn_lstm_loop" in compiled, "the native loop did not run"
    losses, norms = [], []
    for batch in batches:
      params, opt_state, m = step(params, opt_state, batch, None)
      losses.append(float(m["loss"]))
      norms.append(float(m["grad_norm"]))
    flat = [np.asarray(jax.experimental.multihost_utils.process_allgather(a, tiled=True)
                       if jax.process_count() > 1 else a).ravel().tolist()
            for a in jax.tree_util.tree_leaves(params)]
    with open(out, "w") as f:
      json.dump({"devices": jax.device_count(), "losses": losses, "norms": norms,
                 "params": flat}, f)
    if mode.startswith("process"):
      jax.distributed.shutdown()
""")


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def _run(mode, out, devices, *extra):
  return subprocess.Popen([sys.executable, "-c", _WORKER, mode, str(out), *extra], cwd=ROOT,
                          env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(proc):
  try:
    _, err = proc.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, err[-4000:]


def _compare(got, want):
  # float32 sums over the batch in another order: agreement to float32 rounding, not bits.
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=2e-6)
  np.testing.assert_allclose(got["norms"], want["norms"], rtol=2e-5)
  for a, b in zip(got["params"], want["params"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  out = tmp_path_factory.mktemp("single") / "out.json"
  _finish(_run("single", out, 1))
  return json.loads(out.read_text())


def test_four_host_devices_equal_one(single, tmp_path):
  out = tmp_path / "out.json"
  _finish(_run("sharded", out, 4))
  got = json.loads(out.read_text())
  assert got["devices"] == 4
  _compare(got, single)


def test_two_processes_equal_one(single, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  outs = [tmp_path / f"out{i}.json" for i in range(2)]
  procs = [_run(f"process{i}", outs[i], 2, port) for i in range(2)]
  for proc in procs:
    _finish(proc)
  for out in outs:
    got = json.loads(out.read_text())
    assert got["devices"] == 4
    _compare(got, single)
