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


def with_decoding(comparison: Comparison, reference: Trace, reference_model, source, *, steps: int, taps,
                  progress) -> Comparison:
    """`comparison` with the checks of DECODE_CHECKS that can run, and the others as not checked."""
    prompt = list(reference.tokens)
    skipped = _not_runnable(source, prompt, steps)
    if "greedy" not in skipped:
        comparison = _checked(comparison, reference, reference_model, source, prompt, steps, taps, skipped, progress)
    return _failed_decoding_is_not_noise(_add_not_checked(comparison, skipped))


def _not_runnable(source, prompt: list[int], steps: int) -> dict[str, str]:
    """check -> why it cannot run, for the checks of DECODE_CHECKS this candidate cannot give."""
    if steps <= 0:
        return dict.fromkeys(DECODE_CHECKS, "--decode-steps 0")
    if source.is_llamacpp:
        return dict.fromkeys(("kv_cache", "chunked_prefill", "padding"),
                             "not run for llama.cpp candidates (their cache is not read back, batches not padded)")
    if source.model is None:
        return dict.fromkeys(DECODE_CHECKS, f"the candidate is {source.kind_description} of one forward pass; give "
                                            "FILE.py:FACTORY or llamacpp:FILE.gguf to check decoding")
    from parity.capture.torch import incremental as decoding

    rows = source.logits(prompt)
    if rows.shape[0] != len(prompt):
        return dict.fromkeys(DECODE_CHECKS, f"its forward returns logits for {rows.shape[0]} of {len(prompt)} "
                                            "positions; return every position's to check decoding")
    skipped = {}
    cache_reason = source.decode_support(prompt)
    if cache_reason is not None:
        skipped.update(dict.fromkeys(("decode", "kv_cache", "chunked_prefill"), cache_reason))
    elif len(prompt) < 2:
        skipped["chunked_prefill"] = "a one-token prompt has nothing to split"
    mask_reason = decoding.attention_mask_support(source.model)
    if mask_reason is not None:
        skipped["padding"] = mask_reason
    return skipped


def _checked(comparison, reference, reference_model, source, prompt, steps, taps, skipped, progress) -> Comparison:
    from parity.core.generation import GenerationComparison, first_divergence, greedy, teacher_forced

    progress.step(f"greedy decoding {steps} tokens on both sides")
    continuation, reference_rows = greedy(reference_model.logits, prompt, steps)
    sequence = prompt + continuation
    candidate_tokens, _ = greedy(source.logits, prompt, steps)
    full = source.logits(sequence)
    reference_logits = reference_model.logits(sequence)
    generation = GenerationComparison(tuple(prompt), tuple(continuation), tuple(candidate_tokens),
                                      first_divergence(continuation, candidate_tokens, reference_rows),
                                      teacher_forced(reference_logits, full, len(prompt)), None,
                                      reference_model.vocab_pieces())
    comparison = dataclasses.replace(comparison, generation=generation)
    if "decode" in skipped:
        return comparison
    progress.step("decoding token by token through the candidate's cache")
    decode, causes, cache_note = _decode(reference, reference_model, source, prompt, continuation, full,
                                         reference_logits, taps, skipped)
    if cache_note:
        skipped["kv_cache"] = cache_note
    return dataclasses.replace(comparison, decode=decode, diagnoses=tuple(comparison.diagnoses) + tuple(causes))


def _decode(reference, reference_model, source, prompt, continuation, full, reference_logits, taps, skipped):
    """(DecodeConsistency, causes, why the cache was not compared or None)."""
    from parity.capture.torch import incremental as decoding
    from parity.core.decode_consistency import compare_decode

    sequence = prompt + continuation
    positions = range(len(prompt) - 1, len(sequence))
    if source.is_llamacpp:
        rows, steps = source.runner.incremental_logits(prompt, continuation), []
    else:
        rows, steps = decoding.incremental(source.model, prompt, continuation, taps=source.taps(taps))
    bounds, basis = _bounds(reference_model, source, sequence, reference_logits, positions)
    decode = compare_decode([full[p] for p in positions], rows, bounds, prompt_length=len(prompt), basis=basis)
    cache_note = None
    if not source.is_llamacpp:
        decode, cache_note = _with_prefill_variants(decode, reference_model, source.model, prompt, full, bounds[0],
                                                    skipped)
    causes = []
    if decode.first_step is not None and steps:
        from parity.capture.torch.module import trace_module
        from parity.diagnose.context import model_config
        from parity.diagnose.decode_causes import diagnose_decode

        full_trace = trace_module(source.model, sequence, taps=source.taps(taps))
        step = steps[decode.first_step]
        where = decoding.first_checkpoint(full_trace, step, decode.position, decode.bounds[decode.first_step])
        decode = dataclasses.replace(decode, first_checkpoint=where)
        causes = diagnose_decode(full_trace, step, decode.position, where, model_config(reference))
    return decode, causes, cache_note


def _bounds(reference_model, source, sequence, reference_logits, positions) -> tuple[list[float], str]:
    from parity.core.calibrate import FLOOR, MULTIPLE
    from parity.core.metrics import rel_l2
    from parity.core.tolerances import DTYPE_FACTOR, KIND_FACTOR

    if source.is_llamacpp:
        from parity.capture.llamacpp.numerics import llamacpp_numerics

        lowp = llamacpp_lowp(reference_model, source)
        with llamacpp_numerics(lowp.model, source.gguf, kv_type=source.kv_type):
            emulated = lowp.logits(sequence)
        bounds = [MULTIPLE * rel_l2(reference_logits[p], emulated[p]) + FLOOR["float32"] for p in positions]
        return bounds, f"{MULTIPLE:g}x the noise of llama.cpp's numerics at each position"
    dtype = source.precision if source.precision in DTYPE_FACTOR else "float32"
    return [2 * DTYPE_FACTOR[dtype] * KIND_FACTOR["logits"]] * len(positions), f"{dtype} default for logits"


def _with_prefill_variants(decode, reference_model, model, prompt: list[int], full, bound: float, skipped):
    """Chunked prefill, padded batches and the KV cache itself, for a PyTorch candidate; and why the cache
    could not be compared, or None."""
    from parity.capture.torch import incremental as decoding
    from parity.core.decode_consistency import compare_caches
    from parity.core.metrics import rel_l2

    cache = compare_caches(decoding.prefill_cache(reference_model.model, prompt), decoding.prefill_cache(model, prompt),
                           bound)
    note = None if cache is not None else ("its cache could not be lined up with the reference's (another form, or "
                                           "other shapes per layer)")
    chunked = None
    if "chunked_prefill" not in skipped:
        chunked = rel_l2(full[len(prompt) - 1], decoding.chunked_prefill_logits(model, prompt))
    batch = []
    if "padding" not in skipped:
        for side in ("left", "right"):
            rows = decoding.padded_batch_logits(model, prompt, prompt[: max(1, len(prompt) // 2)], prompt[0], side)
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


def llamacpp_lowp(reference_model, source):
    """A float32 copy of the reference model, made once per check: llama.cpp computes in float32.
    (nn.Module's own cast: transformers refuses `.float()` on a model it dequantized from a GGUF.)"""
    import copy

    import torch

    if source.lowp_model is None:
        source.lowp_model = reference_model if reference_model.dtype == "float32" else dataclasses.replace(
            reference_model, model=torch.nn.Module.float(copy.deepcopy(reference_model.model)), dtype="float32")
    return source.lowp_model
