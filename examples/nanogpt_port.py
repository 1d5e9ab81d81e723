"""A nanoGPT-structured GPT-2, written for this project: a port to check, with bugs to plant.

It has nanoGPT's shape (written from scratch here, not copied): a GPT module
holding `transformer.wte/wpe/drop/h/ln_f` and `lm_head`, a fused `c_attn`
split into q, k, v, attention through `scaled_dot_product_attention` (the
"flash" path, which exposes no probabilities) or written out (the manual path,
with a Probe on the probabilities), nn.Linear weights transplanted and
transposed from a HuggingFace GPT2LMHeadModel, and a forward that returns only
the last position's logits at inference. parity's built-in "nanogpt" mapping
finds its checkpoints:

    parity check path/to/gpt2 examples/nanogpt_port.py:build --tokens 1,2,3
    parity check path/to/gpt2 examples/nanogpt_port.py:build_with_probe --tokens 1,2,3
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from parity.capture.torch.probe import Probe

PROBE_TAPS = ["nanogpt", {"transformer.h.{i}.attn.probs": "layers.{i}.attn_probs"}]


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant, each one porters have made. The defaults plant none."""

    attention_scale: str = "sqrt"            # "d": scores divided by head_dim, not sqrt(head_dim)
    causal_mask: bool = True                 # False: positions attend to the future
    swap_qk: bool = False                    # the fused c_attn output used as (k, q, v); taps see it before
    untied_lm_head: bool = False             # lm_head a fresh random matrix instead of wte's
    position_offset: int = 0                 # wpe read at position t + offset
    final_norm_weight: bool = True           # False: ln_f normalizes but ignores its weight
    extra_bos: bool = False                  # <|endoftext|> prepended to the input the model is given
    skip_mlp_norm_layer: int | None = None   # this layer's ln_2 is never applied (an identity)
    position_embeddings: str = "once"        # "none": wpe left out; "twice": added twice
    attention_bias: bool = True              # False: c_attn's bias not loaded (built with bias=False)


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024     # the longest sequence wpe has rows for
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = True          # GPT-2 has biases in every Linear and LayerNorm
    eps: float = 1e-5          # GPT-2's LayerNorm epsilon
    flash: bool = True         # scaled_dot_product_attention; False: the manual path, probabilities visible


class LayerNorm(nn.Module):
    def __init__(self, width: int, eps: float, use_weight: bool = True) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))
        self.eps, self.use_weight = eps, use_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.use_weight else None
        return F.layer_norm(x, self.weight.shape, weight, self.bias, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, bugs: Bugs) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)   # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd, self.flash, self.bugs = config.n_head, config.n_embd, config.flash, bugs
        self.probs = Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        if self.bugs.swap_qk:
            q, k = k, q
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scale = 1.0 / k.size(-1) if self.bugs.attention_scale == "d" else 1.0 / math.sqrt(k.size(-1))
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.bugs.causal_mask, scale=scale)
        else:
            att = (q @ k.transpose(-2, -1)) * scale                                                  # (B, nh, T, T)
            if self.bugs.causal_mask:
                att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            att = self.probs(F.softmax(att, dim=-1))
            y = att @ v                                                                              # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                                             # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")   # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = LayerNorm(config.n_embd, config.eps), LayerNorm(config.n_embd, config.eps)
        self.attn, self.mlp = CausalSelfAttention(config, bugs), MLP(config)
        if bugs.skip_mlp_norm_layer == index:
            self.ln_2.forward = lambda x: x   # the norm forgotten; its weights still load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        self.config, self.bugs = config, bugs
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(0.0),
            h=nn.ModuleList(Block(config, i, bugs) for i in range(config.n_layer)),
            ln_f=LayerNorm(config.n_embd, config.eps, use_weight=bugs.final_norm_weight),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if not bugs.untied_lm_head:
            self.transformer.wte.weight = self.lm_head.weight   # tied, as in GPT-2

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if self.bugs.extra_bos:
            idx = torch.cat([torch.full_like(idx[:, :1], self.config.vocab_size - 1), idx], dim=1)
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device) + self.bugs.position_offset     # (t,)
        x = self.transformer.wte(idx)                                                               # (b, t, n_embd)
        if self.bugs.position_embeddings != "none":
            x = x + self.transformer.wpe(pos) * (2 if self.bugs.position_embeddings == "twice" else 1)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return self.lm_head(x[:, [-1], :]), None   # inference: the last position only, (b, 1, vocab)

    @classmethod
    def from_hf(cls, path: str | Path, bugs: Bugs = Bugs(), *, flash: bool = True) -> "GPT":
        """Transplant a HuggingFace GPT-2 directory's weights, as nanoGPT's from_pretrained does:
        HF's Conv1D stores (in, out), nn.Linear (out, in), so those four weights are transposed."""
        from safetensors.torch import load_file

        path = Path(path)
        hf = json.loads((path / "config.json").read_text())
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], eps=hf["layer_norm_epsilon"], flash=flash)
        model = cls(config, bugs)
        state = {}
        for file in sorted(path.glob("*.safetensors")):
            state.update(load_file(file))
        ours = model.state_dict()
        with torch.no_grad():
            for name, tensor in state.items():
                name = name if name.startswith("transformer.") or name.startswith("lm_head") else f"transformer.{name}"
                if name not in ours:
                    continue   # HF's causal-mask buffers
                if name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
                    tensor = tensor.t()
                ours[name].copy_(tensor)
            if not bugs.attention_bias:
                for block in model.transformer.h:
                    block.attn.c_attn.bias.zero_()
            if bugs.untied_lm_head:
                torch.manual_seed(1234)
                model.lm_head.weight.normal_(0.0, 0.02)
        return model


def build(path: str | Path, bugs: Bugs = Bugs(), dtype: torch.dtype = torch.float32, *,
          probe: bool = False) -> GPT:
    """The port from a HuggingFace GPT-2 directory; with `probe`, the manual attention path,
    whose probabilities a Probe exposes (the flash path computes them inside one kernel)."""
    model = GPT.from_hf(path, bugs, flash=not probe)
    if probe:
        model.parity_taps = PROBE_TAPS
    return model.to(dtype).eval()


def build_with_probe(path: str | Path) -> GPT:
    return build(path, probe=True)
