"""Variational dropout: the recurrent mask on the state, `(m * h) W_h`, against the former
per-example scaling of the recurrent weight's rows, `h diag(m) W_h`.

`jr.variational_dropout(cell, rate)` masks the carried state (LSTM) or the state entering the
recurrent matmuls (GRU) with one mask per sequence. The formula it replaced built, at every
step, a copy of `W_h` with its rows scaled by each example's mask and ran the step once per
example (`vmap` over the batch): the same products, but `B` copies of `W_h (H, G)` written and
read each step, forward and backward. That formula is written below as a cell wrapper
(`per_example_weights`), with the library's params (`{"cell", "key"}`) and the same masks, so
both compute the same numbers (checked in the run, values and gradients).

Measured: `jr.lstm(H)` and `jr.gru(H)`, B = 32, T = 100, D = 128, H = 256, float32, rate 0.25;
one call is the gradient of `mean(ys)` with respect to the inner cell's params (forward and
backward) under `jax.jit`, compiled ahead of time. The two wrappers run alternately, `--rounds`
rounds (the first of each pair swapped every round), each sample enough calls to last
`--min-sample` seconds; reported are the medians of the per-call times and their ratio.

    python benchmarks/variational_dropout.py           # a minute or two on 2 cores
    python benchmarks/variational_dropout.py --quick   # tiny sizes: a smoke run, numbers mean nothing

Writes `variational_dropout.json` and `variational_dropout.md` under `results/<device>/`
(`--out DIR`: `DIR/<device>/`), with the CPU model, its vector ISA, the threads the process may
run and the load average when the run started and ended.
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

import jaxrnn as jr  # noqa: E402
import long_sequence  # noqa: E402
import parallel_scan  # noqa: E402  (its _sample: the timing loop)

SIZES = {"B": 32, "T": 100, "D": 128, "H": 256}
QUICK_SIZES = {"B": 2, "T": 5, "D": 4, "H": 8}
RATE = 0.25
CELLS = {"lstm": jr.lstm, "gru": jr.gru}
IMPLS = ("state mask (current)", "per-example W_h (former)")


def per_example_weights(cell: jr.Cell, rate: float) -> jr.Cell:
  """The former variational dropout: at every step, each example runs `cell.step` with its own
  copy of `w_h` whose rows are scaled by its mask, `h diag(m) W_h`. The masks are drawn as
  `jr.variational_dropout` draws them (from the second half of `split(key)`, shape `(..., H)`),
  so the two wrappers give the same numbers for the same key."""

  def step(params, carry, x):
    inner, key = params["cell"], params["key"]
    batch = x.shape[:-1]
    w_h = inner["w_h"]
    _, k_h = jax.random.split(key)
    keep = jax.random.bernoulli(k_h, 1.0 - rate, batch + w_h.shape[:1])
    m_h = jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), w_h.dtype), jnp.zeros((), w_h.dtype))

    def one(c, x1, m1):
      return cell.step({**inner, "w_h": w_h * m1[:, None]}, c, x1)

    for _ in batch:
      one = jax.vmap(one)
    return one(carry, x, m_h)

  return jr.Cell(init=lambda key, size: {"cell": cell.init(key, size)},
                 initial_carry=cell.initial_carry, step=step,
                 name=f"per_example_weights({cell.name}, {rate})", takes_key=True)


def _grad_fn(wrapped: jr.Cell):
  """`(inner params, xs, key) -> (mean(ys), gradient)` for the wrapped cell, jitted."""

  def loss(inner, xs, key):
    return jnp.mean(jr.scan(wrapped, {"cell": inner, "key": key}, xs)[1])

  return jax.jit(jax.value_and_grad(loss))


def measure(kind: str, sizes: dict, rounds: int, min_s: float, log) -> dict:
  """Both wrappers around `CELLS[kind](H)`: agreement, then alternating timed samples."""
  b, t, d, h = sizes["B"], sizes["T"], sizes["D"], sizes["H"]
  cell = CELLS[kind](h)
  k_p, k_x, k_d = jax.random.split(jax.random.key(0), 3)
  inner = cell.init(k_p, d)
  xs = jax.random.normal(k_x, (b, t, d), jnp.float32)
  calls = {}
  for name, wrapped in zip(IMPLS, (jr.variational_dropout(cell, RATE),
                                   per_example_weights(cell, RATE))):
    start = time.perf_counter()
    fn = _grad_fn(wrapped).lower(inner, xs, k_d).compile()
    calls[name] = fn
    log(f"  {kind}: compiled {name} in {time.perf_counter() - start:.1f} s")
  (v_new, g_new), (v_old, g_old) = (calls[name](inner, xs, k_d) for name in IMPLS)
  diff = max(float(jnp.max(jnp.abs(a - b_)))
             for a, b_ in zip(jax.tree_util.tree_leaves((v_new, g_new)),
                              jax.tree_util.tree_leaves((v_old, g_old))))
  scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(g_new))
  samples = {name: [] for name in IMPLS}
  for r in range(rounds):
    order = IMPLS if r % 2 == 0 else IMPLS[::-1]
    for name in order:
      samples[name].append(parallel_scan._sample(calls[name], (inner, xs, k_d), min_s))
    log(f"  {kind} round {r + 1}/{rounds}: "
        + ", ".join(f"{n} {samples[n][-1] * 1e3:.2f} ms" for n in IMPLS))
  medians = {name: statistics.median(s) for name, s in samples.items()}
  # The fastest sample is the one least slowed by other jobs: a second view on a busy machine.
  best = {name: min(s) for name, s in samples.items()}
  return {"cell": kind, **sizes, "rate": RATE, "dtype": "float32", "route": _route(cell),
          "max_abs_diff": diff, "max_abs_grad": scale,
          "samples_s": samples, "median_s": medians,
          "ratio_former_over_current": medians[IMPLS[1]] / medians[IMPLS[0]],
          "min_s": best, "ratio_of_minima": best[IMPLS[1]] / best[IMPLS[0]]}


def _route(cell: jr.Cell) -> str:
  """How `jr.variational_dropout` masks this cell ("state", "split" or "weights"), so that the
  record shows the current path was the one measured; "unknown" if the library no longer says."""
  try:
    from jaxrnn.cells import _wrappers  # pylint: disable=import-outside-toplevel
    return _wrappers._masking_route(cell)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return "unknown"


def _threads() -> dict:
  affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  return {"usable_cpus": affinity,
          "xla_flags": os.environ.get("XLA_FLAGS"),
          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _copy_mib(result: dict, gates: int) -> float:
  """MiB of the per-example `W_h` copies one step of the former formula writes."""
  return result["B"] * result["H"] * gates * result["H"] * 4 / 2**20


def markdown(data: dict) -> str:
  env, load = data["environment"], data["load_average"]
  fmt_load = lambda l: " / ".join(f"{x:.2f}" for x in l)
  lines = [
      "# Variational dropout: state mask against per-example recurrent weights",
      "",
      f"`benchmarks/variational_dropout.py{' --quick' if data['quick'] else ''}` at "
      f"{env.get('jaxrnn_commit')}, {env['date']}: {env['cpu_model']} ({env['cpu_count']} "
      f"cores, {env['isa']}), {data['threads']['usable_cpus']} CPUs usable by the process "
      f"(its affinity mask; XLA_FLAGS={data['threads']['xla_flags']}, OMP_NUM_THREADS="
      f"{data['threads']['omp_num_threads']}), jax {env['versions']['jax']}.",
      "",
      f"Load average (1 / 5 / 15 min) at the start {fmt_load(load['start'])}, at the end "
      f"{fmt_load(load['end'])}. " + (
          "**The machine was shared with other jobs during this run**: with other work "
          "competing for the cores, every time below is inflated by waiting for a core, and "
          "samples scatter. Both wrappers ran alternately in the same rounds, so the ratio is "
          "the figure to read; the absolute times are not this machine's unloaded speed."
          if data["loaded"] else "The machine was otherwise idle (load average below 0.5)."),
      "",
      f"One call: the gradient of `mean(ys)` with respect to the cell's params through "
      f"`jr.scan`, forward and backward, under `jax.jit`; float32, recurrent dropout rate "
      f"{RATE}, one mask per sequence. Median of {data['rounds']} rounds, each sample at least "
      f"{data['min_sample_s']} s of calls (times in ms a call: medians; the ratio of the "
      "fastest samples, those least slowed by other work, is given beside the ratio of the "
      "medians).",
      "",
      "| cell (current route) | B | T | D | H | state mask (current), ms | per-example W_h "
      "(former), ms | former / current | ratio of the fastest samples | max abs difference "
      "(values, gradients) |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in data["results"]:
    lines.append(f"| {r['cell']} ({r['route']}) | {r['B']} | {r['T']} | {r['D']} | {r['H']} | "
                 f"{r['median_s'][IMPLS[0]] * 1e3:.2f} | {r['median_s'][IMPLS[1]] * 1e3:.2f} | "
                 f"{r['ratio_former_over_current']:.2f}x | {r['ratio_of_minima']:.2f}x | "
                 f"{r['max_abs_diff']:.1e} |")
  lstm = next((r for r in data["results"] if r["cell"] == "lstm"), data["results"][0])
  lines += [
      "",
      "The state mask `(m * h) W_h` is one elementwise product before the step's matmul; the "
      "former formula wrote a scaled copy of `W_h (H, G)` for every example at every step (for "
      "the LSTM above, B * H * 4H float32 = "
      f"{_copy_mib(lstm, 4):.0f} MiB a step) and ran the step per example "
      "(matrix-vector products instead of one matrix product). The two give the same values "
      "and gradients (last column: float32 rounding).",
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
  parser.add_argument("--min-sample", type=float, default=None,
                      help="seconds of calls a sample (default 0.5)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--silent", action="store_true")
  args = parser.parse_args(argv)
  log = (lambda *a: None) if args.silent else (lambda *a: print(*a, flush=True))
  load_start = [round(x, 2) for x in os.getloadavg()]
  env = long_sequence._cpu_flags()  # pylint: disable=protected-access
  rounds = args.rounds or (2 if args.quick else 7)
  min_s = args.min_sample if args.min_sample is not None else (0.01 if args.quick else 0.5)
  sizes = QUICK_SIZES if args.quick else SIZES
  results = [measure(kind, sizes, rounds, min_s, log) for kind in CELLS]
  load_end = [round(x, 2) for x in os.getloadavg()]
  data = {"environment": env, "threads": _threads(), "quick": args.quick, "rounds": rounds,
          "min_sample_s": min_s, "load_average": {"start": load_start, "end": load_end},
          "loaded": max(load_start[0], load_end[0]) >= 0.5, "results": results}
  out = os.path.join(args.out, env["device"])
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "variational_dropout.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(out, "variational_dropout.md"), "w", encoding="utf-8") as f:
    f.write(markdown(data))
  log(markdown(data))
  return 0


if __name__ == "__main__":
  sys.exit(main())
