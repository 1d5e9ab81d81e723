"""parity check beyond one forward pass: a short greedy run, token-by-token decoding through the
candidate's cache against its own full pass, the cache itself, chunked prefill and padded batches.

Whatever of these cannot run for a candidate is reported as NotChecked with the reason, never
skipped silently. Whether a PyTorch candidate decodes is found by trying (capture/torch/incremental.py).

After a long prompt the checks hold the logits of the positions they compare, from the last
prompt position on, not T x V per side (3.2 GB in float64 for SmolLM2 at T=8,192): each side
makes or keeps only those rows (`logits(ids, first)`), and a transformers model prefills in
blocks of query rows. Past FULL_LOGITS_BYTES padded batches run on the prompt's first tokens, as
many as keep their logits within it (they compare every position, in a batch of two), and the
report says how many; a decode step that fails is located by a
full pass judged as it is made, keeping that position's rows only (core/decode_location.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from parity.core.pass_sketch import PassSketch
from parity.core.results import Comparison, Diagnosis, NotChecked
from parity.core.trace import Trace

DECODE_CHECKS = ("greedy", "decode", "kv_cache", "chunked_prefill", "padding")

# The logits of a whole sequence (T x V in float64) past which only the rows from the last prompt position are made.
FULL_LOGITS_BYTES = 256 << 20
# Prompt rows that show whether a forward returns every position's logits, at a long prompt.
PROBED_TOKENS = 2


def with_decoding(comparison: Comparison, reference: Trace, reference_model, candidate, *, steps: int, taps,
                  progress, placement=None) -> Comparison:
    """`comparison` with the checks of DECODE_CHECKS that can run, and the others as not checked."""
    prompt = list(reference.tokens)
    long = _long(reference_model, len(prompt) + steps)
    skipped, candidate = _not_runnable(candidate, reference_model, prompt, steps, long)
    if "greedy" not in skipped:
        comparison = _checked(comparison, reference, reference_model, candidate, prompt, steps, taps, skipped,
                              progress, long, placement)
    return _failed_decoding_is_not_noise(_add_not_checked(comparison, skipped))


def _long(reference_model, tokens: int) -> bool:
    """Whether `tokens` positions' logits in float64 would pass FULL_LOGITS_BYTES."""
    config = reference_model.model.config
    vocab = getattr(getattr(config, "get_text_config", lambda: config)(), "vocab_size", 0) or 0
    return tokens * vocab * 8 > FULL_LOGITS_BYTES


def _not_runnable(candidate, reference_model, prompt: list[int], steps: int, long: bool):
    """(check -> why it cannot run, for the checks of DECODE_CHECKS this candidate cannot give; the candidate as
    its logits are read: through the reference's vocabulary, where it pads its own past it)."""
    from parity.commands.vocabulary import seen_through

    if steps <= 0:
        return dict.fromkeys(DECODE_CHECKS, "--decode-steps 0"), candidate
    cannot_run = candidate.supports("logits")
    if cannot_run is not None:
        return dict.fromkeys(DECODE_CHECKS, cannot_run), candidate
    probed = prompt[:PROBED_TOKENS] if long and len(prompt) > PROBED_TOKENS else prompt
    rows = candidate.logits(probed)
    if rows.shape[0] != len(probed):
        return dict.fromkeys(DECODE_CHECKS, f"its forward returns logits for {rows.shape[0]} of {len(probed)} "
                                            "positions; return every position's to check decoding"), candidate
    candidate, narrower = seen_through(candidate, rows.shape[-1], reference_model.logits(prompt[:1]).shape[-1])
    del rows
    if narrower is not None:
        return dict.fromkeys(DECODE_CHECKS, narrower), candidate
    skipped = {}
    for check, capability in (("decode", "decode"), ("kv_cache", "cache"), ("chunked_prefill", "chunked_prefill"),
                              ("padding", "padding")):
        reason = candidate.supports(capability, prompt=prompt)
        if reason is not None:
            skipped[check] = reason
    if len(prompt) < 2 and "chunked_prefill" not in skipped:
        skipped["chunked_prefill"] = "a one-token prompt has nothing to split"
    return skipped, candidate


