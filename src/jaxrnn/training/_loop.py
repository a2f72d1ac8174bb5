"""`jr.fit`: the training loop around a step, with a progress bar, a JSON-lines log and the
report of every skipped (non-finite) step."""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import numpy as np

from jaxrnn.training import _step

PyTree = Any


class FitResult(NamedTuple):
  """What `jr.fit` returns.

  Attributes:
    params, opt_state: after the last step.
    history: one dict a logging interval: `step` (the last step of the interval, 1-based),
      `loss` and `grad_norm` (means over the interval's finite steps), `steps_per_s`,
      `tokens_per_s` (when `tokens_per_batch` is given), `seconds` (since the start).
    nonfinite: one dict a step whose loss or gradient was not finite: `step` and `leaf` (the
      path of the first gradient leaf with a NaN or Inf, `"<none>"` when only the loss was).
  """

  params: PyTree
  opt_state: PyTree
  history: list
  nonfinite: list


def _progress_bar(total, enabled):
  if enabled is False:
    return None
  try:
    import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    if enabled is True:
      raise ImportError("fit(progress=True) needs tqdm: pip install 'jaxrnn[training]'") from None
    return None
  return tqdm.tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)


def fit(step: Callable, params: PyTree, opt_state: PyTree, batches: Iterable, *, key=None,
        steps: Optional[int] = None, log_every: int = 50, progress="auto",
        metrics_file: Optional[str] = None, tokens_per_batch: Optional[int] = None,
        first_step: int = 1, on_log: Optional[Callable] = None) -> FitResult:
  """Runs `step(params, opt_state, batch, key)` (a `jr.train_step`) over `batches`.

  Metrics stay on the device between logging intervals (no host synchronisation per step).
  Every `log_every` steps, and at the end, the interval's mean loss, mean gradient norm and
  throughput are appended to the history, shown on a tqdm bar (`progress="auto"`: when tqdm is
  installed; `True` demands it) and written as one JSON line to `metrics_file`. A step whose
  `metrics["finite"]` is False (skipped by `skip_nonfinite=True`) is reported with its step
  number and the first offending gradient leaf, on standard error and in the result.

  Args:
    step: a `jr.train_step`, or any function with its signature and metrics.
    params, opt_state: the starting point.
    batches: an iterable of batches (each passed to `step` as is).
    key: a PRNG key; step `i` gets `jax.random.fold_in(key, i)`. `None` passes `None`.
    steps: stop after this many steps (default: when `batches` ends).
    log_every: the logging interval, in steps.
    progress: "auto", True or False.
    metrics_file: a path to append JSON lines to, or None.
    tokens_per_batch: if given, throughput is also reported in tokens per second.
    first_step: the number of the first step (to resume a run with the same numbering and
      keys).
    on_log: called as `on_log(record, params, opt_state)` after each logging interval (the
      record is the history entry): the place to checkpoint (`jr.Checkpointer.save`) or to
      evaluate.

  Returns:
    `FitResult(params, opt_state, history, nonfinite)`.
  """
  if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
    raise ValueError(f"fit: log_every must be a positive int, got {log_every!r}")
  if progress not in ("auto", True, False):
    raise ValueError(f"fit: progress must be 'auto', True or False, got {progress!r}")
  bar = _progress_bar(steps, True if progress is True else (None if progress == "auto"
                                                              else False))
  log = open(metrics_file, "a", encoding="utf-8") if metrics_file else None
  history, nonfinite, pending = [], [], []
  start = last_time = time.perf_counter()
  last_logged = first_step - 1

  def flush(number):
    nonlocal last_time, last_logged, pending
    got = jax.device_get(pending)
    pending = []
    for i, m in got:
      if not bool(m["finite"]):
        leaf = _step.leaf_name(params, int(m["nonfinite_leaf"]))
        nonfinite.append({"step": i, "leaf": leaf})
        print(f"fit: step {i}: non-finite loss or gradient (first non-finite gradient leaf: "
              f"{leaf}); a step built with skip_nonfinite=True left the parameters unchanged",
              file=sys.stderr)
    ok = [m for _, m in got if bool(m["finite"])]
    now = time.perf_counter()
    count = number - last_logged
    record = {"step": number,
              "loss": float(np.mean([m["loss"] for m in ok])) if ok else float("nan"),
              "grad_norm": float(np.mean([m["grad_norm"] for m in ok])) if ok else float("nan"),
              "steps_per_s": count / max(now - last_time, 1e-9),
              "seconds": now - start}
    if tokens_per_batch:
      record["tokens_per_s"] = record["steps_per_s"] * tokens_per_batch
    history.append(record)
    if log:
      log.write(json.dumps(record) + "\n")
      log.flush()
    if bar is not None:
      bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.1f}")
    if on_log is not None:
      on_log(record, params, opt_state)
    last_time, last_logged = now, number

  number = first_step - 1
  if steps is not None:
    batches = itertools.islice(batches, steps)
  try:
    for number, batch in enumerate(batches, start=first_step):
      k = None if key is None else jax.random.fold_in(key, number)
      params, opt_state, metrics = step(params, opt_state, batch, k)
      pending.append((number, {name: metrics[name] for name in
                               ("loss", "grad_norm", "finite", "nonfinite_leaf")}))
      if bar is not None:
        bar.update(1)
      if (number - first_step + 1) % log_every == 0:
        flush(number)
    if pending:
      flush(number)
  finally:
    if bar is not None:
      bar.close()
    if log:
      log.close()
  return FitResult(params, opt_state, history, nonfinite)
