"""Newton iterations on trained weights: how many `jr.newton_scan` needs once a cell has learned.

`benchmarks/parallel_scan.py` counts iterations on initial and on "trained-looking" weights
(weights scaled by hand). This script trains the cells instead. Each of `jr.simple_rnn(H)`,
`jr.gru(H)`, `jr.lstm(H)` and `jr.indrnn(H)` (H = 64) is the recurrent layer of a character
language model (embedding of 16, the cell, a linear softmax head) trained on Shakespeare (the
examples' split: the last four of the 42 plays held out) with Adam (learning rate 3e-3,
global-norm clipping at 1), 32 random windows of 128 characters an update. At a few points of
training (0 updates, then `--updates` / 5, then `--updates`) it records

- the held-out bits per character (16 windows of 512 characters), so "trained" is measured;
- the mean spectral norm of the step's state Jacobian `d h_t / d h_{t-1}` on held-out text (above
  1 the dynamics expand somewhere, which is where Newton's method is slow to converge);
- for T = 256 and 1,024 held-out characters (B = 4 streams, embedded by the model's own table,
  float32, default tolerance): the iterations "deer", "quasi_deer" and "elk" took to converge,
  the final residual, whether the call fell back to the sequential scan, the largest difference
  to `jr.scan`'s outputs, and the time of one call (one sample after the compiling call)
  against `jr.scan`'s (median of three). `benchmarks/parallel_scan.py` covers longer T on
  initial weights.

    python benchmarks/newton_trained.py            # several minutes on 2 cores
    python benchmarks/newton_trained.py --quick    # smoke run: tiny sizes, numbers mean nothing

Writes `newton_trained.json` and `newton_trained.md` under `results/<device>/` (`--out DIR`:
`DIR/<device>/`). Iteration counts do not depend on the machine's load; the times do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import jax  # noqa: E402
import jax.flatten_util  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxrnn as jr  # noqa: E402
import long_sequence  # noqa: E402
import _data  # noqa: E402  (the examples' data loader)

CELLS = {"simple_rnn": jr.simple_rnn, "gru": jr.gru, "lstm": jr.lstm, "indrnn": jr.indrnn}
METHODS = ("deer", "quasi_deer", "elk")
EMBED, BATCH, WINDOW = 16, 32, 128


def _sample_ms(fn, args, reps=3):
  """Median wall time of `fn(*args)` over `reps` synchronised calls, in ms."""
  import time  # pylint: disable=import-outside-toplevel
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


class Model:
  """Embedding -> cell -> linear head, the cell's parameters kept apart for `newton_scan`."""

  def __init__(self, name, hidden, vocab):
    self.name, self.cell = name, CELLS[name](hidden)
    self.embed, self.head = jr.embedding(vocab, EMBED), jr.dense(vocab)
    self.hidden = hidden
    self.tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
    self.update = jax.jit(self._update)
    self.scan = jax.jit(lambda p, x: jr.scan(self.cell, p, x)[1])
    self.newton = {m: jax.jit(lambda p, x, m=m: jr.newton_scan(self.cell, p, x, method=m,
                                                               return_info=True))
                   for m in METHODS}

  def _update(self, params, opt_state, ids):
    loss, grads = jax.value_and_grad(self.loss)(params, ids)
    changes, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), opt_state, loss

  def init(self, key):
    ke, kc, kh = jax.random.split(key, 3)
    return {"embed": self.embed.init(ke), "cell": self.cell.init(kc, EMBED),
            "head": self.head.init(kh, self.hidden)}

  def inputs(self, params, ids):
    return self.embed.apply(params["embed"], ids)

  def loss(self, params, ids):
    """Mean next-character cross-entropy (nats) of int `ids (B, T + 1)`."""
    _, ys = jr.scan(self.cell, params["cell"], self.inputs(params, ids[:, :-1]))
    return jr.masked_cross_entropy(self.head.apply(params["head"], ys), ids[:, 1:])


def train(model, params, opt_state, train_ids, updates, seed):
  """`updates` Adam steps on random windows of the training text: `(params, opt_state)`."""
  rng = np.random.default_rng(seed)
  for _ in range(updates):
    starts = rng.integers(0, len(train_ids) - WINDOW - 1, BATCH)
    ids = train_ids[starts[:, None] + np.arange(WINDOW + 1)]
    params, opt_state, _ = model.update(params, opt_state, jnp.asarray(ids))
  return params, opt_state


def held_out_bits(model, params, test_ids, windows=16, length=512):
  stride = (len(test_ids) - length - 1) // windows
  ids = np.stack([test_ids[i * stride:i * stride + length + 1] for i in range(windows)])
  return float(jax.jit(model.loss)(params, jnp.asarray(ids))) / math.log(2)


def jacobian_norm(model, params, xs):
  """Mean over steps and streams of the spectral norm of `d h_t / d h_{t-1}` (the whole carry,
  flattened) along the sequential trajectory of `xs (B, T, EMBED)`."""
  cell, p = model.cell, params["cell"]
  flat0, unravel = jax.flatten_util.ravel_pytree(cell.initial_carry((), xs.dtype))

  def norms(x_seq):
    def step(h_flat, x):
      f = lambda h: jax.flatten_util.ravel_pytree(cell.step(p, unravel(h), x)[0])[0]
      return f(h_flat), jnp.linalg.norm(jax.jacfwd(f)(h_flat), 2)
    return jax.lax.scan(step, flat0, x_seq)[1]

  return float(jnp.mean(jax.jit(jax.vmap(norms))(xs)))


