"""How time is run."""

from jaxrnn.drivers._parallel import parallel_scan
from jaxrnn.drivers._scan import scan, static_unroll

__all__ = ["parallel_scan", "scan", "static_unroll"]
