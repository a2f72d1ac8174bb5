"""jaxrnn against its peers as users run them: each library in its own process, default threads.

    python benchmarks/per_process.py                       # LSTM at the four shapes, 5 rounds
    python benchmarks/per_process.py --kinds lstm,gru,rnn --max-minutes 15
    python benchmarks/per_process.py --quick               # tiny shape, 2 rounds: a smoke run
    python benchmarks/per_process.py --table DIR/per_process.json   # Markdown only

`run.py` times every implementation round-robin in ONE process, where PyTorch's OpenMP threads
and XLA's thread pool compete for the same cores. Here every measurement is a fresh worker
process that builds ONE implementation (`peers.registry()`, `peers.Problem`) with its library's
default threading (no `torch.set_num_threads`), compiles and warms it up, times `--reps` calls
and prints one JSON line:

    python benchmarks/per_process.py --worker pytorch --kind lstm --shape 32,100,128,256 \\
        --mode fwd+bwd --reps 10

The driver runs rounds. In each round every (kind, shape, mode) group runs every implementation
in its own worker, one after the other, the order rotated from round to round; the ratios of
each implementation to PyTorch, to the Flax baseline and to jaxrnn's default are taken within
the round, and the report gives the medians over rounds of the times and of those ratios. The
matmul peak is measured in its own process at the start and at the end, with the CPU model,
the ISA and the load average. Writes `per_process.json` and `per_process.md` into
`<out>/<device>/` (default `benchmarks/results/<device>/`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

# Runs as a script and as a module (the smoke test imports it).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
import run  # noqa: E402

SCRIPT = os.path.abspath(__file__)
LSTM_SHAPES = ((1, 1000, 32, 64), (32, 100, 128, 256), (64, 100, 256, 512), (16, 2000, 64, 128))
QUICK_SHAPES = ((4, 12, 8, 8),)
MODE_NAMES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}   # peers' key -> what the CLI and report say
JAXRNN_DEFAULT = "jaxrnn-auto"
_shape_text = run._shape_text  # pylint: disable=protected-access


def overhead_bound(shape) -> bool:
  """B = 1 or T >= 2000: per-step overhead, not matmul speed, sets the time; there the goal is
  to be at least 1.3x faster than PyTorch."""
  return shape[0] == 1 or shape[1] >= 2000


def default_impls(kind: str) -> tuple:
  """jaxrnn's default and reference paths, PyTorch, and the Flax linen baseline of `kind`."""
  return (JAXRNN_DEFAULT, "jaxrnn-reference", peers.TORCH_BASELINE, peers.FLAX_BASELINE[kind])


# ---------------------------------------------------------------------------------------------
# Workers (each in its own process)


