"""CUDA module binaries as bytes: reading cubins and fatbins (cubin.py), cutting a cubin down to
the kernels an archive launches (compact.py, or trim.py's stubs where compaction declines), and
the words of module variables each load fills in (variables.py). No driver calls."""
