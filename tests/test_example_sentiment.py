"""Smoke test of examples/sentiment.py: the BiLSTM and the bag-of-words baseline on a slice."""

import json
import math

from test_examples import _run_example


def test_sentiment_quick_learns_and_reports_both_models(tmp_path):
  result, stdout = _run_example("sentiment.py", "--quick", "--out", str(tmp_path))
  # A two-way softmax starts near ln(2) = 0.69 nats; sixty steps take the interval mean down.
  assert result["final_loss"] < result["first_loss"] - 0.1, stdout
  for key in ("test_accuracy", "baseline_accuracy"):
    assert math.isfinite(result[key]) and result[key] > 0.55, (key, stdout)  # chance is 0.5
  assert set(result["test_accuracy_by_source"]) == {"imdb", "rotten_tomatoes"}
  assert result["split"]["sizes"]["test"] == {"imdb": 200, "rotten_tomatoes": 200}
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["baseline_l2"] in metrics["settings"]["l2_grid"]
  assert (tmp_path / "training.png").stat().st_size > 1000
  assert (tmp_path / "baseline_l2.png").stat().st_size > 1000
