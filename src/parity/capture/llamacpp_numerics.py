"""llama.cpp's activation rounding, emulated in a transformers model: the calibration run for llama.cpp.

Before a matrix multiply with quantized weights, ggml's CPU backend quantizes the
activations to the weight type's "vec_dot" format and multiplies integer blocks.
Since the weights are the same dequantized values on both sides, the product
equals the float product of the weights with the rounded activations. Rounding
each nn.Linear input the same way therefore runs the reference at llama.cpp's
precision, which calibrates how much of llama.cpp's difference is that rounding.

    vec_dot format   blocks   scale            rounding                       for weights in
    Q8_0 / Q8_1      32       fp16(amax/127)   half away from zero            Q4_0 Q4_1 Q5_0 Q5_1 Q8_0
    Q8_K             256      fp32(max/-127)   half to even, at most 127      K-quants
    F16 / BF16       -        -                the activation cast            F16, BF16 weights
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

BLOCK_32_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"}
K_QUANT_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}
# transformers module name (last part) -> GGUF tensor role
HF_TO_GGUF = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
_LAYER_MODULE = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\Z")


def weight_types(gguf: str | Path) -> dict[str, str]:
    """GGUF tensor name -> ggml type name, e.g. 'blk.0.attn_q.weight' -> 'Q4_1'."""
    from gguf import GGUFReader

    return {tensor.name: tensor.tensor_type.name for tensor in GGUFReader(str(gguf)).tensors}


def round_block_32(x):
    """Q8_0/Q8_1: per block of 32, q = round(x / d) with d = amax/127, then q * fp16(d)."""
    import torch

    blocks = x.float().reshape(*x.shape[:-1], -1, 32)                                 # (..., n/32, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    scaled = blocks * inverse
    quantized = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)                  # roundf: half away from zero
    return (quantized * scale.half().float()).reshape(x.shape).to(x.dtype)


def round_block_256(x):
    """Q8_K: per block of 256, iscale = -127/max (max: the signed value of largest magnitude)."""
    import torch

    blocks = x.float().reshape(*x.shape[:-1], -1, 256)
    index = blocks.abs().argmax(-1, keepdim=True)
    largest = torch.gather(blocks, -1, index)
    iscale = torch.where(largest != 0, -127.0 / largest, torch.zeros_like(largest))
    quantized = torch.clamp(torch.round(blocks * iscale), max=127)                    # nearest_int: half to even
    restored = torch.where(iscale != 0, quantized / iscale, torch.zeros_like(blocks))
    return restored.reshape(x.shape).to(x.dtype)


def rounding_for(weight_type: str):
    """The activation rounding llama.cpp applies before a matmul with weights of this type; None for none."""
    import torch

    if weight_type in BLOCK_32_TYPES:
        return round_block_32
    if weight_type in K_QUANT_TYPES:
        return round_block_256
    if weight_type == "F16":
        return lambda x: x.half().to(x.dtype)
    if weight_type == "BF16":
        return lambda x: x.to(torch.bfloat16).to(x.dtype)
    return None


def _gguf_name(module_path: str, types: dict[str, str]) -> str | None:
    match = _LAYER_MODULE.match(module_path)
    if match and match.group(2) in HF_TO_GGUF:
        return f"blk.{match.group(1)}.{HF_TO_GGUF[match.group(2)]}.weight"
    if module_path == "lm_head":
        return "output.weight" if "output.weight" in types else "token_embd.weight"  # tied embeddings
    return None


@contextmanager
def llamacpp_activation_rounding(model, gguf: str | Path):
    """While active, every nn.Linear of `model` rounds its input as llama.cpp does for its GGUF weight type."""
    import torch

    types = weight_types(gguf)
    handles = []
    try:
        for path, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            name = _gguf_name(path, types)
            rounding = rounding_for(types.get(name, "F32")) if name else None
            if rounding is None or module.in_features % (256 if types[name] in K_QUANT_TYPES else 32):
                continue

            def round_input(_module, args, rounding=rounding):
                return (rounding(args[0]), *args[1:])

            handles.append(module.register_forward_pre_hook(round_input))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
