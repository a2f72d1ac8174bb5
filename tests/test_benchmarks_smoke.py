"""Smoke test of the benchmark suite: `benchmarks/run.py --quick` writes a complete report.

No timing is asserted (the machine is shared); what is checked is that the harness runs every
implementation or says why it cannot, computes its ratios inside the run, and that jaxrnn, given
PyTorch's weights, computes PyTorch's outputs.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import compile_time  # noqa: E402
import peers  # noqa: E402
import run  # noqa: E402


def _run_quick(script: str, out, json_name: str, timeout: int):
  """Runs `benchmarks/<script> --quick` into `out`: its device folder and parsed JSON.

  A subprocess, so the suite's test-wide JAX settings (x64, strict promotion) do not apply: the
  harness is measured as users run it (and compile_time.py clears JAX's caches as it goes)."""
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), "--quick",
                         "--silent", "--out", str(out)],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (device_dir,) = [p for p in out.iterdir() if p.is_dir()]
  with open(device_dir / json_name) as f:
    return device_dir, json.load(f)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  return _run_quick("run.py", tmp_path_factory.mktemp("bench"), "results.json", timeout=900)


def test_quick_run_writes_json_markdown_and_plot(quick_run):
  device_dir, data = quick_run
  assert device_dir.name == data["environment"]["device"]
  for name in ("results.json", "results.md", "results.png"):
    assert (device_dir / name).stat().st_size > 0, name
  assert data["quick"] is True
  assert data["matmul_peak"]["start"]["gflops"] > 0


def test_every_implementation_has_an_entry_per_kind(quick_run):
  _, data = quick_run
  shapes = [e for e in data["results"] if e["section"] == "shapes"]
  for impl in peers.registry():
    for kind in impl.labels:
      found = [e for e in shapes if e["impl"] == impl.key and e["kind"] == kind]
      assert len(found) == 1, (impl.key, kind)
      entry = found[0]
      # "error" means a peer or the harness broke: the run must say "ok" or "missing" (why).
      assert entry["status"] in ("ok", "missing"), (impl.key, kind, entry["reason"])
      if entry["status"] == "missing":
        assert entry["reason"], (impl.key, kind)
      else:
        for mode in peers.MODES:
          assert entry["modes"][mode]["median_ms"] > 0, (impl.key, kind, mode)


def test_ratios_are_computed_within_the_run(quick_run):
  _, data = quick_run
  ok = [e for e in data["results"] if e["status"] == "ok"]
  # jaxrnn, PyTorch and Flax linen are dependencies of the test environment, so both baselines
  # exist and every measured entry has both ratios.
  for entry in ok:
    baseline = {e["impl"]: e for e in ok if e["kind"] == entry["kind"]
                and e["shape"] == entry["shape"] and e["section"] == entry["section"]}
    for mode, stats in entry["modes"].items():
      torch_ms = baseline[peers.TORCH_BASELINE]["modes"][mode]["median_ms"]
      flax_ms = baseline[peers.FLAX_BASELINE[entry["kind"]]]["modes"][mode]["median_ms"]
      assert stats["vs_torch"] == pytest.approx(stats["median_ms"] / torch_ms, rel=1e-12)
      assert stats["vs_flax"] == pytest.approx(stats["median_ms"] / flax_ms, rel=1e-12)
      assert stats["gflops"] > 0 and stats["peak_fraction"] > 0


def test_sweep_point_is_reported(quick_run):
  _, data = quick_run
  sweep = [e for e in data["results"] if e["section"] == "sweep"]
  assert {e["impl"] for e in sweep} == {
      i.key for i in peers.registry() if run.SWEEP_KIND in i.labels}
  measured = [e for e in sweep if e["status"] == "ok"]
  assert measured and all("median_ms" in e["modes"]["fwdbwd"] for e in measured)


def test_jaxrnn_matches_pytorch_with_the_same_weights(quick_run):
  _, data = quick_run
  checked = [e for e in data["results"] if e["framework"] == "jaxrnn" and e["section"] == "shapes"]
  # auto and reference for every kind (the IndRNN included), plus the oneDNN kernel for the LSTM
  # (built in CI).
  assert "indrnn" in peers.KINDS
  assert len(checked) == 2 * len(peers.KINDS) + 1
  for entry in checked:
    # float32 (eps 1.2e-7) over 12 steps of length-16 dot products: differences of a few eps
    # expected. A wrong gate order or bias mapping gives differences of order 0.1.
    assert entry["max_abs_diff_vs_torch"] < 1e-5, (entry["impl"], entry["kind"])


