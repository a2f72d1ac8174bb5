"""MkDocs hooks of the jaxrnn site.

- `$$ ... $$` blocks of the pages become MathML (`mathml.py`).
- `<!-- include: PATH -->` includes a committed Markdown file (benchmark results) with its
  headings one level down.
- `<!-- api: GROUP -->` in a page becomes one mkdocstrings entry for every public name of
  `jaxrnn.__all__` whose home is that part of the package, so the reference always lists every
  public name; a name no page claims fails the build.
- The committed figures of the examples and benchmarks (`examples/results/**.png`,
  `benchmarks/results/**.png`) are served at those paths without a copy in `docs/`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re

from mkdocs.structure.files import File

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_LOG = logging.getLogger("mkdocs.hooks.jaxrnn")

_spec = importlib.util.spec_from_file_location("jaxrnn_docs_mathml", os.path.join(_HERE,
                                                                                  "mathml.py"))
_mathml = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mathml)

_DISPLAY = re.compile(r"^\$\$\n(.*?)\n\$\$$", re.S | re.M)
_API = re.compile(r"^<!-- api: (\w+) -->$", re.M)
_INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.M)

# Which reference page documents a public name: the first part of the module path it is defined
# in (after `jaxrnn.`), or the name itself for the public submodules.
_GROUP_OF_HOME = {"cells": "cells", "drivers": "drivers", "layers": "layers",
                  "_streaming": "layers", "models": "models", "training": "training",
                  "_types": "types", "diagnostics": "tools", "testing": "tools",
                  "interop": "interop"}


def _groups() -> dict:
  import jaxrnn

  groups = {}
  for name in jaxrnn.__all__:
    obj = getattr(jaxrnn, name)
    home = getattr(obj, "__name__", "") if type(obj).__name__ == "module" else getattr(
        obj, "__module__", "")
    part = home.split(".")[1] if home.startswith("jaxrnn.") else ""
    groups.setdefault(_GROUP_OF_HOME.get(part, "unplaced"), []).append(name)
  return groups


_claimed: set = set()


def on_pre_build(config, **kwargs):
  _claimed.clear()


def on_page_markdown(markdown, page, config, files, **kwargs):
  groups = _groups()

  def entries(match):
    group = match.group(1)
    _claimed.add(group)
    names = groups.get(group, [])
    if not names:
      raise ValueError(f"{page.file.src_path}: no public name belongs to the group {group!r}")
    return "\n\n".join(f"::: jaxrnn.{name}" for name in names)

  markdown = _INCLUDE.sub(lambda m: _included(m.group(1)), _API.sub(entries, markdown))
  return _DISPLAY.sub(lambda m: '<div class="math">'
                      + _mathml.to_mathml(m.group(1), display=True) + "</div>", markdown)


def _included(path: str) -> str:
  """A committed Markdown file of the repository, its headings one level down so that its title
  sits under the page's."""
  with open(os.path.join(_ROOT, path), encoding="utf-8") as f:
    text = f.read()
  return re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.M)


def on_post_build(config, **kwargs):
  unclaimed = {g: n for g, n in _groups().items() if g not in _claimed}
  if unclaimed:
    raise ValueError(f"public names on no reference page: {unclaimed}")


def on_files(files, config, **kwargs):
  for results in ("examples/results", "benchmarks/results"):
    for folder, _, names in sorted(os.walk(os.path.join(_ROOT, results))):
      for name in sorted(names):
        if name.endswith(".png"):
          rel = os.path.relpath(os.path.join(folder, name), _ROOT)
          files.append(File(rel, src_dir=_ROOT, dest_dir=config["site_dir"],
                            use_directory_urls=config["use_directory_urls"]))
  return files
