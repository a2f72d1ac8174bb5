"""How time is run."""

from jaxrnn.drivers._scan import scan, static_unroll

__all__ = ["scan", "static_unroll"]