def test_user_written_indrnn_peers_compute_the_same_function(quick_run):
  _, data = quick_run
  indrnn = {e["impl"]: e for e in data["results"]
            if e["kind"] == "indrnn" and e["section"] == "shapes"}
  # PyTorch and Flax ship no IndRNN: their rows are user-written modules, and they are the
  # baselines of the kind, so they must run (not be "missing") ...
  for key in (peers.TORCH_BASELINE, peers.FLAX_BASELINE["indrnn"]):
    assert indrnn[key]["status"] == "ok", (key, indrnn[key]["reason"])
    assert "user-written" in indrnn[key]["label"], key
  # ... on PyTorch's weights, giving PyTorch's outputs: the same float32 bound as jaxrnn's check
  # above (12 steps, length-8 dot products; a wrong weight mapping, e.g. w_ih untransposed or u
  # dropped, gives differences of order 0.1).
  assert indrnn[peers.FLAX_BASELINE["indrnn"]]["max_abs_diff_vs_torch"] < 1e-5
  # The frameworks without an IndRNN say so.
  for key in ("flax-nnx", "equinox", "haiku", "jax-cudnn"):
    assert indrnn[key]["status"] == "missing" and "IndRNN" in indrnn[key]["label"], key
  assert "IndRNN" in indrnn["equinox"]["reason"] and "IndRNN" in indrnn["haiku"]["reason"]


def test_table_command_prints_the_markdown_of_a_results_file(quick_run):
  device_dir, data = quick_run
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "run.py"), "--table",
                         str(device_dir / "results.json")],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.strip() == (device_dir / "results.md").read_text().strip()
  for entry in data["results"]:
    assert entry["label"] in proc.stdout
  assert "missing" in proc.stdout  # at least Equinox, which has no simple RNN cell


def test_matmul_flops_formula():
  lstm = peers.Problem("lstm", batch=2, steps=3, features=4, hidden=5)
  # One step: (B, D+H) @ (D+H, 4H) = 2 * 2 * 9 * 20 FLOPs; T = 3 steps.
  assert peers.matmul_flops(lstm, "fwd") == 2 * 2 * 9 * 20 * 3
  assert peers.matmul_flops(lstm, "fwdbwd") == 3 * peers.matmul_flops(lstm, "fwd")
  gru = peers.Problem("gru", batch=1, steps=1, features=1, hidden=1)
  rnn = peers.Problem("rnn", batch=1, steps=1, features=1, hidden=1)
  assert peers.matmul_flops(gru, "fwd") == 2 * 2 * 3 and peers.matmul_flops(rnn, "fwd") == 2 * 2
  # The IndRNN's recurrence is elementwise: only the input projection (B, D) @ (D, H) counts.
  indrnn = peers.Problem("indrnn", batch=2, steps=3, features=4, hidden=5)
  assert peers.matmul_flops(indrnn, "fwd") == 2 * 2 * 4 * 5 * 3
  assert peers.matmul_flops(indrnn, "fwdbwd") == 3 * peers.matmul_flops(indrnn, "fwd")


def test_markdown_has_an_indrnn_summary_row_and_table(quick_run):
  device_dir, _ = quick_run
  text = (device_dir / "results.md").read_text()
  b, t, d, h = run.QUICK_SHAPES[0]
  assert f"## IndRNN, (B, T, D, H) = ({b}, {t}, {d}, {h})" in text
  assert f"| IndRNN | {b}, {t}, {d}, {h} |" in text  # the summary row


def test_kinds_option_rejects_an_unknown_kind():
  with pytest.raises(SystemExit):
    run.parse_args(["--kinds", "lstm,indrnm"])
  assert run.parse_args(["--kinds", "indrnn"]).kinds == "indrnn"


def test_compile_time_script_reports_fresh_compiles_per_length(tmp_path):
  device_dir, data = _run_quick("compile_time.py", tmp_path, "compile.json", timeout=600)
  entries = data["results"]
  assert [(e["impl"], e["shape"][1]) for e in entries] == [
      (k, t) for k in compile_time.IMPLS for t in compile_time.QUICK_STEPS]
  for e in entries:
    assert e["status"] == "ok", (e["impl"], e["reason"])
    assert len(e["samples_s"]) == data["rounds"] == 2 and min(e["samples_s"]) > 0
    assert e["median_s"] == pytest.approx(sum(e["samples_s"]) / 2, rel=1e-12)
  # ×T is the median over the same implementation's median at the base length (the longest
  # quick length, the one nearest T = 100), so it is exactly 1 there.
  base = {e["impl"]: e["median_s"] for e in entries if e["shape"][1] == 12}
  for e in entries:
    assert e["vs_base"] == pytest.approx(e["median_s"] / base[e["impl"]], rel=1e-12)
  text = (device_dir / "compile.md").read_text()
  assert all(e["label"] in text for e in entries)


