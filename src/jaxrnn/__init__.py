"""jaxrnn: functional recurrent networks for JAX.

A cell is a NamedTuple of pure functions over an explicit parameter pytree; `jr.scan` runs it
over time with `jax.lax.scan`; layers compose cells into sequence models.
"""

from jaxrnn import interop
from jaxrnn._types import Cell, Layer, LSTMState
from jaxrnn._streaming import step_layer, stream
from jaxrnn.cells import (ZoneoutState, gru, indrnn, layer_norm_gru, layer_norm_lstm, lstm,
                          simple_rnn, variational_dropout, zoneout)
from jaxrnn.drivers import scan, static_unroll
from jaxrnn.layers import bidirectional, dropout, flip_sequences, rnn, stack

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "Layer",
    "LSTMState",
    "ZoneoutState",
    "bidirectional",
    "dropout",
    "flip_sequences",
    "gru",
    "indrnn",
    "interop",
    "layer_norm_gru",
    "layer_norm_lstm",
    "lstm",
    "rnn",
    "scan",
    "simple_rnn",
    "stack",
    "static_unroll",
    "step_layer",
    "stream",
    "variational_dropout",
    "zoneout",
]
