"""The jaxrnn benchmark suite: jaxrnn against PyTorch, Flax (linen, NNX), Equinox and Haiku.

    python benchmarks/run.py                 # the full suite on whatever device JAX sees
    python benchmarks/run.py --quick         # tiny shapes, a few repetitions (< 1 minute)
    python benchmarks/run.py --out DIR       # results in DIR/<device>/ instead of benchmarks/results/
    python benchmarks/run.py --table benchmarks/results/cpu-2core/results.json   # Markdown only

It writes `results.json`, `results.md` and `results.png` into `<out>/<device>/`. Every number in
one file comes from one process: implementations are timed round-robin inside each group (one
cell kind, one shape, one mode), and every ratio is taken between medians of the same group.
See benchmarks/README.md for the method and the meaning of each column.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from typing import Optional

# Runs as a script (`python benchmarks/run.py`) and as a module (the smoke test imports it).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import peers  # noqa: E402

SHAPES = ((32, 100, 128, 256), (64, 100, 256, 512), (16, 2000, 64, 128), (1, 1000, 32, 64))
SWEEP_STEPS = (10, 100, 1000, 10000)
SWEEP_BATCH, SWEEP_SIZE, SWEEP_KIND = 16, 128, "lstm"   # (B, T, D=H) = (16, T, 128, 128), LSTM

# The quick sweep point is the quick LSTM problem itself, so its executables are reused (the
# sweep's code path still runs; XLA:CPU compiles are most of the quick run's time).
QUICK_SHAPES = ((4, 12, 8, 8),)
QUICK_SWEEP_STEPS = (12,)
QUICK_SWEEP = (4, 8)  # B, D=H for the quick sweep point

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Settings:
  reps: int            # round-robin rounds (each gives one sample per implementation)
  warmup: int          # untimed calls per implementation before the first round
  min_sample_s: float  # a sample repeats the call until it lasts at least this long
  max_group_s: float   # stop adding rounds to a group after this long (never below min_reps)
  min_reps: int
  matmul_n: int        # side of the square float32 matmul that measures the peak
  # XLA options for every JAX executable. The quick run turns backend optimisation off, which
  # halves XLA:CPU's compile time and lets the smoke run fit in a minute; its numbers are not
  # benchmarks anyway. The full run compiles as users do, with no options.
  compiler_options: Optional[dict] = None


FULL = Settings(reps=15, warmup=2, min_sample_s=0.02, max_group_s=90.0, min_reps=5,
                matmul_n=2048)
QUICK = Settings(reps=3, warmup=1, min_sample_s=0.0, max_group_s=5.0, min_reps=2, matmul_n=512,
                 compiler_options={"xla_backend_optimization_level": 0})


# ---------------------------------------------------------------------------------------------
# The machine


def device_name() -> str:
  """`cpu-<n>core` on the CPU, else the accelerator's kind (e.g. `nvidia-h100-80gb-hbm3`)."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"cpu-{os.cpu_count()}core"
  return re.sub(r"[^a-z0-9]+", "-", device.device_kind.lower()).strip("-") or device.platform


def _cpu_model() -> Optional[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "missing"


def _git_commit() -> Optional[str]:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def environment(torch_threads: Optional[int]) -> dict:
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": device_name(),
      "jax_backend": jax.default_backend(),
      "jax_device_kind": device.device_kind,
      "cpu_count": os.cpu_count(),
      "cpu_model": _cpu_model(),
      "python": platform.python_version(),
      "versions": {p: _version(p) for p in
                   ("jax", "jaxlib", "jaxrnn", "torch", "flax", "equinox", "dm-haiku", "numpy")},
      "jaxrnn_commit": _git_commit(),
      "torch_device": peers.torch_device(),
      "torch_threads": torch_threads,
      "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "XLA_FLAGS", "MKL_NUM_THREADS")},
      "dtype": "float32",
      "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
  }