def _os_threads() -> Optional[int]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Threads:"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def _threads(framework: str) -> dict:
  """The threads this process computes with, as its library chose them by default."""
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  info = {"cpu_count": os.cpu_count(), "schedulable_cpus": cpus, "os_threads": _os_threads(),
          "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                 "XLA_FLAGS")}}
  if framework == "pytorch":
    import torch
    info["library"] = "torch"
    info["torch_num_threads"] = torch.get_num_threads()
    info["torch_interop_threads"] = torch.get_num_interop_threads()
    info["count"] = info["torch_num_threads"]
  else:
    # XLA:CPU has no API for its pool size: by default its intra-op pool has one thread per
    # schedulable CPU, and `--xla_cpu_multi_thread_eigen=false` leaves the Eigen matmuls on one.
    single = "xla_cpu_multi_thread_eigen=false" in (os.environ.get("XLA_FLAGS") or "")
    info["library"] = "xla"
    info["xla_cpu_threads"] = 1 if single else cpus
    info["count"] = info["xla_cpu_threads"]
  return info


def worker(impl_key: str, kind: str, shape, mode: str, reps: int, warmup: int,
           min_sample_ms: float, fast_compile: bool) -> dict:
  """Builds one implementation, compiles and warms it up, times `reps` samples of `mode`."""
  problem = peers.Problem(kind, *shape)
  impls = {impl.key: impl for impl in peers.registry()}
  result = {"impl": impl_key, "kind": kind, "shape": list(shape), "mode": mode,
            "pid": os.getpid(), "status": "ok", "reason": None,
            "versions": {p: run._version(p) for p in  # pylint: disable=protected-access
                         ("jax", "jaxlib", "jaxrnn", "torch", "flax", "numpy")}}
  if impl_key not in impls:
    raise SystemExit(f"unknown implementation {impl_key}; choose from {', '.join(impls)}")
  impl = impls[impl_key]
  result["framework"], result["label"] = impl.framework, impl.labels.get(kind, impl_key)
  if kind not in impl.labels:
    result["status"], result["reason"] = "missing", f"{impl_key} has no {kind} row"
    return result
  try:
    runner = impl.build(problem)
  except peers.Missing as e:
    result["status"], result["reason"] = "missing", str(e)
    return result
  options = {"xla_backend_optimization_level": 0} if fast_compile else None
  runner.prepare(mode, options)
  for _ in range(warmup):
    runner.call(mode)
  start = time.perf_counter()
  runner.call(mode)
  once = time.perf_counter() - start
  # A sample repeats the call until it lasts `min_sample_ms`, as run.py's samples do.
  number = max(1, math.ceil(min_sample_ms / 1e3 / max(once, 1e-9)))
  samples = []
  for _ in range(reps):
    start = time.perf_counter()
    for _ in range(number):
      runner.call(mode)
    samples.append((time.perf_counter() - start) / number * 1e3)
  result.update(median_ms=statistics.median(samples), samples_ms=samples, number=number,
                compile_s=runner.compile_seconds(mode), device=runner.device,
                threads=_threads(impl.framework))
  return result


def peak_worker(n: int) -> dict:
  """The machine (CPU model, ISA, versions) and the float32 matmul peak, in this process."""
  import jax  # pylint: disable=import-outside-toplevel
  import long_sequence  # pylint: disable=import-outside-toplevel
  env = long_sequence._cpu_flags()  # pylint: disable=protected-access
  env.pop("matmul_peak")  # its 1024^2 matmul; the peak reported is the n^2 one below
  env.pop("torch_threads")  # the torch workers record their own
  env["device"] = run.device_name()
  return {"pid": os.getpid(), "environment": env, "matmul_peak": run.matmul_peak(n),
          "jax_devices": [str(d) for d in jax.devices()]}


# ---------------------------------------------------------------------------------------------
# The driver


def _subprocess_json(argv: list, timeout: float) -> tuple[Optional[dict], str]:
  """Runs this script with `argv` in a fresh process: (its JSON line or None, error text)."""
  try:
    proc = subprocess.run([sys.executable, SCRIPT] + argv, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))
  except subprocess.TimeoutExpired:
    return None, f"timed out after {timeout:.0f} s"
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      try:
        return json.loads(line), ""
      except json.JSONDecodeError:
        break
  tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
  return None, f"exit {proc.returncode}: {tail}"[:300]


def _load() -> list:
  return [round(v, 2) for v in os.getloadavg()]


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a is not None and b else None


