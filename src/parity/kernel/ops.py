"""The ops `parity kernel` checks: each one's float64 reference and the inputs of each case.

A candidate is called exactly as the torch.nn.functional function it replaces
(see each op's `signature`). Inputs are made in float64 for a sequence length T
and a condition: "normal" (unit-scale values) or "extreme" (values that
overflow a naive exp, large magnitudes, fully masked rows, -1e20 floors). A
fully masked row is checked in softmax, where it is well defined (uniform); in
attention an additive -1e20 row makes the gradient depend on how each side
rounds -1e20 + score, so attention's extreme case masks causally with floors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from parity.core.errors import OptionError

CONDITIONS = ("normal", "extreme")
B, H, HKV, HEAD_DIM, WIDTH, VOCAB = 2, 4, 2, 32, 128, 512   # small enough for a CPU sweep in seconds
FLOOR = -1e20                                              # the "safety floor" masks use in place of -inf


@dataclass(frozen=True)
class Case:
    """One op's inputs for one length and condition, in float64 (integers stay integers)."""

    dims: dict[str, int]
    inputs: dict[str, torch.Tensor]
    options: dict[str, Any]                  # keyword arguments that are not tensors
    constants: tuple[str, ...] = ()          # floating inputs with no gradient to check (masks, tables)

    def __repr__(self) -> str:
        return f"<Case {self.dims}>"


@dataclass(frozen=True)
class Op:
    name: str
    signature: str
    reference: Callable[..., torch.Tensor]   # called as the candidate is: reference(*args, **kwargs)
    make: Callable[[int, str, torch.Generator], Case]
    positional: tuple[str, ...]              # inputs and options passed by position, in order

    def __repr__(self) -> str:
        return f"<Op {self.signature}>"

    def arguments(self, case: Case, tensors: dict[str, torch.Tensor]) -> tuple[list, dict]:
        """(args, kwargs) for a call on `tensors` (the case's inputs, cast or not)."""
        values = {**case.options, **tensors}
        return [values[name] for name in self.positional], {k: v for k, v in values.items() if k not in self.positional}


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in OPS:
        raise ValueError(f"op {op.name} registered twice")
    OPS[op.name] = op
    return op


def get_op(name: str) -> Op:
    if name not in OPS:
        raise OptionError(f"unknown op '{name}'; choose one of {', '.join(OPS)}")
    return OPS[name]


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def _activations(T: int, condition: str, generator: torch.Generator, width: int = WIDTH) -> torch.Tensor:
    """(B, T, width): unit scale; extreme: magnitudes up to ~3e4, and one row constant (zero variance)."""
    x = _randn(generator, B, T, width)
    if condition == "extreme":
        x = x * 1e4
        x[:, 0] = 5e3                                               # a constant row: variance 0
    return x


def _norm_case(T: int, condition: str, generator: torch.Generator, bias: bool) -> Case:
    inputs = {"x": _activations(T, condition, generator), "weight": 1.0 + 0.2 * _randn(generator, WIDTH)}
    if bias:
        inputs["bias"] = 0.1 * _randn(generator, WIDTH)
    return Case({"B": B, "T": T, "D": WIDTH}, inputs, {"normalized_shape": (WIDTH,), "eps": 1e-6})


register(Op("rms_norm", "rms_norm(x, normalized_shape, weight, eps)",
            lambda x, shape, weight, eps: F.rms_norm(x, shape, weight, eps),
            lambda T, c, g: _norm_case(T, c, g, bias=False), ("x", "normalized_shape", "weight", "eps")))
register(Op("layer_norm", "layer_norm(x, normalized_shape, weight, bias, eps)",
            lambda x, shape, weight, bias, eps: F.layer_norm(x, shape, weight, bias, eps),
            lambda T, c, g: _norm_case(T, c, g, bias=True), ("x", "normalized_shape", "weight", "bias", "eps")))


def _softmax_case(T: int, condition: str, generator: torch.Generator) -> Case:
    x = _randn(generator, B, H, T, T)
    if condition == "extreme":
        x = x * 1e4                                                  # exp() overflows far below this
        x[..., 1:] = torch.where(torch.ones(T, T - 1, dtype=torch.bool).triu(), FLOOR, x[..., 1:])  # floors
        x[..., -1, :] = FLOOR                                        # a fully masked row: uniform
    return Case({"B": B, "H": H, "T": T}, {"x": x}, {"dim": -1})


register(Op("softmax", "softmax(x, dim)", lambda x, dim: F.softmax(x, dim), _softmax_case, ("x", "dim")))


def _pointwise_case(T: int, condition: str, generator: torch.Generator, names=("x",)) -> Case:
    inputs = {name: _randn(generator, B, T, WIDTH) * (1e3 if condition == "extreme" else 2.0) for name in names}
    return Case({"B": B, "T": T, "D": WIDTH}, inputs, {})