def _checked(comparison, reference, reference_model, candidate, prompt, steps, taps, skipped, progress,
             long: bool, placement=None) -> Comparison:
    from parity.commands.failures import candidate_running
    from parity.core.generation import divergence_held_to, first_divergence, held_to_noise, teacher_forced
    from parity.core.results import GenerationComparison

    progress.step(f"greedy decoding {steps} tokens on both sides")
    continuation, reference_rows = reference_model.greedy(prompt, steps)
    sequence = prompt + continuation
    first = len(prompt) - 1 if long else 0                                     # rows first.. of the full pass
    with candidate_running(f"the greedy run (inputs of up to {len(sequence)} tokens: the prompt's {len(prompt)} "
                           f"and {steps} decoded), after its forward pass over the prompt ran",
                           hint="; --decode-steps 0 checks the forward pass alone"):
        candidate_tokens, _ = candidate.greedy(prompt, steps)
        full = candidate.logits(sequence, first)                               # (T - first, V)
    reference_logits = reference_model.logits(sequence, first)
    noise_logits = _noise_logits(candidate, reference_model, sequence, first, placement, progress)
    divergence = first_divergence(continuation, candidate_tokens, reference_rows)
    forced = teacher_forced(reference_logits, full, len(prompt) - first)
    if noise_logits is not None:   # flips and KL held to what the candidate's precision makes
        precision = candidate.numerics.label or candidate.numerics.dtype
        forced = held_to_noise(forced, reference_logits, noise_logits, len(prompt) - first, precision)
        divergence = divergence_held_to(divergence, forced, precision)
    generation = GenerationComparison(tuple(prompt), tuple(continuation), tuple(candidate_tokens), divergence,
                                      forced, None, reference_model.vocab_pieces())
    comparison = dataclasses.replace(comparison, generation=generation)
    if "decode" in skipped:
        return comparison
    progress.step("decoding token by token through the candidate's cache")
    decode, causes, cache_note, unlocated = _decode(reference, reference_model, candidate, prompt, continuation,
                                                    Rows(full, first), Rows(reference_logits, first), taps, skipped,
                                                    noise_logits, _cache_floor(comparison), _parted(comparison))
    if cache_note:
        skipped["kv_cache"] = cache_note
    notes = tuple(comparison.notes)
    if unlocated:
        notes += (unlocated,)
    if candidate.decode_failure:
        notes += (f"the candidate's decoding through its own cache failed to run: {candidate.decode_failure}",)
    return dataclasses.replace(comparison, decode=decode, diagnoses=tuple(comparison.diagnoses) + tuple(causes),
                               notes=notes)


class Rows:
    """The logits of a full pass from row `first` on, read by position: rows[p] is position p's."""

    def __init__(self, logits, first: int) -> None:
        self.logits, self.first = logits, first     # (T - first, V)

    def __repr__(self) -> str:
        return f"<Rows {self.first}..{self.first + len(self.logits) - 1}>"

    def __getitem__(self, position: int):
        if position < self.first:
            raise IndexError(f"position {position} is before the rows kept (from {self.first})")
        return self.logits[position - self.first]


def _noise_logits(candidate, reference_model, sequence: list[int], first: int, placement, progress):
    """The logits rows first.. of the reference run at the candidate's precision over `sequence`: what that
    precision alone makes of the greedy run. None where the precision is not known, or is the reference's own."""
    numerics = candidate.numerics
    if numerics is None or not numerics.needed(reference_model.dtype):
        return None
    progress.step(f"the reference in {numerics.label or numerics.dtype} over the greedy run, for its noise")
    with numerics.reference(reference_model, placement) as lowp:
        reference_model.rest()
        rows = lowp.logits(sequence, first)
    reference_model.rest()
    return rows


def _cache_floor(comparison: Comparison) -> float:
    """The largest calibrated bound of the forward pass's keys after RoPE and values (0 where uncalibrated): the
    cache holds those tensors, and where the calibration found the reference's own rounding in them (a float64
    reference's RoPE tables are float32) the cache is held to it too."""
    bounds = [result.tolerance.max_rel_l2 for result in comparison.checkpoints
              if result.tolerance is not None and result.tolerance.max_rel_l2 is not None
              and result.tolerance.noise_rel_l2 is not None and result.name.endswith((".k_rope", ".v"))]
    return max(bounds, default=0.0)


