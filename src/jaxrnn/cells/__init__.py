"""Built-in cells, one family a module."""

from jaxrnn.cells._conv import conv_gru, conv_lstm
from jaxrnn.cells._gru import gru
from jaxrnn.cells._indrnn import indrnn
from jaxrnn.cells._linear import linear_indrnn, lru, min_gru, min_lstm
from jaxrnn.cells._lstm import lstm
from jaxrnn.cells._norm import layer_norm_gru, layer_norm_lstm
from jaxrnn.cells._simple import simple_rnn
from jaxrnn.cells._weight_drop import weight_drop
from jaxrnn.cells._with_carries import with_carries
from jaxrnn.cells._wrappers import ZoneoutState, variational_dropout, zoneout

__all__ = [
    "ZoneoutState", "conv_gru", "conv_lstm", "gru", "indrnn", "layer_norm_gru", "layer_norm_lstm", "linear_indrnn", "lru",
    "lstm", "min_gru", "min_lstm", "simple_rnn", "variational_dropout", "weight_drop",
    "with_carries", "zoneout",
]
