"""`jr.Checkpointer` (Orbax): exact resume, harmless interrupted saves, the last N kept, and a
clear error for a folder that holds something else."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _problem():
  layer = jr.rnn(jr.lstm(8))
  params = {"rnn": layer.init(jax.random.key(0), 3), "w": jnp.full((8, 1), 0.1, jnp.float32)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

  def loss_fn(p, batch, key):
    xs, ys = batch
    keep = jax.random.bernoulli(key, 0.9, xs.shape)  # the key matters: resume must restore it
    _, out = layer.apply(p["rnn"], jnp.where(keep, xs, 0.0))
    return jnp.mean((out @ p["w"] - ys) ** 2)

  data = jax.random.normal(jax.random.key(1), (40, 4, 10, 3), jnp.float32)
  targets = jnp.sum(data, axis=-1, keepdims=True)
  return params, tx, jr.train_step(loss_fn, tx), data, targets


def _train(step, params, opt_state, key, data, targets, start, stop):
  losses = []
  for i in range(start, stop):
    key, sub = jax.random.split(key)
    params, opt_state, m = step(params, opt_state, (data[i], targets[i]), sub)
    losses.append(float(m["loss"]))
  return params, opt_state, key, losses


def test_resume_gives_bit_identical_next_losses(tmp_path):
  # Optax's Adam needs JAX's standard dtype promotion (the suite runs strict elsewhere).
  with jax.numpy_dtype_promotion("standard"):
    _resume_gives_bit_identical_next_losses(tmp_path)


def _resume_gives_bit_identical_next_losses(tmp_path):
  params, tx, step, data, targets = _problem()
  key = jax.random.key(7)
  _, _, _, straight = _train(step, params, tx.init(params), key, data, targets, 0, 12)

  p, s, k, first = _train(step, params, tx.init(params), key, data, targets, 0, 6)
  ckpt = jr.Checkpointer(tmp_path / "run", keep=2)
  ckpt.save(6, {"params": p, "opt_state": s, "key": k}, meta={"position": 6})
  del p, s, k
  like = {"params": params, "opt_state": tx.init(params), "key": jax.random.key(0)}
  restored, meta = jr.Checkpointer(tmp_path / "run").restore(like=like)
  assert meta == {"position": 6}
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(like)
  _, _, _, rest = _train(step, restored["params"], restored["opt_state"], restored["key"], data,
                         targets, meta["position"], 12)
  assert first + rest == straight  # exact floats, not close


def test_keeps_the_last_n_and_restores_any_kept_step(tmp_path):
  ckpt = jr.Checkpointer(tmp_path / "run", keep=2)
  like = {"w": jnp.zeros(3)}
  for step in (1, 2, 3):
    ckpt.save(step, {"w": jnp.full(3, float(step))})
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
  state, _ = ckpt.restore(like=like, step=2)
  np.testing.assert_array_equal(state["w"], 2.0)
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 1"):
    ckpt.restore(like=like, step=1)
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    jr.Checkpointer(tmp_path / "empty").restore(like=like)


def test_refuses_a_folder_that_holds_something_else(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="holds other things \\(notes.txt\\)"):
    jr.Checkpointer(tmp_path)
  with pytest.raises(ValueError, match="is a file"):
    jr.Checkpointer(tmp_path / "notes.txt")
  with pytest.raises(ValueError, match="keep must be an int >= 1"):
    jr.Checkpointer(tmp_path / "x", keep=0)


_WRITER = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    import jaxrnn as jr
    ckpt = jr.Checkpointer(sys.argv[1], keep=3)
    ckpt.save(1, {"w": jnp.full((4,), 1.0)}, meta={"position": 1})
    print("saved 1", flush=True)
    big = jnp.ones((64, 1024, 1024), jnp.float32)  # 256 MB: a save that takes a while
    for step in range(2, 100):
      ckpt.save(step, {"w": big * step}, meta={"position": step})
""")


def test_a_save_killed_halfway_leaves_the_last_good_checkpoint(tmp_path):
  directory = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == "saved 1"
    # Kill it while a later step is being written (its temporary folder exists).
    deadline = time.time() + 120
    while time.time() < deadline:
      if any(".orbax-checkpoint-tmp" in p.name for p in directory.iterdir()):
        break
      time.sleep(0.005)
    else:
      pytest.fail("the writer never started a second save")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  leftovers = [p.name for p in directory.iterdir()]
  assert any(".orbax-checkpoint-tmp" in name for name in leftovers), leftovers
  ckpt = jr.Checkpointer(directory)
  latest = ckpt.latest_step()
  assert latest is not None
  like = {"w": jnp.zeros((4,))} if latest == 1 else {"w": jnp.zeros((64, 1024, 1024))}
  state, meta = ckpt.restore(like=like)
  assert meta == {"position": latest}
  np.testing.assert_array_equal(state["w"][:4].ravel()[:4], float(latest))