class Parted(NamedTuple):
    """Where the forward pass already computes the cache's tensors apart from the reference's: (part, layer),
    and the checkpoints that hold the keys a cache keeps, the first recorded taken."""

    where: frozenset
    key_kinds: tuple[str, ...]


NOWHERE = Parted(frozenset(), ())


def _parted(comparison: Comparison) -> Parted:
    """Where the forward pass parts at a layer's keys or values; its keys after RoPE where the model rotates them
    (its checkpoints name k_rope), else after their norm or as projected."""
    from parity.core.decode_consistency import parted_in_forward

    names = [result.name for result in comparison.checkpoints] + list(comparison.missing)   # the reference's
    rotated = any(name.endswith(".k_rope") for name in names)
    return Parted(frozenset(parted_in_forward({result.name for result in comparison.checkpoints if result.failed})),
                  ("k_rope",) if rotated else ("k_norm", "k"))


def _decode(reference, reference_model, candidate, prompt, continuation, full, reference_logits, taps, skipped,
            noise_logits=None, cache_floor: float = 0.0, parted: Parted = NOWHERE):
    """(DecodeConsistency, causes, why the cache was not compared or None, why its failing step was not located
    or None); `full` and `reference_logits`: Rows; the cache held to the larger of the first step's bound and
    `cache_floor`, and where the forward pass already parts (`parted`) to the candidate's own pass where not to
    the reference's."""
    from parity.capture.precision import UNKNOWN
    from parity.core.decode_consistency import compare_decode

    sequence = prompt + continuation
    positions = range(len(prompt) - 1, len(sequence))
    rows, steps = candidate.incremental(prompt, continuation, record=True, taps=taps)
    numerics = candidate.numerics or UNKNOWN
    bounds, basis = numerics.decode_bounds(reference_model, sequence, reference_logits, positions,
                                           noise_logits=None if noise_logits is None else Rows(noise_logits, full.first))
    decode = compare_decode([full[p] for p in positions], rows, bounds, prompt_length=len(prompt), basis=basis)
    decode, cache_note = _with_prefill_variants(decode, reference_model, candidate, prompt, full,
                                                max(bounds[0], cache_floor), skipped, parted, taps)
    causes, unlocated = [], None
    step = steps[decode.first_step] if decode.first_step is not None and decode.first_step < len(steps) else None
    # (a step the candidate could not run records nothing: its failure is said in a note)
    if isinstance(step, PassSketch):   # the prefill of a long prompt: its checkpoints sketched
        decode, unlocated = _prefill_located(decode, step, candidate, prompt, taps)
    elif step:   # a recorded prefill holds every prompt position, so the full pass's trace of them is held too
        decode, causes = _located(decode, step, reference, candidate, sequence, taps,
                                  whole=not full.first or decode.first_step == 0)
    return decode, causes, cache_note, unlocated


def _prefill_located(decode, prefill, candidate, prompt: list[int], taps):
    """(`decode` with the first checkpoint where the prefill of a long prompt parts from the full pass over it,
    a note on how it was located): the full pass sketched as it is made and held to the prefill's sketches
    (core/pass_sketch.py), nothing of either trace held."""
    from parity.capture.candidate import TraceRequest
    from parity.core.pass_sketch import RECORDED_PREFILL_TOKENS
    from parity.core.pass_sketch import first_apart

    full = PassSketch(len(prompt))
    candidate.trace(prompt, TraceRequest(taps=taps, raw=False, stream=full))
    where = first_apart(full, prefill, decode.bounds[decode.first_step])
    step = f"decode step {decode.first_step} (the prefill of {len(prompt)} tokens)"
    shorter = f"rerun with a prompt of at most {RECORDED_PREFILL_TOKENS} tokens"
    note = (f"{step} was located from sketches of each checkpoint (core/pass_sketch.py), not its tensors, so no "
            f"causes were read from them; {shorter} for those" if where is not None else
            f"{step} was not located: no checkpoint's sketch parts from the full pass's; {shorter} to compare "
            "their tensors")
    return dataclasses.replace(decode, first_checkpoint=where), note


