"""Rank traces made from a reference trace, as a tensor-parallel port's ranks would record it, with TP bugs to plant.

    ranks = rank_traces(reference, world_size=2)             # each rank's shard of every checkpoint
    ranks = plant(ranks, "all_reduce_missing")               # attn_out of layer 0 left at each rank's partial
    paths = save_ranks(ranks, tmp_path)                      # rank0.safetensors, rank1.safetensors

The layout is the example TP Llama's (examples/tp_llama.py): q, k, v and the MLP's channels split, the
row-parallel outputs' partials recorded as local.<checkpoint>, a vocab-parallel embedding and lm_head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.core.names import is_raw, parse
from parity.core.shards.compare import vocab_range
from parity.core.shards.layout import LOCAL_PREFIX, ShardLayout
from parity.core.trace import Trace, make_trace, save_trace

LAYOUT = {
    "local.embed": "partial:vocab",
    "layers.{i}.q": "split:heads", "layers.{i}.k": "split:heads", "layers.{i}.v": "split:heads",
    "layers.{i}.q_rope": "split:heads", "layers.{i}.k_rope": "split:heads",
    "layers.{i}.attn_probs": "split:heads", "layers.{i}.attn_ctx": "split:heads",
    "local.layers.{i}.attn_out": "partial",
    "layers.{i}.mlp_gate": "split:channels", "layers.{i}.mlp_up": "split:channels",
    "layers.{i}.mlp_act": "split:channels",
    "local.layers.{i}.mlp_out": "partial",
    "local.logits": "split:vocab",
    "*": "replicated",
}


def rank_traces(reference: Trace, world_size: int = 2, layout: dict = LAYOUT, seed: int = 0) -> list[Trace]:
    """Every canonical checkpoint of `reference` as each rank holds it, with the `shards` metadata of a rank trace.
    A partial's terms are random, adding up to the reference's."""
    shards = ShardLayout.parse(layout)
    generator = np.random.default_rng(seed)
    tensors: list[dict[str, np.ndarray]] = [{} for _ in range(world_size)]
    tokens = np.asarray(reference.tokens)
    vocabulary = (reference.metadata.get("config") or {}).get("vocab_size") or reference.shape_of("logits")[-1]
    for name in reference.names:
        checkpoint = parse(name)
        if is_raw(name) or checkpoint is None:
            continue
        whole = np.asarray(reference[name], dtype=np.float32)
        held = {name: shards.of(name)}
        if shards.collective_input(name) is not None:
            held[LOCAL_PREFIX + name] = shards.collective_input(name)
        for held_name, shard in held.items():
            for rank, part in enumerate(_parts(held_name, shard, whole, world_size, tokens, vocabulary, generator)):
                tensors[rank][held_name] = part
    metadata = {key: value for key, value in reference.metadata.items() if key in ("tokens", "dtype", "config")}
    return [make_trace(held, {**metadata, "producer": f"rank {rank}",
                              "shards": {"rank": rank, "world_size": world_size, "layout": layout}})
            for rank, held in enumerate(tensors)]


def _parts(name, shard, whole, world_size, tokens, vocabulary, generator):
    if shard.kind == "replicated":
        return [whole] * world_size
    if shard.kind == "split":
        return np.array_split(whole, world_size, axis=shard.axis(name, whole.ndim))
    if shard.dim == "vocab":
        parts = []
        for rank in range(world_size):
            low, high = vocab_range(rank, world_size, vocabulary)
            inside = ((tokens >= low) & (tokens < high))[:, None]
            parts.append(np.where(inside, whole, 0).astype(np.float32))
        return parts
    terms = [generator.standard_normal(whole.shape).astype(np.float32) for _ in range(world_size - 1)]
    return terms + [(whole - sum(terms)).astype(np.float32)]


def with_tensor(ranks: list[Trace], name: str, values: list[np.ndarray]) -> list[Trace]:
    """The rank traces with `name` replaced (or added) on every rank by `values` (one per rank)."""
    return [make_trace({**{n: trace[n] for n in trace.tensors}, name: value}, trace.metadata)
            for trace, value in zip(ranks, values)]


def plant(ranks: list[Trace], bug: str) -> list[Trace]:
    """One TP bug planted in the rank traces, at layer 0 (or the logits, or the embedding)."""
    count = len(ranks)
    if bug == "all_reduce_missing":      # each rank's attn_out is its own partial
        return with_tensor(ranks, "layers.0.attn_out", [trace["local.layers.0.attn_out"] for trace in ranks])
    if bug == "all_reduce_doubled":      # a sum of sums
        return with_tensor(ranks, "layers.0.mlp_out", [count * trace["layers.0.mlp_out"] for trace in ranks])
    if bug == "gather_order":            # the lm_head's shards gathered last rank first
        gathered = np.concatenate([trace["local.logits"] for trace in reversed(ranks)], axis=-1)
        return with_tensor(ranks, "logits", [gathered] * count)
    if bug == "row_parallel_bias":       # o_proj's bias added by every rank before the all-reduce
        bias = np.linspace(-0.5, 0.5, ranks[0]["layers.0.attn_out"].shape[-1]).astype(np.float32)
        # the right partials add up to the reference less its bias; each rank then adds the whole bias
        planted = with_tensor(ranks, "local.layers.0.attn_out",
                              [t["local.layers.0.attn_out"] - bias / count + bias for t in ranks])
        summed = sum(t["local.layers.0.attn_out"] for t in planted)
        planted = with_tensor(planted, "layers.0.attn_out", [summed] * count)
        return with_tensor(planted, "layers.0.attn_out.bias", [bias] * count)
    if bug == "uneven_heads":            # rank 0 holds KV heads 0 and 1, rank 1 holds head 1
        whole = np.concatenate([trace["layers.0.k"] for trace in ranks], axis=-1)
        return with_tensor(ranks, "layers.0.k", [whole, ranks[-1]["layers.0.k"]])
    if bug == "vocab_mask":              # each rank keeps the rows it should zero, and zeroes its own
        first_rows = [np.full(ranks[0]["embed"].shape[-1], 0.01 * (rank + 1), np.float32) for rank in range(count)]
        planted = with_tensor(ranks, "local.embed", [np.where(t["local.embed"] != 0, 0, row).astype(np.float32)
                                                     for t, row in zip(ranks, first_rows)])   # its table's row 0
        return with_tensor(planted, "embed", [sum(t["local.embed"] for t in planted)] * count)
    raise ValueError(bug)


def save_ranks(ranks: list[Trace], folder: Path, stem: str = "rank") -> list[Path]:
    return [save_trace(trace, folder / f"{stem}{rank}.safetensors", overwrite=True) for rank, trace in enumerate(ranks)]