def newton_rows(model, params, test_ids, steps, streams, log):
  rows = []
  p = params["cell"]
  stride = (len(test_ids) - steps) // streams
  ids = np.stack([test_ids[i * stride:i * stride + steps] for i in range(streams)])
  xs = model.inputs(params, jnp.asarray(ids)).astype(jnp.float32)
  ref = jax.block_until_ready(model.scan(p, xs))
  scan_ms = _sample_ms(model.scan, (p, xs))
  for method in METHODS:
    f = model.newton[method]
    _, ys, info = jax.block_until_ready(f(p, xs))
    rows.append({"T": steps, "method": method, "iterations": int(info.iterations),
                 "residual": float(info.residual), "fell_back": bool(info.fell_back),
                 "max_abs_diff_vs_scan": float(jnp.max(jnp.abs(ys - ref))),
                 "newton_ms": _sample_ms(f, (p, xs), reps=1), "scan_ms": scan_ms})
    log(f"    T={steps} {method}: {rows[-1]['iterations']} iterations, fell back "
        f"{rows[-1]['fell_back']}, diff {rows[-1]['max_abs_diff_vs_scan']:.1e}")
  return rows


def markdown(data) -> str:
  env = data["environment"]
  lines = [
      "# Newton iterations on trained weights",
      "",
      f"`benchmarks/newton_trained.py` at {env.get('jaxrnn_commit')}, {env['date']}: "
      f"{env['cpu_model']} ({env['cpu_count']} cores, {env['isa']}), float32 matmul peak "
      f"{env['matmul_peak']['gflops']:.0f} GFLOP/s (1024^2), load average {data['load_before']} "
      f"before and {data['load_after']} after the run"
      f"{' (machine shared with other jobs: times are noisy, iteration counts are not)' if data['loaded'] else ''}.",
      "",
      f"Character language models (embedding {EMBED}, one cell of H = {data['hidden']}, linear "
      f"head) trained on Shakespeare with Adam; Newton's method run on {data['streams']} "
      "held-out streams embedded by the model's own table, float32, default tolerance. "
      "`|J|`: mean spectral norm of the step's state Jacobian along the held-out trajectory.",
      "",
      "| cell | updates | held-out bits/char | mean \\|J\\| | T | method | iterations | residual "
      "| fell back | max abs diff vs scan | newton ms | scan ms |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for stage in data["stages"]:
    for r in stage["newton"]:
      lines.append(
          f"| {stage['cell']} | {stage['updates']:,} | {stage['held_out_bits']:.3f} | "
          f"{stage['jacobian_norm']:.2f} | {r['T']:,} | {r['method']} | {r['iterations']} | "
          f"{r['residual']:.1e} | {r['fell_back']} | {r['max_abs_diff_vs_scan']:.1e} | "
          f"{r['newton_ms']:.1f} | {r['scan_ms']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--updates", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  parser.add_argument("--silent", action="store_true")
  args = parser.parse_args(argv)
  log = (lambda *a: None) if args.silent else (lambda *a: print(*a, flush=True))
  load = os.getloadavg()[0]
  env = long_sequence._cpu_flags()  # pylint: disable=protected-access
  hidden, streams = (8, 2) if args.quick else (64, 4)
  updates = args.updates or (6 if args.quick else 1500)
  steps = (24,) if args.quick else (256, 1024)
  cells = ("gru",) if args.quick else tuple(CELLS)

  split = _data.shakespeare_split()
  vocab = _data.CharVocab.from_text(split.train)
  train_ids, test_ids = vocab.encode(split.train), vocab.encode(split.test)
  if args.quick:
    train_ids, test_ids = train_ids[:50_000], test_ids[:20_000]

  stages = []
  for name in cells:
    model = Model(name, hidden, vocab.size)
    params = model.init(jax.random.key(0))
    opt_state, done = model.tx.init(params), 0
    for target in (0, updates // 5, updates):
      params, opt_state = train(model, params, opt_state, train_ids, target - done, seed=done)
      done = target
      bits = held_out_bits(model, params, test_ids, windows=4 if args.quick else 16,
                           length=64 if args.quick else 512)
      probe = test_ids[:streams * 256].reshape(streams, 256)
      jnorm = jacobian_norm(model, params, model.inputs(params, jnp.asarray(probe)))
      log(f"{name} after {done} updates: held-out {bits:.3f} bits/char, mean |J| {jnorm:.2f}")
      stages.append({"cell": name, "updates": done, "held_out_bits": bits,
                     "jacobian_norm": jnorm,
                     "newton": [r for t in steps
                                for r in newton_rows(model, params, test_ids, t, streams, log)]})
  data = {"environment": env, "load_before": round(load, 2), "loaded": load >= 0.5,
          "load_after": round(os.getloadavg()[0], 2), "hidden": hidden, "streams": streams,
          "updates": updates, "stages": stages}
  out = os.path.join(args.out, env["device"])
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "newton_trained.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(out, "newton_trained.md"), "w", encoding="utf-8") as f:
    f.write(markdown(data))
  log(markdown(data))
  return 0


if __name__ == "__main__":
  sys.exit(main())
