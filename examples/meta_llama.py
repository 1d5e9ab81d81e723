"""A Llama written in the conventions of Meta's reference code, as most PyTorch ports of it are.

What sets it apart from a transformers-style port:

- `forward(tokens, start_pos)`: the position of the first token is a required argument, and
  the KV cache lives in each attention module (`cache_k`, `cache_v`, allocated for
  `max_seq_len` positions). A call writes its keys and values at start_pos.. and attends to
  everything cached before them; decoding is a call with one token at the next position.
  `build_input_pos` takes gpt-fast's convention instead: `forward(idx, input_pos)`, a (T,)
  tensor of positions, the cache written at those positions, a causal table indexed by them.
- RoPE rotates each head's dimensions in pairs (2i, 2i+1), through complex numbers, so the
  q and k projection rows are permuted into that order when the transformers weights are
  loaded (as Meta's checkpoints are stored, and as gpt-fast's converter does).
- No Probe: RoPE and softmax are inline; parity reads what the modules return.

    parity check path/to/llama-dir examples/meta_llama.py:build --prompt "Hello"

`Bugs` plants mistakes ports of this code make; `build_with(path, Bugs(...))`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TAPS = {
    "tok_embeddings": "embed",
    "layers.{i}.attention_norm": "layers.{i}.attn_norm",
    "layers.{i}.attention.wq": "layers.{i}.q",
    "layers.{i}.attention.wk": "layers.{i}.k",
    "layers.{i}.attention.wv": "layers.{i}.v",
    "layers.{i}.attention.wo:input": "layers.{i}.attn_ctx",
    "layers.{i}.attention.wo": "layers.{i}.attn_out",
    "layers.{i}.ffn_norm:input": "layers.{i}.resid_mid",
    "layers.{i}.ffn_norm": "layers.{i}.mlp_norm",
    "layers.{i}.feed_forward.w1": "layers.{i}.mlp_gate",
    "layers.{i}.feed_forward.w3": "layers.{i}.mlp_up",
    "layers.{i}.feed_forward.w2:input": "layers.{i}.mlp_act",
    "layers.{i}.feed_forward.w2": "layers.{i}.mlp_out",
    "layers.{i}": "layers.{i}.out",
    "norm": "final_norm",
    "output": "logits",
}


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    permuted: str = "qk"           # which projections are put in pair order at load: "q" alone, or "" (neither)
    cache_offset: bool = False     # a one-token call writes its key and value one slot past its position
    cache: bool = True             # False: start_pos moves RoPE but nothing is cached (each call sees itself)
    kv_tiled: bool = False         # the KV heads expanded with repeat (head h reads h % kv_heads), not interleaved
    values_late: bool = False      # a one-token call writes its value (not its key) one slot past its position
    read_short: bool = False       # a one-token call reads its cache up to the slot before its own
    decode_unscaled: bool = False  # a one-token call leaves its scores unscaled (no 1/sqrt(head_dim))


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    norm_eps: float
    rope_theta: float
    max_seq_len: int
    max_batch_size: int = 1


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return self._norm(x.float()).type_as(x) * self.weight


def precompute_freqs_cis(dim: int, end: int, theta: float):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, dtype=torch.float32)
    return torch.polar(torch.ones(end, dim // 2), torch.outer(t, freqs))          # (end, hd/2) complex


def apply_rotary_emb(xq, xk, freqs_cis):
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))         # (B, T, H, hd/2)
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, bugs: Bugs):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        self.head_dim = args.dim // args.n_heads
        self.bugs = bugs
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        shape = (args.max_batch_size, args.max_seq_len, args.n_kv_heads, self.head_dim)
        self.register_buffer("cache_k", torch.zeros(shape), persistent=False)
        self.register_buffer("cache_v", torch.zeros(shape), persistent=False)

    def forward(self, x, start_pos: int, freqs_cis, mask):
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        xk = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        one = seqlen == 1
        if self.bugs.cache:
            slot = start_pos + (1 if self.bugs.cache_offset and one else 0)
            value_slot = slot + (1 if self.bugs.values_late and one else 0)
            self.cache_k = self.cache_k.to(xq)
            self.cache_v = self.cache_v.to(xq)
            self.cache_k[:bsz, slot: slot + seqlen] = xk
            self.cache_v[:bsz, value_slot: value_slot + seqlen] = xv
            end = start_pos + seqlen - (1 if self.bugs.read_short and one else 0)
            keys = self.cache_k[:bsz, :end]
            values = self.cache_v[:bsz, :end]
        else:
            keys, values = xk, xv
        group = self.n_heads // self.n_kv_heads
        if self.bugs.kv_tiled:
            keys, values = keys.repeat(1, 1, group, 1), values.repeat(1, 1, group, 1)
        else:
            keys = keys.repeat_interleave(group, dim=2)                             # (B, S, H, hd)
            values = values.repeat_interleave(group, dim=2)
        xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
        scale = 1.0 if self.bugs.decode_unscaled and one else self.head_dim ** 0.5
        scores = torch.matmul(xq, keys.transpose(2, 3)) / scale                     # (B, H, T, S)
        if mask is not None:
            scores = scores + mask[..., -scores.shape[-1]:]
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        output = torch.matmul(scores, values)                                      # (B, H, T, hd)
        return self.wo(output.transpose(1, 2).contiguous().view(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, bugs: Bugs):
        super().__init__()
        self.attention = Attention(args, bugs)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, start_pos, freqs_cis, mask):
        h = x + self.attention(self.attention_norm(x), start_pos, freqs_cis, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, bugs: Bugs = Bugs()):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, bugs) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.freqs_cis = precompute_freqs_cis(args.dim // args.n_heads, args.max_seq_len * 2, args.rope_theta)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int):
        _bsz, seqlen = tokens.shape
        h = self.tok_embeddings(tokens)
        freqs_cis = self.freqs_cis[start_pos: start_pos + seqlen]
        mask = None
        if seqlen > 1:
            mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1)
            mask = torch.hstack([torch.zeros((seqlen, start_pos)), mask]).type_as(h)   # (T, start_pos + T)
        for layer in self.layers:
            h = layer(h, start_pos, freqs_cis, mask)
        return self.output(self.norm(h)).float()


class InputPosTransformer(Transformer):
    """The same model called as gpt-fast's is: forward(idx, input_pos), input_pos a (T,) tensor."""

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None):
        return super().forward(idx, int(input_pos[0]))


