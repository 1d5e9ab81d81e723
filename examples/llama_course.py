"""A Llama written by hand, as a course assignment's `default_model` is: a candidate for `parity sanity`.

It follows transformers' causal-LM interface (`input_ids`, `labels`,
`past_key_values` / `use_cache`, `.config`) and transformers' module names, so
that `parity sanity` can load its weights into `LlamaForCausalLM` by name and
compare each component with the reference's:

    parity sanity examples/llama_course.py:default_model -v

`Bugs` plants the mistakes such assignments make; each is caught by one of the
11 tests: `default_model(Bugs(norm="no_mean"))` fails `norm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Bugs:
    """Mistakes to plant. The defaults plant none."""

    norm: str = "rms"             # "no_mean": x * rsqrt(sum(x^2) + eps), the sum where the mean belongs
    rope_base: str = "head_dim"   # "hidden": inverse frequencies over hidden_size instead of head_dim
    gqa: str = "interleave"       # "tile": query head h reads KV head h % Hkv instead of h // group
    loss_shift: bool = True       # False: logits at t scored against the label at t, not t + 1
    read_cache: bool = True       # False: decoding stores keys and values but attends to the new token only
    detach: str | None = None     # a parameter name: its weight is used through .detach() (no gradient)
    naive_cross_entropy: bool = False  # log(softmax) by hand: large logits give inf
    naive_softmax: bool = False   # attention's exp(scores) / sum without subtracting the maximum: large scores give inf
    dropout_on: bool = False      # attention dropout (p = 0.1) applied in eval mode too: F.dropout(training=True)


def course_config(**overrides):
    """The seed's TestConfig, as a transformers LlamaConfig."""
    from transformers import LlamaConfig

    values = dict(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, rope_theta=10000.0, attention_dropout=0.0, tie_word_embeddings=False)
    return LlamaConfig(**{**values, **overrides})


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float, bugs: Bugs) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps, self.bugs = eps, bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        square = x32.pow(2).sum(-1, keepdim=True) if self.bugs.norm == "no_mean" else x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(square + self.eps)).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """(cos, sin), each (B, T, head_dim), for the positions asked: transformers' convention."""

    def __init__(self, config, bugs: Bugs) -> None:
        super().__init__()
        head_dim = config.hidden_size // config.num_attention_heads
        base_dim = config.hidden_size if bugs.rope_base == "hidden" else head_dim
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / base_dim
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)
        self.register_buffer("inv_freq", 1.0 / (theta ** exponents), persistent=False)  # (hd/2,)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids.float()[..., None] * self.inv_freq                 # (B, T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)                             # (B, T, hd)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """q (B, H, T, hd), k (B, Hkv, T, hd), cos and sin (B, T, hd)."""
    cos, sin = cos[:, None], sin[:, None]                                        # (B, 1, T, hd)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _weight(module: nn.Linear, name: str, bugs: Bugs) -> torch.Tensor:
    return module.weight.detach() if bugs.detach == name else module.weight


class Attention(nn.Module):
    def __init__(self, config, index: int, bugs: Bugs) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = width // self.heads
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=False)
        self.index, self.bugs = index, bugs

    def forward(self, hidden_states: torch.Tensor, position_embeddings, cache: "Cache | None" = None) -> torch.Tensor:
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, self.heads, self.head_dim).transpose(1, 2)       # (B, H, T, hd)
        k = self.k_proj(hidden_states).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)    # (B, Hkv, T, hd)
        v = self.v_proj(hidden_states).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        start = 0
        if cache is not None:
            start = cache.length(self.index)
            k, v = cache.update(self.index, k, v, read=self.bugs.read_cache)                     # (B, Hkv, S, hd)
        group = self.heads // self.kv_heads
        if self.bugs.gqa == "tile":
            k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
        else:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)          # (B, H, S, hd)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)                                # (B, H, T, S)
        S = k.shape[2]
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1 + S - T)
        scores = scores.masked_fill(future, float("-inf"))
        if self.bugs.naive_softmax:
            weights = scores.float().exp()
            probabilities = weights / weights.sum(-1, keepdim=True)
        else:
            probabilities = torch.softmax(scores.float(), dim=-1)
        if self.bugs.dropout_on:
            probabilities = F.dropout(probabilities, 0.1, training=True)
        context = probabilities.to(q.dtype) @ v                                                   # (B, H, T, hd)
        return F.linear(context.transpose(1, 2).reshape(B, T, -1), _weight(self.o_proj, f"model.layers.{self.index}.self_attn.o_proj.weight", self.bugs))


