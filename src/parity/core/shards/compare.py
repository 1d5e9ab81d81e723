"""Each rank's shard against the matching slice of the reference, and the merged tensor against the whole.

    shards = compare_shards(reference, sharded, comparison)
    shards.first_divergence            # <ShardDivergence layers.0.attn_out on ranks 0, 1, in the all-reduce>
    shards.result("local.layers.0.attn_out").merged    # the ranks' partials summed, against the reference

A rank's tensor is held to the part of the reference it should hold: the whole
(replicated), its slice along the split axis (its heads, channels, vocabulary
columns), or the reference's rows of the tokens in its vocabulary range
(partial:vocab). A plain partial has no reference of its own: only the ranks' sum
does. Where a checkpoint's collective input is recorded too (`local.<checkpoint>`),
it is compared first, so the first divergence says whether the error arises before
the collective, in it, or on a rank with no collective in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parity.core.names import is_raw, order_key, parse, weight_of
from parity.core.results import NOT_COMPARABLE, CheckpointResult, Comparison
from parity.core.shards.layout import LOCAL_PREFIX, Shard, checkpoint_of
from parity.core.shards.merge import ShardedTrace
from parity.core.trace import Trace

ON_RANK = "on the rank"   # a stage: computed there from inputs that match, no collective in between


@dataclass(frozen=True)
class RankResult:
    rank: int
    part: str                          # which part of the reference it is held to: "heads 2..3 of 4", ...
    result: CheckpointResult           # NOT_COMPARABLE for a partial's term, which has no reference of its own

    def __repr__(self) -> str:
        return f"<RankResult rank {self.rank} {self.result.status}>"

    def __bool__(self) -> bool:
        return bool(self.result)


@dataclass(frozen=True)
class ShardResult:
    """One rank tensor name: the ranks' tensors merged against the whole, each rank against its part."""

    name: str                          # as the ranks hold it: layers.0.q, local.layers.0.attn_out
    shard: Shard
    merged: CheckpointResult
    ranks: tuple[RankResult, ...]

    def __repr__(self) -> str:
        return f"<ShardResult {self.name} {self.shard} {'pass' if self else 'fail'}>"

    def __bool__(self) -> bool:
        return bool(self.merged) and all(self.ranks)

    @property
    def checkpoint(self) -> str:
        return checkpoint_of(self.name)

    @property
    def local(self) -> bool:
        """Whether this is a collective's input (`local.<checkpoint>`), not the checkpoint itself."""
        return self.name.startswith(LOCAL_PREFIX)

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        return tuple(rank.rank for rank in self.ranks if rank.result.failed)


@dataclass(frozen=True)
class ShardDivergence:
    """Where the ranks first part ways with the reference: which ranks, and before, in or without a collective."""

    checkpoint: str
    name: str                          # the rank tensor that diverges (local.<checkpoint> before a collective)
    ranks: tuple[int, ...]
    stage: str                         # "before the all-reduce", "in the all-gather", or ON_RANK

    def __repr__(self) -> str:
        return f"<ShardDivergence {self.checkpoint} on {self.where}, {self.stage}>"

    @property
    def where(self) -> str:
        """'rank 0' or 'ranks 0, 1' or 'the ranks' sum'."""
        return f"rank {self.ranks[0]}" if len(self.ranks) == 1 else f"ranks {', '.join(map(str, self.ranks))}"


@dataclass(frozen=True)
class ShardComparison:
    world_size: int
    results: tuple[ShardResult, ...]
    first_divergence: ShardDivergence | None

    def __repr__(self) -> str:
        passed = sum(bool(result) for result in self.results)
        where = f", first divergence at {self.first_divergence.name} on {self.first_divergence.where}, " \
                f"{self.first_divergence.stage}" if self.first_divergence else ""
        return f"<ShardComparison {passed}/{len(self.results)} passed on {self.world_size} ranks{where}>"

    def __bool__(self) -> bool:
        return self.first_divergence is None

    def result(self, name: str) -> ShardResult | None:
        return next((result for result in self.results if result.name == name), None)


