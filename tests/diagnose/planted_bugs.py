"""A catalogue of bugs planted in the functional port (planted_port.py), each with the causes that
name it rightly. Most have no detector written for them: they are mistakes seen in ports (a
rotate_half turning the wrong way, an MLP's operands exchanged, blocks run out of order) written
as a replaced op. The families are built once per test module (`Families`), the reference traced
once per family and precision; each bug is a pass of the port, in process.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

import planted_port as port
from planted_port import OPS, Ops

TOKENS = [0, 17, 5, 40, 8, 9, 31, 22, 64, 3]   # tests/conftest.py's prompt

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # scaled within the 10 test tokens
YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}
LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
# family -> (tiny_models family, config overrides, scale applied to the q and k weights)
FAMILIES: dict[str, tuple[str, dict, float]] = {
    "llama": ("llama", {}, 1.0),
    "mistral": ("mistral", {"sliding_window": 4}, 1.0),   # every layer windowed
    "llama3": ("llama", {"rope_parameters": LLAMA3_ROPE}, 1.0),
    "yarn": ("llama", {"rope_parameters": YARN_ROPE}, 1.0),
    "linear": ("llama", {"rope_parameters": LINEAR_ROPE}, 1.0),
    "qwen3": ("qwen3", {}, 1.0),
    "gemma3": ("gemma3", {}, 1.0),   # layer 0 windowed (4) with theta 1e4, layer 1 global with 1e6
    "gpt2": ("gpt2", {}, 1.0),
    "llama_peaked": ("llama", {}, 150.0),  # attention logits (up to ~15) that overflow float16 in exp
}


@dataclasses.dataclass(frozen=True)
class Bug:
    family: str
    ops: Ops
    causes: frozenset[str]         # the causes that name it rightly
    layer: int | None = None       # where the ops are replaced (every layer when None)
    dtype: str = "float32"

    def __repr__(self) -> str:
        return f"<Bug {self.family} {sorted(self.causes)}>"


# What a port with RoPE and the softmax inline records none of (Meta's code, gpt-fast, torchtune, LitGPT).
UNRECORDED = frozenset({"q_rope", "k_rope", "attn_probs"})


def bug(family: str, causes: str | set, layer: int | None = None, dtype: str = "float32", **ops) -> Bug:
    return Bug(family, dataclasses.replace(OPS, **ops), frozenset({causes} if isinstance(causes, str) else causes),
               layer, dtype)


# ----- ops as ports get them wrong ------------------------------------------------------------------------

def rotate_half_backwards(x):                         # cat(x2, -x1): the rotation turns the other way
    first, second = x.chunk(2, dim=-1)
    return torch.cat((second, -first), dim=-1)


def rope_adjacent(x, cos, sin, _):
    """Rotation of pairs (2i, 2i+1) with the tables of pairs (i, i + hd/2): a GGUF-style layout."""
    half = x.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def with_rope(**changes) -> Callable:
    """inv_freq computed from a config whose RoPE parameters were changed (for every layer type)."""
    def frequencies(config, layer_type):
        changed = copy.deepcopy(config)
        parameters = changed.rope_parameters
        for part in ([parameters[layer_type]] if layer_type in parameters else [parameters]):
            for key, value in changes.items():
                if value is None:
                    part.pop(key, None)
                else:
                    part[key] = value
        return port.inv_freq(changed, layer_type)
    return frequencies


def default_rope_of(config, layer_type):
    """No scaling at all: the plain default frequencies with the config's theta."""
    return with_rope(rope_type="default")(config, layer_type)[0], 1.0


