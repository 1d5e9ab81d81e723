"""Mixtral written from scratch in plain PyTorch: a Llama block whose MLP is a mixture of experts.

Attention, RMSNorm and RoPE are llama_port's; the MoE block is this file's: a
router scores every expert for every token, each token goes to its top-k
experts, and their outputs are summed with the renormalised router weights.
It loads a HuggingFace Mixtral directory (experts stored as w1/w2/w3 per expert).

    parity check path/to/mixtral examples/mixtral_port.py:build --tokens 1,2,3

`Bugs(router_softmax_axis="tokens")` plants the routing mistake: the router's
softmax taken over the token axis instead of over the experts, so that each
token's experts are chosen from the wrong axis's probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llama_port import TAPS as LLAMA_TAPS
from llama_port import Attention, RMSNorm, rope_tables
from llama_port import Bugs as LlamaBugs
from parity.capture.torch.probe import Probe

TAPS = {
    **{pattern: name for pattern, name in LLAMA_TAPS.items() if not pattern.startswith("blocks.{i}.mlp")
       or pattern.startswith("blocks.{i}.mlp_norm")},   # llama_port's dense MLP entries replaced by these
    "blocks.{i}.moe.gate": "layers.{i}.moe_router_logits",
    "blocks.{i}.moe.chosen": "layers.{i}.moe_experts",      # ids per token, ascending
    "blocks.{i}.moe.weights": "layers.{i}.moe_weights",     # (T, E), zero where not chosen
    "blocks.{i}.moe": "layers.{i}.mlp_out",
}


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    router_softmax_axis: str = "experts"   # "tokens": softmax over the token axis, then top-k per token


class Experts(nn.Module):
    """One gated MLP per expert: w1 (gate), w3 (up), w2 (down)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    def __init__(self, config: dict, bugs: Bugs) -> None:
        super().__init__()
        width, self.top_k = config["hidden_size"], config["num_experts_per_tok"]
        self.gate = nn.Linear(width, config["num_local_experts"], bias=False)
        self.experts = nn.ModuleList(Experts(width, config["intermediate_size"]) for _ in range(config["num_local_experts"]))
        self.chosen, self.weights = Probe(), Probe()
        self.bugs = bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[0]                                                            # (T, D)
        logits = self.gate(tokens)                                               # (T, E)
        axis = 0 if self.bugs.router_softmax_axis == "tokens" else -1
        probs = torch.softmax(logits.float(), dim=axis)
        top, chosen = probs.topk(self.top_k, dim=-1)                             # (T, k)
        top = top / top.sum(-1, keepdim=True)
        dense = torch.zeros_like(probs).scatter(1, chosen, top)                  # (T, E)
        self.chosen(chosen.sort(dim=-1).values)
        self.weights(dense)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            routed = dense[:, index] > 0
            if routed.any():
                out[routed] += dense[routed, index, None].to(tokens.dtype) * expert(tokens[routed])
        return out[None]                                                         # (1, T, D)


class Block(nn.Module):
    def __init__(self, config: dict, index: int, bugs: Bugs) -> None:
        super().__init__()
        eps = config["rms_norm_eps"]
        self.attn_norm, self.mlp_norm = RMSNorm(config["hidden_size"], eps), RMSNorm(config["hidden_size"], eps)
        self.attn, self.moe = Attention(config, index, LlamaBugs()), MoE(config, bugs)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.moe(self.mlp_norm(x))


class MixtralPort(nn.Module):
    def __init__(self, config: dict, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        if config.get("sliding_window") is not None:
            raise ValueError("this port has no sliding window; give a Mixtral config with sliding_window null")
        self.config = config
        self.embed = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.blocks = nn.ModuleList(Block(config, i, bugs) for i in range(config["num_hidden_layers"]))
        self.final_norm = RMSNorm(config["hidden_size"], config["rms_norm_eps"])
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
        self.parity_taps = TAPS

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (1, T, V)."""
        theta = (self.config.get("rope_parameters") or {}).get("rope_theta", self.config.get("rope_theta", 1e6))
        cos, sin = rope_tables(self.blocks[0].attn.head_dim, theta, torch.arange(input_ids.shape[1]))
        x = self.embed(input_ids)                                                # (1, T, D)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.final_norm(x))                                 # (1, T, V)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> "MixtralPort":
        renames = {"embed_tokens.": "embed.", "layers.": "blocks.", "input_layernorm": "attn_norm",
                   "post_attention_layernorm": "mlp_norm", "self_attn.": "attn.", "block_sparse_moe.": "moe."}
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


def build(path: str | Path, bugs: Bugs = Bugs(), dtype: torch.dtype = torch.float32) -> MixtralPort:
    """Load the port from a HuggingFace Mixtral directory (config.json + *.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return MixtralPort(config, bugs).load_hf_state_dict(state).to(dtype).eval()