def compare_shards(reference: Trace, sharded: ShardedTrace, comparison: Comparison | None = None) -> ShardComparison:
    """Every rank tensor whose checkpoint the reference holds, in data-flow order (a collective's input before its
    output), held to the tolerance the comparison applied to the checkpoint (else the per-dtype default)."""
    from parity.core.compare import CompareConfig, compare_checkpoint

    results = []
    for name in _in_order(name for name in sharded.shards if _compared(name, reference)):
        checkpoint, shard = checkpoint_of(name), sharded.shards[name]
        prior = comparison.result(checkpoint) if comparison is not None else None
        config = CompareConfig(tolerance=prior.tolerance if prior is not None else None)
        if prior is not None and not name.startswith(LOCAL_PREFIX) and prior.status != NOT_COMPARABLE:
            merged = prior
        else:
            merged = compare_checkpoint(checkpoint, reference, _one(checkpoint, _merged(sharded, name), sharded),
                                        config)[0]
        ranks = tuple(_rank_result(name, shard, rank, reference, sharded, config) for rank in range(sharded.world_size))
        results.append(ShardResult(name, shard, merged, ranks))
    return ShardComparison(sharded.world_size, tuple(results), _first_divergence(results, sharded.world_size))


def expected_part(name: str, shard: Shard, rank: int, reference: Trace, sharded: ShardedTrace):
    """(the reference's part rank `rank` should hold, its description); (None, why) for a partial's term."""
    checkpoint = checkpoint_of(name)
    whole = reference[checkpoint]
    if shard.kind == "replicated":
        return whole, "the whole tensor"
    if shard.kind == "partial" and shard.dim is None:
        return None, "a term of the ranks' sum, which alone has a reference"
    if shard.kind == "partial":
        ids, vocabulary = _tokens(reference, sharded), vocab_size(reference)
        if ids is None or vocabulary is None or len(ids) != np.shape(whole)[0]:
            return None, "its vocabulary range needs the tokens and the vocabulary size (the reference's config)"
        low, high = vocab_range(rank, sharded.world_size, vocabulary)
        inside = (ids >= low) & (ids < high)
        part = np.where(inside.reshape((-1,) + (1,) * (np.ndim(whole) - 1)), whole, 0).astype(np.asarray(whole).dtype)
        return part, f"the rows of its tokens (vocab {low}..{high - 1}), zeros elsewhere"
    axis = shard.axis(name, np.ndim(whole))
    start, size = split_slice(name, shard, rank, sharded, np.shape(whole)[axis])
    part = np.take(whole, range(start, start + size), axis=axis)
    return part, _described(name, shard, start, size, np.shape(whole)[axis], reference)


def split_slice(name: str, shard: Shard, rank: int, sharded: ShardedTrace, width: int) -> tuple[int, int]:
    """(start, size) along the split axis of the reference's slice for `rank`: the ranks' own sizes in rank order
    where they add up to the reference's, else an even split (the last rank holding what is left)."""
    ndim = len(sharded.shard_shape(name, 0))
    axis = shard.axis(name, ndim)
    sizes = [sharded.shard_shape(name, r)[axis] for r in range(sharded.world_size)]
    if sum(sizes) == width:
        return sum(sizes[:rank]), sizes[rank]
    each = math.ceil(width / sharded.world_size)
    start = min(rank * each, width)
    return start, min(each, width - start)


def vocab_range(rank: int, world_size: int, vocabulary: int) -> tuple[int, int]:
    """[low, high) of the token ids rank `rank` holds in a vocab-parallel table: even, the last rank the rest."""
    each = math.ceil(vocabulary / world_size)
    return min(rank * each, vocabulary), min((rank + 1) * each, vocabulary)


def vocab_size(reference: Trace) -> int | None:
    config = reference.metadata.get("config") or {}
    if isinstance(config.get("vocab_size"), int):
        return config["vocab_size"]
    for name in ("logits", "lm_head_out"):
        if name in reference.tensors:
            return reference.shape_of(name)[-1]
    return None