def exponent_not_halved(config, layer_type):
    """1 / theta^(i / d) for i = 0 .. d/2 - 1: arange(0, d/2) where arange(0, d, 2) was meant."""
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    return 1.0 / theta ** (torch.arange(0, dim // 2, dtype=torch.float32) / dim), 1.0


def gemma_local_with_global_theta(config, layer_type):
    return port.inv_freq(config, "full_attention")


def without_attention_factor(config, layer_type):
    return port.inv_freq(config, layer_type)[0], 1.0


def visible_offset(shift: int):
    def visible(count, window):
        distance = torch.arange(count)[:, None] - torch.arange(count)[None, :]
        shown = distance >= -shift
        return shown & (distance < window) if window is not None else shown
    return visible


def window_changed(change: int | None, *, everywhere: int | None = None):
    def visible(count, window):
        if everywhere is not None:
            window = everywhere
        elif window is not None and change is not None:
            window = window + change
        elif change is None:
            window = None
        return port.visible(count, window)
    return visible


def norm_eps(eps: float):
    return lambda x, w, b, _, kind: port.norm(x, w, b, eps, kind)


def norm_eps_outside(x, w, b, eps, kind):
    x32 = x.float()
    return (w * (x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)) if kind == "rms" else port.norm(x, w, b, eps, kind)


def norm_centred(x, w, b, eps, kind):
    x32 = x.float() - x.float().mean(-1, keepdim=True)
    return port.norm(x32.to(x.dtype), w, b, eps, kind)


def norm_unweighted(x, w, b, eps, kind):
    return port.norm(x, torch.ones_like(w), b, eps, kind)


def layer_norm_without_bias(x, w, b, eps, kind):
    return port.norm(x, w, torch.zeros_like(b), eps, kind)


def layer_norm_unbiased(x, weight, bias, eps: float, kind: str):
    """LayerNorm by hand with torch.var's default, the unbiased variance (over n - 1); other norms as they are."""
    if kind != "layer":
        return port.norm(x, weight, bias, eps, kind)
    x32 = x.float()
    centred = x32 - x32.mean(-1, keepdim=True)
    return (centred / torch.sqrt(x32.var(-1, keepdim=True) + eps) * weight.float() + bias.float()).to(x.dtype)


def norm_over_all_heads(x, w, b, eps, kind):
    """q_norm/k_norm over the whole (H*hd) vector instead of each head: (T, H, hd) in, per-head weight."""
    if x.ndim == 3:
        count, heads, dim = x.shape
        x32 = x.float().reshape(count, -1)
        normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).reshape(count, heads, dim)
        return w * normed.to(x.dtype)
    return port.norm(x, w, b, eps, kind)


def layer_norm_uncentred(x, w, b, eps, kind):
    x32 = x.float()
    return (w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) + b) if kind == "layer" \
        else port.norm(x, w, b, eps, kind)


def softmax_with_dropout(scores):
    """Attention dropout (p = 0.1) left on at inference: a fixed mask, survivors scaled by 1 / 0.9."""
    probs = torch.softmax(scores.float(), -1)
    kept = torch.rand(probs.shape, generator=torch.Generator().manual_seed(0)) > 0.1
    return probs * kept / 0.9


def softmax_float16_unshifted(scores):
    exps = torch.exp(scores.half())
    return exps / exps.sum(-1, keepdim=True)


def heads_merged_without_transpose(ctx):           # (T, H, hd) read as (H, T, hd) memory
    return ctx.permute(1, 0, 2).reshape(ctx.shape[0], -1)


# ----- the suite: (name) -> bug -----------------------------------------------------------------------