def _located(decode, step: dict, reference, candidate, sequence: list[int], taps, *, whole: bool):
    """`decode` with the first checkpoint where its first failing step parts from the full pass, and the causes
    that fit. `whole`: the full pass's trace is held (a short sequence); else the pass over the tokens up to that
    step's position is judged as it is made, a checkpoint at a time (core/decode_location.py), and only that
    position's rows are kept: after a prompt of thousands of tokens, no trace of them is held."""
    from parity.capture.candidate import TraceRequest
    from parity.core.decode_location import PositionRows, first_checkpoint
    from parity.diagnose.context import model_config
    from parity.diagnose.decode_causes import diagnose_decode, rounded_input

    position, bound = decode.position, decode.bounds[decode.first_step]
    if whole:
        full_trace = candidate.trace(sequence, TraceRequest(taps=taps, raw=False))
        where = first_checkpoint(full_trace, step, position, bound)
    else:
        full_trace = PositionRows(step, position, bound)
        candidate.trace(sequence[: position + 1], TraceRequest(taps=taps, raw=False, stream=full_trace))
        where = full_trace.first_checkpoint()
    decode = dataclasses.replace(decode, first_checkpoint=where)
    causes = diagnose_decode(full_trace, step, position, where, model_config(reference))
    return decode, causes or rounded_input(where, position, candidate.rounds_inputs.get(where))


