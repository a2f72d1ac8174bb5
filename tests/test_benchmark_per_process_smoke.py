"""Smoke test of `benchmarks/per_process.py --quick`: one process per library, ratios per round.

No timing is asserted (the machine is shared). What is checked is the method: every worker was
its own process, each recorded its library's threads, the ratios were taken within each round
and their medians reported, and every row has its fraction of the matmul peak. To fit in about a
minute on a loaded 2-core machine the run is narrowed to jaxrnn's default, PyTorch and Flax's
OptimizedLSTMCell, forward+backward only (3 workers a round, 2 rounds, and the 2 peak processes).
"""

import json
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import peers  # noqa: E402
import per_process  # noqa: E402

IMPLS = ("jaxrnn-auto", "pytorch", "flax-linen-optimized")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """(device folder, parsed per_process.json) of a narrowed `--quick` run in a subprocess."""
  out = tmp_path_factory.mktemp("per_process")
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "per_process.py"), "--quick",
                         "--silent", "--impls", ",".join(IMPLS), "--modes", "fwd+bwd",
                         "--out", str(out)],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (device_dir,) = [p for p in out.iterdir() if p.is_dir()]
  with open(device_dir / "per_process.json") as f:
    return device_dir, json.load(f)


def _workers(data):
  return [r for entry in data["rounds"] for r in entry["results"].values()]


def test_writes_json_and_markdown_with_the_machine(quick):
  device_dir, data = quick
  assert device_dir.name == data["environment"]["device"]
  for name in ("per_process.json", "per_process.md"):
    assert (device_dir / name).stat().st_size > 0, name
  env = data["environment"]
  assert data["quick"] is True
  assert env["isa"] in ("AVX-512", "AVX2", "other")
  assert "cpu_model" in env and env["cpu_count"] >= 1
  for when in ("start", "end"):
    assert data["matmul_peak"][when]["gflops"] > 0
    assert len(data["load_average"][when]) == 3


def test_every_library_ran_in_its_own_process(quick):
  _, data = quick
  workers = _workers(data)
  assert data["settings"]["rounds_run"] == 2
  assert len(workers) == 2 * len(IMPLS)
  assert all(w["status"] == "ok" for w in workers), [w.get("reason") for w in workers]
  pids = [w["pid"] for w in workers]
  pids += [data["matmul_peak"]["start_pid"], data["matmul_peak"]["end_pid"], data["driver_pid"]]
  assert len(set(pids)) == len(pids)
  for entry in data["rounds"]:
    assert sorted(entry["order"]) == sorted(IMPLS)
  # The order rotates from round to round.
  assert data["rounds"][0]["order"] != data["rounds"][1]["order"]


def test_threads_recorded_per_library(quick):
  _, data = quick
  for w in _workers(data):
    threads = w["threads"]
    assert threads["count"] >= 1
    assert threads["cpu_count"] == os.cpu_count()
    if w["impl"] == peers.TORCH_BASELINE:
      assert threads["library"] == "torch"
      assert threads["torch_num_threads"] == threads["count"]
    else:
      assert threads["library"] == "xla"
      assert threads["xla_cpu_threads"] == threads["count"]


def test_ratios_are_taken_per_round_and_their_medians_reported(quick):
  _, data = quick
  for entry in data["rounds"]:
    ms = {k: r["median_ms"] for k, r in entry["results"].items()}
    for key, ratios in entry["ratios"].items():
      assert ratios["vs_torch"] == pytest.approx(ms[key] / ms["pytorch"], rel=1e-12)
      assert ratios["vs_flax"] == pytest.approx(ms[key] / ms["flax-linen-optimized"], rel=1e-12)
      assert ratios["vs_jaxrnn"] == pytest.approx(ms[key] / ms["jaxrnn-auto"], rel=1e-12)
  rows = {e["impl"]: e for e in data["results"]}
  assert sorted(rows) == sorted(IMPLS)
  for key, row in rows.items():
    stats = row["modes"]["fwdbwd"]
    per_round = [entry["ratios"][key]["vs_torch"] for entry in data["rounds"]]
    assert stats["vs_torch"] == pytest.approx(statistics.median(per_round), rel=1e-12)
    assert stats["median_ms"] == pytest.approx(statistics.median(stats["round_medians_ms"]))
  assert rows["pytorch"]["modes"]["fwdbwd"]["vs_torch"] == pytest.approx(1.0)


def test_fraction_of_peak_and_goals_present(quick):
  _, data = quick
  problem = peers.Problem("lstm", *per_process.QUICK_SHAPES[0])
  for row in data["results"]:
    stats = row["modes"]["fwdbwd"]
    assert stats["matmul_flops"] == peers.matmul_flops(problem, "fwdbwd")
    assert stats["peak_fraction"] == pytest.approx(
        stats["gflops"] / data["matmul_peak"]["used_gflops"])
    assert stats["peak_fraction"] > 0
  goals = data["goals"]
  assert {g["against"].split()[0] for g in goals} == {"PyTorch", "Flax"}
  assert all(g["met"] in (True, False) for g in goals)


def test_table_reproduces_the_markdown(quick):
  device_dir, _ = quick
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "per_process.py"), "--table",
                         str(device_dir / "per_process.json")],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  markdown = (device_dir / "per_process.md").read_text()
  assert proc.stdout.rstrip("\n") == markdown.rstrip("\n")
  assert "| threads |" in markdown and "## Goals" in markdown
