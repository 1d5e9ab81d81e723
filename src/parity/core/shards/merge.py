"""The ranks' traces merged by their shard layout into the trace one device would have made.

    sharded = merge_ranks([rank0, rank1])      # each declares its rank and layout in metadata `shards`
    sharded["layers.0.q"]                      # the ranks' heads, concatenated in rank order
    sharded.local["layers.0.attn_out"]         # the ranks' partials summed: what the all-reduce should give
    sharded.shard("layers.0.q", 1)             # rank 1's own tensor

A ShardedTrace is a Trace: compare() reads its merged tensors like any other; the
ranks' own traces and the layout ride along for the per-rank comparison
(core/shards/compare.py) and the tensor-parallel detectors. The layout is checked
against every rank's shapes from the headers alone, before any tensor is read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.core.errors import OptionError, TraceError
from parity.core.shards.layout import LOCAL_PREFIX, Shard, ShardLayout
from parity.core.trace import Trace

METADATA_KEY = "shards"   # a rank trace's {"rank": r, "world_size": n, "layout": {...}}
_KEPT = 4                 # merged tensors kept after a lookup (compare reads one a few times in a row)


@dataclass(frozen=True)
class ShardedTrace(Trace):
    """The merged trace of a tensor-parallel run, with each rank's own trace and the layout that merged them."""

    ranks: tuple[Trace, ...] = ()
    layout: ShardLayout | None = None
    shards: Mapping[str, Shard] = field(default_factory=dict)      # each rank tensor's name -> its layout
    local: Mapping[str, np.ndarray] = field(default_factory=dict)  # checkpoint -> its collective's input, merged

    def __repr__(self) -> str:
        return f"<ShardedTrace {len(self.tensors)} tensors merged from {len(self.ranks)} ranks>"

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def shard(self, name: str, rank: int) -> np.ndarray:
        """Rank `rank`'s own tensor of `name` (a checkpoint, or `local.<checkpoint>`)."""
        return self.ranks[rank][name]

    def shard_shape(self, name: str, rank: int) -> tuple[int, ...]:
        return self.ranks[rank].shape_of(name)


def rank_info(trace: Trace, where: str) -> dict[str, Any]:
    """A rank trace's `shards` metadata, checked: {} when it has none."""
    info = trace.metadata.get(METADATA_KEY)
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise TraceError(f"{where}: metadata '{METADATA_KEY}' is {type(info).__name__}; write an object "
                         "{\"rank\": 0, \"world_size\": 2, \"layout\": {...}} (docs/trace-format.md, 'Sharded traces')")
    for key in ("rank", "world_size"):
        value = info.get(key)
        if value is not None and (type(value) is not int or value < 0 or (key == "world_size" and value < 1)):
            raise TraceError(f"{where}: metadata '{METADATA_KEY}.{key}' is {value!r}; write a "
                             f"{'non-negative' if key == 'rank' else 'positive'} integer")
    return dict(info)


def merge_ranks(ranks: Sequence[Trace], *, layout: ShardLayout | None = None,
                where: Sequence[str] | None = None, source: str = "") -> ShardedTrace:
    """One trace from every rank's, merged by `layout` (else the one the rank traces declare, which must agree).

    `where` names each rank trace for messages (its file). Raises TraceError when the traces are not one
    run's ranks (a rank missing or twice, other tokens, other checkpoints) or a layout does not fit the shapes,
    and OptionError when no layout is declared."""
    if not ranks:
        raise OptionError("no rank traces to merge; give one trace per rank")
    where = list(where) if where is not None else [t.source or f"the trace of rank {i}" for i, t in enumerate(ranks)]
    infos = [rank_info(trace, name) for trace, name in zip(ranks, where)]
    order = _rank_order(infos, where)
    ranks, infos, where = [ranks[i] for i in order], [infos[i] for i in order], [where[i] for i in order]
    layout = layout or _declared_layout(infos, where)
    _check_same_run(ranks, where)
    shards, shapes = {}, {}
    for name in ranks[0].tensors:
        shards[name] = layout.of(name)
        shapes[name] = merged_shape(name, shards[name], [trace.shape_of(name) for trace in ranks], where)
    names = [name for name in shards if not name.startswith(LOCAL_PREFIX)]
    local = {name.removeprefix(LOCAL_PREFIX): name for name in shards if name.startswith(LOCAL_PREFIX)}
    metadata = {key: value for key, value in ranks[0].metadata.items() if key != METADATA_KEY}
    metadata["tensor_parallel"] = {"world_size": len(ranks), "layout": layout.as_json()}
    return ShardedTrace(
        tensors=MergedTensors(ranks, {name: name for name in names}, shards, shapes),
        metadata=metadata,
        dtypes={name: ranks[0].dtype_of(name) for name in names},
        source=source or " + ".join(where),
        ranks=tuple(ranks),
        layout=layout,
        shards=shards,
        local=MergedTensors(ranks, local, shards, shapes),
    )


