"""Causes of a tensor-parallel port's divergence, read from each rank's own tensors (core/shards/).

Where the candidate is a run's ranks merged (a ShardedTrace), each rank's shard is
compared with its part of the reference (core/shards/compare.py); a note says where
the ranks first part ways: on which ranks, and before a collective, in it, or on a
rank with no collective in between. Then one detector per bug of tensor-parallel ports,
each testing its hypothesis on the ranks' tensors:

    all_reduce_missing   each rank's output is its own partial sum; the partials sum to the reference
    all_reduce_doubled   each rank's output is N times the reference: a sum of sums
    gather_order         the output is the reference's slices in another rank order
    row_parallel_bias    the partials sum to the reference plus (N-1) times the layer's bias
    uneven_heads         ranks hold other numbers of heads than an even split gives
    vocab_mask           a vocab-parallel embedding zeroes rows it owns or keeps rows it does not
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import HEAD_KINDS, parse
from parity.core.results import Diagnosis
from parity.core.shards.compare import (ON_RANK, ShardComparison, compare_shards, head_dim, vocab_range,
                                        vocab_size)
from parity.core.shards.layout import LOCAL_PREFIX, Shard
from parity.core.shards.merge import ShardedTrace
from parity.diagnose import register
from parity.diagnose.context import CLOSE, EXPLAINED, Context, widened

MAX_ORDERS = 720         # rank orders tried for a gather in the wrong order (every order of up to 6 ranks)
ZERO = 1e-6              # a row this small against the reference's is a zeroed one
EMBEDDINGS = ("embed_tokens", "embed")

_CACHE: list = []        # (comparison, ShardComparison) of the last context: every detector reads one comparison


def sharded(context: Context) -> ShardedTrace | None:
    candidate = context.candidate
    return candidate if isinstance(candidate, ShardedTrace) and candidate.world_size > 0 else None


def shard_comparison(context: Context) -> ShardComparison | None:
    """Each rank's shard against its part of the reference, compared once per comparison."""
    ranks = sharded(context)
    if ranks is None:
        return None
    if not _CACHE or _CACHE[0][0] is not context.comparison:
        _CACHE[:] = [(context.comparison, compare_shards(context.reference, ranks, context.comparison))]
    return _CACHE[0][1]


@register("tensor_parallel")
def where_the_ranks_part(context: Context):
    """A note: where the ranks first part ways with the reference, and whether before, in or without a collective."""
    shards = shard_comparison(context)
    if shards is None or shards.first_divergence is None:
        return
    first = shards.first_divergence
    result = shards.result(first.name)
    ranks = "; ".join(f"rank {r.rank} ({r.part}) {_status(r.result)}" for r in result.ranks
                      if r.result.status != "not_comparable")
    said = f"tensor parallel over {shards.world_size} ranks: {first.checkpoint} first parts from the reference "
    if first.stage == ON_RANK:
        said += f"on {first.where} itself, computed there from inputs that match, with no collective in between"
    elif first.stage.startswith("before") and result.merged.failed:
        said += f"{first.stage}, on {first.where}: its input {first.name} merged ({_merge_word(result.shard)}) is " \
                f"{_status(result.merged)} already"
    elif first.stage.startswith("before"):
        said += f"{first.stage}, on {first.where}: its input {first.name} merged ({_merge_word(result.shard)}) " \
                f"matches the reference ({_status(result.merged)}), but the ranks' own parts of it do not"
    else:
        before = shards.result(LOCAL_PREFIX + first.checkpoint)
        said += f"{first.stage}, on {first.where}: its input {before.name} merged ({_merge_word(before.shard)}) " \
                f"matches the reference ({_status(before.merged)}); its output does not"
    yield said + (f" ({ranks})" if ranks else "")


@register("all_reduce_missing")
def all_reduce_missing(context: Context):
    for name, ranks, reference, local in _replicated_outputs(context):
        total = sum(ranks)
        if rel_l2(reference, total) > CLOSE or min(rel_l2(reference, rank) for rank in ranks) <= CLOSE:
            continue
        if local is not None:
            alone = [rel_l2(partial, rank) for partial, rank in zip(local, ranks)]
            if max(alone) > CLOSE:
                continue
            each = ", ".join(f"rank {rank}: rel_l2 {error:.2g}" for rank, error in enumerate(alone))
            said = (f"the sum of the ranks' partial outputs ({LOCAL_PREFIX}{name}, before the all-reduce) matches the "
                    f"reference (rel_l2 {rel_l2(reference, sum(local)):.2g}); the candidate's {name} on each rank "
                    f"equals that rank's partial alone ({each})")
        else:
            said = (f"the sum of the ranks' {name} matches the reference (rel_l2 {rel_l2(reference, total):.2g}) "
                    f"while each rank's alone does not: each rank kept its own partial sum")
        yield Diagnosis("all_reduce_missing", name, f"{said}: the all-reduce after {_layer_of(name)} is missing")
        return


