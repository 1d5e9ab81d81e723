"""A port of six families (Llama, Mistral with a window, Llama 3 RoPE scaling, Qwen3, Gemma 3, GPT-2)
written as one functional forward in PyTorch, every op of which can be replaced to plant a bug.

It records the canonical checkpoints as a capture by module hooks would: the first
call of a block wins (a block run twice keeps its first call), a block never run
records nothing. `Ops` holds the replaceable ops; a bug is `dataclasses.replace(OPS,
rotate_half=...)`, applied to every layer or to one (`forward(..., layer=1)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

TensorFn = Callable[..., torch.Tensor]


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def inv_freq(config, layer_type: str | None):
    """(inverse frequencies, attention factor) of the config's RoPE for a layer, as transformers computes them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    parameters = config.rope_parameters
    if layer_type is not None and layer_type in parameters:
        parameters = parameters[layer_type]
    rope_type = parameters.get("rope_type", "default")
    if rope_type == "default":
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 1.0 / parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim), 1.0
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")


def visible(count: int, window: int | None):
    """(T, S) True where query t sees key s: causal, and within the window on windowed layers."""
    distance = torch.arange(count)[:, None] - torch.arange(count)[None, :]
    shown = distance >= 0
    return shown & (distance < window) if window is not None else shown


def softmax(scores):
    return torch.softmax(scores.float(), dim=-1)


def norm(x, weight, bias, eps: float, kind: str):
    """RMSNorm ('rms'), Gemma's RMSNorm scaling by 1 + weight ('rms1p'), or LayerNorm ('layer'), in float32."""
    x32 = x.float()
    if kind == "layer":
        return F.layer_norm(x32, x.shape[-1:], weight.float(), bias.float(), eps).to(x.dtype)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if kind == "rms1p":
        return (normed * (1.0 + weight.float())).to(x.dtype)
    return weight * normed.to(x.dtype)


