"""Where each checkpoint of a transformers causal LM lives, found from its structure.

No table per family: the decoder layer list is the ModuleList with one entry per
layer; in each layer the attention and MLP modules, their projections and the
norms are told apart by their names (the vocabulary below covers Llama, Mistral,
Qwen2/3, Qwen2/3-MoE, Mixtral, OLMo 2, OLMoE, Gemma 1/2/3, Granite, Phi-3,
StableLM and GPT-2 in transformers, and the names ports use: Meta's and gpt-fast's,
torchtune's, LitGPT's, LLMs-from-scratch's), and a norm's role by the norms beside it. `HF_OVERRIDES`
in core/names.py corrects the result per model type. Works on the meta device,
so a model that cannot be mapped is refused before its weights are read:

    mapping = map_model(model)          # ModelMap: taps, per-layer attention facts
    mapping = map_config(config)        # the same, from a config, without weights
    taps = map_module(module)           # any PyTorch LM named in that vocabulary, no config
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parity.core.errors import CaptureError
from parity.core.names import HF_OVERRIDES, OUTPUTS_ONLY, Tap

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "att")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "ff")
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_norm", "norm_f", "final_layer_norm")

# Children of an attention module, by role. A fused q|k|v is [q | k | v] along the
# output axis; NeoX's `query_key_value` interleaves heads and is left to raw capture.
ATTENTION_PARTS: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "query", "wq", "W_query"),
    "k": ("k_proj", "key", "wk", "W_key"),
    "v": ("v_proj", "value", "wv", "W_value"),
    "qkv": ("qkv_proj", "c_attn", "Wqkv", "wqkv", "qkv"),
    "o": ("o_proj", "out_proj", "c_proj", "dense", "wo", "output_proj", "proj"),
    "q_norm": ("q_norm", "q_layernorm"),
    "k_norm": ("k_norm", "k_layernorm"),
    "v_norm": ("v_norm",),
}
# Children of a dense MLP, by role. A fused gate|up is [gate | up].
MLP_PARTS: dict[str, tuple[str, ...]] = {
    "gate": ("gate_proj", "w1", "fc_1"),
    "up": ("up_proj", "w3", "fc_2"),
    "gate_up": ("gate_up_proj",),
    "fc": ("c_fc", "fc1", "fc_in", "dense_h_to_4h"),
    "down": ("down_proj", "w2", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "proj"),
}
ROUTER_NAMES = ("gate", "router")
SHARED_EXPERT_NAMES = ("shared_expert", "shared_experts")

# Norms of a decoder layer, by name. `post_attention_layernorm` is the MLP's input
# norm in Llama-style blocks, but the attention branch's output norm in blocks that
# also norm the MLP's output (Gemma 2/3, OLMo 2): see _norm_roles.
ATTN_NORM_NAMES = ("input_layernorm", "ln_1", "attention_norm", "ln_attn", "norm1", "attn_norm",
                   "self_attn_layer_norm", "sa_norm", "norm_1")
MLP_NORM_NAMES = ("pre_feedforward_layernorm", "ln_2", "ffn_norm", "norm2", "ln_mlp", "pre_mlp_layernorm",
                  "final_layer_norm", "mlp_norm", "norm_2")
ATTN_POST_NAMES = ("post_attn_norm", "post_attention_norm")
MLP_POST_NAMES = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffn_norm")
AMBIGUOUS_NORM = "post_attention_layernorm"


@dataclass(frozen=True)
class ModelMap:
    """The taps of one model, and what its attention does per layer (trace metadata)."""

    model_type: str
    taps: tuple[Tap, ...]
    architecture: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<ModelMap {self.model_type}: {len(self.taps)} taps>"


def map_config(config, *, where: str = "this model") -> ModelMap:
    """Build the model on the meta device (no memory, no weights) and map it."""
    import torch
    import transformers

    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise CaptureError(
            f"{where}: transformers has no causal LM for model type '{config.model_type}' ({str(error).splitlines()[0][:200]}); "
            "give a decoder-only language model"
        ) from error
    return map_model(model, where=where)


def map_model(model, *, where: str = "this model") -> ModelMap:
    """The taps of every checkpoint `model` has, or a CaptureError naming what is missing."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    readable_globally(model.config, config)
    model_type = model.config.model_type
    paths = {id(module): path for path, module in model.named_modules()}

    def refuse(what: str) -> CaptureError:
        return CaptureError(
            f"{where}: model type '{model_type}' has no checkpoint mapping: {what}; "
            "trace it with parity.trace_module and your own taps (docs/capture.md)"
        )

    layers_path, layers = _layer_list(model, config)
    if layers_path is None:
        raise refuse(f"no list of {_layer_count(config)} decoder layers found")
    taps: list[Tap] = []
    taps += _embedding_taps(model, config, paths, layers_path)
    has_rope = any("Rotary" in type(module).__name__ for module in model.modules())
    layer_facts = []
    for i, layer in enumerate(layers):
        try:
            layer_taps, facts = _layer_taps(f"{layers_path}.{i}", i, layer, config, has_rope)
        except _Unmapped as unmapped:   # a state-space mixer, or a block named otherwise: its output alone
            layer_taps, facts = [Tap(f"{layers_path}.{i}", (f"layers.{i}.out",))], {OUTPUTS_ONLY: str(unmapped)}
        taps += layer_taps
        layer_facts.append(facts)
    taps += _head_taps(model, config, paths, layers_path, refuse)
    taps = _merge(taps, HF_OVERRIDES.get(model_type, ()))
    architecture = {"layers": layer_facts, **_global_facts(model, config)}
    return ModelMap(model_type=model_type, taps=tuple(taps), architecture=architecture)


