"""Canonical checkpoint names, their data-flow order, and the per-family mappings.

A checkpoint is one named intermediate tensor of a decoder-only forward pass.
Global checkpoints sit before and after the blocks; per-layer ones are written
`layers.{i}.<kind>`. Everything that orders, parses or maps a name lives here,
so that a new family or a new runtime touches one table.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass

# Per-layer kinds in the order data flows through a block. Each family produces
# a subset (GPT-2 has no RoPE and a plain MLP; Llama has no q_norm; only Gemma 2/3
# and OLMo 2 norm the branches' outputs; only MoE blocks route). A fused
# projection's whole output sorts after its parts, so that a divergence is named
# at the part that differs (k, not qkv).
LAYER_KINDS: tuple[str, ...] = (
    "attn_norm",         # input norm of the block                       [T, D]
    "q",                 # q projection, before any norm or RoPE          [T, H*hd]
    "k",                 #                                                [T, Hkv*hd]
    "v",                 #                                                [T, Hkv*hd]
    "qkv",               # a fused q|k|v projection, whole (Phi-3, GPT-2) [T, (H+2Hkv)*hd]
    "q_norm",            # per-head RMSNorm on q (Qwen3, Gemma 3, OLMo 2)  [T, H*hd]
    "k_norm",            #                                                [T, Hkv*hd]
    "v_norm",            # per-head norm on v (Gemma 4): what the attention weighs [T, Hkv*hd]
    "q_rope",            # after rotary embedding (partial: the rest as is) [T, H*hd]
    "k_rope",            #                                                [T, Hkv*hd]
    "attn_probs",        # softmax attention probabilities                [H, T, S]
    "attn_ctx",          # attention output before the output projection  [T, H*hd]
    "attn_out",          # after the output projection                    [T, D]
    "attn_post_norm",    # norm of the attention branch's output (Gemma 2/3, OLMo 2) [T, D]
    "resid_mid",         # hidden state after the attention residual      [T, D]
    "mlp_norm",          # the MLP's input norm                           [T, D]
    "moe_router_logits", # MoE: the router's logits                       [T, E]
    "moe_experts",       # MoE: the experts chosen, ids ascending (int)   [T, k]
    "moe_weights",       # MoE: each expert's routing weight, 0 if unchosen [T, E]
    "mlp_gate",          # gated MLPs: gate projection                    [T, F]
    "mlp_up",            # gated MLPs: up projection                      [T, F]
    "mlp_gate_up",       # a fused gate|up projection, whole (Phi-3)      [T, 2F]
    "mlp_fc",            # GPT-2: the single input projection             [T, F]
    "mlp_act",           # input of the down projection                   [T, F]
    "moe_routed",        # MoE: the routed experts' weighted sum          [T, D]
    "moe_shared",        # MoE: the shared expert's output, before its gate [T, D]
    "mlp_out",           # MLP (or MoE block) output                      [T, D]
    "mlp_post_norm",     # norm of the MLP branch's output (Gemma 2/3, OLMo 2) [T, D]
    "out",               # block output                                   [T, D]
)
# embed_tokens: the table lookup alone, recorded where the model scales it
# (Gemma: x sqrt(D); Granite: x embedding_multiplier); embed is what enters layer 0.
# pos_embed: learned position rows (GPT-2) [T, D], added to the lookup to make embed.
BEFORE_LAYERS: tuple[str, ...] = ("pos_embed", "embed_tokens", "embed")
# lm_head_out: the output head's own result, recorded where the model then caps or
# scales it (Gemma 2/3: final logit soft-capping; Granite: / logits_scaling).
AFTER_LAYERS: tuple[str, ...] = ("final_norm", "lm_head_out", "logits")
GLOBAL_KINDS = BEFORE_LAYERS + AFTER_LAYERS

# Kinds whose per-token tensors carry heads, flattened to [T, heads*head_dim].
HEAD_KINDS = frozenset({"q", "k", "v", "q_norm", "k_norm", "v_norm", "q_rope", "k_rope", "attn_ctx"})
# The keys of a layer's attention, from the last made to the first: what a decode step read from its cache is
# held to these (diagnose/decode_causes.py).
KEY_KINDS: tuple[str, ...] = ("k_rope", "k_norm", "k")
# Kinds that hold integer ids, compared as agreement rather than by rel_l2.
INDEX_KINDS = frozenset({"moe_experts"})

# The key of `architecture.layers[i]` (trace metadata) for a layer mapped by its output alone: why its inner
# checkpoints are not (capture/hf/structure.py writes it, core/compare.py notes it).
OUTPUTS_ONLY = "outputs_only"

# A module with no canonical role is still recorded, as `raw.<module path>`.
RAW_PREFIX = "raw."


def is_raw(name: str) -> bool:
    return name.startswith(RAW_PREFIX)


# What feeds each kind, as groups of alternatives (the first present in a group
# is used; "<in>" is the block's input: embed, or the previous layer's out).
# Parallel blocks (attention and MLP on the same input) have no resid_mid: their
# MLP reads the block input's norm, and out adds both branches to the input.
FEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "attn_norm": (("<in>",),),
    "qkv": (("attn_norm", "<in>"),),
    "q": (("attn_norm", "<in>"),), "k": (("attn_norm", "<in>"),), "v": (("attn_norm", "<in>"),),
    "q_norm": (("q",),), "k_norm": (("k",),), "v_norm": (("v",),),
    "q_rope": (("q_norm", "q"),), "k_rope": (("k_norm", "k"),),
    "attn_probs": (("q_rope", "q_norm", "q"), ("k_rope", "k_norm", "k")),
    "attn_ctx": (("attn_probs",), ("v_norm", "v")),
    "attn_out": (("attn_ctx",),),
    "attn_post_norm": (("attn_out",),),
    "resid_mid": (("<in>",), ("attn_post_norm", "attn_out")),
    "mlp_norm": (("resid_mid", "<in>"),),
    "moe_router_logits": (("mlp_norm", "resid_mid", "attn_norm"),),
    "moe_experts": (("moe_router_logits",),),
    "moe_weights": (("moe_router_logits",),),
    "mlp_gate_up": (("mlp_norm", "resid_mid", "attn_norm"),),
    "mlp_gate": (("mlp_norm", "resid_mid", "attn_norm"),),
    "mlp_up": (("mlp_norm", "resid_mid", "attn_norm"),),
    "mlp_fc": (("mlp_norm", "resid_mid", "attn_norm"),),
    "mlp_act": (("mlp_gate", "mlp_fc"), ("mlp_up",)),
    "moe_routed": (("moe_weights",), ("mlp_norm", "resid_mid")),
    "moe_shared": (("mlp_norm", "resid_mid"),),
    "mlp_out": (("mlp_act", "moe_routed", "moe_weights"), ("moe_shared",)),
    "mlp_post_norm": (("mlp_out",),),
    "out": (("resid_mid", "<in>"), ("mlp_post_norm", "mlp_out"), ("attn_post_norm", "attn_out")),
}

_LAYER_NAME = re.compile(r"^layers\.(\d+)\.([a-z_]+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint name: `layers.7.mlp_act` -> layer 7, kind 'mlp_act'."""

    name: str
    kind: str
    layer: int | None = None

    def __repr__(self) -> str:
        return f"<Checkpoint {self.name}>"

    @property
    def token_axis(self) -> int:
        """The axis that indexes token positions: attn_probs is [H, T, S]."""
        return 1 if self.kind == "attn_probs" else 0


