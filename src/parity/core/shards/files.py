"""Rank traces from files: one trace per rank, or a shards manifest that lists them.

    sharded = load_sharded(["rank0.safetensors", "rank1.safetensors"])   # layouts from their metadata
    sharded = load_sharded(["shards.json"])                               # the manifest's ranks and layout
    trace = load_candidate(paths)     # one plain trace as it is; a manifest or several rank traces merged

A shards manifest (docs/trace-format.md, 'Sharded traces'):

    {"format": "parity-shards/1", "ranks": ["rank0.safetensors", "rank1.safetensors"],
     "layout": {"layers.{i}.q": "split:heads", "*": "replicated"}}

Its rank files are named relative to the manifest's folder and must lie inside it; its layout, when
given, is used instead of any the rank files declare.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from parity.core.errors import TraceError
from parity.core.shards.layout import ShardLayout
from parity.core.shards.merge import METADATA_KEY, ShardedTrace, merge_ranks, rank_info
from parity.core.trace import Trace, load_trace
from parity.core.trace import bounded_json

MANIFEST_FORMAT = "parity-shards/1"
MAX_MANIFEST_BYTES = 16 << 20
MAX_RANKS = 4096


def is_manifest(path: str | Path) -> bool:
    return str(path).endswith(".json")


def load_candidate(paths: Sequence[str | Path]) -> Trace:
    """What a command's candidate files hold: one trace as it is (a rank trace of a one-rank run merged), or the
    ranks of one run, given as their traces or a manifest, merged by their layout."""
    if len(paths) == 1 and not is_manifest(paths[0]):
        trace = load_trace(paths[0])
        info = rank_info(trace, str(paths[0]))
        if not info:
            return trace
        return merge_ranks([trace], where=[str(paths[0])])   # says which ranks are missing, if any
    return load_sharded(paths)


def load_sharded(paths: Sequence[str | Path]) -> ShardedTrace:
    """The ranks of one run merged: from their traces (in any order), or from one shards manifest."""
    if len(paths) == 1 and is_manifest(paths[0]):
        files, layout = read_manifest(Path(paths[0]))
        source = str(paths[0])
    elif any(is_manifest(path) for path in paths):
        raise TraceError(f"{next(p for p in paths if is_manifest(p))}: a shards manifest stands alone; give it "
                         "alone, or the rank traces without it")
    else:
        files, layout, source = [Path(path) for path in paths], None, ""
    traces = []
    for rank, path in enumerate(files):
        try:
            traces.append(load_trace(path))
        except TraceError as error:
            raise TraceError(f"rank trace {rank + 1} of {len(files)}: {error}") from None
    return merge_ranks(traces, layout=layout, where=[str(path) for path in files], source=source)


def read_manifest(path: Path) -> tuple[list[Path], ShardLayout | None]:
    """(the rank traces it lists, its layout or None); TraceError saying how to fix a manifest."""
    if not path.is_file():
        raise TraceError(f"{path}: no such shards manifest")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TraceError(f"{path}: is {path.stat().st_size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a "
                         "shards manifest may have")
    try:
        manifest = bounded_json.loads(path.read_bytes(), max_bytes=MAX_MANIFEST_BYTES, what="the shards manifest")
    except ValueError as error:
        raise TraceError(f"{path}: {error}; write it as docs/trace-format.md shows ('Sharded traces')") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise TraceError(f"{path}: not a shards manifest (a JSON object with \"format\": \"{MANIFEST_FORMAT}\", "
                         "\"ranks\" and \"layout\"; docs/trace-format.md, 'Sharded traces')")
    listed = manifest.get("ranks")
    if not isinstance(listed, list) or not listed or len(listed) > MAX_RANKS \
            or not all(isinstance(name, str) and name for name in listed):
        raise TraceError(f"{path}: 'ranks' must list each rank's trace file, rank 0 first, as strings")
    folder = path.resolve().parent
    files = []
    for name in listed:
        file = (folder / name).resolve()
        if Path(name).is_absolute() or folder not in file.parents:
            raise TraceError(f"{path}: rank trace {name!r} lies outside the manifest's folder; name the rank "
                             "traces relative to it, inside it")
        files.append(file)
    layout = manifest.get("layout")
    return files, None if layout is None else ShardLayout.parse(layout, where=f"{path}, 'layout'")


def shard_metadata(rank: int, world_size: int, layout: ShardLayout) -> dict:
    """The `shards` metadata a rank trace carries."""
    return {METADATA_KEY: {"rank": rank, "world_size": world_size, "layout": layout.as_json()}}
