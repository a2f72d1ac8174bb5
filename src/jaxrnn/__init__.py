"""jaxrnn: functional recurrent networks for JAX.

A cell is a NamedTuple of pure functions over an explicit parameter pytree; `jr.scan` runs it
over time with `jax.lax.scan`; layers compose cells into sequence models.
"""

from jaxrnn import interop
from jaxrnn._types import Cell, Layer, LSTMState
from jaxrnn.cells import gru, indrnn, lstm, simple_rnn
from jaxrnn.drivers import scan, static_unroll
from jaxrnn.layers import bidirectional, flip_sequences, rnn, stack

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "Layer",
    "LSTMState",
    "bidirectional",
    "flip_sequences",
    "gru",
    "indrnn",
    "interop",
    "lstm",
    "rnn",
    "scan",
    "simple_rnn",
    "stack",
    "static_unroll",
]
