"""LOAD: rebuild saved graphs in a fresh process (load(), prefetch()), and what they hand back.

The public names are those of __all__; the modules whose names start with an underscore (the
pipeline, its chunks, the resources a load holds, module loading, output views, the probes'
seam) are internal and may change in any release."""

from foundry_trace.restore._pipeline import DEFAULT_BUILDERS, Span
from foundry_trace.restore._resources import ReleaseSummary
from foundry_trace.restore.load import DEFAULT_THREADS, load, prefetch
from foundry_trace.restore.restored import Restored, RestoredGraph

__all__ = ["DEFAULT_BUILDERS", "DEFAULT_THREADS", "ReleaseSummary", "Restored", "RestoredGraph", "Span", "load", "prefetch"]
