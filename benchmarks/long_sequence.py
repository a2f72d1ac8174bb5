"""Training on long sequences: peak memory and time of one LSTM training step against T, with
and without rematerialisation (`jr.scan(..., remat="sqrt")`).

One training step is the forward pass, the backward pass and an Adam update of an LSTM layer
and a linear head (B = 8, D = 32, H = 256, float32, mean squared error against random targets),
through `jr.rnn(jr.lstm(256), remat=...)` with every other option at its default. Each
(T, remat) point runs in a fresh process, so that its peak resident memory (the kernel's
high-water mark, `VmHWM`, of the whole process: JAX's runtime included) is its own; the points
are interleaved. The time is the median of the timed steps after one warm-up step (which
compiles).

    python benchmarks/long_sequence.py            # T = 1e3 .. 1e5, remat None and "sqrt"
    python benchmarks/long_sequence.py --quick    # tiny: a smoke run, not a benchmark

Writes `long_sequence.json`, `long_sequence.md` and `long_sequence.png` under
`results/<device>/` (`--out DIR`: `DIR/<device>/`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

B, D, H = 8, 32, 256
STEPS = (1_000, 3_000, 10_000, 30_000, 100_000)
QUICK_STEPS = (20, 60)
REMATS = ("none", "sqrt")


def worker(steps: int, remat: str, repeats: int) -> dict:
  """One (T, remat) point, in this process: the step's time and the process's peak memory."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import jaxrnn as jr  # pylint: disable=import-outside-toplevel

  layer = jr.rnn(jr.lstm(H), remat=None if remat == "none" else remat)
  params = {"rnn": layer.init(jax.random.key(0), D),
            "w": jax.random.normal(jax.random.key(1), (H, 1), jnp.float32) / H ** 0.5}
  xs = jax.random.normal(jax.random.key(2), (B, steps, D), jnp.float32)
  ys = jax.random.normal(jax.random.key(3), (B, steps, 1), jnp.float32)

  def loss_fn(p, batch, key):
    x, y = batch
    return jr.masked_mse(layer.apply(p["rnn"], x)[1] @ p["w"], y)

  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  step = jr.train_step(loss_fn, tx, donate=True)
  opt_state = tx.init(params)
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, (xs, ys), None)
    jax.block_until_ready(params)
    if i:
      times.append(time.perf_counter() - start)
    else:
      first_loss = float(metrics["loss"])  # before any update: the forward's value alone
  assert bool(metrics["finite"])
  times.sort()
  return {"T": steps, "remat": remat, "step_s": times[len(times) // 2], "samples_s": times,
          "first_loss": first_loss, "loss": float(metrics["loss"]),
          "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def _run_point(steps, remat, repeats, timeout):
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(steps),
                         remat, str(repeats)], capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    return {"T": steps, "remat": remat, "error": proc.stderr[-2000:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_flags() -> dict:
  import run  # pylint: disable=import-outside-toplevel
  env = run.environment(None)
  flags = ""
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      flags = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    pass
  env["isa"] = ("AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "other")
  env["matmul_peak"] = run.matmul_peak(1024)
  return env


def report(data: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "long_sequence.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  env = data["environment"]
  lines = [
      "# LSTM training step against sequence length",
      "",
      f"`benchmarks/long_sequence.py` at {env.get('jaxrnn_commit')}, {env['date']}: "
      f"{env['cpu_model']} ({env['cpu_count']} cores, {env['isa']}), matmul peak "
      f"{env['matmul_peak']['gflops']:.0f} GFLOP/s (1024^2 float32). One step = forward, "
      f"backward and Adam update of `jr.rnn(jr.lstm({H}), remat=...)` and a linear head, "
      f"B = {B}, D = {D}, H = {H}, float32; each point a fresh process; peak memory is the "
      "process's resident high-water mark (JAX's runtime included); time the median of "
      f"{data['repeats']} steps after a warm-up.",
      "",
      "| T | remat | peak memory (MB) | step time (s) |",
      "|---|---|---|---|",
  ]
  for r in data["results"]:
    if "error" in r:
      lines.append(f"| {r['T']:,} | {r['remat']} | failed | {r['error'].splitlines()[-1]} |")
    else:
      lines.append(f"| {r['T']:,} | {r['remat']} | {r['peak_rss_mb']:,.0f} | "
                   f"{r['step_s']:.3f} |")
  with open(os.path.join(out_dir, "long_sequence.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for remat in REMATS:
    ok = [r for r in data["results"] if r["remat"] == remat and "error" not in r]
    if not ok:
      continue
    ts = [r["T"] for r in ok]
    axes[0].plot(ts, [r["peak_rss_mb"] / 1024 for r in ok], "o-", label=f"remat={remat}")
    axes[1].plot(ts, [r["step_s"] for r in ok], "o-", label=f"remat={remat}")
  for ax, ylabel in zip(axes, ("peak memory (GB)", "training step (s)")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(ylabel)
    ax.legend()
  axes[0].axhline(4.0, color="grey", linestyle=":", linewidth=1)
  fig.suptitle(f"LSTM training step, B={B}, D={D}, H={H} ({env['cpu_model']})")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "long_sequence.png"), dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--worker", nargs=3, metavar=("T", "REMAT", "REPEATS"))
  parser.add_argument("--steps", default=None, help="comma-separated sequence lengths")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--out", default=None,
                      help="results folder (default benchmarks/results); a subfolder per device")
  parser.add_argument("--silent", action="store_true", help="print nothing but errors")
  args = parser.parse_args(argv)
  if args.worker:
    steps, remat, repeats = args.worker
    print(json.dumps(worker(int(steps), remat, int(repeats))))
    return
  steps = (tuple(int(s) for s in args.steps.split(",")) if args.steps else
           QUICK_STEPS if args.quick else STEPS)
  repeats = args.repeats or (1 if args.quick else 3)
  env = _cpu_flags()
  results = []
  for t in steps:
    for remat in REMATS:
      r = _run_point(t, remat, repeats, timeout=3600)
      if not args.silent:
        print(json.dumps({k: v for k, v in r.items() if k != "samples_s"}), flush=True)
      results.append(r)
  import run  # pylint: disable=import-outside-toplevel
  out = os.path.join(args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "results"), run.device_name())
  report({"environment": env, "repeats": repeats, "results": results}, out)
  if not args.silent:
    print(f"wrote {out}/long_sequence.md")


if __name__ == "__main__":
  main()
