"""parity: find where a port of a transformer language model first parts ways with its reference.

    import parity
    reference = parity.load_trace("reference.safetensors")
    candidate = parity.trace_module(my_port, reference.tokens, taps={...})
    comparison = parity.compare(reference, candidate)
    if not comparison:
        print(comparison.first_divergence)

`parity.compare` is the comparison `parity check` reports: the candidate's conventions adapted
(core/conventions.py), every checkpoint compared, the causes diagnosed. The core (traces, names,
metrics, comparison) needs numpy alone; capture from torch models and transformers is imported
on first use.
"""

from parity.core.compare import CompareConfig
from parity.core.errors import CaptureError, MissingDependency, OptionError, ParityError, TraceError
from parity.core.names import LAYER_KINDS, Checkpoint, Tap, in_flow_order, parse
from parity.core.results import CheckpointResult, Comparison, Diagnosis, Divergence, Metrics, Tolerance
from parity.core.trace import FORMAT, Trace, load_trace, make_trace, save_trace

__all__ = [
    "CaptureError",
    "Checkpoint",
    "CheckpointResult",
    "CompareConfig",
    "Comparison",
    "Diagnosis",
    "Divergence",
    "FORMAT",
    "LAYER_KINDS",
    "Metrics",
    "MissingDependency",
    "OptionError",
    "ParityError",
    "Probe",
    "Tap",
    "Tolerance",
    "Trace",
    "TraceError",
    "capture_hf",
    "compare",
    "in_flow_order",
    "load_trace",
    "make_trace",
    "parse",
    "save_trace",
    "trace_module",
]

_LAZY = {  # these import torch or transformers, so only on first use
    "trace_module": "parity.capture.torch.module",
    "capture_hf": "parity.capture.hf.model",
    "Probe": "parity.capture.torch.probe",
}


def compare(reference: Trace, candidate: Trace, *, config: CompareConfig | None = None,
            strict: frozenset[str] = frozenset()) -> Comparison:
    """Every checkpoint both traces hold compared, the candidate's conventions adapted to the reference's
    (those named in `strict` held as failures), with where they first part ways and its likely causes."""
    from parity.diagnose.compared import compare_and_diagnose

    return compare_and_diagnose(reference, candidate, config or CompareConfig(), strict=frozenset(strict))


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'parity' has no attribute '{name}'")