BUGS: dict[str, Bug] = {
    # RoPE
    "llama: rotate_half returns cat(x2, -x1)": bug("llama", "rope_direction", rotate_half=rotate_half_backwards),
    "qwen3: rotate_half returns cat(x2, -x1)": bug("qwen3", "rope_direction", rotate_half=rotate_half_backwards),
    "llama3: rotate_half returns cat(x2, -x1)": bug("llama3", "rope_direction", rotate_half=rotate_half_backwards),
    "llama3: theta 10000 where the config says 500000": bug("llama3", "rope_theta", inv_freq=with_rope(rope_theta=1e4)),
    "llama3: scaling not applied": bug("llama3", "rope_scaling", inv_freq=default_rope_of),
    "llama3: scaling factor 4 instead of 8": bug("llama3", "rope_scaling", inv_freq=with_rope(factor=4.0)),
    "llama3: positions start at 1": bug("llama3", "rope_position_offset", positions=lambda n: torch.arange(1, n + 1)),
    "mistral: positions start at 2": bug("mistral", "rope_position_offset", positions=lambda n: torch.arange(2, n + 2)),
    "qwen3: pairs (2i, 2i+1) instead of (i, i + d/2)": bug("qwen3", "rope_layout", rope=rope_adjacent),
    "gemma3: local layer rotated with the global theta": bug("gemma3", "rope_theta", inv_freq=gemma_local_with_global_theta),
    "llama: inverse frequencies with arange(0, d/2) / d": bug("llama", "rope_theta", inv_freq=exponent_not_halved),
    "llama: cos and sin exchanged": bug("llama", {"rope_angles", "rope_direction"},
                                        rope=lambda x, c, s, rot: x * s + rot(x) * c),
    "yarn: attention factor not applied": bug("yarn", "rope_scaling", inv_freq=without_attention_factor),
    "yarn: theta 500000 where the config says 10000": bug("yarn", "rope_theta", inv_freq=with_rope(rope_theta=5e5)),
    "linear: scaling not applied": bug("linear", "rope_scaling", inv_freq=default_rope_of),
    "linear: rotate_half returns cat(x2, -x1)": bug("linear", "rope_direction", rotate_half=rotate_half_backwards),
    # attention
    "llama: scores scaled by 1/d instead of 1/sqrt(d)": bug("llama", "attention_scale",
                                                            score_scale=lambda d, hidden, s: 1 / d),
    "gpt2: scores not scaled": bug("gpt2", "attention_scale", score_scale=lambda d, hidden, s: 1.0),
    "qwen3: scores scaled by 1/sqrt(hidden)": bug("qwen3", "attention_scale",
                                                  score_scale=lambda d, hidden, s: hidden ** -0.5),
    "gemma3: scores multiplied by sqrt(d)": bug("gemma3", "attention_scale", score_scale=lambda d, hidden, s: d ** 0.5),
    "llama: causal mask off by one (sees the next token)": bug("llama", "causal_mask", visible=visible_offset(1)),
    "gpt2: causal mask off by one (sees the next token)": bug("gpt2", "causal_mask", visible=visible_offset(1)),
    "qwen3: no causal mask": bug("qwen3", "causal_mask", visible=lambda n, w: torch.ones(n, n, dtype=torch.bool)),
    "mistral: window one key too wide": bug("mistral", "sliding_window", visible=window_changed(+1)),
    "mistral: window one key too narrow": bug("mistral", "sliding_window", visible=window_changed(-1)),
    "mistral: window not applied": bug("mistral", "sliding_window", visible=window_changed(None)),
    "gemma3: window applied to the global layer": bug("gemma3", "sliding_window", visible=window_changed(0, everywhere=4)),
    "gemma3: window one key too wide": bug("gemma3", "sliding_window", visible=window_changed(+1)),
    "llama: softmax over the query axis": bug("llama", "softmax_normalization",
                                              softmax=lambda s: torch.softmax(s.float(), dim=-2)),
    "llama_peaked: float16 softmax without subtracting the max": bug("llama_peaked", "nonfinite",
                                                                     softmax=softmax_float16_unshifted),
    "llama: KV heads tiled instead of interleaved": bug("llama", "gqa_head_mapping",
                                                        expand_kv=lambda x, g: x.repeat(1, g, 1)),
    "qwen3: values' heads tiled, keys' interleaved": bug("qwen3", "gqa_head_mapping",
                                                         expand_v=lambda x, g: x.repeat(1, g, 1)),
    "llama: keys used as values": bug("llama", {"wiring", "swapped_operands"},
                                      attend=lambda p, q, k, v: torch.einsum("hts,shd->thd", p, k)),
    "gemma3: heads merged without a transpose": bug("gemma3", "layout_permuted", merge_heads=heads_merged_without_transpose),
    "mistral: heads merged in reverse order": bug("mistral", "layout_permuted",
                                                  merge_heads=lambda ctx: ctx.flip(1).reshape(ctx.shape[0], -1)),
    # norms
    "llama: norm scales by 1 + weight": bug("llama", "norm_weight_convention",
                                            norm_kind=lambda kind, where: "rms1p" if kind == "rms" else kind),
    "gemma3: norm scales by weight, not 1 + weight": bug("gemma3", "norm_weight_convention",
                                                         norm_kind=lambda kind, where: "rms" if kind == "rms1p" else kind),
    "llama3: norm epsilon 1e-5": bug("llama3", "norm_epsilon", norm=norm_eps(1e-5)),
    "qwen3: norm epsilon outside the square root": bug("qwen3", "norm_epsilon", norm=norm_eps_outside),
    "llama: RMSNorm centres its rows": bug("llama", "norm_variant", norm=norm_centred),
    "mistral: norm weight not applied": bug("mistral", "norm_affine", norm=norm_unweighted),
    "gpt2: LayerNorm bias not applied": bug("gpt2", "norm_affine", norm=layer_norm_without_bias),
    "gpt2: LayerNorm epsilon 1e-3": bug("gpt2", "norm_epsilon", norm=norm_eps(1e-3)),
    "qwen3: q/k norm over all heads at once": bug("qwen3", "norm_variant", norm=norm_over_all_heads),
    "qwen3: q norm skipped": bug("qwen3", "op_skipped", skip_norms=frozenset({"q"})),
    # MLP
    "llama: MLP gate and up exchanged": bug("llama", "wiring", gated=lambda act, gate, up: act(up) * gate),
    "gemma3: MLP gate and up exchanged": bug("gemma3", "wiring", gated=lambda act, gate, up: act(up) * gate),
    "mistral: MLP up projection left out": bug("mistral", {"wiring", "op_skipped"}, gated=lambda act, gate, up: act(gate)),
    "llama3: SiLU replaced by GELU": bug("llama3", "activation_variant", activation=lambda name: F.gelu),
    "gemma3: erf GELU for the tanh GELU": bug("gemma3", "activation_variant", activation=lambda name: F.gelu),
    "gpt2: ReLU for GELU": bug("gpt2", "activation_variant", activation=lambda name: F.relu),
    # residuals and structure
    "llama3: attention residual left out": bug("llama3", "missing_residual", attn_residual=lambda x, n, b: b),
    "llama: residual added to the normed input": bug("llama", "wiring", attn_residual=lambda x, n, b: n + b),
    "qwen3: MLP output added to the block input": bug("qwen3", "wiring", mlp_residual=lambda x, mid, b: x + b),
    "qwen3: attention branch halved before the add": bug("qwen3", "residual_scale", attn_residual=lambda x, n, b: x + 0.5 * b),
    "llama: blocks 0 and 1 run in the wrong order": bug("llama", "wiring", block_order=lambda n: [1, 0, *range(2, n)]),
    "gpt2: blocks 0 and 1 run in the wrong order": bug("gpt2", "wiring", block_order=lambda n: [1, 0, *range(2, n)]),
    "qwen3: layer 1 run twice": bug("qwen3", "wiring", block_order=lambda n: [0, 1, 1, *range(2, n)]),
    "mistral: layer 1 skipped": bug("mistral", {"structure", "wiring"}, block_order=lambda n: [0, *range(2, n)]),
    "llama3: last layer left out": bug("llama3", {"structure", "wiring"}, block_order=lambda n: list(range(n - 1))),
    "llama: final norm left out": bug("llama", {"structure", "op_skipped", "wiring"}, final_norm=False),
    # embeddings
    "gemma3: embedding not scaled": bug("gemma3", "embedding_scale", embed_scale=lambda hidden, scale: 1.0),
    "gemma3: embedding scaled by hidden size": bug("gemma3", {"embedding_scale", "scale_factor"},
                                                   embed_scale=lambda hidden, scale: float(hidden)),
    "gpt2: position rows read from 1": bug("gpt2", "position_embedding", positions=lambda n: torch.arange(1, n + 1)),
}

