"""A Llama run tensor-parallel through torch.distributed: a port to check on several processes.

    parity check path/to/llama examples/tp_llama.py:build --nproc 2 --tokens 1,2,3

parity starts the ranks (gloo on CPU, NCCL where each rank has a GPU), calls `build` on each once
the process group is up, and merges what each rank records by `parity_shards`. Every rank holds
1/N of each projection:

    q, k, v, gate, up     column-parallel: the rank's heads / channels (no communication)
    o_proj, down          row-parallel: a partial sum on each rank, then an all-reduce
    embedding             vocab-parallel: the rows of the rank's token ids, zeros elsewhere, then an all-reduce
    lm_head               vocab-parallel: the rank's logits columns, then an all-gather

A `local` Probe in each parallel layer exposes the collective's input (`local.<checkpoint>`), so
that parity can say whether an error arises before the collective or in it. `Bugs` plants the
mistakes tensor-parallel ports make: build(path, Bugs(all_reduce="missing")), or the factories at
the end of the file (examples/tp_llama.py:all_reduce_missing).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from parity.capture.torch.probe import Probe


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    all_reduce: str = "once"        # "missing": o_proj returns its partial sum; "twice": the MLP reduces again
    gather_order: str = "rank"      # "reversed": the lm_head's all-gather puts the last rank's columns first
    row_bias: str = "once"          # "every_rank": o_proj's bias added on each rank before the all-reduce
    kv_split: str = "even"          # "uneven": rank 0 takes one KV head more than its share
    vocab_mask: str = "outside"     # "inside": the embedding zeroes the rows of its own ids and keeps the others'
    crash_rank: int | None = None   # this rank raises in its forward pass (a rank that crashes)
    stall_rank: int | None = None   # this rank stops before its first all-reduce (a rank that hangs)


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks, out of place."""
    x = x.clone()
    dist.all_reduce(x)
    return x


def all_gather_last(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Every rank's x, concatenated along the last axis in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts[::-1] if reverse else parts, dim=-1)


class ColumnParallelLinear(nn.Module):
    """The rows `rows` of a linear layer's weight (and bias): this rank's slice of its outputs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: slice) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight[rows].clone())
        self.bias = None if bias is None else nn.Parameter(bias[rows].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """The columns `columns` of a linear layer's weight: a partial sum of its output, all-reduced."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, columns: slice, *, reduce: bool = True,
                 bias_every_rank: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight[:, columns].clone())
        self.bias = None if bias is None else nn.Parameter(bias.clone())
        self.reduce, self.bias_every_rank = reduce, bias_every_rank
        self.local = Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = nn.functional.linear(x, self.weight, self.bias if self.bias_every_rank else None)
        out = self.local(partial)
        out = all_reduce(out) if self.reduce else out
        if self.bias is not None and not self.bias_every_rank:
            out = out + self.bias                                   # once, after the sum
        return out


class VocabParallelEmbedding(nn.Module):
    """The rows [start, end) of the table: each rank looks up its own ids, zeros the others', then all-reduce."""

    def __init__(self, table: torch.Tensor, rank: int, world: int, bugs: Bugs) -> None:
        super().__init__()
        each = table.shape[0] // world
        self.start, self.end = rank * each, (rank + 1) * each
        self.weight = nn.Parameter(table[self.start:self.end].clone())
        self.local, self.bugs, self.rank = Probe(), bugs, rank

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.start) | (ids >= self.end)
        rows = nn.functional.embedding((ids - self.start).masked_fill(outside, 0), self.weight)   # (1, T, D)
        masked = ~outside if self.bugs.vocab_mask == "inside" else outside
        rows = self.local(rows.masked_fill(masked[..., None], 0.0))
        if self.bugs.stall_rank == self.rank:
            time.sleep(3600)   # the other ranks wait in the all-reduce below
        return all_reduce(rows)