def _median(values) -> Optional[float]:
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def drive(args) -> dict:
  log = (lambda msg: None) if args.silent else (lambda msg: print(msg, flush=True))
  quick = args.quick
  kinds = tuple(args.kinds.split(",")) if args.kinds else ("lstm",)
  shapes = (tuple(tuple(int(v) for v in s.split(",")) for s in args.shape) if args.shape
            else QUICK_SHAPES if quick else LSTM_SHAPES)
  modes = tuple("fwdbwd" if m in ("fwd+bwd", "fwdbwd") else m for m in args.modes.split(","))
  rounds = args.rounds or (2 if quick else 5)
  reps = args.reps or (3 if quick else 10)
  matmul_n = args.matmul_n or (512 if quick else 2048)
  worker_flags = ["--reps", str(reps), "--warmup", "1" if quick else "2",
                  "--min-sample-ms", "0" if quick else "20"] + (["--fast-compile"] if quick else [])
  timeout = 300 if quick else 1200
  registry = {impl.key: impl for impl in peers.registry()}
  impls = {}
  for kind in kinds:
    keys = args.impls.split(",") if args.impls else default_impls(kind)
    unknown = [k for k in keys if k not in registry]
    if unknown:
      raise SystemExit(f"unknown implementations {unknown}; choose from {', '.join(registry)}")
    impls[kind] = [k for k in keys if kind in registry[k].labels]
  groups = [(kind, shape, mode) for kind in kinds for shape in shapes for mode in modes]

  load_start = _load()
  log(f"load average {load_start}; matmul peak ({matmul_n}^2) in its own process")
  peak_start, error = _subprocess_json(["--peak", str(matmul_n)], timeout)
  if peak_start is None:
    raise SystemExit(f"the matmul-peak process failed: {error}")
  env = peak_start["environment"]
  log(f"  {peak_start['matmul_peak']['gflops']:.1f} GFLOP/s on {env['cpu_model']} ({env['isa']})")

  # records[(kind, shape, mode)] = one dict per round: order, load, each worker's result.
  records = {g: [] for g in groups}
  skip = set()  # (kind, impl) reported "missing": it will not appear in a later round
  started = time.perf_counter()
  for r in range(rounds):
    if args.max_minutes and r >= 2:
      per_round = (time.perf_counter() - started) / r
      if time.perf_counter() - started + per_round > args.max_minutes * 60:
        log(f"stopping after {r} rounds: the next would pass --max-minutes {args.max_minutes}")
        break
    log(f"round {r + 1}/{rounds} (load {_load()})")
    for kind, shape, mode in groups:
      keys = [k for k in impls[kind] if (kind, k) not in skip]
      order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
      entry = {"round": r, "order": order, "load_start": _load(), "results": {}}
      for key in order:
        argv = ["--worker", key, "--kind", kind, "--shape", ",".join(map(str, shape)),
                "--mode", MODE_NAMES[mode]] + worker_flags
        result, error = _subprocess_json(argv, timeout)
        if result is None:
          result = {"impl": key, "status": "error", "reason": error}
        if result["status"] == "missing":
          skip.add((kind, key))
        entry["results"][key] = result
        log(f"  {kind} {shape} {MODE_NAMES[mode]:<7} {key:<22} "
            + (f"{result['median_ms']:.4g} ms (pid {result['pid']}, "
               f"{result['threads']['count']} threads)" if result["status"] == "ok"
               else f"{result['status']}: {result['reason']}"))
      entry["load_end"] = _load()
      entry["ratios"] = _round_ratios(entry["results"], kind)
      records[(kind, shape, mode)].append(entry)

  load_before_peak = _load()
  peak_end, error = _subprocess_json(["--peak", str(matmul_n)], timeout)
  if peak_end is None:  # the rounds' results are kept; the report says the end peak is missing
    peak_end = {"pid": None, "matmul_peak": {"n": matmul_n, "gflops": None, "error": error}}
  log(f"matmul peak at the end: {_fmt(peak_end['matmul_peak']['gflops'], '.1f')} GFLOP/s; "
      f"load average {load_before_peak}")
  peak = peak_start["matmul_peak"]["gflops"]
  results = []
  for kind in kinds:
    for shape in shapes:
      results += _entries(kind, shape, modes, impls[kind], records, registry, peak)
  return {
      "environment": env, "quick": quick, "driver_pid": os.getpid(),
      "settings": {"rounds_requested": rounds, "rounds_run": len(records[groups[0]]),
                   "reps": reps, "matmul_n": matmul_n, "max_minutes": args.max_minutes,
                   "worker_flags": worker_flags, "kinds": list(kinds),
                   "shapes": [list(s) for s in shapes], "modes": list(modes),
                   "impls": {k: list(v) for k, v in impls.items()}},
      "load_average": {"start": load_start, "end": load_before_peak,
                       "note": "os.getloadavg() (1, 5, 15 minutes) in the driver"},
      "matmul_peak": {"start": peak_start["matmul_peak"], "end": peak_end["matmul_peak"],
                      "start_pid": peak_start["pid"], "end_pid": peak_end["pid"],
                      "used_gflops": peak},
      "flops_formula": peers.matmul_flops.__doc__.strip(),
      "results": results,
      "rounds": [{"kind": k, "shape": list(s), "mode": m, **entry}
                 for (k, s, m), entries in records.items() for entry in entries],
      "goals": goals(results),
  }


