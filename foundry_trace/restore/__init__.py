"""LOAD: rebuild saved graphs in a fresh process (load(), prefetch()), and what they hand back."""

from foundry_trace.archive.keys import key_order, serving_order
from foundry_trace.restore._pipeline import DEFAULT_BUILDERS, DEFAULT_CHUNK_NODES, PipelineHooks, Span
from foundry_trace.restore._resources import ReleaseSummary
from foundry_trace.restore.load import DEFAULT_THREADS, load, prefetch
from foundry_trace.restore.restored import Restored, RestoredGraph

__all__ = [
    "DEFAULT_BUILDERS",
    "DEFAULT_CHUNK_NODES",
    "DEFAULT_THREADS",
    "PipelineHooks",
    "ReleaseSummary",
    "Restored",
    "RestoredGraph",
    "Span",
    "key_order",
    "load",
    "prefetch",
    "serving_order",
]