class VocabParallelHead(nn.Module):
    """The lm_head rows of this rank's vocabulary: its logits columns, all-gathered."""

    def __init__(self, weight: torch.Tensor, rank: int, world: int, bugs: Bugs) -> None:
        super().__init__()
        each = weight.shape[0] // world
        self.weight = nn.Parameter(weight[rank * each:(rank + 1) * each].clone())
        self.local, self.bugs = Probe(), bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local(nn.functional.linear(x, self.weight))                                 # (1, T, V/N)
        return all_gather_last(local, reverse=self.bugs.gather_order == "reversed")             # (1, T, V)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(weight.clone()), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (T, H, hd) rotated as HF Llama does: dimension i with i + hd/2."""
    T, _, hd = x.shape
    inverse = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=x.device) / hd)
    angles = torch.arange(T, device=x.device).float()[:, None] * inverse                     # (T, hd/2)
    cos, sin = angles.cos()[:, None, :].to(x.dtype), angles.sin()[:, None, :].to(x.dtype)   # (T, 1, hd/2)
    first, second = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: dict, weights: dict, prefix: str, rank: int, world: int, bugs: Bugs) -> None:
        super().__init__()
        heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if heads % world or kv_heads % world:
            raise ValueError(f"{heads} query and {kv_heads} KV heads do not split evenly over {world} ranks")
        self.heads = heads // world                                    # this rank's query heads
        first_kv, self.kv_heads = rank * (kv_heads // world), kv_heads // world
        if bugs.kv_split == "uneven" and rank == 0:
            self.kv_heads += 1                                         # the bug: one head more than its share
        self.theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        q_rows = slice(rank * self.heads * self.hd, (rank + 1) * self.heads * self.hd)
        kv_rows = slice(first_kv * self.hd, (first_kv + self.kv_heads) * self.hd)
        w = lambda name: weights[f"{prefix}.{name}.weight"]                                      # noqa: E731
        b = lambda name: weights.get(f"{prefix}.{name}.bias")                                    # noqa: E731
        self.q_proj = ColumnParallelLinear(w("q_proj"), b("q_proj"), q_rows)
        self.k_proj = ColumnParallelLinear(w("k_proj"), b("k_proj"), kv_rows)
        self.v_proj = ColumnParallelLinear(w("v_proj"), b("v_proj"), kv_rows)
        self.o_proj = RowParallelLinear(w("o_proj"), b("o_proj"), q_rows, reduce=bugs.all_reduce != "missing",
                                        bias_every_rank=bugs.row_bias == "every_rank")
        self.q_rope, self.k_rope, self.probs = Probe(), Probe(), Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        q = self.q_proj(x)[0].view(T, self.heads, self.hd)                                     # (T, Hr, hd)
        k = self.k_proj(x)[0].view(T, self.kv_heads, self.hd)                                  # (T, Hkv_r, hd)
        v = self.v_proj(x)[0].view(T, self.kv_heads, self.hd)
        q = self.q_rope(rope(q, self.theta).reshape(T, -1)).view(T, self.heads, self.hd)
        k = self.k_rope(rope(k, self.theta).reshape(T, -1)).view(T, self.kv_heads, self.hd)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)           # (T, Hr, hd)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(self.hd)                      # (Hr, T, S)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        probs = self.probs(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)[None])[0]
        context = torch.einsum("hts,shd->thd", probs, v).reshape(1, T, -1)                     # (1, T, Hr*hd)
        return self.o_proj(context)


class MLP(nn.Module):
    def __init__(self, cfg: dict, weights: dict, prefix: str, rank: int, world: int, bugs: Bugs) -> None:
        super().__init__()
        each = cfg["intermediate_size"] // world
        rows = slice(rank * each, (rank + 1) * each)
        w = lambda name: weights[f"{prefix}.{name}.weight"]                                      # noqa: E731
        b = lambda name: weights.get(f"{prefix}.{name}.bias")                                    # noqa: E731
        self.gate_proj = ColumnParallelLinear(w("gate_proj"), b("gate_proj"), rows)
        self.up_proj = ColumnParallelLinear(w("up_proj"), b("up_proj"), rows)
        self.down_proj = RowParallelLinear(w("down_proj"), b("down_proj"), rows,
                                           bias_every_rank=bugs.row_bias == "every_rank")
        self.reduce_again = bugs.all_reduce == "twice"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
        return all_reduce(out) if self.reduce_again else out          # the bug: a sum of sums


