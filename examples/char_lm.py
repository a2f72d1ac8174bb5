"""A recurrent language model on Shakespeare, trained by truncated BPTT over the text stream.

    python examples/char_lm.py                      # the README's main job: about 15 min, 2 cores
    python examples/char_lm.py --quick              # a few dozen updates on a slice (smoke test)
    python examples/char_lm.py --unit word          # word level: perplexity against an n-gram
    python examples/char_lm.py --data PATH          # any text file, or folder of .txt files
    python examples/char_lm.py --out runs/lm --resume   # continue from the last checkpoint

The model is an embedding, a stack of LSTM layers (`jr.stack` of `jr.rnn(jr.lstm(H))`, dropout
between them) and a linear softmax head. The training text is cut into `batch` parallel streams;
`jr.tbptt_step` runs `windows` windows of `window` tokens per call inside one jitted scan, an
Optax update (global-norm clipping, AdamW for characters, Adam for words) after each, with the
carry passed from window to window (and call to call) under `stop_gradient`: truncated
backpropagation through time over the whole stream. For characters the held-out text is scored
with a running average of the weights (an exponential moving average over calls, debiased),
which scored lower than the last weights in our runs; both are reported. `jr.fit` runs the
calls with a progress bar and a JSON-lines log; the run is checkpointed with `jr.Checkpointer`
(params, optimizer state, carry, weight average, key, data position), so `--resume` continues it
exactly.

Held-out data: for Shakespeare, the last four of the 42 sorted play files (the split of the
reference points in docs/examples.md: unigram 4.80, bigram 3.67, trigram 2.93, interpolated
5-gram 2.34 bits per character). For `--data`, the last 10% of the files (of the text, for one
file). The script also fits an interpolated absolute-discounting n-gram model on the same split
and reports it beside the network. Writes to `--out`: `metrics.json` (`test_bpc`, or `test_perplexity` with
`--unit word`), `loss.png`, `metrics.jsonl`, checkpoints, and for words `embeddings.png`.
The last line printed is `RESULT {json}`.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import re
import sys
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

import _common
import _data


class Config(NamedTuple):
  hidden: int
  layers: int
  embed: int
  dropout: float      # between layers and on the last layer's outputs, when training
  batch: int          # parallel streams
  window: int         # truncated-BPTT length k
  windows: int        # windows per jitted call (updates per call)
  calls: int          # calls of the training run
  learning_rate: float
  weight_decay: float  # AdamW's decoupled weight decay (0: plain Adam)
  ema: float          # per call: the evaluated weights are this running average (0: the last)
  clip: float
  log_every: int      # calls
  reset_prob: float   # chance that a stream's carry restarts from zeros at a call
  train_tokens: Optional[int]
  test_tokens: Optional[int]
  vocab_words: int    # --unit word: the most frequent words kept


FULL = Config(hidden=512, layers=1, embed=64, dropout=0.1, batch=16, window=100, windows=10,
              calls=1500, learning_rate=2e-3, weight_decay=0.1, ema=0.98, clip=1.0,
              log_every=10, reset_prob=0.1, train_tokens=None, test_tokens=None,
              vocab_words=10_000)
# Words: a 10,000-way softmax costs more than the LSTM, so a smaller LSTM, shorter windows
# (35 words, as in Zaremba et al.'s word models) and more dropout on fewer, costlier tokens.
WORD_FULL = Config(hidden=256, layers=1, embed=128, dropout=0.3, batch=32, window=35,
                   windows=10, calls=500, learning_rate=3e-3, weight_decay=0.0, ema=0.0,
                   clip=1.0, log_every=10, reset_prob=0.1, train_tokens=None, test_tokens=None,
                   vocab_words=10_000)
QUICK = Config(hidden=64, layers=2, embed=16, dropout=0.1, batch=16, window=32, windows=4,
               calls=12, learning_rate=1e-2, weight_decay=0.1, ema=0.5, clip=1.0, log_every=3,
               reset_prob=0.1, train_tokens=200_000, test_tokens=20_000, vocab_words=2_000)
PUBLISHED = {"unigram": 4.80, "bigram": 3.67, "trigram": 2.93, "interpolated 5-gram": 2.34}


# ---------------------------------------------------------------------------------------------
# Data


class Corpus(NamedTuple):
  train: np.ndarray   # int32 ids
  test: np.ndarray
  vocab: list         # id -> token (a character or a word); the last id is <unk>
  name: str
  unit: str


def _read_texts(path: Optional[str]):
  if path is None:
    split = _data.shakespeare_split()
    return split.train, split.test, "Shakespeare (42 texts, last 4 held out)"
  p = pathlib.Path(path)
  if p.is_dir():
    files = sorted(p.rglob("*.txt"))
    if len(files) < 2:
      raise SystemExit(f"--data {path}: a folder needs at least two .txt files")
    n_test = max(1, round(0.1 * len(files)))
    read = lambda fs: "".join(f.read_text(encoding="utf-8", errors="replace") for f in fs)
    return read(files[:-n_test]), read(files[-n_test:]), f"{p} ({len(files)} files)"
  text = p.read_text(encoding="utf-8", errors="replace")
  cut = int(0.9 * len(text))
  return text[:cut], text[cut:], f"{p} (last 10% held out)"


WORD = re.compile(r"[A-Za-z']+|[^\sA-Za-z']")


def load_corpus(path, unit: str, cfg: Config) -> Corpus:
  train_text, test_text, name = _read_texts(path)
  if unit == "char":
    chars = sorted(set(train_text))
    index = {c: i for i, c in enumerate(chars)}
    encode = lambda text: np.array([index.get(c, len(chars)) for c in text], np.int32)
    vocab = chars + ["<unk>"]
    train, test = encode(train_text), encode(test_text)
  else:
    tokens = lambda text: [w.lower() for w in WORD.findall(text)]
    train_words, test_words = tokens(train_text), tokens(test_text)
    common = [w for w, _ in collections.Counter(train_words).most_common(cfg.vocab_words)]
    index = {w: i for i, w in enumerate(common)}
    encode = lambda words: np.array([index.get(w, len(common)) for w in words], np.int32)
    vocab = common + ["<unk>"]
    train, test = encode(train_words), encode(test_words)
  return Corpus(train[:cfg.train_tokens], test[:cfg.test_tokens], vocab, name, unit)


def ngram_bits(train: np.ndarray, test: np.ndarray, vocab: int, order: int,
               discount: float = 0.75) -> float:
  """Bits per token of an interpolated absolute-discounting n-gram model (Ney et al. 1994):
  `p_n(w|h) = max(c(h w) - D, 0) / c(h) + D N1+(h .) / c(h) p_{n-1}(w|h')`, falling back to
  `p_{n-1}` for an unseen history, down to an add-one unigram."""
  train, test = train.astype(np.int64), test.astype(np.int64)
  p = (np.bincount(train, minlength=vocab)[test] + 1.0) / (len(train) + vocab)
  for n in range(2, order + 1):
    def keys(ids, width):
      k = np.zeros(len(ids) - width + 1, np.int64)
      for j in range(width):
        k = k * vocab + ids[j:len(ids) - width + 1 + j]
      return k
    grams, hist = keys(train, n), keys(train, n - 1)[:-1]
    g_keys, g_counts = np.unique(grams, return_counts=True)
    h_keys, h_counts = np.unique(hist, return_counts=True)
    h_types = np.unique(g_keys // vocab, return_counts=True)
    t_grams = keys(test, n)
    t_hist = t_grams // vocab
    def lookup(sorted_keys, values, query):
      i = np.clip(np.searchsorted(sorted_keys, query), 0, len(sorted_keys) - 1)
      return np.where(sorted_keys[i] == query, values[i], 0)
    c_hw = lookup(g_keys, g_counts, t_grams).astype(np.float64)
    c_h = lookup(h_keys, h_counts, t_hist).astype(np.float64)
    n1 = lookup(h_types[0], h_types[1], t_hist).astype(np.float64)
    lower = p[1:]  # p_{n-1} of the same test tokens (one token less of context)
    seen = c_h > 0
    p = np.where(seen, (np.maximum(c_hw - discount, 0) + discount * n1 * lower)
                 / np.maximum(c_h, 1), lower)
  return float(-np.mean(np.log2(p)))


# ---------------------------------------------------------------------------------------------
# Model


def build(cfg: Config, vocab: int):
  layer = jr.stack(*[jr.rnn(jr.lstm(cfg.hidden)) for _ in range(cfg.layers)],
                   dropout=cfg.dropout)
  embed, head = jr.embedding(vocab, cfg.embed), jr.dense(vocab)

  def init(key):
    ke, kr, kh = jax.random.split(key, 3)
    table = embed.init(ke)
    return {"embed": {"table": table["table"] * 0.1}, "rnn": layer.init(kr, cfg.embed),
            "head": head.init(kh, cfg.hidden)}

  out_dropout = jr.dropout(cfg.dropout)

  def apply(params, carry, tokens, key=None):
    k_rnn, k_out = (None, None) if key is None else jax.random.split(key)
    carry, ys = layer.apply(params["rnn"], embed.apply(params["embed"], tokens), carry=carry,
                            key=k_rnn)
    return carry, head.apply(params["head"], out_dropout.apply({}, ys, key=k_out)[1])

  def step(params, carry, token):
    carry, y = jr.step_layer(layer, params["rnn"], carry, embed.apply(params["embed"], token))
    return carry, head.apply(params["head"], y)

  def initial_carry(batch):
    return tuple(jr.lstm(cfg.hidden).initial_carry((batch,), jnp.float32)
                 for _ in range(cfg.layers))

  return init, apply, step, initial_carry


def evaluate(apply, params, carry0, ids: np.ndarray, streams: int, window: int) -> float:
  """Mean cross-entropy (nats per token) of `ids` cut into `streams` rows, the carry passed
  from window to window."""
  per_row = (len(ids) - 1) // streams // window * window
  rows = np.stack([ids[r * per_row:(r + 1) * per_row + 1] for r in range(streams)])

  @jax.jit
  def window_loss(params, carry, chunk):
    carry, logits = apply(params, carry, chunk[:, :-1])
    return carry, jr.masked_cross_entropy(logits, chunk[:, 1:])

  carry, total = carry0, 0.0
  for start in range(0, per_row, window):
    carry, loss = window_loss(params, carry, rows[:, start:start + window + 1])
    total += float(loss)
  return total / (per_row // window)


# ---------------------------------------------------------------------------------------------
# Training


def stream_batches(ids: np.ndarray, cfg: Config, first_call: int, seed: int):
  """Call `c`'s sequence: `(inputs, targets, restart)`, the first two `(batch, windows *
  window)`, consecutive in each of `batch` streams; at the end of the text the streams start
  over at a new offset, and `restart` (bool `(batch,)`) says which streams start afresh: all of
  them then, and each with probability `reset_prob` at any call. A model that only ever sees
  states carried over tens of thousands of steps learns nothing of the zero state, and a
  held-out stream, which starts from it, can then fall into a state it never left in
  training (measured: held-out 4.3 bits per character against 1.96 in training)."""
  span = cfg.windows * cfg.window
  per_row = (len(ids) - 1) // cfg.batch
  calls_per_epoch = (per_row - 1) // span
  if calls_per_epoch < 1:
    raise SystemExit(f"the training text ({len(ids):,} tokens) is too short for {cfg.batch} "
                     f"streams of {span + 1} tokens")
  call = first_call
  while True:
    epoch, within = divmod(call, calls_per_epoch)
    offset = np.random.default_rng([seed, epoch]).integers(0, per_row - calls_per_epoch * span)
    starts = np.arange(cfg.batch) * per_row + offset + within * span
    seq = ids[starts[:, None] + np.arange(span + 1)]
    rng = np.random.default_rng([seed, call, 1])
    restart = (rng.random(cfg.batch) < cfg.reset_prob) | (within == 0)
    yield epoch, within, (seq[:, :-1], seq[:, 1:], restart)
    call += 1


def main(argv=None):
  parser = _common.parser(__doc__, "runs/char_lm")
  parser.add_argument("--unit", choices=("char", "word"), default="char")
  parser.add_argument("--data", default=None, help="a text file or a folder of .txt files")
  parser.add_argument("--resume", action="store_true")
  parser.add_argument("--calls", type=int, default=None)
  parser.add_argument("--stop-after", type=int, default=None,
                      help="stop after this call, as an interrupted run would (for --resume)")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else WORD_FULL if args.unit == "word" else FULL
  if args.calls:
    cfg = cfg._replace(calls=args.calls)
  out = _common.out_dir(args.out)
  t0 = time.perf_counter()

  corpus = load_corpus(args.data, args.unit, cfg)
  vocab = len(corpus.vocab)
  unit = "char" if args.unit == "char" else "word"
  print(f"{corpus.name}: train {len(corpus.train):,} {unit}s, test {len(corpus.test):,}, "
        f"vocabulary {vocab}", flush=True)
  ngram_order = 5 if args.unit == "char" else 3
  ngram = ngram_bits(corpus.train, corpus.test, vocab, ngram_order)
  print(f"interpolated {ngram_order}-gram baseline (computed): {ngram:.3f} bits/{unit}",
        flush=True)

  init, apply, step_fn, initial_carry = build(cfg, vocab)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, 20,
                                                cfg.calls * cfg.windows, cfg.learning_rate / 20)
  adam = (optax.adamw(schedule, weight_decay=cfg.weight_decay) if cfg.weight_decay
          else optax.adam(schedule))
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip), adam)

  def loss_fn(params, carry, chunk, key):
    tokens, targets = chunk
    carry, logits = apply(params, carry, tokens, key)
    return jr.masked_cross_entropy(logits, targets), carry

  run = jr.tbptt_step(loss_fn, tx, window=cfg.window)
  key = jax.random.key(args.seed)
  params = init(key)
  # `average`: the running average of the weights (`cfg.ema` a call, from zeros; divided by
  # 1 - ema^calls when read, as Adam debiases its moments).
  state = {"params": params, "opt_state": tx.init(params), "carry": initial_carry(cfg.batch),
           "average": jax.tree_util.tree_map(jnp.zeros_like, params)}
  ckpt = jr.Checkpointer(out / "checkpoints", keep=2)
  first_call = 0
  if args.resume and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(like=state)
    first_call = meta["call"]
    print(f"resumed from call {first_call}", flush=True)
  if first_call >= cfg.calls:
    print(f"the checkpoint is already at call {first_call} of {cfg.calls}", flush=True)

  @jax.jit
  def call_step(params, inner, batch, key):
    """One jitted call of `windows` updates, in `jr.fit`'s step signature (the carry and the
    weights' running average ride along with the optimizer state)."""
    opt_state, carry, average = inner
    tokens, targets, restart = batch
    carry = jax.tree_util.tree_map(
        lambda a: jnp.where(restart.reshape((-1,) + (1,) * (a.ndim - 1)), jnp.zeros_like(a), a),
        carry)
    params, opt_state, carry, m = run(params, opt_state, carry, (tokens, targets), key)
    average = jax.tree_util.tree_map(lambda a, p: cfg.ema * a + (1 - cfg.ema) * p, average,
                                     params)
    bad = jnp.argmin(m["finite"])
    return params, (opt_state, carry, average), {
        "loss": jnp.mean(m["loss"]), "grad_norm": jnp.mean(m["grad_norm"]),
        "finite": jnp.all(m["finite"]), "nonfinite_leaf": m["nonfinite_leaf"][bad]}

  batches = (b for _, _, b in stream_batches(corpus.train, cfg, first_call, args.seed))
  carry_state = [(state["opt_state"], state["carry"], state["average"])]

  def checkpoint(record, params, inner):
    ckpt.save(record["step"], {"params": params, "opt_state": inner[0], "carry": inner[1],
                               "average": inner[2]},
              meta={"call": record["step"]})

  result = jr.fit(call_step, state["params"], carry_state[0], batches,
                  key=jax.random.fold_in(key, 1),
                  steps=min(cfg.calls, args.stop_after or cfg.calls) - first_call,
                  log_every=cfg.log_every, metrics_file=str(out / "metrics.jsonl"),
                  tokens_per_batch=cfg.batch * cfg.windows * cfg.window,
                  first_step=first_call + 1, on_log=checkpoint)
  last_params = params = result.params
  calls_done = max(first_call, min(cfg.calls, args.stop_after or cfg.calls))
  if cfg.ema and calls_done:
    params = jax.tree_util.tree_map(lambda a: a / (1 - cfg.ema ** calls_done),
                                    result.opt_state[2])
  train_time = time.perf_counter() - t0
  for r in result.history:
    print(f"call {r['step']:4d}  train {r['loss'] / math.log(2):.3f} bits/{unit}  "
          f"{r.get('tokens_per_s', 0):,.0f} {unit}s/s", flush=True)

  test_nats = evaluate(apply, params, initial_carry(16), corpus.test, 16, 128)
  test_bits = test_nats / math.log(2)
  last_nats = (None if params is last_params else
               evaluate(apply, last_params, initial_carry(16), corpus.test, 16, 128))
  metrics = {"unit": args.unit, "data": corpus.name, "ngram_order": ngram_order,
             "ngram_bits": ngram, "train_seconds": round(train_time, 1),
             "updates": cfg.calls * cfg.windows,
             "updates_per_s": (len(result.history) and
                               np.mean([r["steps_per_s"] for r in result.history[1:]] or [0])
                               * cfg.windows),
             "first_loss": result.history[0]["loss"] if result.history else None,
             "final_loss": result.history[-1]["loss"] if result.history else None}
  if last_nats is not None:
    metrics["evaluated_weights"] = f"running average, {cfg.ema} a call"
    metrics["test_nats_last_weights"] = last_nats
    if args.unit == "char":
      metrics["test_bpc_last_weights"] = last_nats / math.log(2)
    print(f"held-out with the last weights instead of their running average: "
          f"{last_nats / math.log(2):.3f} bits/{unit}", flush=True)
  if args.unit == "char":
    metrics["test_bpc"] = test_bits
    if args.data is None:
      metrics["published_references_bpc"] = PUBLISHED
    print(f"held-out: {test_bits:.3f} bits/char (computed {ngram_order}-gram {ngram:.3f}"
          + ("; published: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
             if args.data is None else "") + ")", flush=True)
  else:
    metrics["test_perplexity"] = math.exp(test_nats)
    metrics["ngram_perplexity"] = 2 ** ngram
    print(f"held-out perplexity {math.exp(test_nats):.1f} (computed {ngram_order}-gram "
          f"{2 ** ngram:.1f})", flush=True)
    plot_embeddings(params["embed"]["table"], corpus.vocab, out / "embeddings.png", metrics)

  sample = generate_text(step_fn, params, initial_carry, corpus, args.seed)
  print("sample (temperature 0.8):\n" + sample, flush=True)
  metrics["sample"] = sample
  metrics["seconds"] = round(time.perf_counter() - t0, 1)
  plot_loss(result.history, test_bits, ngram, unit, out / "loss.png")
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  print("RESULT " + json.dumps({k: v for k, v in metrics.items() if k != "sample"}))


def generate_text(step_fn, params, initial_carry, corpus: Corpus, seed: int) -> str:
  prompt = corpus.test[:64] if corpus.unit == "char" else corpus.test[:20]
  carry = initial_carry(1)
  prime = jax.jit(lambda p, c, t: step_fn(p, c, t))
  for t in prompt[:-1]:
    carry, _ = prime(params, carry, jnp.array([t], jnp.int32))
  out = jax.jit(lambda p, c, first, k: jr.generate(step_fn, p, c, first, k, max_length=400,
                                                   temperature=0.8))(
      params, carry, jnp.array([prompt[-1]], jnp.int32), jax.random.key(seed))
  join = "" if corpus.unit == "char" else " "
  words = lambda ids: join.join(corpus.vocab[i] for i in ids if i >= 0)
  return words(prompt) + join + "|" + join + words(np.asarray(out.tokens[0]))


def plot_loss(history, test_bits, ngram, unit, path):
  plt = _common.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([r["step"] for r in history], [r["loss"] / math.log(2) for r in history],
          label="training (mean over the interval)")
  ax.axhline(test_bits, color="C1", label=f"held-out: {test_bits:.3f}")
  ax.axhline(ngram, color="grey", linestyle=":", label=f"computed n-gram: {ngram:.3f}")
  ax.set_xlabel("call (updates x windows per call)")
  ax.set_ylabel(f"bits per {unit}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_embeddings(table, vocab, path, metrics, shown: int = 60):
  """A 2-D projection (PCA) of the learned embeddings of the most frequent words, and the
  nearest neighbours (cosine) of a few."""
  plt = _common.pyplot()
  table = np.asarray(table, np.float64)[:-1]
  centred = table - table.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  xy = centred @ vt[:2].T
  fig, ax = plt.subplots(figsize=(8, 8))
  ax.scatter(xy[:shown, 0], xy[:shown, 1], s=6)
  for i in range(shown):
    ax.annotate(vocab[i], xy[i], fontsize=8)
  ax.set_title("word embeddings, first two principal components")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-9)
  neighbours = {}
  for word in ("king", "love", "lord", "death", "sweet"):
    if word in vocab[:-1]:
      i = vocab.index(word)
      order = np.argsort(-(unit @ unit[i]))
      neighbours[word] = [vocab[j] for j in order[1:6]]
  metrics["nearest_neighbours"] = neighbours
  for word, near in neighbours.items():
    print(f"nearest to {word!r}: {', '.join(near)}", flush=True)


if __name__ == "__main__":
  sys.exit(main())