# A second set, written after the mechanisms and not tuned to them: other ops, other families, other
# parameters, mistakes of the same kinds made in other places.
BUGS.update({
    "llama3: low and high frequency factors exchanged": bug("llama3", {"rope_scaling", "rope_angles"},
                                                             inv_freq=with_rope(low_freq_factor=4.0, high_freq_factor=1.0 + 1e-3)),
    "mistral: theta 1e6 where the config says 1e4": bug("mistral", "rope_theta", inv_freq=with_rope(rope_theta=1e6)),
    "linear: factor 4 where the config says 2": bug("linear", "rope_scaling", inv_freq=with_rope(factor=4.0)),
    "yarn: factor 8 where the config says 4": bug("yarn", "rope_scaling", inv_freq=with_rope(factor=8.0)),
    "gpt2: LayerNorm with torch.var's unbiased variance": bug("gpt2", "norm_variant", norm=layer_norm_unbiased),
    "llama: inverse frequencies without the reciprocal": bug("llama", "rope_angles", inv_freq=lambda c, t: (
        1 / port.inv_freq(c, t)[0], port.inv_freq(c, t)[1])),   # theta ** (arange(0, d, 2) / d): angles past pi
    "gemma3: global layer rotated with the local theta": bug("gemma3", "rope_theta", inv_freq=lambda c, t: port.inv_freq(
        c, "sliding_attention")),
    "qwen3: keys not rotated": bug("qwen3", {"op_skipped", "wiring"}, rope_k=lambda x, c, s, rot: x),
    "llama3: rotate_half backwards in layer 1 only": bug("llama3", "rope_direction", layer=1,
                                                         rotate_half=rotate_half_backwards),
    "llama: scores scaled by 1/sqrt(hidden / kv_heads)": bug("llama", "attention_scale",
                                                             score_scale=lambda d, hidden, s: (hidden / 2) ** -0.5),
    "mistral: the diagonal masked too": bug("mistral", {"causal_mask", "nonfinite"}, visible=visible_offset(-1)),
    "llama: probabilities scaled by 0.9 after the softmax": bug("llama", "softmax_normalization",
                                                                softmax=lambda s: 0.9 * torch.softmax(s.float(), dim=-1)),
    "qwen3: keys' heads tiled, values' interleaved": bug("qwen3", "gqa_head_mapping",
                                                         expand_kv=lambda x, g: x.repeat(1, g, 1),
                                                         expand_v=lambda x, g: x.repeat_interleave(g, dim=1)),
    "llama: heads merged as (tokens, head_dim, heads)": bug("llama", "layout_permuted",
                                                            merge_heads=lambda ctx: ctx.transpose(1, 2).reshape(ctx.shape[0], -1)),
    "gpt2: MLP output added to the block input": bug("gpt2", "wiring", mlp_residual=lambda x, mid, b: x + b),
    "llama: attention branch doubled": bug("llama", "residual_scale", attn_residual=lambda x, n, b: x + 2 * b),
    "llama: blocks run in reverse order": bug("llama", "wiring", block_order=lambda n: list(range(n))[::-1]),
    "gpt2: last layer run twice": bug("gpt2", "wiring", block_order=lambda n: [*range(n), n - 1]),
    "qwen3: first layer skipped": bug("qwen3", {"structure", "wiring"}, block_order=lambda n: list(range(1, n))),
    "qwen3: q_norm reads k_norm's weight": bug("qwen3", "wiring", norm_module=lambda where, i: ("k" if where == "q" else where, i)),
    "llama: final norm reads layer 0's input norm weight": bug("llama", "wiring", norm_module=lambda where, i: (
        ("attn", 0) if where == "final" else (where, i))),
    "qwen3: q/k norm epsilon 1e-3": bug("qwen3", "norm_epsilon", norm=lambda x, w, b, eps, kind: port.norm(
        x, w, b, 1e-3 if x.ndim == 3 else eps, kind)),
    "gemma3: q/k norms scale by weight, not 1 + weight": bug("gemma3", "norm_weight_convention", norm=lambda x, w, b, eps, kind: port.norm(
        x, w, b, eps, "rms" if x.ndim == 3 else kind)),
    "llama: RMSNorm without epsilon": bug("llama", "norm_epsilon", norm=norm_eps(0.0)),
    "gemma3: MLP post-norm skipped": bug("gemma3", {"post_norm_skipped", "op_skipped"}, skip_norms=frozenset({"mlp_post"})),
    "mistral: embedding multiplied by sqrt(hidden)": bug("mistral", {"scale_factor", "embedding_scale"},
                                                         embed_scale=lambda hidden, scale: hidden ** 0.5),
    "gpt2: position rows added twice": bug("gpt2", "position_embedding", add_positions=lambda tokens, rows: tokens + 2 * rows),
    "llama: probabilities transposed before the product with v": bug("llama", "wiring", attend=lambda p, q, k, v: torch.einsum(
        "hst,shd->thd", p, v)),
    "llama3: SiLU on both gate and up": bug("llama3", "activation_variant", gated=lambda act, g, u: act(g) * act(u)),
    "qwen3: activation after the product": bug("qwen3", "activation_variant", gated=lambda act, g, u: act(g * u)),
})

