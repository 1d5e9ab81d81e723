"""Constructed traces for the family-specific detectors: the reference carries `architecture` metadata."""

from __future__ import annotations

from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose


def diagnosed(reference: dict, candidate: dict, architecture: dict):
    metadata = {"dtype": "float32", "architecture": architecture}
    reference_trace, candidate_trace = make_trace(reference, metadata), make_trace(candidate, {"dtype": "float32"})
    return diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)


def found(reference: dict, candidate: dict, architecture: dict) -> set[tuple[str, str]]:
    return {(d.cause, d.checkpoint) for d in diagnosed(reference, candidate, architecture).diagnoses} - {("precision_noise", "")}
