"""parity check beyond one forward pass: a short greedy run, token-by-token decoding through the
candidate's cache against its own full pass, the cache itself, chunked prefill and padded batches.

Whatever of these cannot run for a candidate is reported as NotChecked with the reason, never
skipped silently. Whether a PyTorch candidate decodes is found by trying (capture/torch/incremental.py).
"""

from __future__ import annotations

import dataclasses

from parity.core.results import Comparison, Diagnosis, NotChecked
from parity.core.trace import Trace

DECODE_CHECKS = ("greedy", "decode", "kv_cache", "chunked_prefill", "padding")


def with_decoding(comparison: Comparison, reference: Trace, reference_model, candidate, *, steps: int, taps,
                  progress) -> Comparison:
    """`comparison` with the checks of DECODE_CHECKS that can run, and the others as not checked."""
    prompt = list(reference.tokens)
    skipped = _not_runnable(candidate, prompt, steps)
    if "greedy" not in skipped:
        comparison = _checked(comparison, reference, reference_model, candidate, prompt, steps, taps, skipped,
                              progress)
    return _failed_decoding_is_not_noise(_add_not_checked(comparison, skipped))


def _not_runnable(candidate, prompt: list[int], steps: int) -> dict[str, str]:
    """check -> why it cannot run, for the checks of DECODE_CHECKS this candidate cannot give."""
    if steps <= 0:
        return dict.fromkeys(DECODE_CHECKS, "--decode-steps 0")
    cannot_run = candidate.supports("logits")
    if cannot_run is not None:
        return dict.fromkeys(DECODE_CHECKS, cannot_run)
    rows = candidate.logits(prompt)
    if rows.shape[0] != len(prompt):
        return dict.fromkeys(DECODE_CHECKS, f"its forward returns logits for {rows.shape[0]} of {len(prompt)} "
                                            "positions; return every position's to check decoding")
    skipped = {}
    for check, capability in (("decode", "decode"), ("kv_cache", "cache"), ("chunked_prefill", "chunked_prefill"),
                              ("padding", "padding")):
        reason = candidate.supports(capability, prompt=prompt)
        if reason is not None:
            skipped[check] = reason
    if len(prompt) < 2 and "chunked_prefill" not in skipped:
        skipped["chunked_prefill"] = "a one-token prompt has nothing to split"
    return skipped


def _checked(comparison, reference, reference_model, candidate, prompt, steps, taps, skipped, progress) -> Comparison:
    from parity.core.generation import first_divergence, teacher_forced
    from parity.core.results import GenerationComparison

    progress.step(f"greedy decoding {steps} tokens on both sides")
    continuation, reference_rows = reference_model.greedy(prompt, steps)
    sequence = prompt + continuation
    candidate_tokens, _ = candidate.greedy(prompt, steps)
    full = candidate.logits(sequence)
    reference_logits = reference_model.logits(sequence)
    generation = GenerationComparison(tuple(prompt), tuple(continuation), tuple(candidate_tokens),
                                      first_divergence(continuation, candidate_tokens, reference_rows),
                                      teacher_forced(reference_logits, full, len(prompt)), None,
                                      reference_model.vocab_pieces())
    comparison = dataclasses.replace(comparison, generation=generation)
    if "decode" in skipped:
        return comparison
    progress.step("decoding token by token through the candidate's cache")
    decode, causes, cache_note = _decode(reference, reference_model, candidate, prompt, continuation, full,
                                         reference_logits, taps, skipped)
    if cache_note:
        skipped["kv_cache"] = cache_note
    return dataclasses.replace(comparison, decode=decode, diagnoses=tuple(comparison.diagnoses) + tuple(causes))


def _decode(reference, reference_model, candidate, prompt, continuation, full, reference_logits, taps, skipped):
    """(DecodeConsistency, causes, why the cache was not compared or None)."""
    from parity.capture.precision import UNKNOWN
    from parity.core.decode_consistency import compare_decode

    sequence = prompt + continuation
    positions = range(len(prompt) - 1, len(sequence))
    rows, steps = candidate.incremental(prompt, continuation, record=True, taps=taps)
    numerics = candidate.numerics or UNKNOWN
    bounds, basis = numerics.decode_bounds(reference_model, sequence, reference_logits, positions)
    decode = compare_decode([full[p] for p in positions], rows, bounds, prompt_length=len(prompt), basis=basis)
    decode, cache_note = _with_prefill_variants(decode, reference_model, candidate, prompt, full, bounds[0], skipped)
    causes = []
    if decode.first_step is not None and steps:
        from parity.capture.candidate import TraceRequest
        from parity.capture.torch.incremental import first_checkpoint
        from parity.diagnose.context import model_config
        from parity.diagnose.decode_causes import diagnose_decode

        full_trace = candidate.trace(sequence, TraceRequest(taps=taps, raw=False))
        step = steps[decode.first_step]
        where = first_checkpoint(full_trace, step, decode.position, decode.bounds[decode.first_step])
        decode = dataclasses.replace(decode, first_checkpoint=where)
        causes = diagnose_decode(full_trace, step, decode.position, where, model_config(reference))
    return decode, causes, cache_note


def _with_prefill_variants(decode, reference_model, candidate, prompt: list[int], full, bound: float, skipped):
    """The KV cache itself, chunked prefill and padded batches, where the candidate gives them; and why the
    cache could not be compared, or None."""
    from parity.capture.torch.incremental import prefill_cache
    from parity.core.decode_consistency import compare_caches
    from parity.core.metrics import rel_l2

    cache, note = None, None
    if "kv_cache" not in skipped:
        cache = compare_caches(prefill_cache(reference_model.model, prompt), candidate.prefill_cache(prompt), bound)
        if cache is None:
            note = "its cache could not be lined up with the reference's (another form, or other shapes per layer)"
    chunked = None
    if "chunked_prefill" not in skipped:
        chunked = rel_l2(full[len(prompt) - 1], candidate.chunked_prefill_logits(prompt))
    batch = []
    if "padding" not in skipped:
        for side in ("left", "right"):
            rows = candidate.padded_batch_logits(prompt, prompt[: max(1, len(prompt) // 2)], prompt[0], side)
            batch.append((side, max(rel_l2(full[p], rows[p]) for p in range(len(prompt)))))
    return dataclasses.replace(decode, cache=cache, chunked_rel_l2=chunked, batch_rel_l2=tuple(batch)), note


def _add_not_checked(comparison: Comparison, skipped: dict[str, str]) -> Comparison:
    items = tuple(NotChecked(check, skipped[check]) for check in DECODE_CHECKS if check in skipped)
    return dataclasses.replace(comparison, not_checked=tuple(comparison.not_checked) + items)


def _failed_decoding_is_not_noise(comparison: Comparison) -> Comparison:
    """precision_noise says everything passed: never when decoding or the greedy run failed."""
    failed = [part for part in (comparison.decode, comparison.generation) if part is not None and not part]
    if not failed:
        return comparison
    diagnoses = tuple(d for d in comparison.diagnoses if d.cause != "precision_noise")
    notes = comparison.notes
    if comparison.decode is not None and not comparison.decode and not _decode_causes(diagnoses):
        notes = tuple(notes) + ("decoding parts from the full pass and no known cause fits; see the decode line",)
    return dataclasses.replace(comparison, diagnoses=diagnoses, notes=notes)


def _decode_causes(diagnoses: tuple[Diagnosis, ...]) -> list[Diagnosis]:
    from parity.diagnose.decode_causes import CAUSES

    return [d for d in diagnoses if d.cause in CAUSES]