def matmul_peak(n: int, reps: int = 7) -> dict:
  """GFLOP/s of a jitted float32 `(n, n) @ (n, n)`, median of `reps` synchronised calls."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), jnp.float32)
  b = jax.random.normal(key_b, (n, n), jnp.float32)
  f = jax.jit(jnp.matmul).lower(a, b).compile()
  for _ in range(2):
    jax.block_until_ready(f(a, b))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"n": n, "median_ms": median * 1e3, "gflops": 2 * n**3 / median / 1e9}


# ---------------------------------------------------------------------------------------------
# Timing


def _entry(impl: peers.Impl, problem: peers.Problem, section: str) -> dict:
  return {"section": section, "kind": problem.kind, "shape": list(problem.shape),
          "impl": impl.key, "label": impl.labels[problem.kind], "framework": impl.framework,
          "status": "ok", "reason": None, "device": None, "modes": {},
          "max_abs_diff_vs_torch": None}


def _error_text(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def build_all(impls, problem: peers.Problem, section: str, log,
              cache: Optional[dict] = None) -> tuple[list, dict]:
  """Builds every implementation for `problem`; returns (entries, runners by key). Runners
  already in `cache` (keyed by implementation and problem) are reused, compiled code included."""
  entries, runners = [], {}
  cache = {} if cache is None else cache
  for impl in impls:
    if problem.kind not in impl.labels:
      continue
    entry = _entry(impl, problem, section)
    try:
      if (impl.key, problem) not in cache:
        cache[(impl.key, problem)] = impl.build(problem)
      runner = cache[(impl.key, problem)]
      runners[impl.key] = runner
      entry["device"] = runner.device
    except peers.Missing as e:
      entry["status"], entry["reason"] = "missing", str(e)
    except Exception as e:  # A peer that breaks must not take the suite down with it.
      entry["status"], entry["reason"] = "error", f"build: {_error_text(e)}"
      log(f"    {impl.key}: build failed: {_error_text(e)}")
      log(traceback.format_exc(limit=3))
    entries.append(entry)
  return entries, runners


def time_group(runners: dict, entries_by_key: dict, mode: str, settings: Settings, log) -> None:
  """Compiles, warms up and times every runner for `mode`, round-robin; fills the entries."""
  live = {}
  for key, runner in runners.items():
    entry = entries_by_key[key]
    try:
      runner.prepare(mode, settings.compiler_options)
      for _ in range(settings.warmup):
        runner.call(mode)
      start = time.perf_counter()
      runner.call(mode)
      once = time.perf_counter() - start
      number = max(1, math.ceil(settings.min_sample_s / max(once, 1e-9)))
      memory, source = runner.memory(mode)
      entry["modes"][mode] = {"compile_s": runner.compile_seconds(mode), "memory_bytes": memory,
                              "memory_source": source, "number": number, "samples_ms": []}
      live[key] = (runner, number)
    except Exception as e:
      entry["status"] = "error"
      entry["reason"] = f"{mode}: {_error_text(e)}"
      log(f"    {key} {mode}: failed: {_error_text(e)}")
  keys = list(live)
  start_group = time.perf_counter()
  for r in range(settings.reps):
    # Rotate the order each round so that no implementation always runs after the same one.
    order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
    for key in order:
      runner, number = live[key]
      start = time.perf_counter()
      for _ in range(number):
        runner.call(mode)
      entries_by_key[key]["modes"][mode]["samples_ms"].append(
          (time.perf_counter() - start) / number * 1e3)
    if r + 1 >= settings.min_reps and time.perf_counter() - start_group > settings.max_group_s:
      break
  for key in keys:
    stats = entries_by_key[key]["modes"][mode]
    samples = stats["samples_ms"]
    stats["median_ms"] = statistics.median(samples)
    stats["min_ms"] = min(samples)
    q = np.percentile(samples, [25, 75])
    stats["iqr_ms"] = float(q[1] - q[0])
    stats["reps"] = len(samples)


def add_derived(entries: list, problem: peers.Problem, peak_gflops: float) -> None:
  """Ratios to the PyTorch and Flax baselines of the same group, GFLOP/s, fraction of peak."""
  by_key = {e["impl"]: e for e in entries}
  torch_entry = by_key.get(peers.TORCH_BASELINE)
  flax_entry = by_key.get(peers.FLAX_BASELINE[problem.kind])
  for entry in entries:
    for mode, stats in entry["modes"].items():
      if "median_ms" not in stats:
        continue
      flops = peers.matmul_flops(problem, mode)
      seconds = stats["median_ms"] / 1e3
      stats["matmul_flops"] = flops
      stats["gflops"] = flops / seconds / 1e9
      stats["peak_fraction"] = stats["gflops"] / peak_gflops
      for name, base in (("vs_torch", torch_entry), ("vs_flax", flax_entry)):
        base_ms = (base or {}).get("modes", {}).get(mode, {}).get("median_ms")
        stats[name] = stats["median_ms"] / base_ms if base_ms else None


def cross_check(runners: dict, entries_by_key: dict) -> None:
  """jaxrnn (and the user-written IndRNN peers) run PyTorch's weights: record the largest output
  difference from PyTorch's."""
  torch_runner = runners.get(peers.TORCH_BASELINE)
  if torch_runner is None:
    return
  expected = torch_runner.output()
  for key, runner in runners.items():
    if runner.torch_weights and key != peers.TORCH_BASELINE:
      try:
        entries_by_key[key]["max_abs_diff_vs_torch"] = float(
            np.max(np.abs(runner.output() - expected)))
      except Exception as e:
        entries_by_key[key]["status"] = "error"
        entries_by_key[key]["reason"] = f"output: {_error_text(e)}"


def run_problem(impls, problem: peers.Problem, section: str, modes, settings: Settings,
                peak_gflops: float, log, cache: Optional[dict] = None) -> list:
  log(f"  {section}: {problem.kind} (B, T, D, H) = {problem.shape}")
  entries, runners = build_all(impls, problem, section, log, cache)
  by_key = {e["impl"]: e for e in entries}
  for mode in modes:
    time_group(runners, by_key, mode, settings, log)
  if section == "shapes":
    cross_check(runners, by_key)
  add_derived(entries, problem, peak_gflops)
  for entry in entries:
    parts = [f"{m} {s['median_ms']:.3g} ms" for m, s in entry["modes"].items() if "median_ms" in s]
    log(f"    {entry['impl']:<24} {entry['status']:<8} {'; '.join(parts) or entry['reason']}")
  return entries


def run_suite(args) -> dict:
  settings = QUICK if args.quick else FULL
  if args.reps:
    settings = dataclasses.replace(settings, reps=args.reps, min_reps=min(settings.min_reps,
                                                                          args.reps))
  log = (lambda msg: None) if args.silent else (lambda msg: print(msg, flush=True))
  torch_threads = None
  try:
    import torch
    # Quick runs use one thread: on a loaded machine an OpenMP team waiting for a core can make
    # a tiny call take a hundred times longer, and the quick run's numbers mean nothing anyway.
    torch_threads = args.torch_threads or (1 if args.quick else os.cpu_count())
    torch.set_num_threads(torch_threads)
  except Exception:
    pass
  env = environment(torch_threads)
  log(f"device {env['device']} ({env['jax_device_kind']}), torch on {env['torch_device']}, "
      f"{torch_threads} torch threads")
  matmul_n = args.matmul_n or (settings.matmul_n if jax.default_backend() == "cpu" else 8192)
  peak_start = matmul_peak(matmul_n)
  log(f"matmul peak ({matmul_n}^2 float32): {peak_start['gflops']:.1f} GFLOP/s")
  peak = peak_start["gflops"]

  unrolls = tuple(int(u) for u in args.unrolls.split(","))
  impls = peers.registry(unrolls)
  kinds = tuple(args.kinds.split(",")) if args.kinds else peers.KINDS
  shapes = tuple(tuple(int(v) for v in s.split(",")) for s in args.shape) if args.shape else (
      QUICK_SHAPES if args.quick else SHAPES)
  entries = []
  # Runners live for one problem, except in the quick run, whose sweep point reuses them.
  cache = {} if args.quick else None
  for kind in kinds:
    for shape in shapes:
      problem = peers.Problem(kind, *shape)
      entries += run_problem(impls, problem, "shapes", peers.MODES, settings, peak, log, cache)
  if not args.no_sweep:
    steps = QUICK_SWEEP_STEPS if args.quick else SWEEP_STEPS
    batch, size = QUICK_SWEEP if args.quick else (SWEEP_BATCH, SWEEP_SIZE)
    for t in steps:
      problem = peers.Problem(SWEEP_KIND, batch, t, size, size)
      entries += run_problem(impls, problem, "sweep", ("fwdbwd",), settings, peak, log, cache)
  peak_end = matmul_peak(matmul_n)
  log(f"matmul peak at the end: {peak_end['gflops']:.1f} GFLOP/s")
  return {"environment": env, "settings": dataclasses.asdict(settings), "quick": args.quick,
          "matmul_peak": {"start": peak_start, "end": peak_end, "used_gflops": peak},
          "flops_formula": peers.matmul_flops.__doc__.strip(), "results": entries}


