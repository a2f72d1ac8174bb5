"""Parallel in time: `jr.parallel_scan` against the sequential `jr.scan`, and how many Newton
iterations `jr.newton_scan` needs.

Part 1 (linear recurrences): `jr.min_gru(H)` (D = 32, B = 8, float32, zero initial state) at
T = 256 .. 65,536 and H = 64, 256, 512, forward (outputs) and forward+backward (gradients of
`mean(ys ** 2)` with respect to the parameters and the inputs), for

    scan          jr.scan(cell, params, xs): the sequential loop, the library's default driver
    parallel      jr.parallel_scan(cell, params, xs): its default strategy on this backend (on
                  the CPU, the cell's own loop, as measured here)
    associative   jr.parallel_scan(..., strategy="associative"): lax.associative_scan, log2(T) depth
    chunked       jr.parallel_scan(..., strategy="chunked"): chunks of ~sqrt(T) steps
    loop          jr.parallel_scan(..., strategy="sequential"): coefficients of all steps at once,
                  then a loop of one multiply-add a step

Each implementation is compiled ahead of time; within one (H, T, mode) group the
implementations run round-robin, `--reps` samples each (the median is reported), each sample
enough calls to last 50 ms. Points with T * H above 65,536 * 64 are left out (H = 256 runs to
T = 16,384, H = 512 to 4,096) to keep the run to minutes. Ratios are against `scan` in the same
group.

Part 2 (Newton): `jr.gru(64)` (D = 32, B = 4, float32, default tolerance) at T = 256, 1024,
4096, with its initial weights ("random") and with weights that look trained (recurrent matrix
1.5x the orthogonal initialisation, so spectral radius 1.5; biases N(0, 1); input weights plus
N(0, 0.25)): Newton iterations to converge, final residual, whether it fell back, and the time
of one forward call against `jr.scan`'s, for "deer", "quasi_deer" and "elk".

    python benchmarks/parallel_scan.py            # a few minutes on 2 cores
    python benchmarks/parallel_scan.py --quick    # smoke run: tiny sizes, numbers mean nothing

Writes `parallel_scan.json`, `parallel_scan.md` and `parallel_scan.png` (time against T) under
`results/<device>/` (`--out DIR`: `DIR/<device>/`).
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

B, D = 8, 32
STEPS = (256, 1024, 4096, 16384, 65536)
HIDDEN = (64, 256, 512)
MAX_ELEMENTS = 65536 * 64  # T * H at most (B = 8), to keep the default run to minutes
IMPLS = {
    "scan": lambda cell: lambda p, x: jr.scan(cell, p, x),
    "parallel": lambda cell: lambda p, x: jr.parallel_scan(cell, p, x),
    "associative": lambda cell: lambda p, x: jr.parallel_scan(cell, p, x, strategy="associative"),
    "chunked": lambda cell: lambda p, x: jr.parallel_scan(cell, p, x, strategy="chunked"),
    "loop": lambda cell: lambda p, x: jr.parallel_scan(cell, p, x, strategy="sequential"),
}
NEWTON_STEPS = (256, 1024, 4096)
NEWTON_METHODS = ("deer", "quasi_deer", "elk")


def _compiled(fn, mode, params, xs):
  if mode == "fwd":
    f = lambda p, x: fn(p, x)[1]
  else:
    f = jax.grad(lambda p, x: jnp.mean(fn(p, x)[1] ** 2), argnums=(0, 1))
  return jax.jit(f).lower(params, xs).compile()


def _sample(call, args, min_s=0.05):
  """Seconds a call: as many calls as last `min_s`, at least one."""
  n, start = 0, time.perf_counter()
  while True:
    jax.block_until_ready(call(*args))
    n += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_s:
      return elapsed / n


def linear_group(hidden, steps, mode, reps, log):
  cell = jr.min_gru(hidden)
  params = cell.init(jax.random.key(0), D)
  xs = jax.random.normal(jax.random.key(1), (B, steps, D), jnp.float32)
  calls = {}
  for name, make in IMPLS.items():
    t0 = time.perf_counter()
    calls[name] = _compiled(make(cell), mode, params, xs)
    jax.block_until_ready(calls[name](params, xs))  # warm-up
    log(f"  H={hidden} T={steps} {mode} {name}: compiled in {time.perf_counter() - t0:.1f}s")
  samples = {name: [] for name in calls}
  order = list(calls)
  for r in range(reps):
    for name in order[r % len(order):] + order[:r % len(order)]:
      samples[name].append(_sample(calls[name], (params, xs)))
  base = statistics.median(samples["scan"])
  return [{"H": hidden, "T": steps, "mode": mode, "impl": name,
           "median_ms": statistics.median(s) * 1e3, "samples_ms": [v * 1e3 for v in s],
           "ratio_vs_scan": statistics.median(s) / base} for name, s in samples.items()]


def _trained_looking(params, key):
  k1, k2 = jax.random.split(key)
  out = dict(params)
  out["w_h"] = 1.5 * out["w_h"]
  out["b_x"] = out["b_x"] + jax.random.normal(k1, out["b_x"].shape, jnp.float32)
  out["w_x"] = out["w_x"] + 0.5 * jax.random.normal(k2, out["w_x"].shape, jnp.float32)
  return out


def newton_point(steps, weights, hidden, batch, log):
  cell = jr.gru(hidden)
  params = cell.init(jax.random.key(0), D)
  if weights == "trained-looking":
    params = _trained_looking(params, jax.random.key(3))
  xs = jax.random.normal(jax.random.key(1), (batch, steps, D), jnp.float32)
  scan = jax.jit(lambda p, x: jr.scan(cell, p, x)[1])
  ref = jax.block_until_ready(scan(params, xs))
  scan_ms = statistics.median(_sample(scan, (params, xs)) for _ in range(3)) * 1e3
  rows = []
  for method in NEWTON_METHODS:
    f = jax.jit(lambda p, x, method=method: jr.newton_scan(cell, p, x, method=method,
                                                           return_info=True))
    _, ys, info = jax.block_until_ready(f(params, xs))
    ms = statistics.median(_sample(f, (params, xs)) for _ in range(3)) * 1e3
    rows.append({"T": steps, "H": hidden, "B": batch, "weights": weights, "method": method,
                 "iterations": int(info.iterations), "residual": float(info.residual),
                 "fell_back": bool(info.fell_back),
                 "max_abs_diff_vs_scan": float(jnp.max(jnp.abs(ys - ref))),
                 "newton_ms": ms, "scan_ms": scan_ms})
    log(f"  newton T={steps} {weights} {method}: {rows[-1]['iterations']} iterations, "
        f"fell back {rows[-1]['fell_back']}, {ms:.1f} ms (scan {scan_ms:.1f} ms)")
  return rows


def markdown(data) -> str:
  env = data["environment"]
  lines = [
      "# Parallel in time on this machine",
      "",
      f"`benchmarks/parallel_scan.py` at {env.get('jaxrnn_commit')}, {env['date']}: "
      f"{env['cpu_model']} ({env['cpu_count']} cores, {env['isa']}), float32 matmul peak "
      f"{env['matmul_peak']['gflops']:.0f} GFLOP/s (1024^2), load average before the run "
      f"{data['load_before']}{' (machine busy: numbers noisy)' if data['loaded'] else ''}.",
      "",
      f"## jr.parallel_scan against jr.scan: jr.min_gru(H), B = {B}, D = {D}, float32",
      "",
      "Median ms a call, and the ratio to `jr.scan` in the same group (below 1.00x is faster).",
      "",
      "| H | T | mode | " + " | ".join(IMPLS) + " |",
      "|---|---|---|" + "---|" * len(IMPLS),
  ]
  groups = {}
  for r in data["linear"]:
    groups.setdefault((r["H"], r["T"], r["mode"]), {})[r["impl"]] = r
  for (h, t, mode), g in sorted(groups.items()):
    cells = [f"{g[k]['median_ms']:.2f} ({g[k]['ratio_vs_scan']:.2f}x)" for k in IMPLS]
    lines.append(f"| {h} | {t:,} | {mode} | " + " | ".join(cells) + " |")
  first = data["newton"][0] if data["newton"] else {"H": "?", "B": "?"}
  lines += ["", f"## jr.newton_scan: iterations to converge, jr.gru({first['H']}), "
            f"B = {first['B']}, float32, default tolerance", "",
            "| T | weights | method | iterations | residual | fell back | max abs diff vs scan "
            "| newton ms | scan ms |", "|---|---|---|---|---|---|---|---|---|"]
  for r in data["newton"]:
    lines.append(f"| {r['T']:,} | {r['weights']} | {r['method']} | {r['iterations']} | "
                 f"{r['residual']:.1e} | {r['fell_back']} | {r['max_abs_diff_vs_scan']:.1e} | "
                 f"{r['newton_ms']:.1f} | {r['scan_ms']:.1f} |")
  return "\n".join(lines) + "\n"


def plot(data, path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  hs = sorted({r["H"] for r in data["linear"]})
  fig, axes = plt.subplots(2, len(hs), figsize=(4.5 * len(hs), 7), squeeze=False)
  for col, h in enumerate(hs):
    for row, mode in enumerate(("fwd", "fwd+bwd")):
      ax = axes[row][col]
      for impl in IMPLS:
        pts = sorted((r["T"], r["median_ms"]) for r in data["linear"]
                     if r["H"] == h and r["mode"] == mode and r["impl"] == impl)
        if pts:
          ax.loglog(*zip(*pts), marker="o", label=impl)
      ax.set_title(f"min_gru H={h}, {mode}")
      ax.set_xlabel("T")
      ax.set_ylabel("ms a call")
      ax.grid(True, which="both", alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--silent", action="store_true")
  parser.add_argument("--full", action="store_true",
                      help=f"every (H, T), also those with T * H above {MAX_ELEMENTS:,} "
                      "(minutes more)")
  args = parser.parse_args(argv)
  log = (lambda *a: None) if args.silent else (lambda *a: print(*a, flush=True))
  load = os.getloadavg()[0]
  env = long_sequence._cpu_flags()  # pylint: disable=protected-access
  steps, hidden = ((16, 40), (8,)) if args.quick else (STEPS, HIDDEN)
  linear = []
  for h in hidden:
    for t in steps:
      if t * h > MAX_ELEMENTS and not args.full:
        continue
      for mode in ("fwd", "fwd+bwd"):
        linear += linear_group(h, t, mode, 1 if args.quick else args.reps, log)
  newton = []
  for t in ((12,) if args.quick else NEWTON_STEPS):
    for weights in ("random", "trained-looking"):
      newton += newton_point(t, weights, 8 if args.quick else 64, 2 if args.quick else 4, log)
  data = {"environment": env, "load_before": round(load, 2), "loaded": load >= 0.5,
          "load_after": round(os.getloadavg()[0], 2), "linear": linear, "newton": newton}
  out = os.path.join(args.out, env["device"])
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "parallel_scan.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(out, "parallel_scan.md"), "w", encoding="utf-8") as f:
    f.write(markdown(data))
  plot(data, os.path.join(out, "parallel_scan.png"))
  log(markdown(data))
  return 0


if __name__ == "__main__":
  sys.exit(main())