# A third set, also written before running it.
BUGS.update({
    "gpt2: the diagonal masked too": bug("gpt2", {"causal_mask", "nonfinite"}, visible=visible_offset(-1)),
    "llama3: original context length ignored (8192)": bug("llama3", {"rope_scaling", "rope_angles"},
                                                           inv_freq=with_rope(original_max_position_embeddings=8192)),
    "gpt2: q bias not loaded": bug("gpt2", "missing_bias", weight=lambda name, t, _: torch.cat([torch.zeros(64), t[64:]])
                                   if name == "transformer.h.0.attn.c_attn.bias" else t),
    "llama: lm_head tied to the embedding": bug("llama", "output_projection", weight=lambda name, t, weights: weights[
        "model.embed_tokens.weight"] if name == "lm_head.weight" else t),
    "gpt2: LayerNorm without centring": bug("gpt2", "norm_variant", norm=layer_norm_uncentred),
    "gemma3: final norm scales by weight, not 1 + weight": bug("gemma3", "norm_weight_convention", norm_kind=lambda kind, where:
                                                               "rms" if where == "final" else kind),
    "llama3: a sink in the softmax's denominator": bug("llama3", "softmax_normalization", softmax=lambda s: torch.exp(
        s.float() - s.float().amax(-1, keepdim=True)) / (torch.exp(s.float() - s.float().amax(-1, keepdim=True)).sum(-1, keepdim=True)
                                                         + torch.exp(-s.float().amax(-1, keepdim=True)))),
    "gemma3: MLP branch doubled": bug("gemma3", "residual_scale", mlp_residual=lambda x, mid, b: mid + 2 * b),
    "gpt2: attention dropout left on": bug("gpt2", "softmax_normalization", softmax=softmax_with_dropout),
    "mistral: keys' rotate_half backwards": bug("mistral", "rope_direction", rope_k=lambda x, c, s_, rot: x * c +
                                                rotate_half_backwards(x) * s_),
    "llama: logits scaled by 1/sqrt(hidden)": bug("llama", {"scale_factor", "output_projection"},
                                                  weight=lambda name, t, _: t / 8 if name == "lm_head.weight" else t),
    "llama3: norm weight applied before normalizing": bug("llama3", "norm_variant", norm=lambda x, w, b, eps, kind: port.norm(
        x * w, torch.ones_like(w), b, eps, kind)),
    "qwen3: attention scale applied to the probabilities": bug("qwen3", {"softmax_normalization", "attention_scale"},
                                                               softmax=lambda s: 0.25 * torch.softmax(4 * s.float(), -1)),
})