def _rank_order(infos: list[dict], where: list[str]) -> list[int]:
    """The positions of the traces in rank order: by their declared ranks, else as given."""
    declared = [info.get("rank") for info in infos]
    worlds = {info["world_size"] for info in infos if info.get("world_size") is not None}
    if len(worlds) > 1:
        raise TraceError(f"the rank traces disagree on the number of ranks (world_size {sorted(worlds)}): "
                         f"{', '.join(where)} are not one run's; give the traces of one run")
    count = worlds.pop() if worlds else len(infos)
    if count != len(infos):
        missing = sorted(set(range(count)) - {rank for rank in declared if rank is not None})
        lacking = f": rank {', '.join(map(str, missing))} missing" if missing else ""
        raise TraceError(f"{where[0]} declares {count} ranks (shards.world_size) but {len(infos)} rank "
                         f"trace{'s were' if len(infos) != 1 else ' was'} given{lacking}; pass every rank's trace, "
                         "in any order")
    if all(rank is None for rank in declared):
        return list(range(len(infos)))
    if any(rank is None for rank in declared):
        unnamed = where[declared.index(None)]
        raise TraceError(f"{unnamed} declares no rank (shards.rank) while the others do; declare every rank's")
    for rank in range(count):
        holders = [name for name, declared_rank in zip(where, declared) if declared_rank == rank]
        if len(holders) != 1:
            said = f"{' and '.join(holders)} both declare" if holders else "no trace declares"
            raise TraceError(f"{said} rank {rank} (shards.rank); each of the {count} ranks is one trace")
    return [declared.index(rank) for rank in range(count)]


def _declared_layout(infos: list[dict], where: list[str]) -> ShardLayout:
    layouts = [ShardLayout.parse(info["layout"], where=f"{name}, shards.layout") if info.get("layout") else None
               for info, name in zip(infos, where)]
    first = next((layout for layout in layouts if layout is not None), None)
    if first is None:
        raise OptionError(f"{where[0]}: no shard layout is declared, so the ranks cannot be merged; write it in "
                          "each rank trace's metadata ('shards': {\"rank\": 0, \"world_size\": 2, \"layout\": "
                          "{...}}) or in a shards manifest (docs/trace-format.md, 'Sharded traces')")
    for layout, name in zip(layouts, where):
        if layout is not None and layout != first:
            raise TraceError(f"{name} declares another shard layout than {where[layouts.index(first)]}; the ranks "
                             "of one run share one layout")
    return first


def _check_same_run(ranks: list[Trace], where: list[str]) -> None:
    names = set(ranks[0].tensors)
    for trace, name in zip(ranks[1:], where[1:]):
        if set(trace.tensors) != names:
            lacking = sorted(names - set(trace.tensors))[:3]
            extra = sorted(set(trace.tensors) - names)[:3]
            said = f"lacks {', '.join(lacking)}" if lacking else f"holds {', '.join(extra)} that {where[0]} lacks"
            raise TraceError(f"{name} {said}: every rank records the same checkpoints")
        if trace.tokens is not None and ranks[0].tokens is not None and trace.tokens != ranks[0].tokens:
            raise TraceError(f"{name} ran other tokens than {where[0]}; the ranks of one run share their input")


def merged_shape(name: str, shard: Shard, shapes: list[tuple[int, ...]], where: list[str]) -> tuple[int, ...]:
    """The shape of the ranks' tensors merged; TraceError saying how the layout does not fit them."""
    listed = ", ".join(f"rank {rank} {list(shape)}" for rank, shape in enumerate(shapes))
    if shard.kind != "split":
        if len(set(shapes)) > 1:
            raise TraceError(f"{name} is declared {shard} but the ranks hold other shapes ({listed}); a {shard} "
                             "tensor has one shape on every rank: declare split:DIM if each holds a slice")
        return shapes[0]
    if len({len(shape) for shape in shapes}) > 1 or not shapes[0]:
        raise TraceError(f"{name} is declared {shard} but the ranks hold tensors of other ranks ({listed})")
    try:
        axis = shard.axis(name, len(shapes[0]))
    except OptionError as error:
        raise TraceError(f"{where[0]}: {error}") from None
    for other in range(len(shapes[0])):
        if other != axis and len({shape[other] for shape in shapes}) > 1:
            raise TraceError(f"{name} is declared {shard} (axis {axis}) but the ranks' tensors differ on axis "
                             f"{other} too ({listed}); declare the axis they are split along")
    return shapes[0][:axis] + (sum(shape[axis] for shape in shapes),) + shapes[0][axis + 1:]


def merge_tensors(name: str, shard: Shard, tensors: Sequence[np.ndarray]) -> np.ndarray:
    """The ranks' tensors of `name` merged: the first (replicated), concatenated (split), or summed (partial)."""
    if shard.kind == "replicated":
        return np.asarray(tensors[0])
    if shard.kind == "split":
        return np.concatenate([np.asarray(t) for t in tensors], axis=shard.axis(name, np.ndim(tensors[0])))
    total = np.zeros(np.shape(tensors[0]), dtype=np.float64)
    for tensor in tensors:
        total += np.asarray(tensor, dtype=np.float64)
    dtype = np.result_type(*(np.asarray(t).dtype for t in tensors[:1]))
    return total.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)


class MergedTensors(Mapping):
    """Merged tensors by name, each merged when it is read; shapes known from the ranks' headers."""

    def __init__(self, ranks: Sequence[Trace], names: Mapping[str, str], shards: Mapping[str, Shard],
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
        self._ranks, self._names, self._shards, self._shapes = ranks, dict(names), shards, shapes
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MergedTensors {len(self._names)} from {len(self._ranks)} ranks>"

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        name = self._names[key]
        merged = merge_tensors(name, self._shards[name], [trace[name] for trace in self._ranks])
        self._kept[key] = merged
        while len(self._kept) > _KEPT:
            self._kept.popitem(last=False)
        return merged

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def shape_of(self, key: str) -> tuple[int, ...]:
        return self._shapes[self._names[key]]

    def head(self, key: str, count: int) -> np.ndarray:
        return self[key][:count]

    def forget(self) -> None:
        self._kept.clear()
        for trace in self._ranks:
            getattr(trace.tensors, "forget", lambda: None)()
