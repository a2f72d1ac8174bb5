"""Compile time against sequence length: does compiling a training step grow with T?

The suite (`run.py`) records one compile per implementation and problem, in whatever state the
process is in at that moment, which is too noisy to compare two lengths (its sweep once gave
0.43 s at T = 100 and 0.61 s at T = 10,000 for the same program). This script compiles each
program again and again, with JAX's caches cleared before every compile so that each one traces,
lowers and compiles from scratch (what a user's first call costs, in a process that has already
loaded JAX), the lengths and implementations interleaved round by round, and reports medians.

What is compiled is the suite's forward+backward program (`peers.JaxRunner`: the gradients of
`mean(ys ** 2)` for the parameters and the inputs) on the suite's sweep problem, an LSTM with
(B, D, H) = (16, 128, 128). Writes `compile.json` and `compile.md` under
`results/<device>/`.

    python benchmarks/compile_time.py            # T = 10, 100, 1000, 10000; 7 rounds
    python benchmarks/compile_time.py --quick    # tiny, 2 rounds: a smoke run, not a benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Runs as a script and as a module (the smoke test runs it as a script).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import peers  # noqa: E402
import run  # noqa: E402

IMPLS = ("jaxrnn-auto", "jaxrnn-reference", "flax-linen-optimized")
STEPS = (10, 100, 1000, 10000)
BASE_STEPS = 100   # the goal: T = 100 and T = 10,000 compile within 20% of each other
QUICK_STEPS, QUICK_SIZE = (4, 12), 8


def measure(impl_keys, steps, batch: int, size: int, rounds: int, log) -> list:
  """`rounds` fresh compiles of each implementation's forward+backward program at each length
  in `steps`: one entry per (implementation, T) with its samples in seconds."""
  impls = {impl.key: impl for impl in peers.registry()}
  unknown = [k for k in impl_keys if k not in impls]
  if unknown:
    raise ValueError(f"unknown implementations {unknown}; choose from {sorted(impls)}")
  entries, runners = [], []
  for key in impl_keys:
    for t in steps:
      problem = peers.Problem("lstm", batch, t, size, size)
      entry = {"impl": key, "label": impls[key].labels["lstm"], "shape": list(problem.shape),
               "status": "ok", "reason": "", "samples_s": []}
      try:
        runner = impls[key].build(problem)
        if not isinstance(runner, peers.JaxRunner):
          raise peers.Missing("not a JAX program: nothing is compiled ahead of time")
        runners.append((entry, runner))
      except peers.Missing as e:
        entry["status"], entry["reason"] = "missing", str(e)
      entries.append(entry)
  for r in range(rounds):
    # Rotate the order each round, so that no program always compiles right after the same one.
    order = runners[r % len(runners):] + runners[:r % len(runners)] if runners else []
    for entry, runner in order:
      jax.clear_caches()
      entry["samples_s"].append(runner.compile_fresh("fwdbwd"))
    log(f"  round {r + 1}/{rounds} done")
  for entry in entries:
    if entry["samples_s"]:
      entry["median_s"] = statistics.median(entry["samples_s"])
  by_impl = {}
  for entry in entries:
    by_impl.setdefault(entry["impl"], {})[entry["shape"][1]] = entry
  for entry in entries:
    base = by_impl[entry["impl"]].get(min(steps, key=lambda t: abs(t - BASE_STEPS)), {})
    if "median_s" in entry and base.get("median_s"):
      entry["vs_base"] = entry["median_s"] / base["median_s"]
  return entries


def markdown(data: dict) -> str:
  env, entries = data["environment"], data["results"]
  base = min(data["steps"], key=lambda t: abs(t - BASE_STEPS))
  lines = [f"# Compile time against T on {env['device']}", "",
           f"- {env['date']}, jax {env['versions']['jax']}, jaxlib {env['versions']['jaxlib']}, "
           f"jaxrnn commit {env.get('jaxrnn_commit') or '?'}; CPU: {env.get('cpu_model') or '?'}",
           f"- LSTM forward+backward program, (B, D, H) = ({data['batch']}, {data['size']}, "
           f"{data['size']}); {data['rounds']} fresh compiles each (JAX's caches cleared before "
           "each), interleaved; seconds from `jax.jit(f).lower(...)` to `.compile()` returning.",
           f"- ×T={base}: the median over the median at T = {base}.", "",
           f"| implementation | T | median s | min s | max s | ×T={base} |",
           "|---|---|---|---|---|---|"]
  for e in entries:
    if e["status"] != "ok":
      lines.append(f"| {e['label']} | {e['shape'][1]} | {e['status']}: {e['reason']} | | | |")
      continue
    s = e["samples_s"]
    lines.append(f"| {e['label']} | {e['shape'][1]} | {e['median_s']:.3f} | {min(s):.3f} | "
                 f"{max(s):.3f} | {e.get('vs_base', float('nan')):.2f}x |")
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds: a smoke run")
  p.add_argument("--rounds", type=int, help="fresh compiles of each program (default 7)")
  p.add_argument("--steps", help="comma-separated lengths T (default 10,100,1000,10000)")
  p.add_argument("--impls", help="comma-separated implementation keys (default "
                                 + ",".join(IMPLS) + ")")
  p.add_argument("--out", default=run.RESULTS_DIR, help="results root (default benchmarks/results)")
  p.add_argument("--silent", action="store_true", help="no progress log")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  log = (lambda msg: None) if args.silent else (lambda msg: print(msg, flush=True))
  steps = tuple(int(t) for t in args.steps.split(",")) if args.steps else (
      QUICK_STEPS if args.quick else STEPS)
  batch, size = (4, QUICK_SIZE) if args.quick else (run.SWEEP_BATCH, run.SWEEP_SIZE)
  rounds = args.rounds or (2 if args.quick else 7)
  impl_keys = tuple(args.impls.split(",")) if args.impls else IMPLS
  start = time.perf_counter()
  entries = measure(impl_keys, steps, batch, size, rounds, log)
  data = {"environment": run.environment(None), "quick": args.quick, "batch": batch,
          "size": size, "steps": list(steps), "rounds": rounds, "results": entries,
          "wall_s": time.perf_counter() - start}
  out = os.path.join(args.out, data["environment"]["device"])
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "compile.json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(out, "compile.md"), "w") as f:
    f.write(markdown(data))
  log(markdown(data))
  return 0


if __name__ == "__main__":
  sys.exit(main())
