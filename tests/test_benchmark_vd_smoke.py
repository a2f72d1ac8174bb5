"""Smoke test of `benchmarks/variational_dropout.py --quick`: it writes its JSON and Markdown
with the machine's description, both wrappers timed for both cells, and the two formulas
agreeing. No timing is asserted (the machine is shared)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "variational_dropout.py")


def test_quick_run_writes_both_timings_and_the_machine(tmp_path):
  # A subprocess, so the suite's x64 and strict promotion do not apply: users run it plainly.
  proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--silent", "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (device_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
  with open(device_dir / "variational_dropout.json", encoding="utf-8") as f:
    data = json.load(f)
  markdown = (device_dir / "variational_dropout.md").read_text(encoding="utf-8")
  env = data["environment"]
  assert device_dir.name == env["device"] and data["quick"] is True
  assert env["isa"] in ("AVX-512", "AVX2", "other") and env["cpu_model"]
  assert data["threads"]["usable_cpus"] >= 1
  assert len(data["load_average"]["start"]) == 3 and len(data["load_average"]["end"]) == 3
  assert [r["cell"] for r in data["results"]] == ["lstm", "gru"]
  for r in data["results"]:
    medians = r["median_s"]
    assert set(medians) == {"state mask (current)", "per-example W_h (former)"}
    assert all(t > 0 for t in medians.values())
    assert all(len(s) == data["rounds"] and min(s) > 0 for s in r["samples_s"].values())
    assert r["ratio_former_over_current"] > 0
    # Both formulas compute the same values and gradients (float32 rounding apart).
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["max_abs_grad"])
    assert f"| {r['cell']} (" in markdown
  assert f"{data['load_average']['start'][0]:.2f}" in markdown and env["isa"] in markdown
