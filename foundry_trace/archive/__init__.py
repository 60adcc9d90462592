"""The archive: a versioned file of content-addressed blobs, a JSON manifest and signatures
(format.py, manifest.py, signing.py), the records of a graph (records.py) and their binary node
table (node_table.py), and what `foundry inspect` shows of it (summary.py). Nothing here calls
the CUDA driver."""

from foundry_trace.archive.format import Archive, ArchiveWriter
from foundry_trace.archive.manifest import Fingerprint, GraphEntry, Manifest, OutputReference, OutputTensor

__all__ = ["Archive", "ArchiveWriter", "Fingerprint", "GraphEntry", "Manifest", "OutputReference", "OutputTensor"]
