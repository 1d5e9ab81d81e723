"""Tensor-parallel traces: each rank's checkpoints, the layout that says how they make the whole, the merge,
and the comparison of each rank's shard with its part of the reference.

    layout.py    Shard, ShardLayout: replicated, split:DIM, partial, partial:vocab, declared per checkpoint
    merge.py     ShardedTrace and merge_ranks: the ranks' traces merged into the trace one device would make
    files.py     rank traces from files, or a shards manifest listing them
    compare.py   compare_shards: each rank's shard against its part of the reference, before and after collectives
"""

from parity.core.shards.compare import ShardComparison, ShardDivergence, ShardResult, compare_shards
from parity.core.shards.files import load_candidate, load_sharded, read_manifest
from parity.core.shards.layout import LOCAL_PREFIX, Shard, ShardLayout, parse_shard
from parity.core.shards.merge import ShardedTrace, merge_ranks

__all__ = [
    "LOCAL_PREFIX",
    "Shard",
    "ShardComparison",
    "ShardDivergence",
    "ShardLayout",
    "ShardResult",
    "ShardedTrace",
    "compare_shards",
    "load_candidate",
    "load_sharded",
    "merge_ranks",
    "parse_shard",
    "read_manifest",
]
