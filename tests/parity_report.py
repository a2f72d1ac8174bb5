"""Prints the largest jaxrnn-vs-PyTorch errors per cell type and dtype.

    python tests/parity_report.py [--seeds N]

Runs `_util.torch_parity` (the comparison `tests/test_interop_torch.py` asserts on) over every
configuration of `_util.TORCH_CONFIGS` and N seeds each, and prints, per cell type and dtype,
the largest absolute error of values (outputs and final carries) and of gradients (inputs and
every torch parameter), with the magnitude of what was compared.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import _util  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=1, help="random sizes/data per configuration")
  args = parser.parse_args()
  print(f"{'cell':<10}{'dtype':<9}{'max value err':>15}{'(of |value|)':>14}"
        f"{'max grad err':>15}{'(of |grad|)':>13}{'runs':>6}")
  for kind in _util.TORCH_KINDS:
    for dtype in ("float32", "float64"):
      worst_v = worst_g = scale_v = scale_g = 0.0
      runs = 0
      for i, cfg in enumerate(_util.TORCH_CONFIGS):
        for s in range(args.seeds):
          r = _util.torch_parity(kind, cfg, dtype, seed=1000 * s + 10 * i
                                 + _util.TORCH_KINDS.index(kind))
          worst_v, worst_g = max(worst_v, r.value_err), max(worst_g, r.grad_err)
          scale_v, scale_g = max(scale_v, r.value_scale), max(scale_g, r.grad_scale)
          runs += 1
      print(f"{kind:<10}{dtype:<9}{worst_v:>15.2e}{scale_v:>14.2f}"
            f"{worst_g:>15.2e}{scale_g:>13.2f}{runs:>6}", flush=True)


if __name__ == "__main__":
  main()
