"""The documentation: every `>>>` example in the package's docstrings runs and prints what it
says, every Python block of the site's pages runs, and the site builds with warnings as errors.

Examples show what a user sees with JAX's defaults (float32, standard dtype promotion, rank
promotion allowed), so they run under those rather than under the suite's strict settings.
"""

import contextlib
import doctest
import importlib
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import jax
import pytest

import jaxrnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _modules():
  names = ["jaxrnn"] + [m.name for m in pkgutil.walk_packages(jaxrnn.__path__, "jaxrnn.")]
  return sorted(n for n in names if not n.rsplit(".", 1)[-1].startswith("_") or n.count(".") > 1
                and not any(part.startswith("_native") for part in n.split(".")))


def _doctests(module_name):
  module = importlib.import_module(module_name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  return [t for t in finder.find(module) if t.examples
          and getattr(importlib.import_module(t.globs.get("__name__", module_name)), "__name__",
                      "") == module_name]


@pytest.mark.parametrize("module_name", [m for m in _modules() if _doctests(m)])
def test_docstring_examples_run(module_name):
  tests = _doctests(module_name)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  with _jax_defaults():
    for test in tests:
      runner.run(test)
  results = runner.summarize(verbose=False)
  assert results.failed == 0, f"{results.failed} docstring example(s) of {module_name} failed"


@contextlib.contextmanager
def _jax_defaults():
  with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"), \
      jax.numpy_rank_promotion("allow"):
    yield


def _python_blocks(path):
  return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if _python_blocks(p)))
def test_page_code_runs(page):
  namespace = {"__name__": f"docs_{page}"}
  with _jax_defaults():
    for block in _python_blocks(DOCS / page):
      exec(compile(block, f"docs/{page}", "exec"), namespace)  # noqa: S102


def test_site_builds_with_warnings_as_errors(tmp_path):
  pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install "
                      "-e '.[docs]')")
  pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
  pytest.importorskip("latex2mathml", reason="the docs extra is not installed")
  out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
  cells = (tmp_path / "site" / "api" / "cells" / "index.html").read_text(encoding="utf-8")
  assert "<math" in cells and "jaxrnn.lstm" in cells  # equations rendered, names documented
  for name in jaxrnn.__all__:
    assert any(f"jaxrnn.{name}" in page.read_text(encoding="utf-8")
               for page in (tmp_path / "site" / "api").glob("*/index.html")), name
  assert (tmp_path / "site" / "examples" / "results" / "char_lm" / "loss.png").exists()