def _round_ratios(results: dict, kind: str) -> dict:
  """Each implementation's time over PyTorch's, the Flax baseline's and jaxrnn's default's, all
  from the same round."""
  ms = {k: r.get("median_ms") for k, r in results.items() if r["status"] == "ok"}
  bases = {"vs_torch": peers.TORCH_BASELINE, "vs_flax": peers.FLAX_BASELINE[kind],
           "vs_jaxrnn": JAXRNN_DEFAULT}
  return {k: {name: _ratio(t, ms.get(base)) for name, base in bases.items()}
          for k, t in ms.items()}


def _entries(kind, shape, modes, keys, records, registry, peak) -> list:
  """One entry per implementation in run.py's layout (so that run.add_derived computes the
  FLOPs and the fraction of peak), ratios replaced by the medians of the per-round ratios."""
  problem = peers.Problem(kind, *shape)
  entries = []
  for key in keys:
    impl = registry[key]
    entry = {"kind": kind, "shape": list(shape), "impl": key, "label": impl.labels[kind],
             "framework": impl.framework, "status": "ok", "reason": None, "modes": {}}
    for mode in modes:
      runs = [e["results"][key] for e in records[(kind, shape, mode)] if key in e["results"]]
      ok = [r for r in runs if r["status"] == "ok"]
      bad = [r for r in runs if r["status"] != "ok"]
      if bad and entry["status"] == "ok":
        entry["status"] = bad[0]["status"]
        entry["reason"] = f"{MODE_NAMES[mode]}: {bad[0]['reason']}"
      if not ok:
        continue
      ratios = [e["ratios"].get(key, {}) for e in records[(kind, shape, mode)]]
      entry["modes"][mode] = {
          "median_ms": statistics.median(r["median_ms"] for r in ok),
          "round_medians_ms": [r["median_ms"] for r in ok],
          "min_ms": min(min(r["samples_ms"]) for r in ok),
          "rounds": len(ok), "errors": len(bad), "pids": [r["pid"] for r in ok],
          "threads": [r["threads"] for r in ok], "compile_s": [r["compile_s"] for r in ok],
          "round_ratios": ratios,
      }
      entry["versions"] = ok[0]["versions"]
    entries.append(entry)
  run.add_derived(entries, problem, peak)
  for entry in entries:
    for stats in entry["modes"].values():
      for name in ("vs_torch", "vs_flax"):
        stats[f"{name}_of_medians"] = stats.pop(name, None)
      for name in ("vs_torch", "vs_flax", "vs_jaxrnn"):
        stats[name] = _median(r.get(name) for r in stats["round_ratios"])
  return entries


def goals(results: list) -> list:
  """The goals of jaxrnn's default path (`jr.scan`, implementation="auto"), each with the median
  of its per-round ratios and whether it is met; a goal without a measurement says so."""
  found = []
  for e in results:
    if e["impl"] != JAXRNN_DEFAULT:
      continue
    shape, kind = tuple(e["shape"]), e["kind"]
    for mode, stats in e["modes"].items():
      checks = []
      if kind == "lstm":
        checks.append(("vs_torch", 1.0 if mode == "fwdbwd" else 1.1, "PyTorch"))
        if overhead_bound(shape):
          checks.append(("vs_torch", 1 / 1.3, "PyTorch (overhead-bound shape: 1.3x faster)"))
        if mode == "fwdbwd":
          checks.append(("vs_flax", 1 / 1.3, "Flax OptimizedLSTMCell (1.3x faster)"))
      elif kind in ("gru", "rnn"):
        checks.append(("vs_torch", 0.7, "PyTorch"))
      for name, limit, against in checks:
        ratio = stats.get(name)
        found.append({"kind": kind, "shape": list(shape), "mode": mode, "against": against,
                      "ratio": ratio, "limit": limit,
                      "met": None if ratio is None else ratio <= limit})
  return found


