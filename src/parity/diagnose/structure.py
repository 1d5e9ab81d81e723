"""structure: missing and extra structure as evidence.

What each side records says what ran: a layer the candidate records nothing of
never ran; a layer the reference lacks is one too many; a checkpoint recorded in
every layer but one is an op skipped there; a global checkpoint missing between
two that are present is an op left out. A tensor whose shape differs is checked
against the shapes another config would give (query heads taken from
num_key_value_heads, head_dim computed as hidden_size / heads, ...). Only a
failing comparison is explained this way: a candidate that records less by design
(a fused kernel, a runtime without hooks) and agrees is not a bug.
"""

from __future__ import annotations

from collections import defaultdict

from parity.core.names import AFTER_LAYERS, BEFORE_LAYERS, in_flow_order, parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context

FUSED = frozenset({"attn_probs"})   # what a fused attention kernel never materializes


def layer_kinds(names) -> dict[int, set[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    for name in names:
        checkpoint = parse(name)
        if checkpoint is not None and checkpoint.layer is not None:
            found[checkpoint.layer].add(checkpoint.kind)
    return found


def _ranges(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:8])) + (f" ... ({len(numbers)} in all)" if len(numbers) > 8 else "")


@register("structure")
def structure(context: Context):
    comparison = context.comparison
    if comparison.passed:
        return
    reference_layers = layer_kinds(context.reference.names)
    candidate_layers = layer_kinds(set(context.candidate.names) | _declared(context))
    if not candidate_layers:
        return   # a trace of logits (or globals) alone: nothing recorded per layer to read
    found = []
    absent = sorted(set(reference_layers) - set(candidate_layers))
    if absent:
        first = in_flow_order(n for n in context.reference.names if parse(n) and parse(n).layer == absent[0])[0]
        found.append((first, f"the candidate records nothing of layer(s) {_ranges(absent)}, where the reference records "
                             f"{len(reference_layers[absent[0]])} checkpoints each: those layers never ran (a loop "
                             f"that ends early, or a layer skipped)"))
    extra = sorted(set(candidate_layers) - set(reference_layers))
    if extra:
        first = in_flow_order(n for n in context.candidate.names if parse(n) and parse(n).layer == extra[0])[0]
        found.append((first, f"the candidate records layer(s) {_ranges(extra)}, which the reference does not have: "
                             f"it runs {len(candidate_layers)} layers where the model has {len(reference_layers)}"))
    found += _ops_skipped_in_some_layers(reference_layers, candidate_layers)
    found += _globals_left_out(context)
    found += _shapes(context)
    if found:
        where, _ = found[0]
        yield Diagnosis("structure", where, "; ".join(message for _, message in found))


def _declared(context: Context) -> set[str]:
    """What the candidate says it computes but cannot give (trace metadata `not_comparable`: a fused graph's
    residual, a fused attention's probabilities): not a skipped op."""
    declared = context.candidate.metadata.get("not_comparable")
    return set(declared) if isinstance(declared, dict) else set()


def _ops_skipped_in_some_layers(reference_layers, candidate_layers) -> list[tuple[str, str]]:
    """A kind the candidate records in some of its layers and not in others, where the reference has it."""
    found = []
    shared = sorted(set(reference_layers) & set(candidate_layers))
    for kind in sorted({kind for kinds in candidate_layers.values() for kind in kinds}):
        lacking = [layer for layer in shared if kind in reference_layers[layer] and kind not in candidate_layers[layer]]
        having = [layer for layer in shared if kind in candidate_layers[layer]]
        if lacking and having:
            found.append((f"layers.{lacking[0]}.{kind}",
                          f"layer(s) {_ranges(lacking)} record no {kind}, which layer(s) {_ranges(having)} record: "
                          f"the op is skipped there"))
    return found


def _globals_left_out(context: Context) -> list[tuple[str, str]]:
    """A global checkpoint the reference records between two the candidate records (final_norm between the
    last block's output and the logits): the op left out, or not recorded."""
    flow = [name for name in BEFORE_LAYERS + AFTER_LAYERS if name in context.reference]
    found = []
    for name in flow:
        if name in context.candidate or name in _declared(context):
            continue
        # what feeds it is recorded: a block's output, or an earlier global (a cache's keys and values are not)
        before = name in AFTER_LAYERS and (
            any(kind in context.candidate for kind in AFTER_LAYERS[:AFTER_LAYERS.index(name)])
            or any(parse(n) and parse(n).kind == "out" for n in context.candidate.names))
        after = any(later in context.candidate for later in AFTER_LAYERS[AFTER_LAYERS.index(name) + 1:]) \
            if name in AFTER_LAYERS else "embed" in context.candidate or any(
                parse(n) and parse(n).layer is not None for n in context.candidate.names)
        if before and after and name not in FUSED:
            position = AFTER_LAYERS.index(name)
            earlier = [kind for kind in AFTER_LAYERS[:position] if kind in context.candidate]
            later = next(kind for kind in AFTER_LAYERS[position + 1:] if kind in context.candidate)
            found.append((name, f"the candidate records no {name} between {earlier[-1] if earlier else 'the blocks'} "
                                f"and {later}, where the reference does: the op is left out (or not recorded)"))
    return found


def _shapes(context: Context) -> list[tuple[str, str]]:
    """Shapes that differ, read against the shapes another config gives."""
    config = context.config
    found = []
    for result in context.comparison.checkpoints:
        if result.metrics is not None or not result.shape_reference or not result.shape_candidate \
                or result.shape_reference == result.shape_candidate:
            continue   # compared (perhaps after aligning its layout), or of one shape
        checkpoint = parse(result.name)
        if checkpoint is None:
            continue
        reading = _shape_reading(checkpoint.kind, tuple(result.shape_reference), tuple(result.shape_candidate), config)
        if reading:
            found.append((result.name, f"the candidate's {result.name} is {list(result.shape_candidate)} where the "
                                       f"reference's is {list(result.shape_reference)}: {reading}"))
    return found


def _shape_reading(kind: str, reference: tuple, candidate: tuple, config) -> str | None:
    heads, kv_heads, head_dim, hidden = config.heads, config.kv_heads, config.head_dim, config.hidden
    if not (heads and kv_heads and head_dim):
        return None
    if kind == "attn_probs" and len(candidate) == 3 and candidate[1:] == reference[1:]:
        if candidate[0] == kv_heads:
            return f"{kv_heads} heads of probabilities, the key/value heads: keys not expanded to the {heads} query heads"
        return f"{candidate[0]} heads where the config has {heads}"
    if len(candidate) != 2 or candidate[0] != reference[0]:
        return None
    width = candidate[1]
    readings = {heads * head_dim: f"{heads} heads x {head_dim}", kv_heads * head_dim: f"{kv_heads} KV heads x {head_dim}"}
    if hidden and hidden // heads != head_dim:
        readings[heads * (hidden // heads)] = (f"head_dim computed as hidden_size / heads = {hidden // heads} where the "
                                               f"config says head_dim {head_dim}")
        readings[kv_heads * (hidden // heads)] = (f"{kv_heads} KV heads with head_dim computed as hidden_size / heads = "
                                                  f"{hidden // heads} (the config says {head_dim})")
    if width in readings and width != reference[1]:
        return f"its width {width} is {readings[width]}"
    return None
