"""Weights in from and out to other frameworks. Each framework is imported only when used."""

from jaxrnn.interop.equinox import from_equinox
from jaxrnn.interop.flax import from_flax
from jaxrnn.interop.torch import from_torch, to_torch

__all__ = ["from_equinox", "from_flax", "from_torch", "to_torch"]
