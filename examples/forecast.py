"""One-step-ahead forecasting of a yearly series with a GRU: Wolf's sunspot numbers by default.

    python examples/forecast.py                         # sunspots: fit 1700-1920, test 1921-1987
    python examples/forecast.py --dataset nile          # another statsmodels series
    python examples/forecast.py --quick                 # a few dozen steps (smoke test)

The series is square-root transformed and standardised on the fitting years. A GRU reads it
year by year and predicts the next year's value at every step (many-to-many, synchronised):
training is full backpropagation through time over the fitting years with `jr.train_step`
(`jr.masked_mse`, global-norm clipping, Adam with weight decay); the forecast for a test year
reads the true values of the years before it (one step ahead), with the carry run over the
whole history. The script also fits an AR(p) model by least squares on the same years and
reports both mean squared errors in the series' own units. The split is fixed: sunspots are
fitted on 1700-1920 and tested on 1921-1987 (Tong's classic split, where AR(9) has an MSE of
about 305); other series are fitted on their first 80%. A small ensemble of seeds is averaged.
Writes `--out`: `metrics.json` (`test_mse`, `ar_mse`), `forecast.png`. The last line printed is
`RESULT {json}`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

import _common

SERIES = {  # name: (CSV under statsmodels/datasets, year column, value column)
    "sunspots": ("sunspots/sunspots.csv", "YEAR", "SUNACTIVITY"),
    "nile": ("nile/nile.csv", "year", "volume"),
}


class Config(NamedTuple):
  hidden: int
  steps: int
  learning_rate: float
  weight_decay: float
  seeds: int
  ar_order: int


FULL = Config(hidden=8, steps=400, learning_rate=1e-2, weight_decay=1e-3, seeds=5, ar_order=9)
QUICK = Config(hidden=8, steps=60, learning_rate=1e-2, weight_decay=1e-3, seeds=1, ar_order=9)


def load(name: str):
  if name not in SERIES:
    raise SystemExit(f"--dataset must be one of {sorted(SERIES)}, got {name!r}")
  spec = importlib.util.find_spec("statsmodels")
  if spec is None:
    raise SystemExit("the statsmodels package is not installed: pip install -e '.[examples]'")
  path, year_col, value_col = SERIES[name]
  with open(pathlib.Path(spec.origin).parent / "datasets" / path, newline="") as f:
    rows = list(csv.DictReader(f))
  years = np.array([int(float(r[year_col])) for r in rows])
  values = np.array([float(r[value_col]) for r in rows])
  if name == "sunspots":
    fit_end = int(np.searchsorted(years, 1921))        # fit 1700-1920
    test_end = int(np.searchsorted(years, 1988))       # test 1921-1987
  else:
    fit_end, test_end = int(0.8 * len(values)), len(values)
  return years[:test_end], values[:test_end], fit_end


def ar_forecast(values: np.ndarray, fit_end: int, order: int) -> np.ndarray:
  """One-step-ahead forecasts for `values[fit_end:]` of an AR(order) model with intercept,
  fitted by least squares on `values[:fit_end]`."""
  lags = lambda end: np.stack([values[order - k - 1:end - k - 1] for k in range(order)], 1)
  x = np.concatenate([np.ones((fit_end - order, 1)), lags(fit_end)], 1)
  coef, *_ = np.linalg.lstsq(x, values[order:fit_end], rcond=None)
  x_all = np.concatenate([np.ones((len(values) - order, 1)), lags(len(values))], 1)
  return (x_all @ coef)[fit_end - order:]


def main(argv=None):
  parser = _common.parser(__doc__, "runs/forecast", seed=False)
  parser.add_argument("--dataset", default="sunspots")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  out = _common.out_dir(args.out)
  t0 = time.perf_counter()
  years, values, fit_end = load(args.dataset)
  print(f"{args.dataset}: fit {years[0]}-{years[fit_end - 1]} ({fit_end} values), test "
        f"{years[fit_end]}-{years[-1]} ({len(values) - fit_end})", flush=True)

  root = np.sqrt(np.maximum(values, 0.0))
  mean, std = root[:fit_end].mean(), root[:fit_end].std()
  z = ((root - mean) / std).astype(np.float32)
  inputs, targets = z[None, :-1, None], z[None, 1:, None]   # (1, T - 1, 1)
  fit_steps = jnp.array([fit_end - 1], jnp.int32)            # targets up to the last fit year

  cell, head = jr.gru(cfg.hidden), jr.dense(1)

  def predict(p, xs):
    _, ys = jr.scan(cell, p["gru"], xs)
    return head.apply(p["head"], ys)

  def loss_fn(p, batch, key):
    xs, ys = batch
    return jr.masked_mse(predict(p, xs), ys, fit_steps)

  schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps, 0.05)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule,
                                                               weight_decay=cfg.weight_decay))
  step = jr.train_step(loss_fn, tx)
  forecasts, histories = [], []
  for seed in range(cfg.seeds):
    k_cell, k_head = jax.random.split(jax.random.key(seed))
    params = {"gru": cell.init(k_cell, 1), "head": head.init(k_head, cfg.hidden)}
    result = jr.fit(step, params, tx.init(params), ((inputs, targets) for _ in range(cfg.steps)),
                    steps=cfg.steps, log_every=max(1, cfg.steps // 10))
    histories.append(result.history)
    z_pred = np.asarray(jax.jit(predict)(result.params, inputs))[0, :, 0]
    forecasts.append((z_pred * std + mean) ** 2 * (z_pred * std + mean > 0))
  # forecasts[i][t] predicts values[t + 1]; the test years are values[fit_end:].
  ensemble = np.mean(forecasts, 0)[fit_end - 1:]
  truth = values[fit_end:]
  test_mse = float(np.mean((ensemble - truth) ** 2))
  per_seed = [float(np.mean((f[fit_end - 1:] - truth) ** 2)) for f in forecasts]
  ar = ar_forecast(values, fit_end, cfg.ar_order)
  ar_mse = float(np.mean((ar - truth) ** 2))
  seconds = time.perf_counter() - t0
  print(f"test MSE: GRU ensemble of {cfg.seeds} {test_mse:.1f} (each seed: "
        f"{', '.join(f'{m:.1f}' for m in per_seed)}); AR({cfg.ar_order}) {ar_mse:.1f}",
        flush=True)
  metrics = {"dataset": args.dataset, "test_mse": test_mse, "test_mse_per_seed": per_seed,
             "ar_order": cfg.ar_order, "ar_mse": ar_mse, "fit_years": [int(years[0]),
                                                                         int(years[fit_end - 1])],
             "test_years": [int(years[fit_end]), int(years[-1])], "seconds": round(seconds, 1),
             "steps": cfg.steps, "seeds": cfg.seeds,
             "first_loss": histories[0][0]["loss"], "final_loss": histories[0][-1]["loss"]}
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  plot(years, values, fit_end, ensemble, ar, cfg.ar_order, out / "forecast.png")
  print("RESULT " + json.dumps(metrics))


def plot(years, values, fit_end, ensemble, ar, order, path):
  plt = _common.pyplot()
  fig, ax = plt.subplots(figsize=(9, 4))
  ax.plot(years, values, color="black", linewidth=1, label="truth")
  ax.plot(years[fit_end:], ensemble, label="GRU, one step ahead")
  ax.plot(years[fit_end:], ar, linestyle="--", label=f"AR({order}), one step ahead")
  ax.axvline(years[fit_end] - 0.5, color="grey", linestyle=":")
  ax.set_xlabel("year")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
