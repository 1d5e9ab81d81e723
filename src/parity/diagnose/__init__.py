"""Detectors that name likely causes from the tensors of a comparison.

Each detector is a small function registered under the cause it names; it sees
the comparison and both traces and yields Diagnosis objects (a named cause with
its evidence) or plain strings (notes). A detector reports only on strong
evidence: no diagnosis is better than a wrong one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from parity.core.results import Comparison, Diagnosis
from parity.core.trace import Trace

Detector = Callable[[Comparison, Trace, Trace], Iterable[Diagnosis | str]]
DETECTORS: dict[str, Detector] = {}


def register(cause: str) -> Callable[[Detector], Detector]:
    def add(detector: Detector) -> Detector:
        if cause in DETECTORS:
            raise ValueError(f"a detector for '{cause}' is already registered")
        DETECTORS[cause] = detector
        return detector

    return add


def diagnose(comparison: Comparison, reference: Trace, candidate: Trace) -> Comparison:
    """The comparison with the diagnoses and notes of every detector that applies."""
    from parity.diagnose import noise  # noqa: F401  (registers its detector)

    diagnoses, notes = list(comparison.diagnoses), list(comparison.notes)
    for detector in DETECTORS.values():
        for finding in detector(comparison, reference, candidate):
            (notes if isinstance(finding, str) else diagnoses).append(finding)
    return dataclasses.replace(comparison, diagnoses=tuple(diagnoses), notes=tuple(notes))