class Block(nn.Module):
    def __init__(self, cfg: dict, weights: dict, index: int, rank: int, world: int, bugs: Bugs) -> None:
        super().__init__()
        prefix, eps = f"model.layers.{index}", cfg["rms_norm_eps"]
        self.attn_norm = RMSNorm(weights[f"{prefix}.input_layernorm.weight"], eps)
        self.attn = Attention(cfg, weights, f"{prefix}.self_attn", rank, world, bugs)
        self.mlp_norm = RMSNorm(weights[f"{prefix}.post_attention_layernorm.weight"], eps)
        self.mlp = MLP(cfg, weights, f"{prefix}.mlp", rank, world, bugs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TensorParallelLlama(nn.Module):
    # Where each checkpoint lives; `local` Probes hold each collective's input.
    parity_taps = {
        "embed.local": "local.embed",
        "embed": "embed",
        "blocks.{i}.attn_norm": "layers.{i}.attn_norm",
        "blocks.{i}.attn.q_proj": "layers.{i}.q",
        "blocks.{i}.attn.k_proj": "layers.{i}.k",
        "blocks.{i}.attn.v_proj": "layers.{i}.v",
        "blocks.{i}.attn.q_rope": "layers.{i}.q_rope",
        "blocks.{i}.attn.k_rope": "layers.{i}.k_rope",
        "blocks.{i}.attn.probs": "layers.{i}.attn_probs",
        "blocks.{i}.attn.o_proj:input": "layers.{i}.attn_ctx",
        "blocks.{i}.attn.o_proj.local": "local.layers.{i}.attn_out",
        "blocks.{i}.attn.o_proj": "layers.{i}.attn_out",
        "blocks.{i}.mlp_norm:input": "layers.{i}.resid_mid",
        "blocks.{i}.mlp_norm": "layers.{i}.mlp_norm",
        "blocks.{i}.mlp.gate_proj": "layers.{i}.mlp_gate",
        "blocks.{i}.mlp.up_proj": "layers.{i}.mlp_up",
        "blocks.{i}.mlp.down_proj:input": "layers.{i}.mlp_act",
        "blocks.{i}.mlp.down_proj.local": "local.layers.{i}.mlp_out",
        "blocks.{i}.mlp": "layers.{i}.mlp_out",
        "blocks.{i}": "layers.{i}.out",
        "final_norm": "final_norm",
        "lm_head.local": "local.logits",
        "lm_head": "logits",
    }
    # How each rank's tensor makes the whole (docs/trace-format.md, 'Sharded traces').
    parity_shards = {
        "local.embed": "partial:vocab",                    # the rank's rows, zeros elsewhere: before the all-reduce
        "layers.{i}.q": "split:heads", "layers.{i}.k": "split:heads", "layers.{i}.v": "split:heads",
        "layers.{i}.q_rope": "split:heads", "layers.{i}.k_rope": "split:heads",
        "layers.{i}.attn_probs": "split:heads", "layers.{i}.attn_ctx": "split:heads",
        "local.layers.{i}.attn_out": "partial",            # o_proj before its all-reduce
        "layers.{i}.mlp_gate": "split:channels", "layers.{i}.mlp_up": "split:channels",
        "layers.{i}.mlp_act": "split:channels",
        "local.layers.{i}.mlp_out": "partial",             # down_proj before its all-reduce
        "local.logits": "split:vocab",                     # lm_head before its all-gather
        "*": "replicated",                                 # the residual stream, norms, and collectives' outputs
    }

    def __init__(self, cfg: dict, weights: dict, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        rank, world = dist.get_rank(), dist.get_world_size()
        self.config, self.bugs, self.rank = cfg, bugs, rank
        self.embed = VocabParallelEmbedding(weights["model.embed_tokens.weight"], rank, world, bugs)
        self.blocks = nn.ModuleList(Block(cfg, weights, i, rank, world, bugs) for i in range(cfg["num_hidden_layers"]))
        self.final_norm = RMSNorm(weights["model.norm.weight"], cfg["rms_norm_eps"])
        head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
        self.lm_head = VocabParallelHead(head, rank, world, bugs)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (1, T, V), the same on every rank."""
        if self.bugs.crash_rank == self.rank:
            raise RuntimeError(f"rank {self.rank} lost its shard")
        x = self.embed(input_ids)                                                               # (1, T, D)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))


def build(path: str | Path, bugs: Bugs = Bugs()) -> TensorParallelLlama:
    """This rank's shard of the model in a HuggingFace directory (config.json + *.safetensors)."""
    from safetensors.torch import load_file

    if not dist.is_initialized():
        raise RuntimeError("run it on several processes: parity check MODEL examples/tp_llama.py:build --nproc 2")
    cfg = json.loads((Path(path) / "config.json").read_text())
    weights = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        weights.update(load_file(file))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return TensorParallelLlama(cfg, weights, bugs).to(device).eval()


def all_reduce_missing(path):
    return build(path, Bugs(all_reduce="missing"))


def all_reduce_twice(path):
    return build(path, Bugs(all_reduce="twice"))


def gather_reversed(path):
    return build(path, Bugs(gather_order="reversed"))


def bias_every_rank(path):
    return build(path, Bugs(row_bias="every_rank"))


def kv_heads_uneven(path):
    return build(path, Bugs(kv_split="uneven"))


def vocab_mask_inside(path):
    return build(path, Bugs(vocab_mask="inside"))


def crash_on_rank_1(path):
    return build(path, Bugs(crash_rank=1))


def stall_on_rank_1(path):
    return build(path, Bugs(stall_rank=1))
