"""Trace I/O: one trace of named tensors, read from and written to safetensors, .npz or a directory of .npy files.

`Trace`, `load_trace`, `save_trace` and `make_trace` live in trace.py; readers.py
checks a file before anything is allocated; lazy.py maps a file once and hands out
views; writer.py writes checkpoints as they arrive.
"""

from parity.core.trace.trace import (  # noqa: F401  (the public names of the package)
    FORMAT,
    Trace,
    clean_metadata,
    layer_count,
    load_trace,
    make_trace,
    save_trace,
    with_arrays,
)