# ---------------------------------------------------------------------------------------------
# The report


def _fmt(value, spec: str = ".4g") -> str:
  return "—" if value is None else format(value, spec)


def _x(value) -> str:
  if value is None:
    return "—"
  return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _threads_text(stats: dict) -> str:
  counts = sorted({t["count"] for t in stats.get("threads", [])})
  if not counts:
    return "—"
  library = stats["threads"][0]["library"]
  return f"{'/'.join(map(str, counts))} ({library})"


def markdown(data: dict) -> str:
  """The Markdown report of `per_process.json`."""
  env, peak, load = data["environment"], data["matmul_peak"], data["load_average"]
  settings = data["settings"]
  cpus = env.get("cpu_count")
  lines = [f"# jaxrnn against its peers, one process per library, on `{env['device']}`", ""]
  lines.append(
      f"{env['date']}; {env.get('cpu_model') or '?'} ({cpus} CPUs, {env['isa']}); jax "
      f"{env['versions']['jax']}, torch {env['versions']['torch']}, flax "
      f"{env['versions']['flax']}; jaxrnn commit {env.get('jaxrnn_commit')}; float32. "
      f"`benchmarks/per_process.py`: every number is one fresh process per implementation and "
      f"measurement with its library's default threads; {settings['rounds_run']} rounds (the "
      f"order rotated each round) of {settings['reps']} timed samples each; times are medians "
      f"over rounds of each process's median, ratios the medians over rounds of the ratios "
      f"taken within each round.")
  lines.append("")
  lines.append(
      f"Matmul peak ({peak['start']['n']}² float32 `jnp.matmul`, its own process): "
      f"{peak['start']['gflops']:.1f} GFLOP/s at the start, "
      f"{_fmt(peak['end']['gflops'], '.1f')} at the end; % of peak uses the start. Load "
      f"average (1, 5, 15 min): {load['start']} at the start, {load['end']} at the end.")
  if data["quick"]:
    lines += ["", "QUICK RUN: tiny shape, 2 rounds, 3 repetitions; the numbers mean nothing."]
  busiest = max([load["start"][0], load["end"][0]]
                + [max(e["load_start"][0], e["load_end"][0]) for e in data["rounds"]])
  lines[-1] += (f" Highest 1-minute load around a group: {busiest} (the run itself keeps up to "
                f"{cpus} CPUs busy).")
  if cpus and busiest > cpus:
    lines += ["", f"**The machine was shared with other jobs during this run (load average above "
              f"its {cpus} CPUs): the times and ratios are not an idle machine's. Rerun on a "
              f"quiet machine before quoting them.**"]
  for kind in data["settings"]["kinds"]:
    rows = [e for e in data["results"] if e["kind"] == kind]
    lines += ["", f"## {peers.KIND_NAMES[kind]}", ""]
    lines.append("Ratios: time / the same round's PyTorch (×torch) or Flax linen "
                 f"{'OptimizedLSTMCell' if kind == 'lstm' else 'baseline'} (×flax) time; "
                 "below 1.00x is faster.")
    lines.append("")
    lines.append("| B, T, D, H | mode | implementation | median ms | ×torch | ×flax | "
                 "% matmul peak | threads | rounds |")
    lines.append("|---" * 9 + "|")
    for shape in data["settings"]["shapes"]:
      for mode in data["settings"]["modes"]:
        for e in (e for e in rows if e["shape"] == shape):
          stats = e["modes"].get(mode)
          if stats is None:
            lines.append(f"| {_shape_text(shape)} | {MODE_NAMES[mode]} | {e['label']} | "
                         f"{e['status']} | | | | | |")
            continue
          fraction = stats.get("peak_fraction")
          lines.append(
              f"| {_shape_text(shape)} | {MODE_NAMES[mode]} | {e['label']} | "
              f"{_fmt(stats['median_ms'])} | {_x(stats.get('vs_torch'))} | "
              f"{_x(stats.get('vs_flax'))} | "
              f"{_fmt(None if fraction is None else 100 * fraction, '.3g')} | "
              f"{_threads_text(stats)} | {stats['rounds']} |")
    notes = sorted({f"- {e['label']}: {e['status']}: {e['reason']}" for e in rows
                    if e["status"] != "ok"})
    if notes:
      lines += [""] + notes
  lines += ["", "## Goals (jaxrnn `jr.scan`, implementation=\"auto\")", ""]
  for g in data["goals"]:
    verdict = "not measured" if g["met"] is None else "met" if g["met"] else "NOT met"
    lines.append(f"- {peers.KIND_NAMES[g['kind']]} ({_shape_text(g['shape'])}) "
                 f"{MODE_NAMES[g['mode']]} ≤ {g['limit']:.2f}x {g['against']}: {verdict} "
                 f"({'—' if g['ratio'] is None else format(g['ratio'], '.3f')}x)")
  lines.append("")
  return "\n".join(lines)