def model_args(path) -> ModelArgs:
    config = json.loads((Path(path) / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    return ModelArgs(dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                     n_heads=config["num_attention_heads"],
                     n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                     vocab_size=config["vocab_size"], hidden_dim=config["intermediate_size"],
                     norm_eps=config["rms_norm_eps"], rope_theta=rope.get("rope_theta", config.get("rope_theta", 1e4)),
                     max_seq_len=config["max_position_embeddings"])


def to_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A q/k projection's rows from transformers' order (halves) into pair order, per head."""
    out, dim = weight.shape
    return weight.view(heads, 2, out // heads // 2, dim).transpose(1, 2).reshape(out, dim)


def build_with(path, bugs: Bugs = Bugs(), cls: type[Transformer] = Transformer) -> Transformer:
    from safetensors.torch import load_file

    args = model_args(path)
    weights = load_file(str(Path(path) / "model.safetensors"))
    state = {"tok_embeddings.weight": weights["model.embed_tokens.weight"], "norm.weight": weights["model.norm.weight"],
             "output.weight": weights.get("lm_head.weight", weights["model.embed_tokens.weight"])}
    for i in range(args.n_layers):
        hf, own = f"model.layers.{i}.", f"layers.{i}."
        q, k = weights[hf + "self_attn.q_proj.weight"], weights[hf + "self_attn.k_proj.weight"]
        state[own + "attention.wq.weight"] = to_pairs(q, args.n_heads) if "q" in bugs.permuted else q
        state[own + "attention.wk.weight"] = to_pairs(k, args.n_kv_heads) if "k" in bugs.permuted else k
        state[own + "attention.wv.weight"] = weights[hf + "self_attn.v_proj.weight"]
        state[own + "attention.wo.weight"] = weights[hf + "self_attn.o_proj.weight"]
        for theirs, ours in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            state[own + f"feed_forward.{ours}.weight"] = weights[hf + f"mlp.{theirs}.weight"]
        state[own + "attention_norm.weight"] = weights[hf + "input_layernorm.weight"]
        state[own + "ffn_norm.weight"] = weights[hf + "post_attention_layernorm.weight"]
    model = cls(args, bugs)
    model.load_state_dict(state)
    model.parity_taps = TAPS
    return model.eval()


def build(path) -> Transformer:
    return build_with(path)


def build_input_pos(path) -> Transformer:
    return build_with(path, cls=InputPosTransformer)