class _Unmapped(Exception):
    """A decoder layer whose inner checkpoints cannot be told apart by name; its message says why."""


def readable_globally(*configs) -> None:
    """Let a heterogeneous config (transformers 5.24: Gemma 4's head_dim per layer) be read as a whole, as the
    config of any model is: reading a per-layer attribute from it raises otherwise. What a layer does is read
    from its own modules (`_layer_facts`); the global value is only ever a default. Nothing the model computes
    reads it (its layers are built from `per_layer_config`)."""
    for config in configs:
        if getattr(config, "is_heterogeneous", False):
            config.allow_global_per_layer_attribute_access = True


def map_module(model, *, where: str = "this model", attention_ops: bool = False) -> tuple[Tap, ...]:
    """The taps of a PyTorch LM that is not a transformers model (a port: Meta's, gpt-fast's, torchtune's,
    LitGPT's naming, or one's own in the same vocabulary), or a CaptureError naming what is missing. Its blocks
    are the longest ModuleList of one type whose entries hold an attention module; without a config, the
    logits are the forward's return value and q/k after RoPE and the probabilities come only from Probes, or,
    with `attention_ops` (a program made by torch.export), from each attention module's attention op."""
    from types import SimpleNamespace

    def refuse(what: str) -> CaptureError:
        return CaptureError(f"{where}: {what}")

    layers_path, layers = _repeated_blocks(model)
    if layers_path is None:
        raise refuse("no list of decoder blocks found (a ModuleList of one type whose entries hold an attention "
                     f"module named one of {', '.join(ATTENTION_NAMES)})")
    taps = [Tap(f"{layers_path}.0", ("embed",), "input")]
    for i, layer in enumerate(layers):
        attention_name, attention = _child(layer, ATTENTION_NAMES)
        config = SimpleNamespace(**_attention_shape(attention))
        try:
            # an attention op's query and key are after RoPE wherever the model rotates them
            layer_taps, _ = _layer_taps(f"{layers_path}.{i}", i, layer, config,
                                        attention_ops and getattr(model, "rotates", True))
        except _Unmapped as unmapped:
            raise refuse(f"layer {i}: {unmapped}") from None
        mlp_name, mlp = _child(layer, MLP_NAMES)
        unsure = [f"{layers_path}.{i}.{name}." for name, module, parts in
                  ((attention_name, attention, ATTENTION_PARTS), (mlp_name, mlp, MLP_PARTS))
                  if module is not None and _unnamed_linears(module, parts)]
        taps += [tap for tap in layer_taps if (tap.io != "attention" or attention_ops)  # else transformers' only
                 and not any(tap.module.startswith(prefix) for prefix in unsure)]
        if mlp is not None and (f"{layers_path}.{i}.{mlp_name}." in unsure or not _named_parts(mlp, MLP_PARTS)):
            taps += _mlp_taps_by_shape(f"{layers_path}.{i}.{mlp_name}", i, mlp)
        if mlp is not None:
            taps += _router_beside_expert_lists(f"{layers_path}.{i}.{mlp_name}", i, mlp)
    parent = model.get_submodule(layers_path.rsplit(".", 1)[0]) if "." in layers_path else model
    name, norm = _child(parent, FINAL_NORM_NAMES)
    if norm is not None:
        prefix = layers_path.rsplit(".", 1)[0] + "." if "." in layers_path else ""
        taps.append(Tap(prefix + name, ("final_norm",)))
    return tuple(taps)


