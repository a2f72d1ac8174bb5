"""Sequence-level composition."""

from jaxrnn.layers._bidirectional import bidirectional, flip_sequences
from jaxrnn.layers._dropout import dropout
from jaxrnn.layers._initial_carry import learned_initial_carry
from jaxrnn.layers._rnn import rnn
from jaxrnn.layers._stack import stack

__all__ = ["bidirectional", "dropout", "flip_sequences", "learned_initial_carry", "rnn", "stack"]
