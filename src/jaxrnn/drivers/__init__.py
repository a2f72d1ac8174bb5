"""How time is run."""

from jaxrnn.drivers._newton import NewtonInfo, newton_scan
from jaxrnn.drivers._parallel import parallel_scan
from jaxrnn.drivers._scan import scan, scan_plan, static_unroll

__all__ = ["NewtonInfo", "newton_scan", "parallel_scan", "scan", "scan_plan",
           "static_unroll"]
