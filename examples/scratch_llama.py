"""A Llama written from scratch, the way a porter writes one: its own names, heads kept as (B, H, T, hd),
weights read from the model directory's safetensors, and a KV cache of its own.

    parity check path/to/llama-model examples/scratch_llama.py:build --prompt "Hello"
    parity sanity examples/scratch_llama.py:build --reference path/to/llama-model

The only things it adds for parity are a `Probe` wherever a value no module returns should be
compared (RoPE, the probabilities) and `parity_taps`, where its checkpoints live. `row_blocked`
builds it with attention computed a block of query rows at a time (what a port does at long
context, where (B, H, T, T) scores would not fit: 2.4 GB per layer at SmolLM2's 8,192 tokens);
its probe is then given each block with the block's first row: `self.probs(block, start=start)`. It decodes by
parity's smallest protocol: forward(ids, positions=None, cache=None) -> (logits, cache).
`Bugs` plants a mistake at one place (docs/porting.md walks through finding each).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parity.capture.torch.probe import Probe


@dataclass(frozen=True)
class Bugs:
    rope_interleaved: bool = False   # rotates pairs (0,1), (2,3), ... where Llama rotates (i, i + hd/2)
    eps_outside_sqrt: bool = False   # x / (sqrt(mean x^2) + eps)
    cache_position_off: bool = False  # decoded tokens are rotated one position too far
    mask_off: bool = False           # no causal mask: every query also sees the tokens after it
    unmasked_given_positions: bool = False   # positions given (as a decoder passes them) taken for one token: no mask
    dropout_on: bool = False         # attention dropout (p = 0.1) applied at inference too: F.dropout(training=True)


def rms_norm(x, weight, eps, bugs):
    variance = x.float().pow(2).mean(-1, keepdim=True)
    scale = 1 / (variance.sqrt() + eps) if bugs.eps_outside_sqrt else torch.rsqrt(variance + eps)
    return (x.float() * scale).to(x.dtype) * weight


class Norm(nn.Module):
    def __init__(self, size, eps, bugs):
        super().__init__()
        self.weight, self.eps, self.bugs = nn.Parameter(torch.ones(size)), eps, bugs

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, self.bugs)


def rotate(x, positions, theta, bugs):                                   # x: (B, H, T, hd)
    hd = x.shape[-1]
    inverse = 1.0 / theta ** (torch.arange(0, hd, 2, device=x.device).float() / hd)
    angles = positions[:, None, :, None].float() * inverse                # (B, 1, T, hd/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if bugs.rope_interleaved:
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    first, second = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg, bugs, query_rows=None):
        super().__init__()
        self.query_rows = query_rows     # None: the scores whole; else this many query rows at a time
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
        self.theta, self.bugs = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0), bugs
        d = cfg["hidden_size"]
        self.wq, self.wk = nn.Linear(d, self.heads * self.hd, bias=False), nn.Linear(d, self.kv_heads * self.hd, bias=False)
        self.wv, self.wo = nn.Linear(d, self.kv_heads * self.hd, bias=False), nn.Linear(self.heads * self.hd, d, bias=False)
        self.q_rotated, self.k_rotated, self.probs = Probe(), Probe(), Probe()
        self.unmasked = False            # set for each call where the unmasked_given_positions bug applies

    def forward(self, x, positions, past):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.heads, self.hd).transpose(1, 2)          # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)       # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q = self.q_rotated(rotate(q, positions, self.theta, self.bugs))
        k = rotate(k, positions + int(self.bugs.cache_position_off and past is not None), self.theta, self.bugs)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        self.k_rotated(k)
        repeat = self.heads // self.kv_heads
        keys, values = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)   # (B, H, S, hd)
        rows, S = self.query_rows or T, k.shape[2]
        out = torch.cat([self.attend(q[:, :, start:start + rows], keys, values, start, S - T + start, rows >= T)
                         for start in range(0, T, rows)], dim=2)                  # (B, H, T, hd)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1)), (k, v)

    def attend(self, q, keys, values, start, position, whole):          # q: rows start.. of (B, H, T, hd)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.hd)          # (B, H, rows, S)
        query = torch.arange(position, position + q.shape[2], device=q.device)[:, None]   # row r sees keys <= its position
        masked = not (self.bugs.mask_off or self.unmasked)
        future = (torch.arange(keys.shape[2], device=q.device)[None, :] > query) & masked
        probs = scores.masked_fill(future, float("-inf")).softmax(-1)
        probs = self.probs(probs) if whole else self.probs(probs, start=start)
        if self.bugs.dropout_on:
            probs = torch.nn.functional.dropout(probs, 0.1, training=True)
        return probs @ values


class Block(nn.Module):
    def __init__(self, cfg, bugs, query_rows=None):
        super().__init__()
        eps, d, f = cfg["rms_norm_eps"], cfg["hidden_size"], cfg["intermediate_size"]
        self.norm_1, self.attn, self.norm_2 = Norm(d, eps, bugs), Attention(cfg, bugs, query_rows), Norm(d, eps, bugs)
        self.w_gate, self.w_up = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.w_down = nn.Linear(f, d, bias=False)

    def forward(self, x, positions, past):
        attended, kv = self.attn(self.norm_1(x), positions, past)
        x = x + attended
        h = self.norm_2(x)
        return x + self.w_down(nn.functional.silu(self.w_gate(h)) * self.w_up(h)), kv


class ScratchLlama(nn.Module):
    parity_taps = {
        "tok": "embed", "blocks.{i}.norm_1": "layers.{i}.attn_norm",
        "blocks.{i}.attn.wq": "layers.{i}.q", "blocks.{i}.attn.wk": "layers.{i}.k", "blocks.{i}.attn.wv": "layers.{i}.v",
        "blocks.{i}.attn.q_rotated": "layers.{i}.q_rope", "blocks.{i}.attn.k_rotated": "layers.{i}.k_rope",
        "blocks.{i}.attn.probs": "layers.{i}.attn_probs", "blocks.{i}.attn.wo:input": "layers.{i}.attn_ctx",
        "blocks.{i}.attn.wo": "layers.{i}.attn_out", "blocks.{i}.norm_2:input": "layers.{i}.resid_mid",
        "blocks.{i}.norm_2": "layers.{i}.mlp_norm", "blocks.{i}.w_gate": "layers.{i}.mlp_gate",
        "blocks.{i}.w_up": "layers.{i}.mlp_up", "blocks.{i}.w_down:input": "layers.{i}.mlp_act",
        "blocks.{i}.w_down": "layers.{i}.mlp_out", "blocks.{i}": "layers.{i}.out", "norm": "final_norm",
        "head": "logits",
    }

    def __init__(self, cfg, bugs=Bugs(), query_rows=None):
        super().__init__()
        self.config = cfg
        self.tok = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.blocks = nn.ModuleList(Block(cfg, bugs, query_rows) for _ in range(cfg["num_hidden_layers"]))
        self.norm = Norm(cfg["hidden_size"], cfg["rms_norm_eps"], bugs)
        self.head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_word_embeddings"):      # one table for both, as the model has
            self.head.weight = self.tok.weight

    def forward(self, ids, positions=None, cache=None):
        for block in self.blocks:
            block.attn.unmasked = block.attn.bugs.unmasked_given_positions and positions is not None
        if positions is None:
            start = 0 if cache is None else cache[0][0].shape[2]
            positions = torch.arange(start, start + ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        x, new_cache = self.tok(ids), []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, positions, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.head(self.norm(x)), new_cache


# The transformers name of each of the port's parameters: how the weights are read from the directory.
NAMES = {"tok.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "head.weight": "lm_head.weight",
         "norm_1": "input_layernorm", "norm_2": "post_attention_layernorm", "attn.wq": "self_attn.q_proj",
         "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
         "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj"}


def transformers_name(name: str) -> str:
    if name in NAMES:
        return NAMES[name]
    _, layer, module, *rest = name.split(".")
    if module == "attn":
        module, rest = f"attn.{rest[0]}", rest[1:]
    return f"model.layers.{layer}.{NAMES[module]}.{'.'.join(rest)}"


def build(path, bugs=Bugs(), dtype=torch.float32, query_rows=None):
    from safetensors.torch import load_file

    cfg = json.loads((Path(path) / "config.json").read_text())
    model = ScratchLlama(cfg, bugs, query_rows)
    weights = load_file(str(Path(path) / "model.safetensors"))
    if "lm_head.weight" not in weights:       # tied embeddings: the file keeps the table once
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict({name: weights.pop(transformers_name(name)) for name in model.state_dict()})
    del weights
    return model.to(dtype).eval()


def build_bfloat16(path):
    return build(path, dtype=torch.bfloat16)


def row_blocked(path, rows=512):
    return build(path, query_rows=rows)


def row_blocked_bfloat16(path, rows=512):
    return build(path, dtype=torch.bfloat16, query_rows=rows)


def row_blocked_mask_off(path, rows=512):
    return build(path, Bugs(mask_off=True), query_rows=rows)


def rope_interleaved(path):
    return build(path, Bugs(rope_interleaved=True))


def eps_outside_sqrt(path):
    return build(path, Bugs(eps_outside_sqrt=True))


def cache_position_off(path):
    return build(path, Bugs(cache_position_off=True))


def mask_off(path):
    return build(path, Bugs(mask_off=True))


def unmasked_given_positions(path):
    return build(path, Bugs(unmasked_given_positions=True))


def dropout_on(path):
    return build(path, Bugs(dropout_on=True))