def activation(name: str):
    return {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[name]


@contextlib.contextmanager
def one_thread():
    """Torch on one thread: the tensors here are tiny, and threads would only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclasses.dataclass(frozen=True)
class Ops:
    """Every op a port writes for itself. The defaults compute what transformers computes."""

    embed_scale: Callable = lambda hidden, config_scale: config_scale           # Gemma: sqrt(hidden); else 1
    add_positions: Callable = lambda tokens, rows: tokens + rows                 # GPT-2's learned positions
    positions: Callable = lambda count: torch.arange(count)
    inv_freq: Callable = inv_freq
    rotate_half: TensorFn = rotate_half
    rope: Callable = None       # (x, cos, sin, rotate_half) -> x rotated; None: x cos + rotate_half(x) sin
    rope_k: Callable = None     # the same for k, where it differs
    score_scale: Callable = lambda head_dim, hidden, config_scale: config_scale
    visible: Callable = visible
    softmax: TensorFn = softmax
    expand_kv: Callable = lambda x, group: x.repeat_interleave(group, dim=1)      # (S, Hkv, hd) -> (S, H, hd)
    expand_v: Callable = None   # the same for v, where it differs
    attend: Callable = lambda probs, q, k, v: torch.einsum("hts,shd->thd", probs, v)  # (T, H, hd)
    merge_heads: Callable = lambda ctx: ctx.reshape(ctx.shape[0], -1)             # (T, H, hd) -> (T, H*hd)
    norm: Callable = norm
    norm_module: Callable = lambda where, index: (where, index)   # whose weights a norm reads
    skip_norms: frozenset = frozenset()                             # norms not applied ("q", "mlp_post", ...)
    norm_kind: Callable = lambda kind, where: kind                  # "rms", "rms1p" or "layer", per norm
    activation: Callable = activation
    gated: Callable = lambda act, gate, up: act(gate) * up
    attn_residual: Callable = lambda x, normed, branch: x + branch
    mlp_residual: Callable = lambda x, mid, branch: mid + branch
    block_order: Callable = lambda count: list(range(count))
    final_norm: bool = True
    weight: Callable = lambda name, tensor, weights: tensor         # a weight as the port loads it (all: `weights`)


OPS = Ops()


class Port:
    """One family's model, run functionally from a transformers model's weights."""

    def __init__(self, model) -> None:
        self.config = model.config
        self.weights = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        self.family = self.config.model_type
        self.gpt2 = self.family == "gpt2"
        self.gemma = self.family.startswith("gemma")

    def _w(self, name: str):
        for prefix in ("model.", "transformer.", ""):
            if prefix + name in self.weights:
                return self.weights[prefix + name]
        return None

    def forward(self, tokens: list[int], ops: Ops = OPS, *, layer: int | None = None,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The checkpoints of one pass over `tokens`; `ops` replace the defaults at `layer` (every layer when None)."""
        with one_thread(), torch.no_grad():
            return self._forward(tokens, ops, layer, dtype)

    def _forward(self, tokens: list[int], ops: Ops, layer: int | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        def at(index: int | None) -> Ops:
            return ops if layer is None or index == layer else OPS

        record: dict[str, torch.Tensor] = {}

        def keep(name: str, tensor):
            record.setdefault(name, tensor.detach().clone())
            return tensor

        config, ids = self.config, torch.tensor(tokens)
        w = {name: ops.weight(name, tensor, self.weights).to(dtype) for name, tensor in self.weights.items()}
        self.cast = w
        count = len(tokens)
        if self.gpt2:
            rows = keep("pos_embed", w["transformer.wpe.weight"][at(None).positions(count)])
            x = keep("embed", at(None).add_positions(w["transformer.wte.weight"][ids], rows))
        else:
            looked_up = w["model.embed_tokens.weight"][ids]
            if self.gemma:
                keep("embed_tokens", looked_up)
            scale = at(None).embed_scale(config.hidden_size, config.hidden_size ** 0.5 if self.gemma else 1.0)
            if scale != 1.0:
                looked_up = looked_up * torch.tensor(scale, dtype=dtype)
            x = keep("embed", looked_up)
        for index in at(None).block_order(config.num_hidden_layers):
            x = self._block(x, index, at(index), keep, dtype)
        if at(None).final_norm:
            x = keep("final_norm", self._norm(x, "final", None, at(None)))
        head = w.get("lm_head.weight", w.get("transformer.wte.weight"))
        keep("logits", x @ head.T)
        return record

    def _norm(self, x, where: str, index, ops: Ops):
        w, config = self.cast, self.config
        if where in ops.skip_norms:
            return x
        where, index = ops.norm_module(where, index)
        if self.gpt2:
            module = {"final": "transformer.ln_f", "attn": f"transformer.h.{index}.ln_1",
                      "mlp": f"transformer.h.{index}.ln_2"}[where]
            return ops.norm(x, w[module + ".weight"], w[module + ".bias"], config.layer_norm_epsilon,
                            ops.norm_kind("layer", where))
        module = {"final": "model.norm", "attn": f"model.layers.{index}.input_layernorm",
                  "q": f"model.layers.{index}.self_attn.q_norm", "k": f"model.layers.{index}.self_attn.k_norm",
                  "attn_post": f"model.layers.{index}.post_attention_layernorm",
                  "mlp": f"model.layers.{index}.{'pre_feedforward_layernorm' if self.gemma else 'post_attention_layernorm'}",
                  "mlp_post": f"model.layers.{index}.post_feedforward_layernorm"}[where]
        return ops.norm(x, w[module + ".weight"], None, config.rms_norm_eps, ops.norm_kind("rms1p" if self.gemma else "rms", where))

    def _block(self, x, index: int, ops: Ops, keep, dtype):
        config, w, layer = self.config, self.cast, f"layers.{index}"
        count, hidden = x.shape[0], config.hidden_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        normed = keep(f"{layer}.attn_norm", self._norm(x, "attn", index, ops))
        if self.gpt2:
            prefix = f"transformer.h.{index}"
            qkv = keep(f"{layer}.qkv", normed @ w[f"{prefix}.attn.c_attn.weight"] + w[f"{prefix}.attn.c_attn.bias"])
            q, k, v = (keep(f"{layer}.{name}", part) for name, part in zip("qkv", qkv.split(hidden, dim=-1)))
        else:
            prefix = f"model.layers.{index}"
            q, k, v = (keep(f"{layer}.{name}", normed @ w[f"{prefix}.self_attn.{name}_proj.weight"].T)
                       for name in "qkv")
        q, k, v = (t.view(count, -1, head_dim) for t in (q, k, v))                  # (T, H, hd)
        if f"{prefix}.self_attn.q_norm.weight" in w:
            q = keep(f"{layer}.q_norm", self._norm(q, "q", index, ops).reshape(count, -1)).view(count, -1, head_dim)
            k = keep(f"{layer}.k_norm", self._norm(k, "k", index, ops).reshape(count, -1)).view(count, -1, head_dim)
        layer_type = (getattr(config, "layer_types", None) or [None] * (index + 1))[index]
        if not self.gpt2:
            frequencies, attention_factor = ops.inv_freq(config, layer_type)
            angles = ops.positions(count).float()[:, None] * frequencies[None, :]     # (T, hd/2)
            angles = torch.cat((angles, angles), dim=-1)
            cos, sin = ((angles.cos() * attention_factor).to(dtype)[:, None, :],
                        (angles.sin() * attention_factor).to(dtype)[:, None, :])
            rope = ops.rope or (lambda t, c, s, rot: t * c + rot(t) * s)
            q = keep(f"{layer}.q_rope", rope(q, cos, sin, ops.rotate_half).reshape(count, -1)).view(count, -1, head_dim)
            k = keep(f"{layer}.k_rope", (ops.rope_k or rope)(k, cos, sin, ops.rotate_half).reshape(count, -1)).view(
                count, -1, head_dim)
        group = heads // kv_heads
        keys, values = ops.expand_kv(k, group), (ops.expand_v or ops.expand_kv)(v, group)   # (S, H, hd)
        standard = (config.query_pre_attn_scalar ** -0.5) if self.gemma else head_dim ** -0.5
        scale = ops.score_scale(head_dim, hidden, standard)
        scores = torch.einsum("thd,shd->hts", q, keys) * scale                                  # (H, T, S)
        window = getattr(config, "sliding_window", None)
        if self.gemma:
            window = window if layer_type == "sliding_attention" else None
        scores = scores.masked_fill(~ops.visible(count, window), float("-inf"))
        probs = keep(f"{layer}.attn_probs", ops.softmax(scores).to(dtype))
        context = keep(f"{layer}.attn_ctx", ops.merge_heads(ops.attend(probs, q, keys, values)))   # (T, H*hd)
        if self.gpt2:
            attended = context @ w[f"{prefix}.attn.c_proj.weight"] + w[f"{prefix}.attn.c_proj.bias"]
        else:
            attended = context @ w[f"{prefix}.self_attn.o_proj.weight"].T
        attended = keep(f"{layer}.attn_out", attended)
        branch = keep(f"{layer}.attn_post_norm", self._norm(attended, "attn_post", index, ops)) if self.gemma else attended
        mid = keep(f"{layer}.resid_mid", ops.attn_residual(x, normed, branch))
        normed_mid = keep(f"{layer}.mlp_norm", self._norm(mid, "mlp", index, ops))
        if self.gpt2:
            hidden_states = keep(f"{layer}.mlp_fc", normed_mid @ w[f"{prefix}.mlp.c_fc.weight"] + w[f"{prefix}.mlp.c_fc.bias"])
            act = keep(f"{layer}.mlp_act", ops.activation("gelu_tanh")(hidden_states))
            out = act @ w[f"{prefix}.mlp.c_proj.weight"] + w[f"{prefix}.mlp.c_proj.bias"]
        else:
            gate = keep(f"{layer}.mlp_gate", normed_mid @ w[f"{prefix}.mlp.gate_proj.weight"].T)
            up = keep(f"{layer}.mlp_up", normed_mid @ w[f"{prefix}.mlp.up_proj.weight"].T)
            name = "gelu_tanh" if self.gemma else "silu"
            act = keep(f"{layer}.mlp_act", ops.gated(ops.activation(name), gate, up))
            out = act @ w[f"{prefix}.mlp.down_proj.weight"].T
        out = keep(f"{layer}.mlp_out", out)
        branch = keep(f"{layer}.mlp_post_norm", self._norm(out, "mlp_post", index, ops)) if self.gemma else out
        return keep(f"{layer}.out", ops.mlp_residual(x, mid, branch))

