"""Every built-in cell through the conformance battery, each property its own test case.

`CELLS` is the one registry of built-in cells: a new cell gets the whole battery by adding a line
here (and `test_registry_covers_every_cell_factory` fails until it is added).
"""

import pytest

import jaxrnn as jr
import jaxrnn.cells
import jaxrnn.testing

INPUT_SIZE, HIDDEN = 3, 4

# id -> (factory name in jaxrnn.cells, cell). The cell objects live for the whole module, so that
# the battery's compiled functions are shared by the properties of one cell.
CELLS = {
    "simple_rnn_tanh": ("simple_rnn", jr.simple_rnn(HIDDEN)),
    "simple_rnn_relu": ("simple_rnn", jr.simple_rnn(HIDDEN, activation="relu")),
    "lstm": ("lstm", jr.lstm(HIDDEN)),
    # Both options in one entry (each alone: tests/test_cell_variants.py); init="pytorch" draws
    # the peepholes at random (the default scheme starts them at zero).
    "lstm_proj_peephole": ("lstm", jr.lstm(HIDDEN, proj_size=2, peephole=True, init="pytorch")),
    "gru": ("gru", jr.gru(HIDDEN)),
    "gru_reset_before": ("gru", jr.gru(HIDDEN, reset_after=False)),
    "indrnn": ("indrnn", jr.indrnn(HIDDEN)),
    "indrnn_bounded": ("indrnn", jr.indrnn(HIDDEN, recurrent_bound=0.5)),
    "layer_norm_lstm": ("layer_norm_lstm", jr.cells.layer_norm_lstm(HIDDEN)),
    "layer_norm_gru": ("layer_norm_gru", jr.cells.layer_norm_gru(HIDDEN)),
    "min_gru": ("min_gru", jr.min_gru(HIDDEN)),
    "min_lstm_log_space": ("min_lstm", jr.min_lstm(HIDDEN, log_space=True)),
    "linear_indrnn": ("linear_indrnn", jr.linear_indrnn(HIDDEN)),
    "lru": ("lru", jr.lru(HIDDEN, output_size=3)),
}

# Names in jaxrnn.cells that are not factories of a new cell from a hidden size: the regularising
# wrappers (they take a cell; not yet run through the battery: zoneout's carry holds an int32 step
# counter, which the float64 gradient check would have to leave out; weight_drop has its own
# tests in tests/test_weight_drop.py), `with_carries` (it adds the carry to the outputs;
# tests/test_layer_carry.py), a carry type, and the convolutional cells, whose inputs are
# frames `(..., H, W, C)` (`input_rank=3`) while the battery feeds vectors `(..., D)`; they have
# their own NumPy-oracle, gradient, lengths and resets tests in tests/test_conv_cells.py.
NOT_CELL_FACTORIES = {"ZoneoutState", "conv_gru", "conv_lstm", "variational_dropout",
                      "weight_drop", "with_carries", "zoneout"}


def test_registry_covers_every_cell_factory():
  covered = {factory for factory, _ in CELLS.values()}
  missing = sorted(set(jaxrnn.cells.__all__) - covered - NOT_CELL_FACTORIES)
  assert not missing, f"add these cells to tests/test_registry.py CELLS: {missing}"


@pytest.mark.parametrize("prop", jaxrnn.testing.properties())
@pytest.mark.parametrize("name", list(CELLS))
def test_builtin_cell(name, prop):
  jaxrnn.testing.check_property(CELLS[name][1], INPUT_SIZE, prop)
