"""Weights in from other frameworks. Each framework is imported only when used."""

from jaxrnn.interop.torch import from_torch

__all__ = ["from_torch"]
