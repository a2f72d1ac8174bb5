"""One-step-ahead forecasting of a yearly series with a GRU: Wolf's sunspot numbers by default.

    python examples/forecast.py                         # sunspots: fit 1700-1920, test 1921-1987
    python examples/forecast.py --dataset nile          # another statsmodels series
    python examples/forecast.py --quick                 # a few dozen steps (smoke test)

The series is square-root transformed and standardised on the fitting years, then cut into
windows: the window ending at year `t` holds the `W` years before `t`, and the GRU, reading it
year by year, predicts the next year at every step (many-to-many); the training loss is the mean
squared error of the second half of each window's predictions (each made from at least `W / 2`
years), over all windows whose years lie in the fitting period, with `jr.train_step` (global-norm
clipping, AdamW with a cosine schedule). The forecast for a test year is the last prediction of
the window of the `W` true values before it (one step ahead). An ensemble of seeds is averaged.

The window `W`, the hidden size and the number of steps are chosen on a validation period, never
on the test years: the last 40 fitting years for sunspots (fit 1700-1880, validate 1881-1920),
the last 20% of them otherwise; the chosen configuration is then refitted on all fitting years.
The script also fits an AR(p) model by least squares on the same years and reports both mean
squared errors in the series' own units. The split is fixed: sunspots are fitted on 1700-1920
and tested on 1921-1987 (Tong's classic split, where AR(9) has an MSE of about 305); other series
are fitted on their first 80%. Writes `--out`: `metrics.json` (`test_mse`, `ar_mse`, the
validation search), `forecast.png`. The last line printed is `RESULT {json}`.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np
import optax
import tqdm

import jaxrnn as jr

import _common

SERIES = {  # name: (CSV under statsmodels/datasets, year column, value column)
    "sunspots": ("sunspots/sunspots.csv", "YEAR", "SUNACTIVITY"),
    "nile": ("nile/nile.csv", "year", "volume"),
}


class Config(NamedTuple):
  windows: tuple        # candidate window lengths W
  hidden: tuple         # candidate GRU sizes
  steps: tuple          # candidate numbers of full-batch training steps
  learning_rate: float
  weight_decay: float
  seeds: int
  ar_order: int


FULL = Config(windows=(8, 12), hidden=(4, 8), steps=(150, 300, 500, 800), learning_rate=1e-2,
              weight_decay=1e-2, seeds=5, ar_order=9)
QUICK = Config(windows=(12,), hidden=(8,), steps=(60,), learning_rate=1e-2, weight_decay=1e-2,
               seeds=1, ar_order=9)
VALIDATION_YEARS = {"sunspots": 40}  # other series: the last 20% of the fitting years


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


def windows(z: np.ndarray, width: int):
  """The windows ending at every year `t >= width`: inputs `z[t - W:t]` and targets
  `z[t - W + 1:t + 1]`, both `(N, W, 1)`, and the predicted year `t` of each `(N,)`."""
  ends = np.arange(width, len(z))
  xs = np.stack([z[t - width:t] for t in ends])[..., None]
  ys = np.stack([z[t - width + 1:t + 1] for t in ends])[..., None]
  return xs, ys, ends


def ensemble_forecast(values: np.ndarray, train_end: int, width: int, hidden: int, steps: int,
                      cfg: Config, progress=False):
  """Fits `cfg.seeds` GRUs on the years before `train_end` and returns the ensemble's one-step
  forecasts for every year `t >= train_end` of `values`, and the first seed's history."""
  root = np.sqrt(np.maximum(values, 0.0))
  mean, std = root[:train_end].mean(), root[:train_end].std()
  z = ((root - mean) / std).astype(np.float32)
  xs, ys, ends = windows(z, width)
  fit = ends < train_end
  cell, head = jr.gru(hidden), jr.dense(1)

  def predict(p, xs):
    _, out = jr.scan(cell, p["gru"], xs)
    return head.apply(p["head"], out)

  def loss_fn(p, batch, key):
    del key
    xs, ys = batch
    return jr.masked_mse(predict(p, xs)[:, width // 2:], ys[:, width // 2:])

  schedule = optax.cosine_decay_schedule(cfg.learning_rate, steps, 0.05)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))
  step = jr.train_step(loss_fn, tx)
  batch = (xs[fit], ys[fit])
  forecasts, history = [], None
  for seed in range(cfg.seeds):
    k_cell, k_head = jax.random.split(jax.random.key(seed))
    params = {"gru": cell.init(k_cell, 1), "head": head.init(k_head, hidden)}
    result = jr.fit(step, params, tx.init(params), (batch for _ in range(steps)), steps=steps,
                    log_every=max(1, steps // 10), progress=progress)
    history = history or result.history
    z_pred = np.asarray(jax.jit(predict)(result.params, xs[~fit]))[:, -1, 0]
    forecasts.append(np.maximum(z_pred * std + mean, 0.0) ** 2)
  return np.stack(forecasts), history


def main(argv=None):
  parser = _common.parser(__doc__, "runs/forecast", seed=False)
  parser.add_argument("--dataset", default="sunspots")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  out = _common.out_dir(args.out)
  t0 = time.perf_counter()
  years, values, fit_end = load(args.dataset)
  val_start = fit_end - VALIDATION_YEARS.get(args.dataset, round(0.2 * fit_end))
  print(f"{args.dataset}: fit {years[0]}-{years[fit_end - 1]} ({fit_end} values; validation "
        f"{years[val_start]}-{years[fit_end - 1]}), test {years[fit_end]}-{years[-1]} "
        f"({len(values) - fit_end})", flush=True)

  # Model selection on the validation years: fit before them, score on them.
  fit_values = values[:fit_end]
  search = []
  grid = list(itertools.product(cfg.windows, cfg.hidden, cfg.steps))
  for width, hidden, steps in tqdm.tqdm(grid, desc="validation search", unit="config"):
    forecasts, _ = ensemble_forecast(fit_values, val_start, width, hidden, steps, cfg)
    mse = float(np.mean((forecasts.mean(0) - fit_values[val_start:]) ** 2))
    search.append({"window": width, "hidden": hidden, "steps": steps, "validation_mse": mse})
  best = min(search, key=lambda r: r["validation_mse"])
  ar_val = ar_forecast(fit_values, val_start, cfg.ar_order)
  ar_val_mse = float(np.mean((ar_val - fit_values[val_start:]) ** 2))
  print(f"chosen on validation: W={best['window']}, hidden {best['hidden']}, {best['steps']} "
        f"steps (validation MSE {best['validation_mse']:.1f}; AR({cfg.ar_order}) "
        f"{ar_val_mse:.1f})", flush=True)

  forecasts, history = ensemble_forecast(values, fit_end, best["window"], best["hidden"],
                                         best["steps"], cfg, progress="auto")
  ensemble, truth = forecasts.mean(0), values[fit_end:]
  test_mse = float(np.mean((ensemble - truth) ** 2))
  per_seed = [float(np.mean((f - truth) ** 2)) for f in forecasts]
  ar = ar_forecast(values, fit_end, cfg.ar_order)
  ar_mse = float(np.mean((ar - truth) ** 2))
  seconds = time.perf_counter() - t0
  print(f"test MSE: GRU ensemble of {cfg.seeds} {test_mse:.1f} (each seed: "
        f"{', '.join(f'{m:.1f}' for m in per_seed)}); AR({cfg.ar_order}) {ar_mse:.1f}",
        flush=True)
  metrics = {"dataset": args.dataset, "test_mse": test_mse, "test_mse_per_seed": per_seed,
             "ar_order": cfg.ar_order, "ar_mse": ar_mse, "fit_years": [int(years[0]),
                                                                         int(years[fit_end - 1])],
             "validation_years": [int(years[val_start]), int(years[fit_end - 1])],
             "test_years": [int(years[fit_end]), int(years[-1])], "chosen": best,
             "ar_validation_mse": ar_val_mse, "search": search, "seconds": round(seconds, 1),
             "seeds": cfg.seeds, "first_loss": history[0]["loss"],
             "final_loss": history[-1]["loss"]}
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  plot(years, values, fit_end, ensemble, ar, cfg.ar_order, out / "forecast.png")
  print("RESULT " + json.dumps({k: v for k, v in metrics.items() if k != "search"}))


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
