"""Gemma 3 (text) written from scratch in plain PyTorch: a port to check.

It loads a HuggingFace Gemma 3 directory's config.json and *.safetensors and
computes the forward pass its own way (unbatched heads, einsum attention, masks
built from positions). What sets Gemma 3 apart from Llama, and what a port gets
wrong: the embedding is multiplied by sqrt(hidden_size); every norm scales by
(1 + weight); each branch's output is normed again before its residual add
(post-attention and post-feedforward norms); q and k are RMS-normed per head;
local layers attend within a sliding window and use their own RoPE base.

    parity check path/to/gemma3 examples/gemma3_port.py:build --tokens 2,10,20,30

`Bugs` plants the family's own mistakes: `build(path, bugs=Bugs(embed_scale=False))`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parity.capture.torch.probe import Probe

TAPS = {
    "embed": "embed_tokens",                        # the table lookup
    "embed_scaled": "embed",                        # x sqrt(hidden_size): what enters block 0
    "blocks.{i}.attn_norm": "layers.{i}.attn_norm",
    "blocks.{i}.attn.q_proj": "layers.{i}.q",
    "blocks.{i}.attn.k_proj": "layers.{i}.k",
    "blocks.{i}.attn.v_proj": "layers.{i}.v",
    "blocks.{i}.attn.q_norm": "layers.{i}.q_norm",
    "blocks.{i}.attn.k_norm": "layers.{i}.k_norm",
    "blocks.{i}.attn.q_rope": "layers.{i}.q_rope",
    "blocks.{i}.attn.k_rope": "layers.{i}.k_rope",
    "blocks.{i}.attn.probs": "layers.{i}.attn_probs",
    "blocks.{i}.attn.o_proj:input": "layers.{i}.attn_ctx",
    "blocks.{i}.attn.o_proj": "layers.{i}.attn_out",
    "blocks.{i}.attn_post_norm": "layers.{i}.attn_post_norm",
    "blocks.{i}.mlp_norm:input": "layers.{i}.resid_mid",
    "blocks.{i}.mlp_norm": "layers.{i}.mlp_norm",
    "blocks.{i}.mlp.gate_proj": "layers.{i}.mlp_gate",
    "blocks.{i}.mlp.up_proj": "layers.{i}.mlp_up",
    "blocks.{i}.mlp.down_proj:input": "layers.{i}.mlp_act",
    "blocks.{i}.mlp": "layers.{i}.mlp_out",
    "blocks.{i}.mlp_post_norm": "layers.{i}.mlp_post_norm",
    "blocks.{i}": "layers.{i}.out",
    "final_norm": "final_norm",
    "lm_head": "lm_head_out",                      # before any final soft-capping
    "logits": "logits",
}


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    embed_scale: bool = True                   # False: the embedding is not multiplied by sqrt(hidden_size)
    skip_post_attn_norm_layer: int | None = None  # this layer adds its attention output un-normed
    window_off_by_one: bool = False            # local layers let each query see window + 1 keys


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: in float32, scaled by (1 + weight), then cast back."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def rope_tables(head_dim: int, theta: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (hd/2,)
    angles = positions.float()[:, None] * inv_freq[None, :]                                             # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (T, H, hd); dimension i turns with i + hd/2."""
    cos, sin = cos[:, None, :], sin[:, None, :]                                  # (T, 1, hd/2)
    first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: dict, index: int, bugs: Bugs) -> None:
        super().__init__()
        width, self.heads, self.kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
        self.head_dim = config["head_dim"]
        bias = config.get("attention_bias", False)
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config["rms_norm_eps"])
        self.k_norm = RMSNorm(self.head_dim, config["rms_norm_eps"])
        self.q_rope, self.k_rope, self.probs = Probe(), Probe(), Probe()
        layer_type = config["layer_types"][index]
        self.window = config["sliding_window"] if layer_type == "sliding_attention" else None
        self.theta = _rope_theta(config, layer_type)
        self.scale = config["query_pre_attn_scalar"] ** -0.5
        self.softcap = config.get("attn_logit_softcapping")
        self.bugs = bugs

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        q = self.q_proj(x)[0].view(T, self.heads, self.head_dim)               # (T, H, hd)
        k = self.k_proj(x)[0].view(T, self.kv_heads, self.head_dim)            # (T, Hkv, hd)
        v = self.v_proj(x)[0].view(T, self.kv_heads, self.head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_tables(self.head_dim, self.theta, positions)
        q, k = self.q_rope(apply_rope(q, cos, sin)), self.k_rope(apply_rope(k, cos, sin))
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (T, H, hd)
        scores = torch.einsum("thd,shd->hts", q, k) * self.scale                # (H, T, S)
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.masked_fill(~self.visible(positions), float("-inf"))
        probs = self.probs(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        context = torch.einsum("hts,shd->thd", probs, v).reshape(1, T, -1)      # (1, T, H*hd)
        return self.o_proj(context)

    def visible(self, positions: torch.Tensor) -> torch.Tensor:
        """(T, S) True where query t may see key s: causal, and within the window on local layers."""
        distance = positions[:, None] - positions[None, :]                      # t - s
        visible = distance >= 0
        if self.window is not None:
            reach = self.window + 1 if self.bugs.window_off_by_one else self.window
            visible &= distance < reach
        return visible


def _rope_theta(config: dict, layer_type: str) -> float:
    parameters = (config.get("rope_parameters") or {}).get(layer_type) or {}
    if parameters.get("rope_type", "default") != "default":
        raise ValueError(f"this port implements default RoPE only, not {parameters['rope_type']}")
    fallback = config.get("rope_local_base_freq", 10000.0) if layer_type == "sliding_attention" else config.get("rope_theta", 1e6)
    return float(parameters.get("rope_theta", fallback))


class MLP(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        width, hidden = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: dict, index: int, bugs: Bugs) -> None:
        super().__init__()
        width, eps = config["hidden_size"], config["rms_norm_eps"]
        self.attn_norm, self.attn_post_norm = RMSNorm(width, eps), RMSNorm(width, eps)
        self.mlp_norm, self.mlp_post_norm = RMSNorm(width, eps), RMSNorm(width, eps)
        self.attn, self.mlp = Attention(config, index, bugs), MLP(config)
        self.index, self.bugs = index, bugs

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        attended = self.attn(self.attn_norm(x), positions)
        if self.bugs.skip_post_attn_norm_layer != self.index:
            attended = self.attn_post_norm(attended)
        x = x + attended
        return x + self.mlp_post_norm(self.mlp(self.mlp_norm(x)))


class Gemma3Port(nn.Module):
    def __init__(self, config: dict, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        self.config, self.bugs = config, bugs
        width = config["hidden_size"]
        self.embed = nn.Embedding(config["vocab_size"], width)
        self.embed_scaled = Probe()
        self.blocks = nn.ModuleList(Block(config, i, bugs) for i in range(config["num_hidden_layers"]))
        self.final_norm = RMSNorm(width, config["rms_norm_eps"])
        self.lm_head = nn.Linear(width, config["vocab_size"], bias=False)
        self.logits = Probe()
        self.parity_taps = dict(TAPS)
        if config.get("final_logit_softcapping") is None:  # nothing between the head and the logits
            self.parity_taps["lm_head"] = self.parity_taps.pop("logits")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (1, T, V)."""
        positions = torch.arange(input_ids.shape[1])
        x = self.embed(input_ids)                                                # (1, T, D)
        if self.bugs.embed_scale:
            x = x * torch.tensor(self.config["hidden_size"] ** 0.5, dtype=x.dtype)
        x = self.embed_scaled(x)
        for block in self.blocks:
            x = block(x, positions)
        logits = self.lm_head(self.final_norm(x))                               # (1, T, V)
        cap = self.config.get("final_logit_softcapping")
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return self.logits(logits)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> "Gemma3Port":
        renames = {"embed_tokens.": "embed.", "layers.": "blocks.", "self_attn.": "attn.",
                   "input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
                   "pre_feedforward_layernorm": "mlp_norm", "post_feedforward_layernorm": "mlp_post_norm"}
        renamed = {}
        for name, tensor in state.items():
            name = name.removeprefix("model.").removeprefix("language_model.")
            name = "final_norm.weight" if name == "norm.weight" else name
            for old, new in renames.items():
                name = name.replace(old, new)
            renamed[name] = tensor
        if self.config.get("tie_word_embeddings", True) or "lm_head.weight" not in renamed:
            renamed["lm_head.weight"] = renamed["embed.weight"]
        self.load_state_dict(renamed, strict=True)
        return self


def build(path: str | Path, bugs: Bugs = Bugs(), dtype: torch.dtype = torch.float32) -> Gemma3Port:
    """Load the port from a HuggingFace Gemma 3 text directory (config.json + *.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    config = config.get("text_config", config)
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return Gemma3Port(config, bugs).load_hf_state_dict(state).to(dtype).eval()