@register("all_reduce_doubled")
def all_reduce_doubled(context: Context):
    for name, ranks, reference, local in _replicated_outputs(context):
        count = len(ranks)
        errors = [rel_l2(count * reference, rank) for rank in ranks]
        if max(errors) > CLOSE or min(rel_l2(reference, rank) for rank in ranks) <= CLOSE:
            continue
        before = "" if local is None else (f", while the ranks' partials ({LOCAL_PREFIX}{name}) sum to the reference "
                                           f"(rel_l2 {rel_l2(reference, sum(local)):.2g})")
        each = ", ".join(f"rank {r}: rel_l2 {error:.2g}" for r, error in enumerate(errors))
        yield Diagnosis("all_reduce_doubled", name,
                        f"each rank's {name} is {count} times the reference, the number of ranks ({each}){before}: "
                        f"the sum was all-reduced again, a sum of sums: the all-reduce after {_layer_of(name)} is "
                        "done twice")
        return


@register("gather_order")
def gather_order(context: Context):
    ranks_trace = sharded(context)
    for name in _focus(context):
        split = _split_source(ranks_trace, name)
        pair = context.pair(name)
        if split is None or pair is None:
            continue
        source, shard = split
        reference, candidate = pair
        axis = shard.axis(source, reference.ndim)
        sizes = [ranks_trace.shard_shape(source, r)[axis] for r in range(ranks_trace.world_size)]
        if sum(sizes) != reference.shape[axis] or rel_l2(reference, candidate) <= CLOSE:
            continue
        blocks = np.split(reference, np.cumsum(sizes)[:-1], axis=axis)
        orders = itertools.islice(itertools.permutations(range(len(blocks))), 1, MAX_ORDERS)
        for order in orders:
            residual = rel_l2(np.concatenate([blocks[r] for r in order], axis=axis), candidate)
            if residual > min(CLOSE, EXPLAINED * rel_l2(reference, candidate)):
                continue
            order_said = ", ".join(map(str, order))
            if source.startswith(LOCAL_PREFIX):
                shards_ok = _ranks_match(context, source)
                said = (f"the candidate's {name} holds the reference's slices in the order of ranks {order_said} "
                        f"(rel_l2 {residual:.2g}); each rank's own slice before the all-gather ({source}) "
                        f"{'matches its part of the reference' if shards_ok else 'is as it holds it'}: the all-gather "
                        "put the ranks' shards in the wrong order")
            else:
                moved = ", ".join(f"rank {r} holds rank {o}'s" for r, o in enumerate(order) if r != o)
                said = (f"the ranks' {name} are the reference's slices in the order of ranks {order_said} ({moved}; "
                        f"rel_l2 {residual:.2g}): the shards are assigned to the wrong ranks, or the rank traces were "
                        "given out of order without their declared ranks")
            yield Diagnosis("gather_order", name, said)
            return


@register("row_parallel_bias")
def row_parallel_bias(context: Context):
    ranks_trace = sharded(context)
    for name in _focus(context):
        local = LOCAL_PREFIX + name
        partial = ranks_trace.shards.get(local) if local in ranks_trace.shards else ranks_trace.shards.get(name)
        if partial is None or partial.kind != "partial" or partial.dim is not None or name not in context.reference:
            continue
        reference = widened(context.reference[name])
        total = widened(ranks_trace.local[name] if local in ranks_trace.shards else ranks_trace[name])
        if reference.ndim != 2 or reference.shape != total.shape or reference.shape[0] < 3:
            continue
        offset = total.mean(axis=0) - reference.mean(axis=0)                                     # (D,)
        error = rel_l2(reference, total)
        if error <= CLOSE or rel_l2(reference + offset, total) > min(CLOSE, EXPLAINED * error):
            continue
        count = ranks_trace.world_size
        bias = _bias(context, ranks_trace, name)
        where = f"{local} summed" if local in ranks_trace.shards else name
        if bias is not None and rel_l2((count - 1) * bias, offset) <= CLOSE:
            times = f"{name}.bias" if count == 2 else f"{count - 1} times {name}.bias"
            said = (f"the ranks' partial outputs ({where}) add up to the reference plus one vector at every position, "
                    f"which equals {times} (rel_l2 {rel_l2((count - 1) * bias, offset):.2g}): each of "
                    f"the {count} ranks adds the bias of the row-parallel layer before the all-reduce, so the sum "
                    f"holds it {count} times; add it once, after the all-reduce")
        elif bias is None:
            said = (f"the ranks' partial outputs ({where}) add up to the reference plus one constant vector at every "
                    f"position (norm {np.linalg.norm(offset):.3g}): the row-parallel layer's bias added on every rank "
                    "before the all-reduce, counted once per rank; rerun with --weights to match it with the bias")
        else:
            continue
        yield Diagnosis("row_parallel_bias", name, said)
        return


