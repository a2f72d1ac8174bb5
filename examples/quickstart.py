"""A character-level LSTM language model on Shakespeare, in about a hundred lines.

    python examples/quickstart.py            # the full run: a few minutes on 2 CPU cores
    python examples/quickstart.py --quick    # a few dozen steps on a small slice (the smoke test)

The model is an embedding lookup, one `jr.lstm` run over time by `jr.scan`, and a linear softmax
head; `jr.train_step` differentiates the scan (backpropagation through time) and applies Optax's
Adam after global-norm clipping, and `jr.fit` runs the loop (progress bar, logging, and the report
of any step skipped for a non-finite gradient). Training windows are drawn at random from the training plays, each
starting from a zero carry. The held-out text (the last 10% of the sorted play files) is
read as parallel streams whose carry is passed from one window to the next, so every character
after the first few is predicted from a long context.

The last line printed is machine-readable: `RESULT {json}` with the first and last training loss
(nats per character, each averaged over one logging interval) and the held-out bits per character.
Reference points on the same split (n-gram models, see docs/examples.md): unigram 4.80, bigram 3.67, trigram 2.93,
interpolated 5-gram 2.34 bits per character.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn as jr

import _data


class Config(NamedTuple):
  steps: int
  batch: int  # windows per step
  window: int  # characters per window (truncated-BPTT length)
  hidden: int
  embed: int
  learning_rate: float  # peak; cosine-decayed to a tenth over the run
  log_every: int
  train_chars: Optional[int]  # a prefix of the training text; None for all of it
  test_chars: Optional[int]
  test_streams: int  # parallel rows the held-out text is cut into


FULL = Config(steps=1500, batch=32, window=64, hidden=256, embed=32, learning_rate=1e-2,
              log_every=100, train_chars=None, test_chars=None, test_streams=64)
QUICK = Config(steps=60, batch=16, window=32, hidden=64, embed=16, learning_rate=1e-2,
               log_every=10, train_chars=200_000, test_chars=20_000, test_streams=16)


def init_model(key, vocab_size: int, embed_size: int, cell: jr.Cell, hidden: int):
  k_embed, k_cell, k_out = jax.random.split(key, 3)
  return {
      "embed": jax.random.normal(k_embed, (vocab_size, embed_size), jnp.float32) * 0.1,
      "lstm": cell.init(k_cell, embed_size),
      "w_out": jax.random.normal(k_out, (hidden, vocab_size), jnp.float32) / math.sqrt(hidden),
      "b_out": jnp.zeros((vocab_size,), jnp.float32),
  }


def logits_fn(cell, params, tokens, carry=None):
  """tokens int `(B, T)` -> `(carry, logits (B, T, V))`."""
  carry, hs = jr.scan(cell, params["lstm"], params["embed"][tokens], carry=carry)
  return carry, hs @ params["w_out"] + params["b_out"]


def loss_fn(cell, params, tokens, carry=None):
  """Mean next-character cross-entropy (nats) of `tokens[:, 1:]` given `tokens[:, :-1]`."""
  carry, logits = logits_fn(cell, params, tokens[:, :-1], carry)
  return jr.masked_cross_entropy(logits, tokens[:, 1:]), carry


def random_windows(rng: np.random.Generator, ids: np.ndarray, batch: int, length: int):
  starts = rng.integers(0, len(ids) - length - 1, size=batch)
  return ids[starts[:, None] + np.arange(length + 1)]


def held_out_bits_per_char(cell, params, ids: np.ndarray, streams: int, window: int) -> float:
  """Bits per character on `ids`, cut into `streams` contiguous rows whose carry passes from one
  window to the next."""
  per_row = (len(ids) - 1) // streams // window * window  # whole windows only; the tail is dropped
  rows = np.stack([ids[r * per_row:(r + 1) * per_row + 1] for r in range(streams)])

  @jax.jit
  def window_nll(params, carry, tokens):
    loss, carry = loss_fn(cell, params, tokens, carry)
    return carry, loss

  carry, total = cell.initial_carry((streams,), jnp.float32), 0.0
  for start in range(0, per_row, window):
    carry, loss = window_nll(params, carry, rows[:, start:start + window + 1])
    total += float(loss)
  return total / (per_row // window) / math.log(2)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a few dozen steps on a small slice")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--learning-rate", type=float, default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  cfg = cfg._replace(steps=args.steps or cfg.steps,
                     learning_rate=args.learning_rate or cfg.learning_rate)

  split = _data.shakespeare_split()
  vocab = _data.CharVocab.from_text(split.train)
  train_ids = vocab.encode(split.train[:cfg.train_chars])
  test_ids = vocab.encode(split.test[:cfg.test_chars])
  print(f"train: {len(split.train_files)} files, {len(train_ids):,} chars; test: "
        f"{[f.stem for f in split.test_files]}, {len(test_ids):,} chars; vocab {vocab.size}")

  cell = jr.lstm(cfg.hidden)
  params = init_model(jax.random.key(args.seed), vocab.size, cfg.embed, cell, cfg.hidden)
  schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps, alpha=0.1)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
  opt_state = optimizer.init(params)

  step = jr.train_step(lambda p, tokens, key: loss_fn(cell, p, tokens)[0], optimizer,
                       donate=True)
  rng = np.random.default_rng(args.seed)
  batches = (random_windows(rng, train_ids, cfg.batch, cfg.window) for _ in range(cfg.steps))
  start = time.perf_counter()
  result = jr.fit(step, params, opt_state, batches, steps=cfg.steps, log_every=cfg.log_every,
                  tokens_per_batch=cfg.batch * cfg.window)
  params = result.params
  logged = [r["loss"] for r in result.history]
  for r in result.history:
    print(f"step {r['step']:5d}  train loss {r['loss']:.3f} nats/char "
          f"({r['loss'] / math.log(2):.2f} bits)  {r['seconds']:6.1f} s", flush=True)

  bpc = held_out_bits_per_char(cell, params, test_ids, streams=cfg.test_streams, window=128)
  print(f"held-out: {bpc:.3f} bits/char (n-gram references: unigram 4.80, bigram 3.67, trigram 2.93, "
        f"5-gram 2.34)")
  print("RESULT " + json.dumps({"first_loss": logged[0], "final_loss": logged[-1],
                                "test_bpc": bpc, "steps": cfg.steps,
                                "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
  main()
