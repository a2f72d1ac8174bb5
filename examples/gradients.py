"""The vanishing gradient, seen: a simple (Elman) RNN, an LSTM and a GRU on the adding problem
at growing sequence lengths.

    python examples/gradients.py            # T = 10, 50, 100, 200; about two minutes
    python examples/gradients.py --quick    # two short lengths, a few dozen steps (smoke test)

The adding problem (Hochreiter & Schmidhuber 1997): each step holds a value drawn from U(0, 1)
and a marker; exactly two steps are marked, one in the first half, and the target is the sum of
the two marked values, to be read out after the last step. Predicting the mean (1.0) gives an
MSE of about 0.167; a model counts as solving an example when its error is below 0.04. The
first marker sits up to T steps before the read-out, so the gradient has to travel that far.

For every cell and length the script trains with `jr.train_step` (global-norm clipping, Adam)
and reports test accuracy; at the longest length it also measures `||dL/dh_t||` for every `t`
from one backward pass (`jr.diagnostics.state_gradient_norms`), at initialisation and after
training, and draws the three cells on one figure (the ratio of the first step's norm to the
last step's says how much of the error signal reaches the first marker). Writes `--out`: `metrics.json` (accuracy per cell and length, the
gradient-norm ratio first/last step), `gradient_norms.png`, `accuracy.png`. The last line printed
is `RESULT {json}`.
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

import _common

CELLS = {"simple RNN (tanh)": jr.simple_rnn, "LSTM": jr.lstm, "GRU": jr.gru}


class Config(NamedTuple):
  lengths: tuple
  hidden: int
  steps: int
  batch: int
  test: int


FULL = Config(lengths=(10, 50, 100, 200), hidden=64, steps=600, batch=64, test=1000)
QUICK = Config(lengths=(10, 20), hidden=16, steps=40, batch=32, test=200)


def adding_problem(rng: np.random.Generator, n: int, steps: int):
  values = rng.uniform(0, 1, (n, steps)).astype(np.float32)
  first = rng.integers(0, max(1, steps // 2), n)
  second = rng.integers(steps // 2, steps, n)
  second = np.where(second == first, (first + 1) % steps, second)
  markers = np.zeros((n, steps), np.float32)
  markers[np.arange(n), first] = 1.0
  markers[np.arange(n), second] = 1.0
  xs = np.stack([values, markers], axis=-1)
  return xs, (values * markers).sum(1, keepdims=True).astype(np.float32)


def main(argv=None):
  args = _common.parser(__doc__, "runs/gradients").parse_args(argv)
  cfg = QUICK if args.quick else FULL
  out = _common.out_dir(args.out)
  t0 = time.perf_counter()
  rng = np.random.default_rng(args.seed)
  head = jr.dense(1)
  accuracy, losses, norms = {}, {}, {}
  for name, make in CELLS.items():
    cell = make(cfg.hidden)
    accuracy[name], losses[name] = {}, {}
    for steps in cfg.lengths:
      k_cell, k_head = jax.random.split(jax.random.key(args.seed))
      params = {"cell": cell.init(k_cell, 2), "head": head.init(k_head, cfg.hidden)}

      def predict(p, xs):
        _, ys = jr.scan(cell, p["cell"], xs)
        return head.apply(p["head"], ys[:, -1])

      def loss_fn(p, batch, key):
        xs, target = batch
        return jnp.mean((predict(p, xs) - target) ** 2)

      tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-3))
      batches = (adding_problem(rng, cfg.batch, steps) for _ in range(cfg.steps))
      result = jr.fit(jr.train_step(loss_fn, tx), params, tx.init(params), batches,
                      steps=cfg.steps, log_every=max(1, cfg.steps // 4))
      xs, target = adding_problem(np.random.default_rng(10_000 + steps), cfg.test, steps)
      err = np.abs(np.asarray(jax.jit(predict)(result.params, xs)) - target)
      accuracy[name][steps] = float(np.mean(err < 0.04))
      losses[name][steps] = [result.history[0]["loss"], result.history[-1]["loss"]]
      print(f"{name:18s} T = {steps:4d}: test accuracy {accuracy[name][steps]:.3f}, training "
            f"loss {losses[name][steps][0]:.3f} -> {losses[name][steps][1]:.3f}", flush=True)
      if steps == cfg.lengths[-1]:
        # ||dL/dh_t|| from one backward pass, averaged over 64 examples, before and after.
        xs_n, target_n = adding_problem(np.random.default_rng(1), 64, steps)
        for when, p in (("init", params), ("trained", result.params)):
          loss_of = lambda ys, carry, p=p: jnp.mean(
              (head.apply(p["head"], ys[:, -1]) - target_n) ** 2)
          g = jr.diagnostics.state_gradient_norms(cell, p["cell"], xs_n, loss_of)
          norms[f"{name}, {when}"] = np.asarray(jnp.mean(g, axis=0))
  ratios = {name: float(n[0] / n[-1]) for name, n in norms.items()}
  for name, r in ratios.items():
    print(f"{name:27s} ||dL/dh_0|| / ||dL/dh_T-1|| at T = {cfg.lengths[-1]}: {r:.3g}",
          flush=True)
  jr.diagnostics.plot_gradient_norms(
      norms, path=str(out / "gradient_norms.png"),
      title=f"adding problem, T = {cfg.lengths[-1]}: at initialisation and after training")
  plot_accuracy(accuracy, out / "accuracy.png")
  metrics = {"accuracy": accuracy, "loss_first_last": losses, "gradient_norm_ratio": ratios,
             "seconds": round(time.perf_counter() - t0, 1)}
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  print("RESULT " + json.dumps(metrics))


def plot_accuracy(accuracy, path):
  plt = _common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, by_length in accuracy.items():
    ax.plot(list(by_length), list(by_length.values()), "o-", label=name)
  ax.set_xscale("log")
  ax.set_xlabel("sequence length T")
  ax.set_ylabel("test accuracy (|error| < 0.04)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
