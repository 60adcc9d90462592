"""The archive: a versioned file of content-addressed blobs and a JSON manifest (format.py), the
records of a graph (records.py) and their binary node table (node_table.py), and what `foundry
inspect` shows of it (summary.py). Nothing here calls the CUDA driver."""

from foundry_trace.archive.format import Archive, ArchiveWriter, Fingerprint, GraphEntry, Manifest, OutputReference, OutputTensor

__all__ = ["Archive", "ArchiveWriter", "Fingerprint", "GraphEntry", "Manifest", "OutputReference", "OutputTensor"]
