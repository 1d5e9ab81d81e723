"""GPT-2 written from scratch in nanoGPT's naming: a port to check.

Module names follow nanoGPT (`transformer.h.{i}.attn.c_attn`, ...), so parity's
built-in "nanogpt" mapping finds every checkpoint; one Probe adds the attention
probabilities, which nanoGPT computes inline:

    parity check path/to/gpt2 examples/gpt2_port.py:build --tokens 1,2,3
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from parity.capture.torch.probe import Probe

TAPS = [
    "nanogpt",
    {   # this port records q, k, v after its own split of the fused projection
        "transformer.h.{i}.attn.c_attn:split": "layers.{i}.qkv",  # the fused output, whole
        "transformer.h.{i}.attn.q": "layers.{i}.q",
        "transformer.h.{i}.attn.k": "layers.{i}.k",
        "transformer.h.{i}.attn.v": "layers.{i}.v",
        "transformer.h.{i}.attn.probs": "layers.{i}.attn_probs",
    },
]


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    norm_eps: float | None = None               # every LayerNorm uses this epsilon
    causal_mask: bool = True                    # False: positions attend to the future
    missing_residual_layer: int | None = None   # this layer drops its attention residual
    nan_layer: int | None = None                # this layer's MLP output gets a NaN at the last position
    gelu: str = "tanh"                          # "erf": exact GELU where GPT-2 uses the tanh approximation; "silu"
    negate_k_layer: int | None = None           # this layer's key projection weights have their sign flipped
    overflow_layer: int | None = None           # this layer's MLP output overflows to infinity
    swap_qk: bool = False                       # the fused c_attn output split as (k, q, v)
    extra_bos: bool = False                     # <|endoftext|> is prepended to the input the model is given
    probs_layout: str = "HTS"                   # how the attention probabilities are written: "THS", "HST"


def _written_as(probs: torch.Tensor, layout: str) -> torch.Tensor:
    """probs (B, H, T, S) as a port would store it: "THS" or "HST" for the layout bugs."""
    if layout == "THS":
        return probs.transpose(1, 2)
    if layout == "HST":
        return probs.transpose(2, 3)
    return probs


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.heads, self.index, self.bugs = heads, index, bugs
        self.c_attn = nn.Linear(width, 3 * width)   # fused q, k, v
        self.c_proj = nn.Linear(width, width)
        self.q, self.k, self.v, self.probs = Probe(), Probe(), Probe(), Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        if self.bugs.swap_qk:
            q, k = k, q
        q, k, v = self.q(q), self.k(k), self.v(v)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))                                # (B, nh, T, T)
        if self.bugs.causal_mask:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        self.probs(_written_as(probs, self.bugs.probs_layout))
        context = (probs @ v).transpose(1, 2).reshape(B, T, D)                                   # (B, T, D)
        return self.c_proj(context)


class MLP(nn.Module):
    def __init__(self, width: int, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.index, self.bugs = index, bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.c_fc(x)
        if self.bugs.gelu == "silu":
            activated = nn.functional.silu(hidden)
        else:
            activated = nn.functional.gelu(hidden, approximate="none" if self.bugs.gelu == "erf" else "tanh")
        out = self.c_proj(activated)
        if self.bugs.nan_layer == self.index:
            out = out.clone()
            out[0, -1, 0] = float("nan")
        if self.bugs.overflow_layer == self.index:
            out = out.sign() * torch.exp(out.abs() * 1e4)  # an exponential that overflows to infinity
        return out


class Block(nn.Module):
    def __init__(self, width: int, heads: int, eps: float, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
        self.attn, self.mlp = Attention(width, heads, index, bugs), MLP(width, index, bugs)
        self.index, self.bugs = index, bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.attn(self.ln_1(x))
        x = attended if self.bugs.missing_residual_layer == self.index else x + attended
        return x + self.mlp(self.ln_2(x))


class GPT2Port(nn.Module):
    def __init__(self, config: dict, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        width, eps = config["n_embd"], bugs.norm_eps or config["layer_norm_epsilon"]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config["vocab_size"], width),
            wpe=nn.Embedding(config["n_positions"], width),
            drop=nn.Dropout(0.0),
            h=nn.ModuleList(Block(width, config["n_head"], eps, i, bugs) for i in range(config["n_layer"])),
            ln_f=nn.LayerNorm(width, eps=eps),
        ))
        self.lm_head = nn.Linear(width, config["vocab_size"], bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.parity_taps = TAPS
        self.bugs, self.bos_token_id = bugs, config.get("bos_token_id", 50256)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.bugs.extra_bos:
            input_ids = torch.cat([torch.full_like(input_ids[:, :1], self.bos_token_id), input_ids], dim=1)
        positions = torch.arange(input_ids.shape[1])
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(positions))  # (B, T, D)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))                                                # (B, T, V)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> "GPT2Port":
        converted = {}
        for name, tensor in state.items():
            if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
                continue  # HF's stored causal-mask buffers
            if any(name.endswith(f"{conv}.weight") for conv in ("c_attn", "c_proj", "c_fc")):
                tensor = tensor.t()  # HF's Conv1D stores (in, out); nn.Linear wants (out, in)
            converted[name] = tensor
        converted["lm_head.weight"] = converted["transformer.wte.weight"]
        self.load_state_dict(converted, strict=True)
        return self


def build(path: str | Path, bugs: Bugs = Bugs(), dtype: torch.dtype = torch.float32) -> GPT2Port:
    """Load the port from a HuggingFace GPT-2 directory (config.json + model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    port = GPT2Port(config, bugs).load_hf_state_dict(state)
    if bugs.negate_k_layer is not None:
        with torch.no_grad():
            fused = port.transformer.h[bugs.negate_k_layer].attn.c_attn   # rows: q, then k, then v
            width = config["n_embd"]
            fused.weight[width:2 * width].neg_()
            fused.bias[width:2 * width].neg_()
    return port.to(dtype).eval()