@register("uneven_heads")
def uneven_heads(context: Context):
    ranks_trace = sharded(context)
    unit = head_dim(context.reference)
    for name in _focus(context):
        checkpoint, shard = parse(name), ranks_trace.shards.get(name)
        if unit is None or checkpoint is None or checkpoint.kind not in HEAD_KINDS or shard is None \
                or shard.kind != "split" or shard.dim != "heads" or name not in context.reference:
            continue
        reference = widened(context.reference[name])
        if reference.ndim != 2 or reference.shape[1] % unit:
            continue
        held = [_heads_held(widened(ranks_trace.shard(name, rank)), reference, unit)
                for rank in range(ranks_trace.world_size)]
        if any(heads is None for heads in held):
            continue
        total, counts = reference.shape[1] // unit, [len(heads) for heads in held]
        if len(set(counts)) == 1 and sum(counts) == total:
            continue
        what = "KV heads" if checkpoint.kind in ("k", "v", "k_norm", "v_norm", "k_rope") else "query heads"
        each = ", ".join(f"rank {r} holds {len(heads)} ({'head' if len(heads) == 1 else 'heads'} {_listed(heads)})"
                         for r, heads in enumerate(held))
        share = total // ranks_trace.world_size if total % ranks_trace.world_size == 0 else None
        if share == 1:
            should = f"{total} {what} over {ranks_trace.world_size} ranks is one each, rank r holding head r"
        elif share:
            should = (f"{total} {what} over {ranks_trace.world_size} ranks is {share} each, rank r holding heads "
                      f"{share}r to {share}r+{share - 1}")
        else:
            should = f"{total} {what} do not split evenly over {ranks_trace.world_size} ranks: replicate them"
        yield Diagnosis("uneven_heads", name, f"the {what} are split unevenly across the ranks: of the reference's, "
                        f"{each}; {should}")
        return


@register("vocab_mask")
def vocab_mask(context: Context):
    ranks_trace = sharded(context)
    if ranks_trace is None:
        return
    ids = np.asarray(ranks_trace.tokens if ranks_trace.tokens is not None else context.reference.tokens or [])
    vocabulary = vocab_size(context.reference)
    for name in _focus(context):
        local = LOCAL_PREFIX + name
        shard = ranks_trace.shards.get(local)
        if name not in EMBEDDINGS or shard is None or str(shard) != "partial:vocab" or vocabulary is None \
                or name not in context.reference:
            continue
        reference = widened(context.reference[name])
        if reference.ndim != 2 or len(ids) != reference.shape[0]:
            continue
        findings = []
        for rank in range(ranks_trace.world_size):
            low, high = vocab_range(rank, ranks_trace.world_size, vocabulary)
            rows = widened(ranks_trace.shard(local, rank))
            wrong = _wrong_rows(rows, reference, ids, low, high)
            if wrong:
                findings.append(f"rank {rank} (ids {low}..{high - 1}) {wrong}")
        if findings:
            yield Diagnosis("vocab_mask", name,
                            f"in the ranks' embedding partials before the all-reduce ({local}): "
                            f"{'; '.join(findings)}: the vocab-parallel embedding masks the wrong rows (each rank "
                            "must zero the rows of the ids outside its range, and only those)")
            return


# --- what the detectors share ----------------------------------------------------------


def _focus(context: Context) -> list[str]:
    """The checkpoints to explain: where the ranks first part ways, then the comparison's own focus."""
    shards = shard_comparison(context)
    if shards is None:
        return []
    names = [shards.first_divergence.checkpoint] if shards.first_divergence is not None else []
    return names + [name for name in context.focus if name not in names]


