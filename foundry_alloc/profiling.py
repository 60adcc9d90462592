"""Foundry's one NVTX domain. Every range of the allocator (Python and C++), of SAVE, of LOAD and
of the benchmark harness is pushed into the domain "foundry", so that one Nsight Systems row
shows a whole cold start; range names say which layer they come from ("alloc.map",
"save.walk 8", "load.instantiate graph 8", "workload.capture b=8").
"""

from __future__ import annotations

import nvtx

DOMAIN = "foundry"  # csrc/nvtx_range.hpp creates the same domain for the C++ ranges


def annotate(message: str) -> nvtx.annotate:
    """A context manager (and decorator) that pushes `message` as a range of Foundry's domain."""
    return nvtx.annotate(message, domain=DOMAIN)