# ---------------------------------------------------------------------------------------------
# Reports


def _fmt(value, spec: str = ".4g") -> str:
  return "—" if value is None else format(value, spec)


def _ratio(value) -> str:
  return "—" if value is None else f"{value:.2f}x"


def _shape_text(shape) -> str:
  return ", ".join(str(v) for v in shape)


def _mode(entry: dict, mode: str) -> dict:
  return entry["modes"].get(mode, {})


def markdown(data: dict) -> str:
  """The Markdown report of a results JSON (as `run_suite` returns and `results.json` holds)."""
  env, results = data["environment"], data["results"]
  peak = data["matmul_peak"]
  lines = [f"# jaxrnn benchmarks on `{env['device']}`", ""]
  lines.append(
      f"{env['date']}; {env['jax_device_kind']} ({env.get('cpu_model') or '?'}, "
      f"{env['cpu_count']} CPUs); jax {env['versions']['jax']}, torch "
      f"{env['versions']['torch']} on {env['torch_device']} with {env['torch_threads']} threads, "
      f"flax {env['versions']['flax']}, equinox {env['versions']['equinox']}, dm-haiku "
      f"{env['versions']['dm-haiku']}; jaxrnn commit {env.get('jaxrnn_commit')}; float32. "
      f"Matmul peak ({peak['start']['n']}² float32 jnp.matmul): "
      f"{peak['start']['gflops']:.1f} GFLOP/s at the start, {peak['end']['gflops']:.1f} at the "
      f"end.{' QUICK RUN: tiny shapes, 2-3 repetitions; the numbers mean nothing.' if data['quick'] else ''}")
  lines.append("")
  lines += _summary(results)
  shapes = [e for e in results if e["section"] == "shapes"]
  groups: dict = {}
  for e in shapes:
    groups.setdefault((e["kind"], tuple(e["shape"])), []).append(e)
  for (kind, shape), group in groups.items():
    lines += ["", f"## {peers.KIND_NAMES[kind]}, (B, T, D, H) = ({_shape_text(shape)})", ""]
    lines.append("| implementation | fwd ms | fwd ×torch | fwd ×flax | fwd+bwd ms | fwd+bwd ×torch "
                 "| fwd+bwd ×flax | compile s fwd / fwd+bwd | memory MB fwd+bwd | GFLOP/s fwd+bwd "
                 "| % matmul peak | max abs diff vs torch |")
    lines.append("|---" * 12 + "|")
    for e in group:
      if e["status"] != "ok" and not e["modes"]:
        lines.append(f"| {e['label']} | {e['status']} |" + " |" * 10)
        continue
      f, fb = _mode(e, "fwd"), _mode(e, "fwdbwd")
      mem = fb.get("memory_bytes")
      lines.append(
          f"| {e['label']} | {_fmt(f.get('median_ms'))} | {_ratio(f.get('vs_torch'))} | "
          f"{_ratio(f.get('vs_flax'))} | {_fmt(fb.get('median_ms'))} | "
          f"{_ratio(fb.get('vs_torch'))} | {_ratio(fb.get('vs_flax'))} | "
          f"{_fmt(f.get('compile_s'), '.2f')} / {_fmt(fb.get('compile_s'), '.2f')} | "
          f"{_fmt(None if mem is None else mem / 2**20, '.3g')} | {_fmt(fb.get('gflops'), '.3g')} | "
          f"{_fmt(None if fb.get('peak_fraction') is None else 100 * fb['peak_fraction'], '.0f')} | "
          f"{_fmt(e.get('max_abs_diff_vs_torch'), '.1e')} |")
    lines += _notes(group)
  sweep = [e for e in results if e["section"] == "sweep"]
  if sweep:
    b, _, d, h = sweep[0]["shape"]
    lines += ["", f"## Sequence-length sweep: {peers.KIND_NAMES[sweep[0]['kind']]}, B={b}, "
              f"D={d}, H={h}, "
              "forward+backward", ""]
    lines.append("| T | implementation | fwd+bwd ms | ×torch | ×flax | ms per step | compile s "
                 "| memory MB |")
    lines.append("|---" * 8 + "|")
    for e in sweep:
      t = e["shape"][1]
      fb = _mode(e, "fwdbwd")
      if "median_ms" not in fb:
        lines.append(f"| {t} | {e['label']} | {e['status']} |" + " |" * 5)
        continue
      mem = fb.get("memory_bytes")
      lines.append(
          f"| {t} | {e['label']} | {_fmt(fb['median_ms'])} | {_ratio(fb.get('vs_torch'))} | "
          f"{_ratio(fb.get('vs_flax'))} | {_fmt(fb['median_ms'] / t, '.3g')} | "
          f"{_fmt(fb.get('compile_s'), '.2f')} | "
          f"{_fmt(None if mem is None else mem / 2**20, '.3g')} |")
    lines += _notes(sweep)
  lines.append("")
  return "\n".join(lines)