def _repeated_blocks(model):
    """(path, blocks) of the longest ModuleList (or Sequential: LLMs-from-scratch's GPT) of one module type whose
    entries hold an attention module."""
    import torch

    found = (None, [])
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) and len(module) > len(found[1]) \
                and len({type(block) for block in module}) == 1 and _child(module[0], ATTENTION_NAMES)[1] is not None:
            found = (path, list(module))
    return found


def _unnamed_linears(module, parts: dict[str, tuple[str, ...]]) -> bool:
    """Whether `module` has a linear child no role's name covers: its parts are then not told apart by name
    (LLMs-from-scratch's gated MLP is fc1, fc2, fc3, where fc1 and fc2 mean GPT-2's two), so none is tapped."""
    import torch

    named = {_child(module, names)[0] for names in parts.values()}
    return any(isinstance(child, torch.nn.Linear) and name not in named for name, child in module.named_children())


def _named_parts(module, parts: dict[str, tuple[str, ...]]) -> bool:
    return any(_child(module, names)[0] for names in parts.values())


def _mlp_taps_by_shape(prefix: str, i: int, mlp) -> list[Tap]:
    """The parts of an MLP that no name tells apart, told by their shapes: among its linears (in the order they
    are made, nested ones too: LLMs-from-scratch's `ff.layers`), the one from the hidden width is the up
    projection of a plain MLP (mlp_fc); of two, the gate is the one its forward's code activates
    (gate_in_source.py), and neither is tapped where the code does not say; the one back to the hidden width is
    the down projection, whose input is mlp_act. Nothing where the shapes do not say (a square MLP, or another
    count)."""
    import torch

    from parity.capture.hf.gate_in_source import gate_in_source

    linears = [(path, module) for path, module in mlp.named_modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        return []
    hidden = linears[0][1].in_features
    into = [path for path, module in linears if module.in_features == hidden and module.out_features != hidden]
    back = [path for path, module in linears if module.out_features == hidden and module.in_features != hidden]
    if len(back) != 1 or len(into) not in (1, 2) or len(into) + 1 != len(linears):
        return []
    taps = [Tap(f"{prefix}.{back[0]}", (f"layers.{i}.mlp_act",), "input"),
            Tap(f"{prefix}.{back[0]}", (f"layers.{i}.mlp_out",), "weights")]
    if len(into) == 1:
        taps.append(Tap(f"{prefix}.{into[0]}", (f"layers.{i}.mlp_fc",)))
    elif (gate := gate_in_source(mlp, tuple(into))) is not None:
        up = next(path for path in into if path != gate)
        taps += [Tap(f"{prefix}.{gate}", (f"layers.{i}.mlp_gate",)), Tap(f"{prefix}.{up}", (f"layers.{i}.mlp_up",))]
    return taps


def _router_beside_expert_lists(prefix: str, i: int, mlp) -> list[Tap]:
    """A port's MoE block without an `experts` module (LLMs-from-scratch's Qwen3-MoE: a `gate` linear to E logits
    beside lists of E experts' linears): its router's logits (the experts it chose are then taken from them where
    the reference chooses the top k of its own: core/experts_from_logits.py)."""
    import torch

    name, router = _child(mlp, ROUTER_NAMES)
    if not isinstance(router, torch.nn.Linear) or _child(mlp, ("experts",))[1] is not None:
        return []
    lists = [child for child in mlp.children()
             if isinstance(child, torch.nn.ModuleList) and len(child) == router.out_features]
    return [Tap(f"{prefix}.{name}", (f"layers.{i}.moe_router_logits",))] if lists else []


def _attention_shape(attention) -> dict[str, int]:
    """What an attention module (or the config it keeps) says of its heads, in a transformers config's names (a
    fused q|k|v is split by them; without them it is left whole)."""
    holders = (attention, getattr(attention, "config", None))       # LitGPT keeps them in its config

    def first(*names):
        return next((value for holder in holders for name in names
                     if isinstance(value := getattr(holder, name, None), int)), None)

    shape = {"num_attention_heads": first("num_heads", "n_heads", "n_head", "num_attention_heads", "n_local_heads"),
             "num_key_value_heads": first("num_kv_heads", "n_kv_heads", "num_key_value_heads", "n_local_kv_heads",
                                          "n_query_groups"),
             "head_dim": first("head_dim", "head_size", "hd")}
    return {key: value for key, value in shape.items() if value is not None}


def _layer_count(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def _layer_list(model, config):
    import torch

    count = _layer_count(config)
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and count:
            return path, list(module)
    return None, []


def _child(module, names: tuple[str, ...]):
    children = dict(module.named_children())
    for name in names:
        if children.get(name) is not None:
            return name, children[name]
    return None, None


def _is_norm(module) -> bool:
    return "Norm" in type(module).__name__


POSITION_EMBEDDING_NAMES = ("wpe", "embed_positions", "position_embeddings")


def _embedding_taps(model, config, paths, layers_path) -> list[Tap]:
    taps = [Tap(f"{layers_path}.0", ("embed",), "input")]  # what enters the first block: scaled, positions added
    embedding = model.get_input_embeddings()
    scaled = hasattr(embedding, "embed_scale") or getattr(config, "embedding_multiplier", 1.0) not in (None, 1.0)
    if embedding is not None and id(embedding) in paths:
        taps.append(Tap(paths[id(embedding)], ("embed_tokens",) if scaled else (), "lookup"))
        taps.append(Tap(paths[id(embedding)], ("embed",), "weights"))   # the table embed is read from
    base = model.get_submodule(layers_path.rsplit(".", 1)[0]) if "." in layers_path else model
    name, positions = _child(base, POSITION_EMBEDDING_NAMES)
    if positions is not None and id(positions) in paths and "Embedding" in type(positions).__name__:
        taps.append(Tap(paths[id(positions)], ("pos_embed",)))  # learned position rows (GPT-2's wpe)
    return taps


def _head_taps(model, config, paths, layers_path, refuse) -> list[Tap]:
    taps = []
    parent = model.get_submodule(layers_path.rsplit(".", 1)[0]) if "." in layers_path else model
    name, norm = _child(parent, FINAL_NORM_NAMES)
    if norm is not None:
        prefix = layers_path.rsplit(".", 1)[0] + "." if "." in layers_path else ""
        taps.append(Tap(prefix + name, ("final_norm",)))
    head = model.get_output_embeddings()
    if head is None or id(head) not in paths:
        raise refuse("no output head (get_output_embeddings() is None)")
    # Logits that the model caps or scales after the head come from its return value.
    post_processed = getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_scaling", 1.0) != 1.0
    taps.append(Tap(paths[id(head)], ("lm_head_out",) if post_processed else ("logits",)))
    return taps


def _norm_roles(layer) -> dict[str, str]:
    """name -> role of the layer's norm children; unknown names are left to raw capture."""
    norms = [name for name, child in layer.named_children() if child is not None and _is_norm(child)]
    has_mlp_post = any(name in MLP_POST_NAMES for name in norms)
    roles = {}
    for name in norms:
        if name in ATTN_NORM_NAMES:
            roles[name] = "attn_norm"
        elif name in MLP_NORM_NAMES:
            roles[name] = "mlp_norm"
        elif name in MLP_POST_NAMES:
            roles[name] = "mlp_post_norm"
        elif name in ATTN_POST_NAMES or (name == AMBIGUOUS_NORM and has_mlp_post):
            roles[name] = "attn_post_norm"
        elif name == AMBIGUOUS_NORM:
            roles[name] = "mlp_norm"
    return roles


def _layer_taps(prefix: str, i: int, layer, config, has_rope: bool) -> tuple[list[Tap], dict]:
    """Layer i's taps and facts, or _Unmapped saying why its parts cannot be told apart."""
    def tap(path: str, kinds, io: str = "output", sizes=()) -> Tap:
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        return Tap(f"{prefix}.{path}" if path else prefix, tuple(f"layers.{i}.{k}" if k else "" for k in kinds), io, sizes)

    attention_name, attention = _child(layer, ATTENTION_NAMES)
    inner_name, inner = _child(attention, ATTENTION_NAMES) if attention is not None else (None, None)
    if inner is not None and _child(attention, ATTENTION_PARTS["o"])[1] is None:   # GPT-Neo's attn.attention
        attention_name, attention = f"{attention_name}.{inner_name}", inner
    if attention is None:
        raise _Unmapped(f"no attention module among its children ({', '.join(n for n, _ in layer.named_children())})")
    mlp_name, mlp = _child(layer, MLP_NAMES)
    if mlp is None and _child(layer, MLP_PARTS["down"])[1] is not None:
        mlp_name, mlp = "", layer   # an MLP made of the layer's own linears (OPT's fc1, fc2)
    if mlp is None:
        raise _Unmapped(f"no MLP module among its children ({', '.join(n for n, _ in layer.named_children())})")
    if getattr(config, "do_layer_norm_before", True) is False:
        raise _Unmapped("its layers norm after the residual adds (do_layer_norm_before=False): the checkpoints of "
                     "a pre-norm block do not fit them")
    parallel = bool(getattr(layer, "use_parallel_residual", False) or getattr(config, "parallel_attn", False))
    taps = [tap("", "out")]
    roles = _norm_roles(layer)
    for name, role in roles.items():
        taps.append(tap(name, role))
    mlp_norm = next((name for name, role in roles.items() if role == "mlp_norm"), None)
    if not parallel:  # the attention residual is what enters the MLP's norm, or the MLP itself
        taps.append(tap(mlp_norm or mlp_name or _first_linear(mlp), "resid_mid", "input"))
    attention_taps, head_dim = _attention_taps(attention_name, attention, config, has_rope, tap)
    taps += attention_taps
    taps += _mlp_taps(mlp_name, mlp, tap)
    return taps, _layer_facts(i, attention, config, head_dim, parallel, mlp)


def _attention_taps(name: str, attention, config, has_rope: bool, tap):
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    head_dim = getattr(attention, "head_dim", None) or getattr(config, "head_dim", None) \
        or (hidden // heads if hidden and heads else None)
    taps = [tap(name, ("q_rope", "k_rope", "attn_probs") if has_rope else ("", "", "attn_probs"), "attention")]
    parts = {role: _child(attention, names)[0] for role, names in ATTENTION_PARTS.items()}
    for role in ("q", "k", "v"):
        if parts[role]:
            taps.append(tap(f"{name}.{parts[role]}", role))
    for role in ("q_norm", "k_norm", "v_norm"):  # Qwen3's (B, T, H, hd), Gemma 3's (B, H, T, hd), OLMo 2's (B, T, H*hd)
        if parts[role]:
            taps.append(tap(f"{name}.{parts[role]}", (role, role[0]), "heads"))
    width = output_width(getattr(attention, parts["qkv"])) if parts["qkv"] else None
    if width and not parts["q"] and heads and head_dim:   # a fused linear (not a module of its own making, ZAYA's)
        sizes = _qkv_sizes(width, heads * head_dim, kv_heads * head_dim)
        taps.append(tap(f"{name}.{parts['qkv']}", ("qkv", "q", "k", "v") if sizes else "qkv", "split", sizes))
    if not parts["o"]:
        raise _Unmapped(f"no output projection in its attention (one of {', '.join(ATTENTION_PARTS['o'])})")
    taps.append(tap(f"{name}.{parts['o']}", "attn_ctx", "input"))
    taps.append(tap(f"{name}.{parts['o']}", "attn_out"))
    return taps, head_dim


def output_width(module) -> int | None:
    """The output width of a linear layer: nn.Linear's out_features, transformers' Conv1D's nf (GPT-2)."""
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    return width if isinstance(width, int) else None


def _qkv_sizes(width: int, query: int, key_value: int) -> tuple[int, ...]:
    """The widths of q, k and v in a fused projection `width` wide: the config's, or where this layer's is
    otherwise (MiniMax's linear-attention layers give k and v every head), the query's and two equal halves of
    the rest; () where neither fits, and the fused output is recorded whole."""
    if width == query + 2 * key_value:
        return (query, key_value, key_value)
    rest = width - query
    return (query, rest // 2, rest // 2) if rest > 0 and rest % 2 == 0 else ()


def _mlp_taps(name: str, mlp, tap) -> list[Tap]:
    """The MLP's taps; `name` "" for an MLP made of the layer's own linears, whose output is the down
    projection's."""
    if not name:
        parts = {role: _child(mlp, names)[0] for role, names in MLP_PARTS.items()}
        return [tap(parts["down"], "mlp_out"), *_mlp_part_taps("", parts, tap)]
    taps = [tap(name, "mlp_out")]
    _, experts = _child(mlp, ("experts",))
    if experts is not None:  # a Mixture-of-Experts block
        router_name, _ = _child(mlp, ROUTER_NAMES)
        if router_name:
            taps.append(tap(f"{name}.{router_name}", ("moe_router_logits", "moe_experts", "moe_weights"), "router"))
        shared_name, _ = _child(mlp, SHARED_EXPERT_NAMES)
        if shared_name:
            taps.append(tap(f"{name}.{shared_name}", "moe_shared"))
        # Without a shared expert the routed sum is the block's output: recorded once, as mlp_out.
        taps.append(tap(f"{name}.experts", "moe_routed" if shared_name else ()))
        return taps
    parts = {role: _child(mlp, names)[0] for role, names in MLP_PARTS.items()}
    return taps + _mlp_part_taps(f"{name}.", parts, tap)


def _first_linear(layer) -> str:
    """The input projection of an MLP made of the layer's own linears: what its input is read from."""
    for role in ("gate", "up", "gate_up", "fc"):
        name, _ = _child(layer, MLP_PARTS[role])
        if name:
            return name
    return _child(layer, MLP_PARTS["down"])[0]


def _mlp_part_taps(prefix: str, parts: dict, tap) -> list[Tap]:
    taps = []
    for role, kind in (("gate", "mlp_gate"), ("up", "mlp_up"), ("fc", "mlp_fc")):
        if parts[role]:
            taps.append(tap(f"{prefix}{parts[role]}", kind))
    if parts["gate_up"]:
        taps.append(tap(f"{prefix}{parts['gate_up']}", ("mlp_gate_up", "mlp_gate", "mlp_up"), "split"))
    if parts["down"]:
        taps.append(tap(f"{prefix}{parts['down']}", "mlp_act", "input"))
        if prefix:   # the MLP's output is the down projection's: its weights are mlp_out's
            taps.append(tap(f"{prefix}{parts['down']}", "mlp_out", "weights"))
    return taps


def _layer_facts(i: int, attention, config, head_dim: int, parallel: bool, mlp) -> dict[str, Any]:
    """What a port must match that no tensor shows directly: window, soft-cap, rotary width."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types:
        window = window if layer_types[i] == "sliding_attention" else None
    rope = getattr(config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and layer_types and layer_types[i] in rope and isinstance(rope[layer_types[i]], dict):
        rope = rope[layer_types[i]]  # Gemma 3: one set of RoPE parameters per layer type
    factor = (rope.get("partial_rotary_factor") if isinstance(rope, dict) else None) \
        or getattr(config, "partial_rotary_factor", None) or 1.0
    facts = {
        "sliding_window": window,
        "attn_logit_softcapping": getattr(attention, "attn_logit_softcapping", None),
        "head_dim": head_dim,
        "rotary_dim": getattr(attention, "rotary_ndims", None) or (int(head_dim * factor) if head_dim else None),
        "parallel": parallel,
        "moe": any(name == "experts" for name, _ in mlp.named_children()),
    }
    scaling = getattr(attention, "scaling", None)
    if isinstance(scaling, (int, float)):
        facts["attn_scaling"] = float(scaling)
    return facts


def _global_facts(model, config) -> dict[str, Any]:
    embedding = model.get_input_embeddings()
    scale = getattr(embedding, "scalar_embed_scale", None) or getattr(config, "embedding_multiplier", None)
    return {
        "embed_scale": float(scale) if scale is not None else None,
        "final_logit_softcapping": getattr(config, "final_logit_softcapping", None),
        "logits_scaling": getattr(config, "logits_scaling", None),
        "residual_multiplier": getattr(config, "residual_multiplier", None),
    }


def _merge(taps: list[Tap], overrides) -> list[Tap]:
    """Overrides replace the taps of the same module and io; `{i}` in an override matches any layer."""
    import re

    merged = list(taps)
    for override in overrides:
        pattern = re.compile(re.escape(override.module).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")
        kept = []
        for tap in merged:
            match = pattern.match(tap.module)
            if match and tap.io == override.io:
                continue
            kept.append(tap)
        merged = kept + [override]
    return merged