class MLP(nn.Module):
    def __init__(self, config, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.index, self.bugs = index, bugs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = _weight(self.down_proj, f"model.layers.{self.index}.mlp.down_proj.weight", self.bugs)
        return F.linear(F.silu(self.gate_proj(x)) * self.up_proj(x), down)


class DecoderLayer(nn.Module):
    def __init__(self, config, index: int, bugs: Bugs) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, bugs)
        self.self_attn = Attention(config, index, bugs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, bugs)
        self.mlp = MLP(config, index, bugs)

    def forward(self, hidden_states: torch.Tensor, position_embeddings, cache=None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_embeddings, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Cache:
    """Keys and values of the positions seen so far, per layer: (B, Hkv, S, hd) each."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def length(self, layer: int) -> int:
        return self.keys[layer].shape[2] if layer in self.keys else 0

    def update(self, layer: int, key, value, read: bool = True):
        if layer in self.keys:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)
        else:
            self.keys[layer], self.values[layer] = key, value
        return (self.keys[layer], self.values[layer]) if read else (key, value)


class Body(nn.Module):
    def __init__(self, config, bugs: Bugs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, bugs) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, bugs)
        self.rotary_emb = RotaryEmbedding(config, bugs)


class Output:
    """What transformers' CausalLMOutputWithPast carries: loss, logits, past_key_values."""

    def __init__(self, loss, logits, past_key_values) -> None:
        self.loss, self.logits, self.past_key_values = loss, logits, past_key_values


class LlamaCourse(nn.Module):
    def __init__(self, config, bugs: Bugs = Bugs()) -> None:
        super().__init__()
        self.config, self.bugs = config, bugs
        self.model = Body(config, bugs)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                past_key_values: Cache | None = None, use_cache: bool = False) -> Output:
        cache = past_key_values if past_key_values is not None else (Cache() if use_cache else None)
        start = cache.length(0) if cache is not None else 0
        B, T = input_ids.shape
        position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)                                                    # (B, T, D)
        position_embeddings = self.model.rotary_emb(x, position_ids)
        for layer in self.model.layers:
            x = layer(x, position_embeddings, cache)
        logits = self.lm_head(self.model.norm(x)).float()                                         # (B, T, V)
        return Output(self.loss(logits, labels) if labels is not None else None, logits, cache)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.bugs.loss_shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        if not self.bugs.naive_cross_entropy:
            return F.cross_entropy(logits, labels, ignore_index=-100)
        kept = labels != -100
        probabilities = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return -probabilities[kept].gather(1, labels[kept, None]).log().mean()


def default_model(bugs: Bugs = Bugs(), config=None, seed: int = 0) -> LlamaCourse:
    """The model `parity sanity` checks: random weights (norm weights away from 1), the course's config."""
    torch.manual_seed(seed)
    model = LlamaCourse(config or course_config(), bugs)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            elif parameter.ndim == 2:
                parameter.normal_(0.0, 0.02)
    return model


# One factory per planted bug, for the command line: parity sanity examples/llama_course.py:tiled_gqa -v
PLANTED = {
    "sum_norm": Bugs(norm="no_mean"), "wrong_rope": Bugs(rope_base="hidden"), "tiled_gqa": Bugs(gqa="tile"),
    "unshifted_loss": Bugs(loss_shift=False), "unread_cache": Bugs(read_cache=False),
    "detached_weight": Bugs(detach="model.layers.1.mlp.down_proj.weight"), "naive_loss": Bugs(naive_cross_entropy=True),
    "naive_softmax": Bugs(naive_softmax=True), "dropout_on": Bugs(dropout_on=True),
}


def sum_norm(): return default_model(PLANTED["sum_norm"])               # noqa: E704
def wrong_rope(): return default_model(PLANTED["wrong_rope"])           # noqa: E704
def tiled_gqa(): return default_model(PLANTED["tiled_gqa"])             # noqa: E704
def unshifted_loss(): return default_model(PLANTED["unshifted_loss"])   # noqa: E704
def unread_cache(): return default_model(PLANTED["unread_cache"])       # noqa: E704
def detached_weight(): return default_model(PLANTED["detached_weight"]) # noqa: E704
def naive_loss(): return default_model(PLANTED["naive_loss"])           # noqa: E704
def naive_softmax(): return default_model(PLANTED["naive_softmax"])     # noqa: E704
def dropout_on(): return default_model(PLANTED["dropout_on"])           # noqa: E704