# A fourth set: mistakes at bfloat16, and others again.
BUGS.update({
    "llama: theta 1e6 [bfloat16]": bug("llama", "rope_theta", dtype="bfloat16", inv_freq=with_rope(rope_theta=1e6)),
    "gemma3: local layer rotated with the global theta [bfloat16]": bug("gemma3", "rope_theta", dtype="bfloat16",
                                                                         inv_freq=gemma_local_with_global_theta),
    "gpt2: blocks 0 and 1 run in the wrong order [bfloat16]": bug("gpt2", "wiring", dtype="bfloat16",
                                                                  block_order=lambda n: [1, 0, *range(2, n)]),
    "gpt2: scores not scaled [bfloat16]": bug("gpt2", "attention_scale", dtype="bfloat16",
                                              score_scale=lambda d, hidden, s: 1.0),
    "qwen3: q/k norm over all heads at once [bfloat16]": bug("qwen3", "norm_variant", dtype="bfloat16",
                                                             norm=norm_over_all_heads),
    "qwen3: keys not rotated [bfloat16]": bug("qwen3", {"op_skipped", "wiring"}, dtype="bfloat16",
                                              rope_k=lambda x, c, s, rot: x),
    "mistral: layer 1 skipped [bfloat16]": bug("mistral", {"structure", "wiring"}, dtype="bfloat16",
                                               block_order=lambda n: [0, *range(2, n)]),
    "llama3: attention branch doubled [bfloat16]": bug("llama3", "residual_scale", dtype="bfloat16",
                                                       attn_residual=lambda x, n, b: x + 2 * b),
    "llama3: RMSNorm centres its rows [bfloat16]": bug("llama3", "norm_variant", dtype="bfloat16", norm=norm_centred),
    "llama: keys' heads reversed after RoPE": bug("llama", "layout_permuted", rope_k=lambda x, c, s, rot: (
        x * c + rot(x) * s).flip(1)),
    "gemma3: scores scaled by 1/query_pre_attn_scalar": bug("gemma3", "attention_scale", score_scale=lambda d, hidden, s: 1 / 16),
    "qwen3: a window of 4 in a model without one": bug("qwen3", "sliding_window", visible=window_changed(0, everywhere=4)),
    "mistral: the window on both sides, no causal mask": bug("mistral", "causal_mask", visible=lambda n, w: (
        torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() < w),
})

# The same mistakes in bfloat16, held to tolerances calibrated on the reference run in bfloat16.
BFLOAT16 = ("llama: rotate_half returns cat(x2, -x1)", "llama3: theta 10000 where the config says 500000",
            "llama3: scaling not applied", "llama: scores scaled by 1/d instead of 1/sqrt(d)",
            "llama: causal mask off by one (sees the next token)", "mistral: window one key too wide",
            "gemma3: norm scales by weight, not 1 + weight", "llama: MLP gate and up exchanged",
            "llama: blocks 0 and 1 run in the wrong order", "qwen3: layer 1 run twice",
            "llama: KV heads tiled instead of interleaved", "gemma3: heads merged without a transpose",
            "llama: norm scales by 1 + weight", "qwen3: MLP output added to the block input")
BUGS.update({f"{name} [bfloat16]": dataclasses.replace(BUGS[name], dtype="bfloat16") for name in BFLOAT16})


# Precision, not a mistake: the comparison may fail, and no cause may be named for it.
ROUNDING: dict[str, Bug] = {
    "llama: softmax taken in float16": bug("llama", set(), softmax=lambda s: torch.softmax(s.half(), -1).float()),
    "llama: weights rounded to bfloat16": bug("llama", set(), weight=lambda name, t, _: t.bfloat16().float()),
    "qwen3: RoPE tables in bfloat16": bug("qwen3", set(), rope=lambda x, c, s_, rot: x * c.bfloat16().float()
                                          + rot(x) * s_.bfloat16().float()),
}


class Families:
    """Each family's model, port and reference traces, built on first use."""

    def __init__(self, directory_factory: Callable[[str], object]) -> None:
        self.directory_factory = directory_factory

    @functools.cache
    def model(self, family: str):
        import tiny_models

        base, overrides, qk_scale = FAMILIES[family]
        with port.one_thread():
            model = tiny_models.build(base, **overrides)
        if qk_scale != 1.0:
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name.endswith(("q_proj.weight", "k_proj.weight")):
                        parameter.mul_(math.sqrt(qk_scale))
        directory = self.directory_factory(family)
        model.save_pretrained(directory)
        return model, directory

    @functools.cache
    def port(self, family: str) -> port.Port:
        return port.Port(self.model(family)[0])

    @functools.cache
    def reference(self, family: str, dtype: str = "float32", calibrated: bool | None = None):
        """(reference trace, CompareConfig): float32 with default tolerances; or (for bfloat16, or when
        `calibrated`) float64 with tolerances calibrated by the reference model run in `dtype`."""
        from parity.capture.hf.model import capture_hf
        from parity.core.calibrate import noise_floors
        from parity.core.compare import CompareConfig

        directory = self.model(family)[1]
        with port.one_thread():
            if not (dtype != "float32" if calibrated is None else calibrated):
                return capture_hf(directory, tokens=TOKENS), CompareConfig()
            reference = capture_hf(directory, tokens=TOKENS, dtype="float64")
            lowp = capture_hf(directory, tokens=TOKENS, dtype=dtype)
        return reference, CompareConfig(noise=noise_floors(reference, lowp), noise_dtype=dtype)

    def compared(self, family: str, ops: Ops = OPS, *, layer: int | None = None, dtype: str = "float32",
                 calibrated: bool | None = None, unrecorded: frozenset = frozenset()):
        """(reference, candidate, comparison) of the port with `ops` against the family's reference; the port
        records no checkpoint of the kinds `unrecorded` (q_rope, k_rope, attn_probs: RoPE and softmax inline)."""
        from parity.core.compare import compare
        from parity.core.names import parse
        from parity.core.trace import make_trace

        reference, config = self.reference(family, dtype, calibrated)
        tensors = self.port(family).forward(TOKENS, ops, layer=layer, dtype=getattr(torch, dtype))
        tensors = {name: tensor for name, tensor in tensors.items()
                   if parse(name) is None or parse(name).kind not in unrecorded}
        candidate = make_trace(tensors, {"dtype": dtype})
        return reference, candidate, compare(reference, candidate, config=config)

    def diagnosed(self, family: str, ops: Ops = OPS, *, layer: int | None = None, dtype: str = "float32",
                  calibrated: bool | None = None, unrecorded: frozenset = frozenset()):
        """The diagnosed comparison of the port with `ops` against the family's reference."""
        from parity.diagnose import diagnose

        reference, candidate, comparison = self.compared(family, ops, layer=layer, dtype=dtype, calibrated=calibrated,
                                                         unrecorded=unrecorded)
        return diagnose(comparison, reference, candidate)


@functools.cache
def families() -> Families:
    """One Families for the test session (shared by the test modules), its model directories removed at exit."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="parity-planted-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return Families(lambda family: root / family)