def head_dim(reference: Trace) -> int | None:
    config = reference.metadata.get("config") or {}
    heads, width = config.get("num_attention_heads") or config.get("n_head"), config.get("hidden_size")
    explicit = config.get("head_dim")
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    return width // heads if isinstance(width, int) and isinstance(heads, int) and heads > 0 else None


def _rank_result(name: str, shard: Shard, rank: int, reference: Trace, sharded: ShardedTrace, config) -> RankResult:
    from parity.core.compare import compare_checkpoint

    checkpoint = checkpoint_of(name)
    part, described = expected_part(name, shard, rank, reference, sharded)
    if part is None:
        shape = sharded.shard_shape(name, rank)
        return RankResult(rank, described, CheckpointResult(checkpoint, NOT_COMPARABLE, reference.shape_of(checkpoint),
                                                            shape, reason=described))
    result, _ = compare_checkpoint(checkpoint, _one(checkpoint, part, reference),
                                   _one(checkpoint, sharded.shard(name, rank), sharded), config)
    return RankResult(rank, described, result)


def _first_divergence(results: list[ShardResult], world_size: int) -> ShardDivergence | None:
    for index, result in enumerate(results):
        if result:
            continue
        ranks = result.failed_ranks or tuple(range(world_size))   # a sum that fails: every rank's term is in it
        if result.local:
            stage = f"before the {result.shard.collective or 'collective'}"
        else:
            before = results[index - 1] if index and results[index - 1].name == LOCAL_PREFIX + result.name else None
            stage = f"in the {before.shard.collective or 'collective'}" if before is not None else ON_RANK
        return ShardDivergence(result.checkpoint, result.name, ranks, stage)
    return None


def _compared(name: str, reference: Trace) -> bool:
    checkpoint = checkpoint_of(name)
    return not is_raw(checkpoint) and checkpoint in reference.tensors and \
        (parse(checkpoint) is not None or weight_of(checkpoint) is not None)


def _in_order(names) -> list[str]:
    """Data-flow order, each collective's input (local.<checkpoint>) just before the checkpoint."""
    return sorted(names, key=lambda name: (order_key(checkpoint_of(name)), not name.startswith(LOCAL_PREFIX)))


def _merged(sharded: ShardedTrace, name: str) -> np.ndarray:
    return sharded.local[checkpoint_of(name)] if name.startswith(LOCAL_PREFIX) else sharded[name]


def _one(name: str, tensor, like: Trace) -> Trace:
    """A trace of one tensor, with the metadata (dtype) of `like`."""
    return Trace(tensors={name: tensor}, metadata={"dtype": like.metadata.get("dtype")} if like.metadata.get("dtype")
                 else {}, dtypes={name: like.dtypes[name]} if name in like.dtypes else {})


def _tokens(reference: Trace, sharded: ShardedTrace) -> np.ndarray | None:
    tokens = sharded.tokens if sharded.tokens is not None else reference.tokens
    return None if tokens is None else np.asarray(tokens)


def _described(name: str, shard: Shard, start: int, size: int, width: int, reference: Trace) -> str:
    """'heads 2..3 of 4', 'vocabulary columns 48..95 of 96'."""
    checkpoint = parse(checkpoint_of(name))
    unit = None
    if shard.dim == "heads":   # attention probabilities hold one head per index; flat per-head tensors head_dim
        unit = 1 if checkpoint is not None and checkpoint.kind == "attn_probs" else head_dim(reference)
    if unit and start % unit == 0 and size % unit == 0 and width % unit == 0:
        first, count = start // unit, size // unit
        heads = f"head {first}" if count == 1 else f"heads {first}..{first + count - 1}"
        return f"{heads} of {width // unit}"
    what = {"vocab": "vocabulary columns", "channels": "channels", "tokens": "positions"}.get(shard.dim, "indices")
    return f"{what} {start}..{start + size - 1} of {width}"