def write(data: dict, directory: str) -> dict:
  os.makedirs(directory, exist_ok=True)
  paths = {name: os.path.join(directory, f"per_process.{name}") for name in ("json", "md")}
  with open(paths["json"], "w") as f:
    json.dump(data, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown(data))
  return paths


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny shape, 2 rounds, 3 repetitions")
  p.add_argument("--out", default=run.RESULTS_DIR,
                 help="results go to OUT/<device>/ (default benchmarks/results)")
  p.add_argument("--table", metavar="JSON", help="print the Markdown of a per_process.json")
  p.add_argument("--kinds", help="comma-separated subset of lstm,gru,rnn,indrnn (default lstm)")
  p.add_argument("--shape", action="append", metavar="B,T,D,H",
                 help="run this shape instead of the default ones (repeatable)")
  p.add_argument("--modes", default="fwd,fwd+bwd", help="comma-separated fwd, fwd+bwd")
  p.add_argument("--impls", help="comma-separated peers.py keys (default: jaxrnn-auto, "
                                 "jaxrnn-reference, pytorch and the Flax baseline of each kind)")
  p.add_argument("--rounds", type=int, help="rounds (default 5; 2 with --quick)")
  p.add_argument("--max-minutes", type=float,
                 help="start no round that would end after this many minutes (at least 2 run)")
  p.add_argument("--reps", type=int, help="timed samples per process (default 10; 3 quick)")
  p.add_argument("--matmul-n", type=int, help="side of the peak-measuring matmul")
  p.add_argument("--silent", action="store_true", help="no progress log")
  # Worker modes (one process, one implementation or the peak).
  p.add_argument("--worker", metavar="IMPL", help=argparse.SUPPRESS)
  p.add_argument("--kind", default="lstm", help=argparse.SUPPRESS)
  p.add_argument("--mode", default="fwd+bwd", choices=("fwd", "fwd+bwd", "fwdbwd"),
                 help=argparse.SUPPRESS)
  p.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
  p.add_argument("--min-sample-ms", type=float, default=20.0, help=argparse.SUPPRESS)
  p.add_argument("--fast-compile", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--peak", type=int, metavar="N", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  bad = [k for k in (args.kinds or "").split(",") if args.kinds and k not in peers.KINDS]
  bad += [m for m in args.modes.split(",") if m not in ("fwd", "fwd+bwd", "fwdbwd")]
  if bad:
    p.error(f"unknown kinds or modes {bad}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(markdown(json.load(f)))
    return 0
  if args.peak:
    print(json.dumps(peak_worker(args.peak)), flush=True)
    return 0
  if args.worker:
    shape = tuple(int(v) for v in (args.shape or ["4,12,8,8"])[-1].split(","))
    mode = "fwd" if args.mode == "fwd" else "fwdbwd"
    print(json.dumps(worker(args.worker, args.kind, shape, mode, args.reps or 10, args.warmup,
                            args.min_sample_ms, args.fast_compile)), flush=True)
    return 0
  data = drive(args)
  paths = write(data, os.path.join(args.out, data["environment"]["device"]))
  if not args.silent:
    print("wrote " + ", ".join(paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