def token_axis(name: str) -> int:
    """The axis of a checkpoint's tensor that indexes token positions (its rows): 1 for attention probabilities
    (H, T, S), else 0; 0 for a name that is not canonical."""
    checkpoint = parse(name)
    return checkpoint.token_axis if checkpoint is not None else 0


@functools.lru_cache(maxsize=1 << 16)
def parse(name: str) -> Checkpoint | None:
    """Parse a canonical name; None for a name that is not canonical. (Cached: a comparison
    parses each name several times, and a Checkpoint is immutable.)"""
    if name in GLOBAL_KINDS:
        return Checkpoint(name=name, kind=name)
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in LAYER_KINDS:
        return Checkpoint(name=name, kind=match.group(2), layer=int(match.group(1)))
    return None


def is_canonical(name: str) -> bool:
    return parse(name) is not None


# A trace may also carry the parameters of the op that produces a checkpoint:
# `layers.3.q.weight`, `layers.3.q.bias` (as the module stores them).
WEIGHT_SUFFIXES = (".weight", ".bias")


def weight_of(name: str) -> tuple[str, str] | None:
    """('layers.3.q', 'weight') for a parameter name; None for anything else."""
    for suffix in WEIGHT_SUFFIXES:
        if name.endswith(suffix) and parse(name[: -len(suffix)]) is not None:
            return name[: -len(suffix)], suffix[1:]
    return None


