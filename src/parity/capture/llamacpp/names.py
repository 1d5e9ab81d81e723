"""Which node of llama.cpp's compute graph is which canonical checkpoint, per architecture.

Each family's graph is built in llama.cpp's `src/models/<arch>.cpp`, which names
nodes with `cb(cur, "attn_norm", il)` (`attn_norm-3` in the graph) and leaves
some unnamed. A graph name is reused for successive steps (`Qcur-0` is the
projection, then its reshape, then RoPE), so a row may also name the ops it
takes. Rows are tried in order and the first match decides, so an
architecture's own rows come before the shared ones; a row whose canonical
name is None means "not this one". When several nodes match one canonical
name, the last in graph order wins (`Qcur-0` after its bias add rather than the
bare matmul).

A name written with `{L}` carries no layer index in the graph (Gemma 2 and
OLMo 2 call `cb(cur, "ffn_post_norm", -1)`): it belongs to the layer of the
last indexed node before it.

Three checkpoints are unnamed in most graphs and are found by structure instead
(see `LlamaCppRunner`): the output projection is the matmul that consumes
`kqv_out-N` (plus its bias add), the attention residual is the add that
consumes that projection, and the output head's own result (`lm_head_out`,
before Gemma's soft-capping or Granite's scaling) is an unnamed matmul that
consumes `result_norm`.
"""

from __future__ import annotations

import re

from parity.core.names import LLAMACPP_GRAPH_NAMES, parse

Row = tuple[str, frozenset[str] | None, str | None]
_PROJECTION = frozenset({"MUL_MAT", "ADD", "VIEW"})   # VIEW: a slice of a fused QKV projection

SHARED: tuple[Row, ...] = (
    ("wqkv-{i}", None, "layers.{i}.qkv"), ("wqkv_b-{i}", None, "layers.{i}.qkv"),
    ("Qcur-{i}", _PROJECTION, "layers.{i}.q"),
    ("Kcur-{i}", _PROJECTION, "layers.{i}.k"),
    ("Vcur-{i}", _PROJECTION, "layers.{i}.v"),
    ("attn_post_norm-{i}", None, "layers.{i}.attn_post_norm"),
    ("sa_out-{i}", None, "layers.{i}.resid_mid"),               # Gemma's name for the attention residual
    ("ffn_geglu-{i}", None, "layers.{i}.mlp_act"),
    ("ffn_gelu-{i}", None, "layers.{i}.mlp_act"),
    ("ffn_moe_logits-{i}", None, "layers.{i}.moe_router_logits"),
    ("ffn_moe_topk-{i}", None, "layers.{i}.moe_experts"),                  # I32 (T, k), in slot order
    # the chosen experts' weights, each step after the first in place of the one before: the last is final
    ("ffn_moe_weights-{i}", None, "layers.{i}.moe_weights"),
    ("ffn_moe_weights_softmax-{i}", None, "layers.{i}.moe_weights"),
    ("ffn_moe_weights_norm-{i}", None, "layers.{i}.moe_weights"),
    ("ffn_moe_weights_scaled-{i}", None, "layers.{i}.moe_weights"),
    ("ffn_moe_out-{i}", None, "layers.{i}.mlp_out"),
    ("ffn_shexp-{i}", None, "layers.{i}.moe_shared"),
    ("ffn_post_norm-{i}", None, "layers.{i}.mlp_post_norm"),
    ("ffn_post_norm", None, "layers.{L}.mlp_post_norm"),
) + LLAMACPP_GRAPH_NAMES

_GEMMA = (("inp_scaled", None, "embed"), ("embd", None, "embed_tokens"))
# What differs from the shared rows, per GGUF `general.architecture`.
ARCH_ROWS: dict[str, tuple[Row, ...]] = {
    # GPT-2: token + position embeddings are `inpL`; one input projection (with its bias).
    "gpt2": (
        ("inpL", None, "embed"), ("embd", None, None), ("inp_embd", None, None),
        ("ffn_up-{i}", None, "layers.{i}.mlp_fc"), ("ffn_up_b-{i}", None, "layers.{i}.mlp_fc"),
    ),
    # Gemma scales the embedding by sqrt(D): `embd` is the lookup, `inp_scaled` enters layer 0.
    "gemma": _GEMMA, "gemma2": _GEMMA, "gemma3": _GEMMA,
    # Granite's `embd` is the lookup times its multiplier; the lookup is the graph's first node, unnamed.
    "granite": (("node_0", frozenset({"GET_ROWS"}), "embed_tokens"),),
    # Phi-3 scales q after RoPE under the same name (only the ROPE node is q_rope), and fuses gate and
    # up into `ffn_up` (split inside SWIGLU).
    "phi3": (("Qcur-{i}", frozenset({"SCALE"}), None), ("ffn_up-{i}", None, "layers.{i}.mlp_gate_up")),
    # Qwen2-MoE: the routed experts' sum is `ffn_moe_out`; `ffn_out` adds the gated shared expert.
    # The shared expert's own gate/up/act reuse the dense MLP's names: not the block's mlp_*.
    "qwen2moe": (("ffn_moe_out-{i}", None, "layers.{i}.moe_routed"),),
}


def graph_rows(arch: str | None) -> tuple[Row, ...]:
    return ARCH_ROWS.get(arch or "", ()) + SHARED


class GraphNames:
    """Maps graph node names (with their op) to canonical names for one architecture."""

    def __init__(self, arch: str | None) -> None:
        self.arch = arch
        self._patterns = []
        for graph_name, ops, canonical in graph_rows(arch):
            regex = re.escape(graph_name).replace(r"\{i\}", r"(?P<i>\d+)")
            self._patterns.append((re.compile(regex + r"\Z"), ops, canonical))

    def __repr__(self) -> str:
        return f"<GraphNames {self.arch}: {len(self._patterns)} rows>"

    def canonical(self, name: str, op: str, layer: int | None) -> str | None:
        """The canonical name of a node, None when it is none (or its layer is unknown)."""
        for pattern, ops, canonical in self._patterns:
            match = pattern.match(name)
            if not match or (ops is not None and op not in ops):
                continue
            if canonical is None:
                return None
            if "{i}" in canonical:
                canonical = canonical.replace("{i}", match.group("i"))
            if "{L}" in canonical:
                if layer is None:
                    return None
                canonical = canonical.replace("{L}", str(layer))
            return canonical if parse(canonical) is not None else None
        return None


_LAYER_SUFFIX = re.compile(r"-(\d+)\Z")


def layer_of(name: str) -> int | None:
    """The layer index a graph name carries (`attn_norm-3` -> 3)."""
    match = _LAYER_SUFFIX.search(name)
    return int(match.group(1)) if match else None
