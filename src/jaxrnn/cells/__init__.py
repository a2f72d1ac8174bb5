"""Built-in cells, one family a module."""

from jaxrnn.cells._gru import gru
from jaxrnn.cells._indrnn import indrnn
from jaxrnn.cells._lstm import lstm
from jaxrnn.cells._simple import simple_rnn

__all__ = ["gru", "indrnn", "lstm", "simple_rnn"]