def order_key(name: str) -> tuple:
    """Sort key for data-flow order: embed, layer 0 .. L-1 in block order, final_norm, logits.

    A parameter sorts right after its checkpoint. Names that are not canonical sort
    last, alphabetically, so that nothing is dropped.
    """
    weight = weight_of(name)
    if weight is not None:
        return order_key(weight[0])[:3] + (name,)
    checkpoint = parse(name)
    if checkpoint is None:
        return (3, 0, 0, _natural(name))
    if checkpoint.kind in BEFORE_LAYERS:
        return (0, 0, BEFORE_LAYERS.index(checkpoint.kind), name)
    if checkpoint.kind in AFTER_LAYERS:
        return (2, 0, AFTER_LAYERS.index(checkpoint.kind), name)
    return (1, checkpoint.layer, LAYER_KINDS.index(checkpoint.kind), name)


def _natural(name: str) -> tuple:
    """`raw.model.layers.10.mlp` after `raw.model.layers.2.mlp`."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def in_flow_order(names) -> list[str]:
    return sorted(set(names), key=order_key)


def inputs_of(name: str, available) -> list[str]:
    """The checkpoints among `available` that feed `name`, by the FEEDS table."""
    checkpoint = parse(name)
    if checkpoint is None or checkpoint.kind in ("pos_embed", "embed_tokens"):
        return []
    available = set(available)
    if checkpoint.kind == "embed":
        return [name for name in ("embed_tokens", "pos_embed") if name in available]
    if checkpoint.kind in AFTER_LAYERS:
        if checkpoint.kind == "logits":
            return [name for name in ("lm_head_out", "final_norm") if name in available][:1]
        if checkpoint.kind == "lm_head_out":
            return ["final_norm"] if "final_norm" in available else []
        layers = [c.layer for c in map(parse, available) if c is not None and c.kind == "out"]
        return [f"layers.{max(layers)}.out"] if layers else []
    block_input = "embed" if checkpoint.layer == 0 else f"layers.{checkpoint.layer - 1}.out"
    found = []
    for group in FEEDS[checkpoint.kind]:
        for kind in group:
            candidate = block_input if kind == "<in>" else f"layers.{checkpoint.layer}.{kind}"
            if candidate in available:
                found.append(candidate)
                break
    return found


def select(names, patterns: str | None) -> list[str]:
    """Names matching any of the comma-separated globs (`layers.*.q,logits`) and none of those written with a
    leading `!` (`*,!*.attn_probs`: everything but the attention probabilities); all if None."""
    if not patterns:
        return list(names)
    globs = [pattern.strip() for pattern in patterns.split(",") if pattern.strip()]
    included = [glob for glob in globs if not glob.startswith("!")]
    excluded = [glob[1:] for glob in globs if glob.startswith("!")]
    return [name for name in names
            if (not included or any(fnmatch.fnmatchcase(name, glob) for glob in included))
            and not any(fnmatch.fnmatchcase(name, glob) for glob in excluded)]


# --- Where each family's checkpoints come from --------------------------------
#
# A tap reads one module's output (or its first positional input) and files it
# under one canonical name, or under several when the output is a fused
# projection split evenly along its last axis. `{i}` stands for the layer index.
# An "attention" tap files (query after RoPE, key after RoPE, probabilities) of
# an HF attention module; an empty name skips that part.
# The q_rope, k_rope and attn_probs checkpoints of HF models are recorded from
# transformers' own eager attention function instead (see capture/hf/attention.py),
# because RoPE and softmax are functions, not modules.


@dataclass(frozen=True)
class Tap:
    module: str                 # module path pattern, e.g. "model.layers.{i}.mlp.down_proj"
    names: tuple[str, ...]      # canonical name(s), e.g. ("layers.{i}.mlp_act",)
    io: str = "output"          # see TAP_IOS
    sizes: tuple[int, ...] = () # widths of a fused output's parts, when they differ (q|k|v with GQA)

    def __repr__(self) -> str:
        return f"<Tap {self.module}:{self.io} -> {','.join(self.names)}>"


# What a tap reads from its module.
TAP_IOS: dict[str, str] = {
    "output": "the output (a tuple's first tensor)",
    "input": "the first positional input (or the hidden_states keyword)",
    "attention": "query and key after RoPE, and the probabilities, from transformers' attention function",
    "split": "a fused output: whole under the first name, its parts (widths `sizes`, else equal) under the others",
    "router": "an MoE router's (logits, top-k weights, top-k ids): names router_logits, experts, weights",
    "lookup": "an embedding's table lookup weight[ids], before any scaling its forward applies",
    "heads": "a per-head output, token-major (B, T, H, hd) or head-major (B, H, T, hd), recorded token-major; "
             "when H == T, the layout is read off the projection recorded under the second name",
    "weights": "nothing it computes: its own parameters, filed under the name's (recorded only when weights are), "
               "for a checkpoint made by a module whose weights another holds (an MLP's output, its down projection's)",
}


def _taps(*rows: tuple) -> tuple[Tap, ...]:
    taps = []
    for module, names, *io in rows:
        names = (names,) if isinstance(names, str) else tuple(names)
        taps.append(Tap(module=module, names=names, io=io[0] if io else "output"))
    return tuple(taps)


_LLAMA_LAYER = "model.layers.{i}"
LLAMA_TAPS = _taps(
    ("model.embed_tokens", "embed"),
    (f"{_LLAMA_LAYER}.input_layernorm", "layers.{i}.attn_norm"),
    (f"{_LLAMA_LAYER}.self_attn.q_proj", "layers.{i}.q"),
    (f"{_LLAMA_LAYER}.self_attn.k_proj", "layers.{i}.k"),
    (f"{_LLAMA_LAYER}.self_attn.v_proj", "layers.{i}.v"),
    (f"{_LLAMA_LAYER}.self_attn.q_norm", "layers.{i}.q_norm"),
    (f"{_LLAMA_LAYER}.self_attn.k_norm", "layers.{i}.k_norm"),
    (f"{_LLAMA_LAYER}.self_attn", ("layers.{i}.q_rope", "layers.{i}.k_rope", "layers.{i}.attn_probs"), "attention"),
    (f"{_LLAMA_LAYER}.self_attn.o_proj", "layers.{i}.attn_ctx", "input"),
    (f"{_LLAMA_LAYER}.self_attn.o_proj", "layers.{i}.attn_out"),
    (f"{_LLAMA_LAYER}.post_attention_layernorm", "layers.{i}.resid_mid", "input"),
    (f"{_LLAMA_LAYER}.post_attention_layernorm", "layers.{i}.mlp_norm"),
    (f"{_LLAMA_LAYER}.mlp.gate_proj", "layers.{i}.mlp_gate"),
    (f"{_LLAMA_LAYER}.mlp.up_proj", "layers.{i}.mlp_up"),
    (f"{_LLAMA_LAYER}.mlp.down_proj", "layers.{i}.mlp_act", "input"),
    (f"{_LLAMA_LAYER}.mlp", "layers.{i}.mlp_out"),
    (_LLAMA_LAYER, "layers.{i}.out"),
    ("model.norm", "final_norm"),
    ("lm_head", "logits"),
)

# GPT-2 in transformers and nanoGPT share module names: `transformer.drop` is the
# sum of token and position embeddings (dropout is the identity in eval mode).
_GPT2_LAYER = "transformer.h.{i}"
GPT2_TAPS = _taps(
    ("transformer.wpe", "pos_embed"),
    ("transformer.drop", "embed"),
    (f"{_GPT2_LAYER}.ln_1", "layers.{i}.attn_norm"),
    (f"{_GPT2_LAYER}.attn.c_attn", ("layers.{i}.qkv", "layers.{i}.q", "layers.{i}.k", "layers.{i}.v"), "split"),
    (f"{_GPT2_LAYER}.attn", ("", "", "layers.{i}.attn_probs"), "attention"),
    (f"{_GPT2_LAYER}.attn.c_proj", "layers.{i}.attn_ctx", "input"),
    (f"{_GPT2_LAYER}.attn.c_proj", "layers.{i}.attn_out"),
    (f"{_GPT2_LAYER}.ln_2", "layers.{i}.resid_mid", "input"),
    (f"{_GPT2_LAYER}.ln_2", "layers.{i}.mlp_norm"),
    (f"{_GPT2_LAYER}.mlp.c_fc", "layers.{i}.mlp_fc"),
    (f"{_GPT2_LAYER}.mlp.c_proj", "layers.{i}.mlp_act", "input"),
    (f"{_GPT2_LAYER}.mlp", "layers.{i}.mlp_out"),
    (_GPT2_LAYER, "layers.{i}.out"),
    ("transformer.ln_f", "final_norm"),
    ("lm_head", "logits"),
)

# Built-in mappings by name, for trace_module(taps=...). transformers models are
# mapped from their structure (capture/hf/structure.py); "hf" is the Llama layout.
FAMILY_TAPS: dict[str, tuple[Tap, ...]] = {
    "llama": LLAMA_TAPS,
    "qwen2": LLAMA_TAPS,
    "qwen3": LLAMA_TAPS,
    "gpt2": GPT2_TAPS,
    "hf": LLAMA_TAPS,
    "nanogpt": GPT2_TAPS,
}

# Per model_type corrections to the mapping found from a transformers model's
# structure, merged over it: an override replaces the taps of the same module and
# io (`{i}` matches any layer); one with no names keeps the module out of the
# trace, raw capture included. None is needed by the families tested today.
HF_OVERRIDES: dict[str, tuple[Tap, ...]] = {}

# transformers' config.model_type -> family, for the families mapped by hand
# before the mapping was found from the structure (kept for callers that name them).
MODEL_TYPE_FAMILY: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gpt2": "gpt2",
}


# llama.cpp's compute graph: (tensor name pattern, ops) -> canonical name. The
# graph reuses a name for successive steps (Qcur-N is the q projection, then
# its reshape, then RoPE applied), so the op tells them apart; when several
# tensors match one row, the last in graph order wins (Qcur-N after its bias
# add rather than the bare matmul). None as ops matches any op.
LLAMACPP_GRAPH_NAMES: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("embd", None, "embed"),
    ("inp_embd", None, "embed"),
    ("attn_norm-{i}", None, "layers.{i}.attn_norm"),
    ("Qcur-{i}", frozenset({"MUL_MAT", "ADD"}), "layers.{i}.q"),
    ("Kcur-{i}", frozenset({"MUL_MAT", "ADD"}), "layers.{i}.k"),
    ("Vcur-{i}", frozenset({"MUL_MAT", "ADD"}), "layers.{i}.v"),
    ("Qcur_normed-{i}", None, "layers.{i}.q_norm"),
    ("Kcur_normed-{i}", None, "layers.{i}.k_norm"),
    ("Qcur-{i}", frozenset({"ROPE"}), "layers.{i}.q_rope"),
    ("Kcur-{i}", frozenset({"ROPE"}), "layers.{i}.k_rope"),
    ("kq_soft_max-{i}", None, "layers.{i}.attn_probs"),
    ("kqv_out-{i}", None, "layers.{i}.attn_ctx"),
    ("attn_out-{i}", None, "layers.{i}.attn_out"),
    ("ffn_inp-{i}", None, "layers.{i}.resid_mid"),
    ("ffn_norm-{i}", None, "layers.{i}.mlp_norm"),
    ("ffn_gate-{i}", None, "layers.{i}.mlp_gate"),
    ("ffn_up-{i}", None, "layers.{i}.mlp_up"),
    ("ffn_swiglu-{i}", None, "layers.{i}.mlp_act"),
    ("ffn_out-{i}", None, "layers.{i}.mlp_out"),
    ("l_out-{i}", None, "layers.{i}.out"),
    ("result_norm", None, "final_norm"),
    ("result_output", None, "logits"),
)
