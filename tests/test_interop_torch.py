"""Parity with PyTorch: `jr.interop.from_torch` against `torch.nn.RNN/LSTM/GRU`.

Outputs, final carries and gradients (input and every torch parameter), float32 and float64,
over `_util.TORCH_CONFIGS` (num_layers 1-3, both directions, batch_first, bias, padded batches
through `pack_padded_sequence`). The largest errors are printed at the end of the module (see
them with `pytest -s`); `python tests/parity_report.py` prints the same table on its own.
"""

import numpy as np
import pytest

import torch  # the [test] extra, installed with pytest: a missing torch fails, never skips

import jax.numpy as jnp  # noqa: E402

import _util  # noqa: E402
import jaxrnn as jr  # noqa: E402

# Errors are judged against the magnitude compared (`scale`, at least 1): values are O(1)
# (tanh/sigmoid-bounded, relu of O(1) sums), gradients are sums of O(10) terms.
#   float32: eps = 1.2e-7; torch and XLA sum matmuls in different orders and the recursion
#   carries a rounding error of a few eps per step over <= 7 steps and 3 layers, so 2e-5 on
#   values and 1e-4 on gradients (which accumulate over all steps and the batch) leave ~10x room.
#   float64: eps = 2.2e-16; the same argument gives 1e-12 and 1e-11.
TOL = {"float32": (2e-5, 1e-4), "float64": (1e-12, 1e-11)}

_WORST = {}  # (kind, dtype) -> (value_err, grad_err), printed at module teardown


@pytest.fixture(scope="module", autouse=True)
def _print_parity_table():
  yield
  if _WORST:
    print("\n" + format_table(_WORST))


def format_table(worst) -> str:
  lines = ["largest |jaxrnn - torch| over all configurations",
           f"{'cell':<10}{'dtype':<10}{'values':>12}{'gradients':>12}"]
  for (kind, dtype), (v, g) in sorted(worst.items()):
    lines.append(f"{kind:<10}{dtype:<10}{v:>12.2e}{g:>12.2e}")
  return "\n".join(lines)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cfg", _util.TORCH_CONFIGS,
                         ids=lambda c: "L{}-{}-{}-{}-{}".format(
                             c.num_layers, "bi" if c.bidirectional else "uni",
                             "bf" if c.batch_first else "tm", "bias" if c.bias else "nobias",
                             "padded" if c.padded else "full"))
@pytest.mark.parametrize("kind", _util.TORCH_KINDS)
def test_parity_with_torch(kind, cfg, dtype):
  seed = _util.TORCH_CONFIGS.index(cfg) * 10 + _util.TORCH_KINDS.index(kind)
  result = _util.torch_parity(kind, cfg, dtype, seed)
  v_prev, g_prev = _WORST.get((kind, dtype), (0.0, 0.0))
  _WORST[(kind, dtype)] = (max(v_prev, result.value_err), max(g_prev, result.grad_err))
  v_tol, g_tol = TOL[dtype]
  assert result.value_err <= v_tol * max(1.0, result.value_scale), result
  assert result.grad_err <= g_tol * max(1.0, result.grad_scale), result


def test_from_torch_layout_and_carry_structure():
  """The documented layouts: `w_x = weight_ih.T`, `b = b_ih + b_hh`, GRU's two biases, and the
  carry tuple over layers with `(forward, backward)` pairs and `LSTMState` entries."""
  torch.manual_seed(0)
  module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
  layer, params = jr.interop.from_torch(module)
  np.testing.assert_array_equal(params[1]["backward"]["w_x"],
                                module.weight_ih_l1_reverse.detach().numpy().T)
  np.testing.assert_array_equal(
      params[0]["forward"]["b"], (module.bias_ih_l0 + module.bias_hh_l0).detach().numpy())
  carry, ys = layer.apply(params, jnp.zeros((5, 2, 3), jnp.float64))
  assert ys.shape == (5, 2, 8)
  assert len(carry) == 2 and all(len(c) == 2 for c in carry)
  assert all(isinstance(d, jr.LSTMState) for c in carry for d in c)

  gru = torch.nn.GRU(3, 4).double()
  _, gparams = jr.interop.from_torch(gru)
  np.testing.assert_array_equal(gparams[0]["b_h"], gru.bias_hh_l0.detach().numpy())


def test_from_torch_rejects_other_modules():
  with pytest.raises(TypeError, match="RNN, LSTM and GRU"):
    jr.interop.from_torch(torch.nn.Linear(2, 3))