def _summary(results: list) -> list:
  """jaxrnn's default path relative to PyTorch and to Flax, one row per kind and shape."""
  rows = [e for e in results if e["section"] == "shapes" and e["impl"] == "jaxrnn-auto"]
  if not rows:
    return []
  lines = ["## Summary: `jr.scan` (implementation=\"auto\", unroll=1), time relative to peers",
           "", "Below 1.00x jaxrnn is faster. ×flax is against linen's OptimizedLSTMCell (LSTM), "
           "GRUCell (GRU), SimpleCell (RNN) and a user-written linen IndRNN cell (IndRNN; "
           "×torch for the IndRNN is against a user-written PyTorch module, as neither library "
           "ships one).", "",
           "| cell | B, T, D, H | fwd ×torch | fwd+bwd ×torch | fwd ×flax | fwd+bwd ×flax |",
           "|---|---|---|---|---|---|"]
  for e in rows:
    f, fb = _mode(e, "fwd"), _mode(e, "fwdbwd")
    lines.append(f"| {peers.KIND_NAMES[e['kind']]} | {_shape_text(e['shape'])} | "
                 f"{_ratio(f.get('vs_torch'))} | {_ratio(fb.get('vs_torch'))} | "
                 f"{_ratio(f.get('vs_flax'))} | {_ratio(fb.get('vs_flax'))} |")
  return lines


def _notes(group: list) -> list:
  seen, notes = set(), []
  for e in group:
    if e["status"] != "ok" and (e["label"], e["reason"]) not in seen:
      seen.add((e["label"], e["reason"]))
      notes.append(f"- {e['label']}: {e['status']}: {e['reason']}")
  return [""] + notes if notes else []