def _with_prefill_variants(decode, reference_model, candidate, prompt: list[int], full, bound: float, skipped,
                           parted: Parted = NOWHERE, taps=None):
    """The KV cache itself, chunked prefill and padded batches, where the candidate gives them; and why the
    cache could not be compared, or None."""
    from parity.capture.torch.incremental import prefill_cache
    from parity.core.decode_consistency import compare_caches
    from parity.core.metrics import rel_l2

    cache, note = None, None
    if "kv_cache" not in skipped:
        reference_cache = prefill_cache(reference_model.model, prompt)
        candidate_cache = candidate.prefill_cache(prompt) if reference_cache else None
        cache = compare_caches(reference_cache, candidate_cache, bound) if reference_cache else None
        if cache is not None and not cache and parted.where:   # apart where the forward pass is apart too?
            own = _own_pass_cache(candidate, prompt, parted, candidate_cache, taps)
            cache = compare_caches(reference_cache, candidate_cache, bound, own)
        if not reference_cache:
            note = "the reference's cache holds no keys and values (none of its layers attends)"
        elif cache is None:
            note = "its cache could not be lined up with the reference's (another form, or other shapes per layer)"
        elif cache.unjudged:
            note = f"not all of it: {cache.unjudged_reason}"
    chunked = None
    if "chunked_prefill" not in skipped:
        chunked = rel_l2(full[len(prompt) - 1], candidate.chunked_prefill_logits(prompt))
        if chunked > bound:
            own = _reference_chunked(reference_model.model, prompt)
            if own > bound:
                skipped["chunked_prefill"] = _reference_lacks("prefilled in two chunks", own, chunked)
                chunked = None
    batch, batched = [], None
    if "padding" not in skipped:
        batched, unbatched = prompt, full
        if full.first:   # a long prompt: its first tokens, their logits within FULL_LOGITS_BYTES
            batched = prompt[:max(2, FULL_LOGITS_BYTES // (full.logits.shape[-1] * 8))]
            unbatched = Rows(candidate.logits(batched), 0)                              # (len(batched), V)
        other = batched[: max(1, len(batched) // 2)]
        for side in ("left", "right"):
            rows = candidate.padded_batch_logits(batched, other, batched[0], side)
            batch.append((side, max(rel_l2(unbatched[p], rows[p]) for p in range(len(batched)))))
        if any(error > bound for _, error in batch):
            own = max(_reference_padded(reference_model.model, batched, other, side) for side in ("left", "right"))
            if own > bound:
                skipped["padding"] = _reference_lacks("batched with padding", own, max(e for _, e in batch))
                batch, batched = [], None
    return dataclasses.replace(decode, cache=cache, chunked_rel_l2=chunked, batch_rel_l2=tuple(batch),
                               batch_tokens=None if batched is None else len(batched)), note


# A property of the candidate's own runs (chunked prefill, padded batches) is held against the reference only
# where the reference has it: some of transformers' models do not (a state-space layer's cache continued by more
# than one token, a padding its masks do not cover). Asked only when the candidate's fails, so a passing run
# costs nothing more.


def _reference_chunked(model, prompt: list[int]) -> float:
    """rel_l2 of the reference's own last-position logits prefilled in two chunks against its whole pass."""
    from parity.capture.torch.incremental import chunked_prefill_logits, full_logits
    from parity.core.metrics import rel_l2

    return rel_l2(full_logits(model, prompt, len(prompt) - 1)[-1], chunked_prefill_logits(model, prompt))


def _own_pass_cache(candidate, prompt: list[int], parted: Parted, cached: dict, taps) -> dict:
    """{(part, layer): (S, Hkv, hd) or None}: the keys and values the candidate's own pass over `prompt` computes
    where the forward pass parts, shaped as its cache holds them; None for one not recorded, or not of the
    cache's size. One more pass, keeping those tensors only."""
    from parity.capture.candidate import TraceRequest
    from parity.core.decode_consistency import CACHE_PARTS

    kinds = {"keys": parted.key_kinds, "values": ("v",)}
    wanted = ",".join(f"layers.{layer}.{kind}" for part, layer in sorted(parted.where) for kind in kinds[part])
    trace = candidate.trace(prompt, TraceRequest(checkpoints=wanted, taps=taps, raw=False))
    own = {}
    for part, layer in parted.where:
        name = next((f"layers.{layer}.{kind}" for kind in kinds[part] if f"layers.{layer}.{kind}" in trace.tensors),
                    None)
        held = cached.get(layer)
        own[part, layer] = None
        if name is None or held is None:
            continue
        computed, shape = trace[name], held[CACHE_PARTS.index(part)].shape     # (T, Hkv * hd) -> (S, Hkv, hd)
        if computed.size == math.prod(shape):
            own[part, layer] = computed.reshape(shape)
    return own


def _reference_padded(model, prompt: list[int], other: list[int], side: str) -> float:
    """The largest rel_l2 of the reference's own logits of `prompt` batched with `other` padded on `side`."""
    from parity.capture.torch.incremental import full_logits, padded_batch_logits
    from parity.core.metrics import rel_l2

    alone, batched = full_logits(model, prompt), padded_batch_logits(model, prompt, other, prompt[0], side)
    return max(rel_l2(alone[p], batched[p]) for p in range(len(prompt)))


def _reference_lacks(how: str, reference_rel_l2: float, candidate_rel_l2: float) -> str:
    """Why a property the reference's own runs do not have is not checked on the candidate."""
    return (f"the reference's own logits {how} differ from its whole pass (rel_l2 {reference_rel_l2:.2g}; the "
            f"candidate's {candidate_rel_l2:.2g}): transformers' model does not keep them equal, so the candidate "
            "is not held to it")


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
        notes = tuple(notes) + (_unexplained(comparison.decode),)
    return dataclasses.replace(comparison, diagnoses=diagnoses, notes=notes)


def _unexplained(decode) -> str:
    """The note for a decode check that failed with no cause named: what failed."""
    if decode.first_step is not None:
        return "decoding parts from the full pass and no known cause fits; see the decode line"
    if decode.cache is not None and not decode.cache:
        return ("the KV cache differs from the keys and values a forward pass computes (the reference's, or its own "
                "where its forward pass parts from the reference's), and no known cause fits; see the KV cache line")
    return "a prefill variant differs from the whole pass and no known cause fits; see the prefill variants line"


def _decode_causes(diagnoses: tuple[Diagnosis, ...]) -> list[Diagnosis]:
    from parity.diagnose.decode_causes import CAUSES

    return [d for d in diagnoses if d.cause in CAUSES]
