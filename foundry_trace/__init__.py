"""foundry_trace: capture, persist and restore CUDA graphs (SAVE / LOAD), and the `foundry` CLI."""
