"""Traces too large to hold: written to a private directory as they are made and read back a tensor at a
time (memory-mapped), so that check's memory does not grow with the square of the tokens.

The reference's, the calibration run's and a candidate's trace each spill when larger than SPILL_BYTES;
the directory (PARITY_SPILL_DIR, else the system's temporary directory) is removed when the check ends.
"""

from __future__ import annotations

from pathlib import Path

from parity.core.trace import Trace, save_trace

# A reference trace larger than this (float64, attention probabilities included) is written to a file as the
# checkpoints arrive and read back memory-mapped, a tensor at a time, rather than held in memory.
SPILL_BYTES = 1 << 30


def spill_directory():
    """A private directory for a reference trace that does not fit in memory, removed when the check ends
    (PARITY_SPILL_DIR chooses where: the trace of a long input takes gigabytes)."""
    import os
    import tempfile

    return tempfile.TemporaryDirectory(prefix="parity-spill-", dir=os.environ.get("PARITY_SPILL_DIR"))


def spilled(trace: Trace, spill: str) -> Trace:
    """A candidate's trace larger than SPILL_BYTES, written to the spill directory and read back lazily, so
    that it is not held while the calibration runs and the comparison reads it a tensor at a time."""
    from parity.core.trace import load_trace

    size = sum(tensor.nbytes for tensor in trace.tensors.values()) if isinstance(trace.tensors, dict) else 0
    if size <= SPILL_BYTES:
        return trace
    path = save_trace(trace, Path(spill) / "candidate.safetensors")
    del trace
    return load_trace(path)


def reference_trace_bytes(model, tokens: int, dtype: str, checkpoints: str | None = None) -> int:
    """About how large the reference's trace is, at the reference's precision: per layer, each layer's
    attention probabilities (H x T x T, unless `checkpoints` leaves them out), ten hidden-wide checkpoints
    (norms, post-norms, outputs, residuals), four as wide as the query heads (q, its norm, q after RoPE, the
    context), four as the key/value heads (k, its norm, v, k after RoPE) and three as the MLP (gate, up,
    activation); then the logits. Within -10%/+50% of what a capture writes (tests/commands/check/test_spill.py)."""
    from parity.core.names import select

    config = model.model.config
    config = getattr(config, "get_text_config", lambda: config)()
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    vocabulary = getattr(config, "vocab_size", 0) or 0
    itemsize = {"float64": 8, "float32": 4}.get(dtype, 2)   # float16 and bfloat16 are held as they are made
    probabilities = heads * tokens * tokens if select(["layers.0.attn_probs"], checkpoints) else 0
    per_token = 10 * hidden + 4 * heads * head_dim + 4 * kv_heads * head_dim + 3 * intermediate
    return (layers * (probabilities + tokens * per_token) + tokens * vocabulary) * itemsize


def require_room(spill: str, needed_bytes: int, probabilities_bytes: int, tokens: int) -> None:
    """Refuse, before any pass runs, a check whose spilled traces would not fit on the spill directory's disk."""
    import os
    import shutil

    from parity.core.errors import OptionError

    free = shutil.disk_usage(spill).free
    if needed_bytes <= 0.9 * free:
        return
    where = ("PARITY_SPILL_DIR" if os.environ.get("PARITY_SPILL_DIR")
             else "the temporary directory; PARITY_SPILL_DIR moves it")
    leave_out = (f", or leave out the attention probabilities ({probabilities_bytes / 2**30:.0f} GiB of it: "
                 "--checkpoints '*,!*.attn_probs')") if probabilities_bytes else ""
    raise OptionError(f"a check over {tokens} tokens writes about {needed_bytes / 2**30:.0f} GiB of traces to "
                      f"{Path(spill).parent} ({where}), which has {free / 2**30:.0f} GiB free: point "
                      f"PARITY_SPILL_DIR at a disk with room, give fewer tokens{leave_out}")
