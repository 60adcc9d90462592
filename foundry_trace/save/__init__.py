"""SAVE: the CUPTI tracer (tracer.py), module binaries and the functions captured from them
(modules.py, module_image.py), the graph walker (graph_walker.py) and the recording that writes
an archive (recording.py)."""

from foundry_trace.save.recording import Recording, current_recording, record, start_tracing

__all__ = ["Recording", "current_recording", "record", "start_tracing"]
