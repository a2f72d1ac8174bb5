"""Sequence classification (many-to-one, variable lengths) on a UEA/UCR data set shipped with
sktime: JapaneseVowels by default.

    python examples/classify_uea.py                          # JapaneseVowels, about a minute
    python examples/classify_uea.py --dataset GunPoint       # any set under sktime's data folder
    python examples/classify_uea.py --quick                  # a few dozen steps (smoke test)

The model is a bidirectional LSTM over the (per-channel standardised) series with their
`lengths`, the outputs averaged over each sequence's valid steps (`jr.masked_mean`), and a linear
softmax head; training is `jr.train_step` (global-norm clipping, Adam, dropout between the
recurrent layer and the head) under `jr.fit`, on the data set's own train/test split (the
fixed split the published results use). Unequal lengths need no code: the series are padded and
their lengths passed to the layer. Writes `--out`: `metrics.json` (`test_accuracy`, the
published reference points for the data set where the script knows them, the confusion matrix),
`classification.png` (loss curve and confusion matrix), `metrics.jsonl`. The last line printed is `RESULT {json}`.

Published test accuracies (Fawaz et al. 2019, mean of 10 runs; Karim et al. 2019 for LSTM-FCN;
1-NN DTW from the UCR/UEA archive's benchmark tables):
JapaneseVowels: FCN 99.3%, ResNet 99.2%, LSTM-FCN 99%, 1-NN DTW (dependent) 94.9%;
GunPoint: 1-NN DTW 90.7%; ArrowHead: 1-NN DTW 70.3%.
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

import _common
import _data

PUBLISHED = {
    "JapaneseVowels": {"FCN": 0.993, "ResNet": 0.992, "LSTM-FCN": 0.99, "1-NN DTW": 0.949},
    "GunPoint": {"1-NN DTW": 0.907},
    "ArrowHead": {"1-NN DTW": 0.703},
}


class Config(NamedTuple):
  hidden: int
  steps: int
  batch: int
  learning_rate: float
  dropout: float
  log_every: int


FULL = Config(hidden=128, steps=600, batch=32, learning_rate=3e-3, dropout=0.5, log_every=50)
QUICK = Config(hidden=16, steps=40, batch=16, learning_rate=1e-2, dropout=0.1, log_every=10)


def standardise(train: np.ndarray, lengths: np.ndarray, *others):
  """Per-channel mean and standard deviation over the training set's valid steps."""
  valid = np.arange(train.shape[1])[None, :] < lengths[:, None]
  values = train[valid]
  mean, std = np.nanmean(values, 0), np.nanstd(values, 0) + 1e-6
  return [np.nan_to_num((x - mean) / std) for x in (train,) + others]


def main(argv=None):
  parser = _common.parser(__doc__, "runs/classify_uea")
  parser.add_argument("--dataset", default="JapaneseVowels")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  out = _common.out_dir(args.out)
  t0 = time.perf_counter()

  train, test = _data.uea_dataset(args.dataset)
  x_train, n_train = _data.pad_series(train.series)
  x_test, n_test = _data.pad_series(test.series)
  if x_test.shape[1] < x_train.shape[1]:  # one padded length for both, for one compiled model
    x_test = np.pad(x_test, ((0, 0), (0, x_train.shape[1] - x_test.shape[1]), (0, 0)))
  elif x_test.shape[1] > x_train.shape[1]:
    x_train = np.pad(x_train, ((0, 0), (0, x_test.shape[1] - x_train.shape[1]), (0, 0)))
  x_train, x_test = standardise(x_train, n_train, x_test)
  classes = len(train.classes)
  print(f"{args.dataset}: {len(n_train)} train / {len(n_test)} test, {x_train.shape[2]} "
        f"channels, lengths {n_train.min()}-{n_train.max()}, {classes} classes", flush=True)

  layer = jr.bidirectional(jr.rnn(jr.lstm(cfg.hidden)), jr.rnn(jr.lstm(cfg.hidden)))
  head, drop = jr.dense(classes), jr.dropout(cfg.dropout)
  k_layer, k_head, k_train = jax.random.split(jax.random.key(args.seed), 3)
  params = {"rnn": layer.init(k_layer, x_train.shape[2]), "head": head.init(k_head,
                                                                            2 * cfg.hidden)}

  def logits_fn(p, xs, lengths, key=None):
    _, ys = layer.apply(p["rnn"], xs, lengths=lengths)
    pooled = jr.masked_mean(ys, lengths)
    return head.apply(p["head"], drop.apply({}, pooled, key=key)[1])

  def loss_fn(p, batch, key):
    xs, lengths, labels = batch
    logits = logits_fn(p, xs, lengths, key)
    return jr.masked_cross_entropy(logits, labels)

  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps, 0.05)))
  step = jr.train_step(loss_fn, tx)
  rng = np.random.default_rng(args.seed)

  def batches():
    while True:
      for idx in np.array_split(rng.permutation(len(n_train)),
                                max(1, len(n_train) // cfg.batch)):
        yield x_train[idx], n_train[idx], train.labels[idx]

  result = jr.fit(step, params, tx.init(params), batches(), key=k_train, steps=cfg.steps,
                  log_every=cfg.log_every, metrics_file=str(out / "metrics.jsonl"))
  params = result.params
  predict = jax.jit(lambda p, xs, lengths: jnp.argmax(logits_fn(p, xs, lengths), -1))
  pred = np.asarray(predict(params, x_test, n_test))
  accuracy = float(np.mean(pred == test.labels))
  train_acc = float(np.mean(np.asarray(predict(params, x_train, n_train)) == train.labels))
  seconds = time.perf_counter() - t0
  published = PUBLISHED.get(args.dataset, {})
  print(f"test accuracy {accuracy:.4f} (train {train_acc:.4f}); published: "
        + (", ".join(f"{k} {v:.3f}" for k, v in published.items()) or "none known here"),
        flush=True)
  confusion = np.zeros((classes, classes), np.int64)
  np.add.at(confusion, (test.labels, pred), 1)
  metrics = {"dataset": args.dataset, "test_accuracy": accuracy, "train_accuracy": train_acc,
             "published": published, "seconds": round(seconds, 1), "steps": cfg.steps,
             "steps_per_s": cfg.steps / seconds, "first_loss": result.history[0]["loss"],
             "final_loss": result.history[-1]["loss"], "confusion": confusion.tolist()}
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  plot(result.history, confusion, train.classes, out)
  print("RESULT " + json.dumps({k: v for k, v in metrics.items() if k != "confusion"}))


def plot(history, confusion, classes, out):
  plt = _common.pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
  a.plot([r["step"] for r in history], [r["loss"] for r in history])
  a.set_xlabel("step")
  a.set_ylabel("training loss (nats)")
  b.imshow(confusion, cmap="Blues")
  b.set_xticks(range(len(classes)), classes)
  b.set_yticks(range(len(classes)), classes)
  b.set_xlabel("predicted")
  b.set_ylabel("true")
  for (i, j), v in np.ndenumerate(confusion):
    b.text(j, i, str(v), ha="center", va="center", fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "classification.png", dpi=110)


if __name__ == "__main__":
  main()
