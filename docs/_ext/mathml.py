"""Equations in the docs, rendered to MathML when the site is built.

The docstrings write equations as reStructuredText (`.. math::` blocks and `:math:` roles, the
form Sphinx and Flax use); the pages write `$$ ... $$` blocks. Both become MathML, which
browsers draw natively, so a page needs no script and no network to show its equations.
`to_mathml` is shared by the Griffe extension below (docstrings) and `hooks.py` (pages).
The extension also fences the docstrings' `>>>` examples as code.
"""

from __future__ import annotations

import re

import griffe
from latex2mathml.converter import convert

_ROLE = re.compile(r":math:`([^`]+)`")
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*$")


def to_mathml(latex: str, *, display: bool) -> str:
  """MathML for `latex`. A display block is drawn one equation a line: the lines of an aligned
  block (`\\\\`-separated, `&` alignment marks) become centred equations."""
  if not display:
    return convert(latex.strip())
  lines = [line.replace("&", "").strip() for line in re.split(r"\\\\", latex)]
  return "".join(convert(line, display="block") for line in lines if line)


def _math_block(latex: str, indent: str) -> list[str]:
  return ["", f'{indent}<div class="math">{to_mathml(latex, display=True)}</div>', ""]


def convert_rst_math(text: str) -> str:
  """`.. math::` blocks and `:math:` roles of a docstring turned into MathML; the rest kept."""
  lines, out, i = text.splitlines(), [], 0
  while i < len(lines):
    match = _DIRECTIVE.match(lines[i])
    if match is None:
      out.append(lines[i])
      i += 1
      continue
    indent, body = match["indent"], []
    i += 1
    while i < len(lines) and (not lines[i].strip()
                              or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
      body.append(lines[i].strip())
      i += 1
    out.extend(_math_block(" ".join(body), indent))
  text = "\n".join(out)
  return _ROLE.sub(lambda m: to_mathml(m.group(1), display=False), text)


def fence_doctests(text: str) -> str:
  """Each run of doctest lines (a `>>>` line and what follows it up to a blank line) put in a
  fenced Python block, so Markdown shows it as code rather than as a paragraph."""
  lines, out, i = text.splitlines(), [], 0
  while i < len(lines):
    stripped = lines[i].lstrip()
    if not stripped.startswith(">>>"):
      out.append(lines[i])
      i += 1
      continue
    indent = lines[i][:len(lines[i]) - len(stripped)]
    block = []
    while i < len(lines) and lines[i].strip():
      block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
      i += 1
    if out and out[-1].strip():
      out.append("")
    out.extend([f"{indent}```pycon", *(indent + line for line in block), f"{indent}```", ""])
  return "\n".join(out)


class DocstringMarkup(griffe.Extension):
  """Griffe extension for the docstrings' reStructuredText habits: math rendered to MathML,
  doctests fenced as code, and a paragraph's closing `::` (the literal-block marker) shown as
  `:`."""

  def on_object(self, *, obj, **kwargs) -> None:
    del kwargs
    if obj.docstring is None or obj.is_alias:
      return
    value = fence_doctests(convert_rst_math(obj.docstring.value))
    obj.docstring.value = re.sub(r"(\S)::[ \t]*$", r"\1:", value, flags=re.M)
