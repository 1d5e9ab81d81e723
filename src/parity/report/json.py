"""The JSON format (schema in docs/report-schema.md): every result as plain JSON values.

JSON has no NaN or infinity: non-finite metric values are written as null; the
NaN and Inf counts beside them say what they were. A layer comparison is written
a checkpoint at a time (json_text), so a trace of tens of thousands is never held
whole as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parity.core.names import parse
from parity.core.results import (NOT_COMPARABLE, BenchReport, CheckpointResult, Comparison, GenerationComparison,
                                 GradientComparison, KernelReport, Metrics, PositionResult, SanityReport,
                                 SequenceComparison, Tolerance, TokenizerComparison)
from parity.report import json_text, registry
from parity.report.raw import raw_summary

SCHEMA = "parity-report/1"


def to_dict(comparison: Comparison, *, lazy: bool = False) -> dict[str, Any]:
    """The report as plain JSON values; `lazy`: the checkpoints as an iterator, made as they are written."""
    checkpoints = (_checkpoint(result, comparison.attributions.get(result.name)) for result in comparison.checkpoints)
    return {
        "schema": SCHEMA,
        "verdict": comparison.verdict,
        "calibrated": comparison.calibrated,
        "first_divergence": _divergence(comparison.first_divergence),
        "origin": _divergence(comparison.origin),
        "summary": {
            "compared": len(comparison.checkpoints),
            "passed": comparison.passed_count,
            "failed": comparison.failed_count,
            "not_comparable": sum(result.status == NOT_COMPARABLE for result in comparison.checkpoints),
            "missing": len(comparison.missing),
            "extra": len(comparison.extra),
        },
        "checkpoints": checkpoints if lazy else list(checkpoints),
        "position_matrix": {"checkpoint": "layers.{i}.out",
                            "rel_l2": [[_number(v) for v in row] for row in comparison.position_matrix]},
        "missing": list(comparison.missing),
        "extra": list(comparison.extra),
        "raw": raw_summary(comparison),
        "replay": None if not comparison.block_local_rel_l2 else {
            "blocks": [{"layer": layer, "local_rel_l2": _number(value),
                        "propagated_rel_l2": _propagated(comparison, layer)}
                       for layer, value in sorted(comparison.block_local_rel_l2.items())],
            "checkpoints": {name: _number(value) for name, value in comparison.local_rel_l2.items()},
        },
        "decode": _decode(comparison.decode),
        "generation": _generation(comparison.generation),
        "not_checked": [{"check": item.check, "reason": item.reason} for item in comparison.not_checked],
        "diagnoses": [
            {"cause": d.cause, "checkpoint": d.checkpoint, "message": d.message, "confidence": d.confidence}
            for d in comparison.diagnoses
        ],
        "notes": list(comparison.notes),
        "reference": _json_safe(comparison.reference_metadata),
        "candidate": _json_safe(comparison.candidate_metadata),
    }


def _decode(decode) -> dict[str, Any] | None:
    if decode is None:
        return None
    cache = decode.cache
    return {"passed": bool(decode), "prompt_length": decode.prompt_length, "first_step": decode.first_step,
            "position": decode.position, "first_checkpoint": decode.first_checkpoint, "basis": decode.basis,
            "rel_l2": [_number(v) for v in decode.rel_l2], "bounds": [_number(v) for v in decode.bounds],
            "cache": None if cache is None else {
                "passed": bool(cache), "first": list(cache.first) if cache.first else None,
                "keys_rel_l2": [[_number(v) for v in layer] for layer in cache.keys],
                "values_rel_l2": [[_number(v) for v in layer] for layer in cache.values],
                "inherited": [list(held) for held in cache.inherited],
                "unjudged": [list(where) for where in cache.unjudged]},
            "chunked_prefill_rel_l2": _optional(decode.chunked_rel_l2),
            "batch_rel_l2": {side: _number(error) for side, error in decode.batch_rel_l2},
            "batch_prompt_tokens": decode.batch_tokens}


def _generation(generation) -> dict[str, Any] | None:
    if generation is None:
        return None
    as_dict = generation_to_dict(generation)
    return {key: value for key, value in as_dict.items() if key not in ("schema", "kind")}


def _propagated(comparison: Comparison, layer: int) -> float | None:
    result = comparison.result(f"layers.{layer}.out")
    return None if result is None or result.metrics is None else _number(result.metrics.rel_l2)


def _divergence(divergence) -> dict[str, Any] | None:
    if divergence is None:
        return None
    return {
        "checkpoint": divergence.checkpoint,
        "layer": divergence.layer,
        "kind": divergence.kind,
        "position": divergence.position,
        "onset_position": divergence.onset,
        "per_position": [_number(v) for v in divergence.per_position],
        "per_head": [_number(v) for v in divergence.per_head],
        "worst_elements": [{"index": list(index), "reference": _number(r), "candidate": _number(c),
                            "abs_diff": _number(d)} for index, r, c, d in divergence.worst_elements],
    }


def _checkpoint(result: CheckpointResult, attribution) -> dict[str, Any]:
    checkpoint = parse(result.name)
    return {
        "name": result.name,
        "layer": checkpoint.layer if checkpoint else None,
        "kind": checkpoint.kind if checkpoint else None,
        "status": result.status,
        "metrics": _metrics(result.metrics),
        "tolerance": _tolerance(result.tolerance),
        "shape_ref": list(result.shape_reference),
        "shape_cand": list(result.shape_candidate),
        "layout": result.layout,
        "reason": result.reason,
        "introduced_rel_l2": None if attribution is None else _number(attribution.introduced_rel_l2),
        "inherited_rel_l2": None if attribution is None else _number(attribution.inherited_rel_l2),
    }


def _metrics(metrics: Metrics | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {
        "max_abs": _number(metrics.max_abs),
        "mean_abs": _number(metrics.mean_abs),
        "rel_l2": _number(metrics.rel_l2),
        "cosine": _number(metrics.cosine),
        "max_rel": _number(metrics.max_rel),
        "mismatched": metrics.mismatched,
        "numel": metrics.numel,
        "nan_ref": metrics.nan_reference,
        "nan_cand": metrics.nan_candidate,
        "inf_ref": metrics.inf_reference,
        "inf_cand": metrics.inf_candidate,
        "worst_index": list(metrics.worst_index) if metrics.worst_index is not None else None,
        "worst_position": metrics.worst_position,
        "position_rel_l2": _number(metrics.position_rel_l2),
        "channel_position_rel_l2": _optional(metrics.channel_position_rel_l2),
        "position_weighted_rel_l2": _optional(metrics.position_weighted_rel_l2),
    }


def _tolerance(tolerance: Tolerance | None) -> dict[str, Any] | None:
    if tolerance is None:
        return None
    return {
        "atol": _number(tolerance.atol),
        "rtol": _number(tolerance.rtol),
        "basis": tolerance.basis,
        "max_rel_l2": _optional(tolerance.max_rel_l2),
        "max_position_rel_l2": _optional(tolerance.max_position_rel_l2),
        "max_channel_position_rel_l2": _optional(tolerance.max_channel_position_rel_l2),
        "max_position_weighted_rel_l2": _optional(tolerance.max_position_weighted_rel_l2),
        "noise_rel_l2": _optional(tolerance.noise_rel_l2),
    }


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def sequence_to_dict(comparison: SequenceComparison) -> dict[str, Any]:
    """A token-level comparison: same top-level verdict, first_divergence, diagnoses and notes."""
    first = comparison.first_divergence
    return {
        "schema": SCHEMA,
        "kind": "tokens",
        "verdict": "pass" if comparison else "fail",
        "first_divergence": None if first is None else {"position": first.index, "offset": first.offset,
                                                        "token": first.piece, "generated": first.generated},
        "headline": comparison.headline,
        "summary": {"compared": len(comparison.positions), "agreeing": comparison.agreeing,
                    "unaligned": comparison.unaligned, "mean_kl_topk": _optional(comparison.mean_kl)},
        "positions": [_position(position) for position in comparison.positions],
        "diagnoses": [{"cause": d.cause, "checkpoint": d.checkpoint, "message": d.message, "confidence": d.confidence}
                      for d in comparison.diagnoses],
        "notes": list(comparison.notes),
        "candidate_text": comparison.candidate_text,
    }


def _position(position: PositionResult) -> dict[str, Any]:
    return {
        "position": position.index,
        "offset": position.offset,
        "token": position.piece,
        "generated": position.generated,
        "agrees": position.agrees,
        "near_tie": position.near_tie,
        "reference_top": [{"token": piece, "probability": probability} for piece, probability in position.reference_top],
        "candidate_top1": position.candidate_top1,
        "reference_prob_of_token": position.reference_prob_of_piece,
        "margin_nats": _number(position.margin_nats),
        "gap_nats": _number(position.gap_nats),
        "kl_topk": _optional(position.kl_topk),
    }


def _optional(value: float | None) -> float | None:
    return None if value is None else _number(value)


def tokenizer_to_dict(comparison: TokenizerComparison) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "tokenizer",
        "verdict": "pass" if comparison else "fail",
        "reference": comparison.reference,
        "candidate": comparison.candidate,
        "patterns": comparison.patterns,
        "texts": [
            {
                "name": text.name, "text": text.text, "agrees": bool(text),
                "reference_ids": list(text.reference_ids), "candidate_ids": list(text.candidate_ids),
                "differences": [
                    {"pattern": d.pattern, "reference_start": d.reference_start, "candidate_start": d.candidate_start,
                     "reference": [[token, piece] for token, piece in d.reference],
                     "candidate": [[token, piece] for token, piece in d.candidate]}
                    for d in text.differences
                ],
            }
            for text in comparison.texts
        ],
    }


def generation_to_dict(comparison: GenerationComparison) -> dict[str, Any]:
    divergence, forced, sampler = comparison.divergence, comparison.teacher_forced, comparison.sampler
    return {
        "schema": SCHEMA,
        "kind": "generation",
        "verdict": "pass" if comparison else "fail",
        "prompt": list(comparison.prompt),
        "reference_tokens": list(comparison.reference_tokens),
        "candidate_tokens": list(comparison.candidate_tokens),
        "first_divergence": None if divergence is None else {
            "step": divergence.step, "reference_token": divergence.reference_token,
            "candidate_token": divergence.candidate_token, "margin_nats": _number(divergence.margin_nats),
            "near_tie": divergence.near_tie, "near_tie_nats": _number(divergence.near_tie_nats),
            "near_tie_basis": divergence.near_tie_basis, "candidate_rank": divergence.candidate_rank,
            "reference_top": [{"token": token, "probability": p} for token, p in divergence.reference_top],
        },
        "teacher_forced": {"kl_bound": _optional(forced.kl_bound), "kl_basis": forced.kl_basis,
                           "over_bound": forced.over_bound, "kl": [_number(v) for v in forced.kl], "top1": list(forced.top1), "top5": list(forced.top5),
                           "mean_kl": _number(forced.mean_kl), "margins_nats": [_number(v) for v in forced.margins],
                           "near_tie_nats": [_number(v) for v in forced.near_tie_nats]},
        "sampler": None if sampler is None else {
            "kl": [_number(v) for v in sampler.kl], "total_variation": list(sampler.total_variation),
            "first_step": sampler.first_step, "fitted_temperature": sampler.fitted_temperature},
    }


# --- the registered renderers -------------------------------------------------------


@registry.register(Comparison, "json")
def _comparison(comparison: Comparison) -> Iterator[str]:
    yield from json_text.pieces(to_dict(comparison, lazy=True))
    yield "\n"


@registry.register(SequenceComparison, "json")
def _sequence(comparison: SequenceComparison) -> str:
    return json_text.dumps(sequence_to_dict(comparison)) + "\n"


@registry.register(TokenizerComparison, "json")
def _tokenizer(comparison: TokenizerComparison) -> str:
    return json_text.dumps(tokenizer_to_dict(comparison)) + "\n"


@registry.register(GenerationComparison, "json")
def _generation_json(comparison: GenerationComparison) -> str:
    return json_text.dumps(generation_to_dict(comparison)) + "\n"


@registry.register(SanityReport, "json")
@registry.register(KernelReport, "json")
@registry.register(BenchReport, "json")
def _own_dict(report) -> str:
    """Reports whose JSON is their own to_dict (sanity's follows the course script's shape)."""
    return json_text.dumps(_json_safe(report.to_dict())) + "\n"


@registry.register(GradientComparison, "json")
def _gradients(comparison: GradientComparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2, default=str) + "\n"


def dumps(result) -> str:
    """The JSON text of any result."""
    return registry.render(result, "json").rstrip("\n")


def write(result, path: str | Path, *, overwrite: bool = False) -> Path | None:
    """Write the report to `path` ("-" for standard output); never replaces a file unless told."""
    return registry.write(result, "json", path, overwrite=overwrite)
