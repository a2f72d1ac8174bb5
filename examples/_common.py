"""What the example scripts share: their common command-line flags and the plotting backend."""

from __future__ import annotations

import argparse
import pathlib


def parser(doc: str, out: str, *, seed: bool = True) -> argparse.ArgumentParser:
  """An argument parser with the flags every task script takes: `--quick` (a few dozen steps
  on a slice, for the smoke tests), `--out DIR` (created by `out_dir`) and, unless `seed` is
  False, `--seed`."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="a few dozen steps on a small slice")
  p.add_argument("--out", default=out, help="the folder for metrics.json and the plots")
  if seed:
    p.add_argument("--seed", type=int, default=0)
  return p


def out_dir(path: str) -> pathlib.Path:
  """`path` as a folder that exists."""
  folder = pathlib.Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  return folder


def pyplot():
  """`matplotlib.pyplot` on the file-only Agg backend (the scripts run without a display)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt
