"""A Llama / Mistral / Qwen2 / Qwen3 written from scratch in plain PyTorch: a port to check.

It loads a HuggingFace model directory's config.json and model.safetensors,
computes the forward pass its own way (unbatched heads, einsum attention), and
exposes the values no module returns through parity Probes. `TAPS` tells parity
where each canonical checkpoint lives in this model:

    parity check path/to/model examples/llama_port.py:build --tokens 1,2,3

`Bugs` plants the mistakes ports really make, so that you can see how parity
reports each one: `build(path, bugs=Bugs(rope_layout="adjacent"))`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parity.capture.torch.probe import Probe

TAPS = {
    "embed": "embed",
    "blocks.{i}.attn_norm": "layers.{i}.attn_norm",
    "blocks.{i}.attn.q": "layers.{i}.q",          # recorded after the projections are split into q, k, v
    "blocks.{i}.attn.k": "layers.{i}.k",
    "blocks.{i}.attn.v": "layers.{i}.v",
    "blocks.{i}.attn.q_norm": "layers.{i}.q_norm",
    "blocks.{i}.attn.k_norm": "layers.{i}.k_norm",
    "blocks.{i}.attn.q_rope": "layers.{i}.q_rope",
    "blocks.{i}.attn.k_rope": "layers.{i}.k_rope",
    "blocks.{i}.attn.probs": "layers.{i}.attn_probs",
    "blocks.{i}.attn.o_proj:input": "layers.{i}.attn_ctx",
    "blocks.{i}.attn.o_proj": "layers.{i}.attn_out",
    "blocks.{i}.mlp_norm:input": "layers.{i}.resid_mid",
    "blocks.{i}.mlp_norm": "layers.{i}.mlp_norm",
    "blocks.{i}.mlp.gate_proj": "layers.{i}.mlp_gate",
    "blocks.{i}.mlp.up_proj": "layers.{i}.mlp_up",
    "blocks.{i}.mlp.down_proj:input": "layers.{i}.mlp_act",
    "blocks.{i}.mlp": "layers.{i}.mlp_out",
    "blocks.{i}": "layers.{i}.out",
    "final_norm": "final_norm",
    "lm_head": "logits",
}


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    rope_layout: str = "half"            # "adjacent": rotate (0,1),(2,3).. pairs instead of (i, i+hd/2)
    rope_offset: int = 0                 # start positions at this offset
    norm_eps: float | None = None        # every RMSNorm uses this epsilon instead of the config's
    gqa_order: str = "interleave"        # "tile": query head h reads KV head h % Hkv instead of h // group
    causal_mask: bool = True             # False: every position attends to the future too
    missing_residual_layer: int | None = None  # this layer drops its attention residual
    nan_layer: int | None = None         # this layer's MLP output gets a NaN at the last position
    activation: str = "silu"             # "gelu": the gated MLP uses GELU instead of SiLU
    negate_k_layer: int | None = None    # this layer's key projection weights have their sign flipped
    overflow_layer: int | None = None    # this layer's MLP output overflows to infinity
    swap_qk: bool = False                # q and k swapped when splitting a fused QKV output (equal widths only)
    extra_bos: bool = False              # a BOS token is prepended to the input the model is given
    probs_layout: str = "HTS"            # how the attention probabilities are written: "THS", "HST"
    kv_cache_offset: bool = False        # decoding writes each new key/value one slot past where it belongs
    kv_cache_slots: int | None = None    # the cache keeps only its latest this many positions (a ring buffer
                                         # sized below the context): decoding past them forgets the oldest
    skip_rope_cached: bool = False       # the cache keeps keys before RoPE, and decoding uses them unrotated
    rope_theta: float | None = None      # RoPE base used instead of the config's (a default left in place)
    drop_qkv_bias: bool = False          # Qwen2's q, k, v biases not loaded (left at zero)


class KVCache:
    """What decoding keeps of the positions seen so far, per layer: keys and values, (S, Hkv, hd) each."""

    def __init__(self, slots: int | None = None) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.written: dict[int, int] = {}      # layer -> rows written so far (the next position)
        self.slots = slots                     # the bug kv_cache_slots: keep only the latest this many

    def length(self, layer: int) -> int:
        return self.written.get(layer, 0)

    def append(self, layer: int, stored_key, current_key, value, offset: bool = False):
        """Keep this step's keys (as `stored_key`) and values; return the keys and values to attend over:
        the cached keys as stored, then this step's `current_key`."""
        if offset:  # the bug: a zero slot, then the new entries one position late
            stored_key, current_key, value = (torch.cat([torch.zeros_like(t[:1]), t]) for t in (stored_key, current_key, value))
        previous = self.keys.get(layer, stored_key[:0])
        attend = torch.cat([previous, current_key])
        values = torch.cat([self.values.get(layer, value[:0]), value])
        self.keys[layer], self.values[layer] = torch.cat([previous, stored_key]), values
        if self.slots is not None:
            self.keys[layer], self.values[layer] = self.keys[layer][-self.slots:], values[-self.slots:]
        self.written[layer] = self.written.get(layer, 0) + stored_key.shape[0]
        return attend, values


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def _written_as(probs: torch.Tensor, layout: str) -> torch.Tensor:
    """probs (H, T, S) as a port would store it: "THS" or "HST" for the layout bugs."""
    if layout == "THS":
        return probs.transpose(0, 1)
    if layout == "HST":
        return probs.transpose(1, 2)
    return probs