def plot(data: dict, path: str) -> None:
  """Forward+backward time relative to PyTorch per kind and shape, and the T sweep."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  results = data["results"]
  shapes = [e for e in results if e["section"] == "shapes"]
  sweep = [e for e in results if e["section"] == "sweep"]
  kinds = list(dict.fromkeys(e["kind"] for e in shapes))
  # Top row: one panel per cell kind; bottom row: the sweep's time and compile time.
  ncols = max(3, len(kinds))
  fig, grid = plt.subplots(2, ncols, figsize=(6 * ncols, 12), squeeze=False)
  axes = list(grid[0][:len(kinds)]) + [grid[1][0], grid[1][1]]
  for ax in (list(grid[0][len(kinds):]) + list(grid[1][2:])
             + ([] if sweep else [grid[1][0], grid[1][1]])):
    ax.set_visible(False)
  for ax, kind in zip(axes, kinds):
    group = [e for e in shapes if e["kind"] == kind]
    shape_keys = list(dict.fromkeys(tuple(e["shape"]) for e in group))
    labels = list(dict.fromkeys(e["label"] for e in group))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
      values = []
      for s in shape_keys:
        match = [e for e in group if e["label"] == label and tuple(e["shape"]) == s]
        ratio = _mode(match[0], "fwdbwd").get("vs_torch") if match else None
        values.append(np.nan if ratio is None else ratio)
      ax.bar(np.arange(len(shape_keys)) + i * width, values, width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(shape_keys)) + 0.4 - width / 2)
    ax.set_xticklabels(["\n".join(map(str, s)) for s in shape_keys], fontsize=7)
    ax.set_title(f"{peers.KIND_NAMES[kind]} fwd+bwd, time / PyTorch (B, T, D, H)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
  if sweep:
    labels = list(dict.fromkeys(e["label"] for e in sweep))
    for i, label in enumerate(labels):
      color = f"C{i % 10}"  # the same color in both panels, though PyTorch has no compile time
      pts = [(e["shape"][1], _mode(e, "fwdbwd")) for e in sweep if e["label"] == label]
      pts = [(t, m) for t, m in pts if "median_ms" in m]
      if not pts:
        continue
      axes[-2].plot([t for t, _ in pts], [m["median_ms"] for _, m in pts], "o-", label=label,
                    color=color)
      compiled = [(t, m["compile_s"]) for t, m in pts if m.get("compile_s") is not None]
      if compiled:
        axes[-1].plot(*zip(*compiled), "o-", label=label, color=color)
    b, _, d, h = sweep[0]["shape"]
    axes[-2].set(xscale="log", yscale="log", xlabel="T", ylabel="fwd+bwd ms")
    axes[-2].set_title(f"T sweep ({peers.KIND_NAMES[sweep[0]['kind']]}, B={b}, D={d}, H={h})",
                       fontsize=9)
    axes[-1].set(xscale="log", xlabel="T", ylabel="compile s (fwd+bwd)")
    axes[-1].set_title("compile time against T", fontsize=9)
    axes[-2].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
  fig.suptitle(f"jaxrnn benchmarks on {data['environment']['device']}"
               + (" (quick run: not meaningful)" if data["quick"] else ""))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(data: dict, directory: str) -> dict:
  os.makedirs(directory, exist_ok=True)
  paths = {name: os.path.join(directory, f"results.{name}") for name in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump(data, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown(data))
  plot(data, paths["png"])
  return paths


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny shapes, 3 repetitions, < 1 minute")
  p.add_argument("--out", default=RESULTS_DIR,
                 help="results go to OUT/<device>/ (default benchmarks/results)")
  p.add_argument("--table", metavar="RESULTS_JSON",
                 help="print the Markdown report of an existing results.json and exit")
  p.add_argument("--kinds", help="comma-separated subset of " + ",".join(peers.KINDS))
  p.add_argument("--shape", action="append", metavar="B,T,D,H",
                 help="run this shape instead of the default ones (repeatable)")
  p.add_argument("--no-sweep", action="store_true", help="skip the sequence-length sweep")
  p.add_argument("--unrolls", default="1",
                 help="comma-separated scan unroll factors for the jaxrnn entries (default 1)")
  p.add_argument("--reps", type=int, help="round-robin rounds per group")
  p.add_argument("--torch-threads", type=int,
                 help="torch.set_num_threads (default os.cpu_count(); 1 with --quick)")
  p.add_argument("--matmul-n", type=int, help="side of the peak-measuring matmul")
  p.add_argument("--silent", action="store_true", help="no progress log")
  args = p.parse_args(argv)
  unknown = [k for k in (args.kinds or "").split(",") if args.kinds and k not in peers.KINDS]
  if unknown:
    p.error(f"unknown kinds {unknown}; choose from {','.join(peers.KINDS)}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(markdown(json.load(f)))
    return 0
  data = run_suite(args)
  paths = write(data, os.path.join(args.out, data["environment"]["device"]))
  if not args.silent:
    print("wrote " + ", ".join(paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
