"""compare_and_diagnose(reference, candidate, config) -> Comparison: the comparison a check makes.

The candidate's conventions are adapted to the reference's first (core/conventions.py; those
in `strict` held as failures), then every checkpoint is compared (core/compare.py), and every
detector names what it can (diagnose/). The adaptations come first among the notes. This is
what `parity check`, `parity compare`, `parity.compare` and the pytest plugin report.
"""

from __future__ import annotations

import dataclasses

from parity.core.compare import CompareConfig, compare, require_compared
from parity.core.conventions import adapt
from parity.core.experts_from_logits import derived_note, with_experts_from_logits
from parity.core.results import Comparison
from parity.core.trace import Trace
from parity.diagnose import diagnose


def compare_and_diagnose(reference: Trace, candidate: Trace, config: CompareConfig = CompareConfig(), *,
                         strict: frozenset[str] = frozenset(), streamed=None) -> Comparison:
    """The comparison of the candidate, its conventions adapted, with every detector's diagnoses.
    `streamed` (core/streamed.StreamedCheckpoints): checkpoints measured as the candidate made them."""
    candidate, derived = with_experts_from_logits(reference, candidate)
    adapted, adaptations = adapt(reference, candidate, strict=strict)
    if "layout" in strict:
        config = dataclasses.replace(config, align=False)
    comparison = compare(reference, adapted, config=config, streamed=streamed)
    require_compared(comparison, reference, adapted, config)
    comparison = diagnose(comparison, reference, adapted)
    if derived:
        comparison = dataclasses.replace(comparison, notes=tuple(comparison.notes) + (derived_note(derived),))
    if not adaptations:
        return comparison
    held = {name for adaptation in adaptations if adaptation.held for name in adaptation.names}
    diagnoses = tuple(d for d in comparison.diagnoses if not (d.cause == "no_known_cause" and d.checkpoint in held))
    notes = tuple(adaptation.note for adaptation in adaptations)
    return dataclasses.replace(comparison, notes=notes + tuple(comparison.notes), diagnoses=diagnoses)