def test_long_sequence_script_reports_memory_and_time_with_and_without_remat(tmp_path):
  device_dir, data = _run_quick("long_sequence.py", tmp_path, "long_sequence.json", timeout=600)
  results = data["results"]
  assert [(r["T"], r["remat"]) for r in results] == [(20, "none"), (20, "sqrt"), (60, "none"),
                                                      (60, "sqrt")]
  assert all("error" not in r and r["peak_rss_mb"] > 0 and r["step_s"] > 0 for r in results)
  # remat changes memory, not the forward's values: the first step's loss (before any update)
  # is bit for bit the same with and without it. The gradients are summed in another order
  # (over spans of steps), about 1e-8 apart at this size, so after an Adam update the last
  # step's loss agrees to float32 rounding, not bit for bit.
  assert results[0]["first_loss"] == results[1]["first_loss"]
  assert results[2]["first_loss"] == results[3]["first_loss"]
  for a, b in ((results[0], results[1]), (results[2], results[3])):
    assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(a["loss"])
  assert data["environment"]["isa"] in ("AVX-512", "AVX2", "other")
  assert (device_dir / "long_sequence.md").read_text().count("| 20 |") == 2


def test_train_step_overhead_script_times_the_three_steps(tmp_path):
  _, data = _run_quick("train_step_overhead.py", tmp_path, "train_step_overhead.json",
                       timeout=600)
  ratios = data["ratio_to_hand_written"]
  assert set(ratios) == {"hand-written", "train_step", "train_step(skip_nonfinite=False)"}
  assert ratios["hand-written"] == 1.0 and all(r > 0 for r in ratios.values())


def test_compile_time_script_rejects_an_unknown_implementation():
  with pytest.raises(ValueError, match="unknown implementations"):
    compile_time.measure(("jaxrnn-auto", "jaxrnn-autp"), (4,), 2, 4, 1, lambda msg: None)


def test_haiku_simple_rnn_row_computes_the_tanh_rnn():
  """`hk.VanillaRNN` applies ReLU; the Haiku simple-RNN row is a user-written tanh core on
  PyTorch's weights, so it must give `nn.RNN`'s outputs (the float32 bound of the checks above;
  ReLU instead of tanh gives differences of order 0.1)."""
  problem = peers.Problem("rnn", batch=2, steps=12, features=8, hidden=16)
  (haiku,) = [i for i in peers.registry() if i.key == "haiku"]
  assert "tanh" in haiku.labels["rnn"]
  runner = haiku.build(problem)
  assert runner.torch_weights
  torch_out = peers.build_torch(problem).output()
  assert abs(runner.output() - torch_out).max() < 1e-5


def test_parallel_scan_script_times_every_strategy_and_reports_newton(tmp_path):
  device_dir, data = _run_quick("parallel_scan.py", tmp_path, "parallel_scan.json", timeout=600)
  impls = {"scan", "parallel", "associative", "chunked", "loop"}
  for mode in ("fwd", "fwd+bwd"):
    for t in (16, 40):
      rows = [r for r in data["linear"] if r["mode"] == mode and r["T"] == t]
      assert {r["impl"] for r in rows} == impls, rows
      assert all(r["median_ms"] > 0 for r in rows)
      assert [r["ratio_vs_scan"] for r in rows if r["impl"] == "scan"] == [1.0]
  # Newton: every method on both kinds of weights, converged to the sequential answer.
  assert {(r["weights"], r["method"]) for r in data["newton"]} == {
      (w, m) for w in ("random", "trained-looking") for m in ("deer", "quasi_deer", "elk")}
  assert all(not r["fell_back"] and r["max_abs_diff_vs_scan"] < 1e-4 for r in data["newton"])
  assert data["environment"]["isa"] in ("AVX-512", "AVX2", "other")
  assert (device_dir / "parallel_scan.png").stat().st_size > 1000


def test_newton_trained_script_trains_the_cell_and_counts_iterations(tmp_path):
  device_dir, data = _run_quick("newton_trained.py", tmp_path, "newton_trained.json",
                                timeout=600)
  stages = data["stages"]
  assert [s["updates"] for s in stages] == [0, 1, 6]
  # Training on the text lowers the held-out loss: the weights are trained, not made up.
  assert stages[-1]["held_out_bits"] < stages[0]["held_out_bits"]
  for stage in stages:
    assert {r["method"] for r in stage["newton"]} == {"deer", "quasi_deer", "elk"}
    assert all(not r["fell_back"] and r["iterations"] >= 1
               and r["max_abs_diff_vs_scan"] < 1e-4 for r in stage["newton"])
    assert stage["jacobian_norm"] > 0
  assert (device_dir / "newton_trained.md").read_text().count("| gru |") == 9