register(Op("silu", "silu(x)", F.silu, _pointwise_case, ("x",)))
register(Op("swiglu", "swiglu(gate, up) = silu(gate) * up", lambda gate, up: F.silu(gate) * up,
            lambda T, c, g: _pointwise_case(T, c, g, ("gate", "up")), ("gate", "up")))


def _gelu_case(approximate: str):
    def make(T: int, condition: str, generator: torch.Generator) -> Case:
        case = _pointwise_case(T, condition, generator)
        return Case(case.dims, case.inputs, {"approximate": approximate})
    return make


register(Op("gelu", "gelu(x, approximate='none')", lambda x, approximate: F.gelu(x, approximate=approximate),
            _gelu_case("none"), ("x",)))  # approximate by keyword: torch's gelu takes it no other way
register(Op("gelu_tanh", "gelu(x, approximate='tanh')", lambda x, approximate: F.gelu(x, approximate=approximate),
            _gelu_case("tanh"), ("x",)))


def _linear_case(T: int, condition: str, generator: torch.Generator) -> Case:
    x = _activations(T, condition, generator) / (1e1 if condition == "extreme" else 1.0)
    inputs = {"x": x, "weight": _randn(generator, 2 * WIDTH, WIDTH, scale=WIDTH ** -0.5),
              "bias": 0.1 * _randn(generator, 2 * WIDTH)}
    return Case({"B": B, "T": T, "D": WIDTH, "N": 2 * WIDTH}, inputs, {})


register(Op("linear", "linear(x, weight, bias)", F.linear, _linear_case, ("x", "weight", "bias")))


def _embedding_case(T: int, condition: str, generator: torch.Generator) -> Case:
    ids = torch.randint(0, VOCAB, (B, T), generator=generator)
    if condition == "extreme":
        ids[:, ::2] = VOCAB - 1                                      # the last row, over and over
        ids[:, 0] = 0
    weight = _randn(generator, VOCAB, WIDTH, scale=1e4 if condition == "extreme" else 1.0)
    return Case({"B": B, "T": T, "V": VOCAB, "D": WIDTH}, {"ids": ids, "weight": weight}, {})


register(Op("embedding", "embedding(ids, weight)", F.embedding, _embedding_case, ("ids", "weight")))


def _cross_entropy_case(T: int, condition: str, generator: torch.Generator) -> Case:
    logits = _randn(generator, B * T, VOCAB, scale=1e4 if condition == "extreme" else 2.0)
    target = torch.randint(0, VOCAB, (B * T,), generator=generator)
    target[::3] = -100                                               # ignored positions
    if condition == "extreme":
        logits[:, 0] = 3e4                                           # a large logit in every row
    return Case({"N": B * T, "T": T, "V": VOCAB}, {"input": logits, "target": target},
                {"ignore_index": -100, "reduction": "mean"})


register(Op("cross_entropy", "cross_entropy(input, target, ignore_index=-100, reduction='mean')",
            lambda input, target, ignore_index, reduction: F.cross_entropy(input, target, ignore_index=ignore_index,
                                                                             reduction=reduction),
            _cross_entropy_case, ("input", "target")))


def _attention_case(T: int, condition: str, generator: torch.Generator) -> Case:
    q, k, v = (_randn(generator, B, heads, T, HEAD_DIM) for heads in (H, HKV, HKV))   # (B, H|Hkv, T, hd)
    dims = {"B": B, "H": H, "Hkv": HKV, "T": T, "hd": HEAD_DIM}
    if condition == "normal":
        return Case(dims, {"q": q, "k": k, "v": v}, {"is_causal": True, "enable_gqa": True})
    q = q * 30.0                                                     # scores around 1e3: a naive exp overflows
    mask = torch.zeros(T, T, dtype=torch.float64).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), FLOOR)
    return Case(dims, {"q": q, "k": k, "v": v, "attn_mask": mask}, {"enable_gqa": True}, constants=("attn_mask",))


register(Op("attention", "attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, "
            "enable_gqa=False)", F.scaled_dot_product_attention, _attention_case, ("q", "k", "v")))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotate-half RoPE: x (B, H, T, hd), cos and sin (B, T, hd)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def _rope_case(T: int, condition: str, generator: torch.Generator) -> Case:
    x = _randn(generator, B, H, T, HEAD_DIM, scale=1e4 if condition == "extreme" else 1.0)
    start = 100_000 if condition == "extreme" else 0                 # far positions: large angles
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM))
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1).expand(B, T, HEAD_DIM)                # (B, T, hd)
    return Case({"B": B, "H": H, "T": T, "hd": HEAD_DIM}, {"x": x, "cos": angles.cos(), "sin": angles.sin()}, {})


register(Op("rope", "rope(x, cos, sin)", rope_reference, _rope_case, ("x", "cos", "sin")))
