"""What `jr.train_step` costs over a hand-written jitted Optax step.

Both steps train the same character LSTM language model (embedding, `jr.lstm`, linear head,
global-norm clipping and Adam) on the same batches. The hand-written one is the usual
`jax.value_and_grad` + `tx.update` + `optax.apply_updates` under `jax.jit`; `jr.train_step`
adds the gradient norm, the finiteness check, the first non-finite leaf and (with
`skip_nonfinite=True`, its default) the selection that keeps the old parameters on a bad batch.
The three are timed in alternating rounds of `steps` synchronised steps in one process (they
are the same library in the same runtime); reported are the medians and the ratios.

    python benchmarks/train_step_overhead.py            # B, T, H = 32, 64, 256; 7 rounds
    python benchmarks/train_step_overhead.py --quick    # tiny: a smoke run, not a benchmark

Writes `train_step_overhead.json` and `.md` under `results/<device>/`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxrnn as jr  # noqa: E402
import long_sequence  # noqa: E402
import run  # noqa: E402

VOCAB = 85


def build(batch: int, steps: int, hidden: int):
  cell = jr.lstm(hidden)
  embed, head = jr.embedding(VOCAB, 32), jr.dense(VOCAB)
  k = jax.random.split(jax.random.key(0), 3)
  params = {"embed": embed.init(k[0]), "cell": cell.init(k[1], 32), "head": head.init(k[2],
                                                                                     hidden)}

  def loss_fn(p, tokens, key):
    _, hs = jr.scan(cell, p["cell"], embed.apply(p["embed"], tokens[:, :-1]))
    return jr.masked_cross_entropy(head.apply(p["head"], hs), tokens[:, 1:])

  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

  @jax.jit
  def by_hand(p, state, tokens, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, tokens, key)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  rng = np.random.default_rng(0)
  batches = [jnp.asarray(rng.integers(0, VOCAB, (batch, steps + 1)), jnp.int32)
             for _ in range(8)]
  return params, tx, batches, {
      "hand-written": by_hand,
      "train_step": jr.train_step(loss_fn, tx),
      "train_step(skip_nonfinite=False)": jr.train_step(loss_fn, tx, skip_nonfinite=False)}


def measure(batch, steps, hidden, rounds, n):
  params, tx, batches, fns = build(batch, steps, hidden)
  states = {name: (params, tx.init(params)) for name in fns}
  for name, fn in fns.items():  # compile and warm up
    p, s = states[name]
    for b in batches[:2]:
      p, s, _ = fn(p, s, b, None)
    jax.block_until_ready(p)
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      p, s = states[name]
      start = time.perf_counter()
      for i in range(n):
        p, s, _ = fn(p, s, batches[i % len(batches)], None)
      jax.block_until_ready(p)
      samples[name].append((time.perf_counter() - start) / n)
      states[name] = (p, s)
  medians = {name: statistics.median(v) for name, v in samples.items()}
  base = medians["hand-written"]
  return {"shape": {"B": batch, "T": steps, "H": hidden}, "rounds": rounds,
          "steps_per_round": n, "median_step_s": medians,
          "ratio_to_hand_written": {name: m / base for name, m in medians.items()},
          "samples_s": samples}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--silent", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  shape, rounds, n = ((4, 8, 16), 2, 3) if args.quick else ((32, 64, 256), 7, 30)
  env = long_sequence._cpu_flags()  # pylint: disable=protected-access
  data = {"environment": env, **measure(*shape, rounds, n)}
  out = os.path.join(args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "results"), run.device_name())
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "train_step_overhead.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  lines = ["# jr.train_step against a hand-written jitted Optax step", "",
           f"`benchmarks/train_step_overhead.py` at {env.get('jaxrnn_commit')}, {env['date']}: "
           f"{env['cpu_model']} ({env['cpu_count']} cores, {env['isa']}), matmul peak "
           f"{env['matmul_peak']['gflops']:.0f} GFLOP/s. Character LSTM language model, "
           f"B = {shape[0]}, T = {shape[1]}, H = {shape[2]}, float32; {rounds} alternating "
           f"rounds of {n} steps, medians.", "",
           "| step | median time per step | ratio to hand-written |", "|---|---|---|"]
  for name, m in data["median_step_s"].items():
    lines.append(f"| {name} | {m * 1e3:.2f} ms | {data['ratio_to_hand_written'][name]:.3f}x |")
  with open(os.path.join(out, "train_step_overhead.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  if not args.silent:
    print("\n".join(lines))


if __name__ == "__main__":
  main()