def rope_tables(head_dim: int, theta: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
                                / head_dim))                                                    # (hd/2,)
    angles = positions.float()[:, None] * inv_freq[None, :]                                       # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """x: (T, H, hd). 'half' pairs dimension i with i + hd/2, as HF Llama does."""
    cos, sin = cos[:, None, :], sin[:, None, :]                 # (T, 1, hd/2)
    if layout == "adjacent":
        even, odd = x[..., 0::2].float(), x[..., 1::2].float()
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)
    first, second = x[..., : x.shape[-1] // 2].float(), x[..., x.shape[-1] // 2 :].float()
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: dict, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.index = index
        width, self.heads, self.kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
        self.head_dim = config.get("head_dim") or width // self.heads
        qwen2 = config["model_type"] == "qwen2"  # Qwen2: biases on q, k, v only
        qkv_bias, o_bias = qwen2 or config.get("attention_bias", False), not qwen2 and config.get("attention_bias", False)
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=o_bias)
        self.qk_norm = config["model_type"] == "qwen3"
        if self.qk_norm:
            eps = bugs.norm_eps or config["rms_norm_eps"]
            self.q_norm, self.k_norm = RMSNorm(self.head_dim, eps), RMSNorm(self.head_dim, eps)
        self.q, self.k, self.v = Probe(), Probe(), Probe()
        self.q_rope, self.k_rope, self.probs = Probe(), Probe(), Probe()
        self.bugs = bugs

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        T = x.shape[1]
        q_flat, k_flat = self.q_proj(x)[0], self.k_proj(x)[0]                # (T, H*hd), (T, Hkv*hd)
        if self.bugs.swap_qk:
            q_flat, k_flat = k_flat, q_flat
        q = self.q(q_flat).view(T, self.heads, self.head_dim)                # (T, H, hd)
        k = self.k(k_flat).view(T, self.kv_heads, self.head_dim)             # (T, Hkv, hd)
        v = self.v(self.v_proj(x)[0]).view(T, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = self.q_rope(apply_rope(q, cos, sin, self.bugs.rope_layout))
        unrotated, k = k, self.k_rope(apply_rope(k, cos, sin, self.bugs.rope_layout))
        if cache is not None:                                                     # keys and values so far
            start = cache.length(self.index)
            stored = unrotated if self.bugs.skip_rope_cached else k
            k, v = cache.append(self.index, stored, k, v, offset=self.bugs.kv_cache_offset and start > 0)  # (S, Hkv, hd)
        group = self.heads // self.kv_heads
        if self.bugs.gqa_order == "tile":
            k, v = k.repeat(1, group, 1), v.repeat(1, group, 1)
        else:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (T, H, hd)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(self.head_dim)        # (H, T, S)
        if self.bugs.causal_mask:
            S = k.shape[0]
            future = torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(1 + S - T)  # query t sees keys <= start + t
            scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        self.probs(_written_as(probs, self.bugs.probs_layout))
        context = torch.einsum("hts,shd->thd", probs, v).reshape(1, T, -1)            # (1, T, H*hd)
        return self.o_proj(context)


class MLP(nn.Module):
    def __init__(self, config: dict, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.index, self.bugs = index, bugs
        width, hidden = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activation = nn.functional.gelu if self.bugs.activation == "gelu" else nn.functional.silu
        out = self.down_proj(activation(self.gate_proj(x)) * self.up_proj(x))
        if self.bugs.nan_layer == self.index:
            out = out.clone()
            out[0, -1, 0] = float("nan")
        if self.bugs.overflow_layer == self.index:
            out = out.sign() * torch.exp(out.abs() * 1e4)  # an exponential that overflows to infinity
        return out


class Block(nn.Module):
    def __init__(self, config: dict, index: int, bugs: Bugs) -> None:
        super().__init__()
        eps = bugs.norm_eps or config["rms_norm_eps"]
        self.attn_norm, self.mlp_norm = RMSNorm(config["hidden_size"], eps), RMSNorm(config["hidden_size"], eps)
        self.attn, self.mlp = Attention(config, index, bugs), MLP(config, index, bugs)
        self.index, self.bugs = index, bugs

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None) -> torch.Tensor:
        attended = self.attn(self.attn_norm(x), cos, sin, cache)
        x = attended if self.bugs.missing_residual_layer == self.index else x + attended
        return x + self.mlp(self.mlp_norm(x))


class LlamaPort(nn.Module):
    def __init__(self, config: dict, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        self.config, self.bugs = config, bugs
        self.embed = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.blocks = nn.ModuleList(Block(config, i, bugs) for i in range(config["num_hidden_layers"]))
        self.final_norm = RMSNorm(config["hidden_size"], bugs.norm_eps or config["rms_norm_eps"])
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
        self.parity_taps = TAPS

    def forward(self, input_ids: torch.Tensor, past_key_values: "KVCache | None" = None, use_cache: bool = False):
        """Logits (1, T, V); with use_cache, (logits, cache) and decoding continues from `past_key_values`."""
        if self.bugs.extra_bos and past_key_values is None:
            bos = torch.full_like(input_ids[:, :1], self.config.get("bos_token_id") or 0)
            input_ids = torch.cat([bos, input_ids], dim=1)
        cache = past_key_values if past_key_values is not None else (KVCache(self.bugs.kv_cache_slots) if use_cache
                                                                     else None)
        start = cache.length(0) if cache is not None else 0
        T = input_ids.shape[1]
        positions = torch.arange(start, start + T, device=input_ids.device) + self.bugs.rope_offset
        head_dim = self.blocks[0].attn.head_dim
        theta = self.bugs.rope_theta or self.config.get("rope_theta") or (self.config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        cos, sin = rope_tables(head_dim, theta, positions)
        x = self.embed(input_ids)                                                  # (1, T, D)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        logits = self.lm_head(self.final_norm(x))                                 # (1, T, V)
        return (logits, cache) if use_cache else logits

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> "LlamaPort":
        renames = {"embed_tokens.": "embed.", "layers.": "blocks.", "input_layernorm": "attn_norm",
                   "post_attention_layernorm": "mlp_norm", "self_attn.": "attn."}
        renamed = {}
        for name, tensor in state.items():
            name = name.removeprefix("model.")
            name = "final_norm.weight" if name == "norm.weight" else name
            for old, new in renames.items():
                name = name.replace(old, new)
            renamed[name] = tensor
        if self.config.get("tie_word_embeddings") or "lm_head.weight" not in renamed:
            renamed["lm_head.weight"] = renamed["embed.weight"]
        self.load_state_dict(renamed, strict=True)
        return self


def build(path: str | Path, bugs: Bugs = Bugs(), dtype: torch.dtype = torch.float32) -> LlamaPort:
    """Load the port from a HuggingFace model directory (config.json + model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    port = LlamaPort(config, bugs).load_hf_state_dict(state)
    if bugs.drop_qkv_bias:
        with torch.no_grad():
            for block in port.blocks:
                for projection in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                    if projection.bias is not None:
                        projection.bias.zero_()
    if bugs.negate_k_layer is not None:
        with torch.no_grad():
            attention = port.blocks[bugs.negate_k_layer].attn
            attention.k_proj.weight.neg_()
            if attention.k_proj.bias is not None:
                attention.k_proj.bias.neg_()
    return port.to(dtype).eval()