def _replicated_outputs(context: Context):
    """(name, each rank's tensor, reference, each rank's collective input or None) of the focus checkpoints that
    every rank holds whole: the outputs of all-reduces."""
    ranks_trace = sharded(context)
    for name in _focus(context):
        shard = ranks_trace.shards.get(name)
        if shard is None or shard.kind != "replicated" or name not in context.reference or ranks_trace.world_size < 2:
            continue
        reference = widened(context.reference[name])
        ranks = [widened(ranks_trace.shard(name, r)) for r in range(ranks_trace.world_size)]
        if any(rank.shape != reference.shape for rank in ranks):
            continue
        local = LOCAL_PREFIX + name
        partials = None
        if local in ranks_trace.shards and ranks_trace.shards[local].kind == "partial":
            partials = [widened(ranks_trace.shard(local, r)) for r in range(ranks_trace.world_size)]
        yield name, ranks, reference, partials


def _split_source(ranks_trace: ShardedTrace, name: str) -> tuple[str, Shard] | None:
    """The rank tensor whose split makes `name`: its collective input (local.<name>), else itself."""
    for source in (LOCAL_PREFIX + name, name):
        shard = ranks_trace.shards.get(source)
        if shard is not None and shard.kind == "split":
            return source, shard
    return None


def _ranks_match(context: Context, source: str) -> bool:
    shards = shard_comparison(context)
    result = shards.result(source) if shards is not None else None
    return result is not None and all(result.ranks)


def _bias(context: Context, ranks_trace: ShardedTrace, name: str) -> np.ndarray | None:
    """The layer's bias: the reference's (--weights), else rank 0's."""
    for trace in (context.reference, ranks_trace.ranks[0]):
        if f"{name}.bias" in trace.tensors:
            return widened(trace[f"{name}.bias"])
    return None


def _heads_held(shard: np.ndarray, reference: np.ndarray, unit: int) -> list[int] | None:
    """Which of the reference's heads each head of a rank's shard is; None when one is none of them."""
    if shard.ndim != 2 or shard.shape[0] != reference.shape[0] or shard.shape[1] % unit:
        return None
    heads = []
    for index in range(shard.shape[1] // unit):
        block = shard[:, index * unit:(index + 1) * unit]
        errors = [rel_l2(reference[:, h * unit:(h + 1) * unit], block) for h in range(reference.shape[1] // unit)]
        best = int(np.argmin(errors))
        if errors[best] > CLOSE:
            return None
        heads.append(best)
    return heads


def _wrong_rows(rows: np.ndarray, reference: np.ndarray, ids: np.ndarray, low: int, high: int) -> str:
    """What a rank's embedding partial does wrong, in words; '' when it keeps exactly the rows of its ids."""
    zeroed, foreign, wrong = [], [], []
    for position, token in enumerate(ids.tolist()):
        row, expected = rows[position], reference[position]
        scale = max(float(np.linalg.norm(expected)), 1e-30)
        is_zero = float(np.linalg.norm(row)) <= ZERO * scale
        if low <= token < high and is_zero:
            zeroed.append(token)
        elif not low <= token < high and not is_zero:
            foreign.append(token)
        elif low <= token < high and rel_l2(expected, row) > CLOSE:
            wrong.append(token)
    said = []
    if zeroed:
        said.append(f"zeroes the rows of {_tokens(zeroed)} in its own range ({_listed(zeroed)})")
    if foreign:
        said.append(f"gives a row to {_tokens(foreign)} outside it ({_listed(foreign)})")
    if wrong:
        said.append(f"gives another row to {len(wrong)} of its own ({_listed(wrong)})")
    return " and ".join(said)


def _tokens(ids: list[int]) -> str:
    return f"{len(ids)} token{'s' if len(ids) > 1 else ''}"


def _listed(values: list[int], shown: int = 6) -> str:
    text = ", ".join(map(str, values[:shown]))
    return text + (f", ... ({len(values)} in all)" if len(values) > shown else "")


def _layer_of(name: str) -> str:
    checkpoint = parse(name)
    kind = checkpoint.kind if checkpoint else name
    layer = f"layer {checkpoint.layer}'s " if checkpoint and checkpoint.layer is not None else ""
    return layer + {"attn_out": "attention output projection", "mlp_out": "MLP down projection",
                    "embed": "embedding", "embed_tokens": "embedding"}.get(kind, name)


def _merge_word(shard: Shard) -> str:
    return {"partial": "the ranks' sum", "split": "the ranks' slices concatenated"}.get(shard.kind, "rank 0's")


def _status(result) -> str:
    if result.metrics is None:
        return result.reason or result.status
    rel = result.metrics.rel_l2
    return f"rel_l2 {rel:.2g}" if math.isfinite(rel) else "non-finite"
