"""llama.cpp's numerics, emulated in a transformers model: the calibration run for llama.cpp.

llama.cpp differs from transformers on purpose in three places, each emulated here
so that the reference run "at llama.cpp's precision" costs what llama.cpp's own
arithmetic costs, checkpoint by checkpoint:

1. Activation rounding. Before a matrix multiply, ggml's CPU backend converts the
   activations to the weight type's "vec_dot" format and multiplies in that
   format. Since the weights are the same dequantized values on both sides, the
   product equals the float product of the weights with the rounded activations.
   Rounding each projection's input (nn.Linear, GPT-2's Conv1D) the same way runs
   the reference at that precision. Which GGUF tensor a module holds comes from
   gguf-py's own name map (the converter's), so every family is covered.

       vec_dot format   blocks   scale            rounding                    for weights in
       Q8_0 / Q8_1      32       fp16(amax/127)   half away from zero         Q4_0 Q4_1 Q5_0 Q5_1 Q8_0
       Q8_K             256      fp32(max/-127)   half to even, at most 127   K-quants
       F16 / BF16       -        -                the activation cast         F16, BF16 weights

2. The KV cache. llama.cpp stores K and V in the cache's type (F16 by default);
   without flash attention, q @ K^T then runs with q converted to that type, and
   probabilities @ V with the probabilities converted. Both attention matmuls of
   each attention module are run on operands rounded to that type.

3. GELU. ggml's CPU GELU (tanh form) reads a table indexed by the input rounded
   to fp16 and returns the fp16 table entry (0 below -10, x above 10); GEGLU
   multiplies that entry by the gate. transformers' tanh-GELU modules are given
   the same table. An erf GELU is left alone: llama.cpp's tanh form is then a
   different function, not a rounding, and shows as one.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path

from parity.capture.hf.one_term_sums import projection_width

BLOCK_32_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"}
K_QUANT_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}
KV_TYPES = ("f16", "f32", "bf16")              # cache types that run without flash attention
TANH_GELU_CLASSES = {"NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation",
                     "GELUPytorchTanh", "GeluPytorchTanh"}


def weight_types(gguf: str | Path) -> dict[str, str]:
    """GGUF tensor name -> ggml type name, e.g. 'blk.0.attn_q.weight' -> 'Q4_1'."""
    from parity.capture.gguf.header import read_header

    return {name: info.ggml_type for name, info in read_header(gguf).tensors.items()}


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


def gguf_names(model, gguf: str | Path) -> dict[str, str]:
    """transformers module path -> GGUF weight name, by gguf-py's tensor name map for the file's architecture."""
    import gguf as gguf_py

    from parity.capture.gguf.header import read_header

    header = read_header(gguf)
    arch = header.architecture
    blocks = header.number(f"{arch}.block_count")
    arches = {name: key for key, name in gguf_py.MODEL_ARCH_NAMES.items()}
    if arch not in arches or blocks is None:
        return {}
    name_map = gguf_py.get_tensor_name_map(arches[arch], blocks)
    present = set(header.tensors)
    names = {}
    for path, _module in model.named_modules():
        name = name_map.get_name(path)
        if name is not None and f"{name}.weight" in present:
            names[path] = f"{name}.weight"
        elif name == "output" and "token_embd.weight" in present:
            names[path] = "token_embd.weight"                      # tied embeddings
    return names


@contextmanager
def llamacpp_activation_rounding(model, gguf: str | Path):
    """While active, every projection of `model` rounds its input as llama.cpp does for its GGUF weight type."""
    types = weight_types(gguf)
    handles = []
    try:
        for path, name in gguf_names(model, gguf).items():
            module = model.get_submodule(path)
            width = projection_width(module)
            rounding = rounding_for(types.get(name, "F32"))
            if width is None or rounding is None or width % (256 if types[name] in K_QUANT_TYPES else 32):
                continue

            def round_input(_module, args, rounding=rounding):
                return (rounding(args[0]), *args[1:])

            handles.append(module.register_forward_pre_hook(round_input))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def gelu_table(x):
    """ggml's CPU GELU: the fp16 table entry of fp16(x), computed in float32; 0 below -10, x above 10."""
    import math

    import torch

    source = x.float().half().float()                               # the table index: x rounded to fp16
    inner = math.sqrt(2 / math.pi) * source * (1.0 + 0.044715 * source * source)
    table = (0.5 * source * (1.0 + torch.tanh(inner))).half().float()
    result = torch.where(x <= -10, torch.zeros_like(table), torch.where(x >= 10, x.float(), table))
    return result.to(x.dtype)


@contextmanager
def llamacpp_gelu(model):
    """While active, every tanh-GELU module of `model` returns ggml's table value."""
    handles = []
    try:
        for module in model.modules():
            if type(module).__name__ in TANH_GELU_CLASSES:
                handles.append(module.register_forward_hook(lambda _m, args, _out: gelu_table(args[0])))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def kv_rounding(kv_type: str):
    """The rounding of both attention matmuls' operands for a KV cache of `kv_type`; None for f32."""
    import torch

    if kv_type not in KV_TYPES:
        from parity.core.errors import OptionError

        raise OptionError(f"KV cache type '{kv_type}' is not emulated; choose one of {', '.join(KV_TYPES)}")
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": None}[kv_type]
    return None if dtype is None else (lambda x: x.to(dtype).to(x.dtype))


@contextmanager
def llamacpp_kv_cache(model, kv_type: str = "f16"):
    """While active, the two matmuls inside each attention module (q @ k^T, probabilities @ v) run on
    operands rounded to the KV cache's type, as llama.cpp's attention without flash attention does."""
    import torch
    from torch.overrides import TorchFunctionMode

    rounding = kv_rounding(kv_type)
    matmuls = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm}

    class RoundedMatmul(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in matmuls and len(args) == 2:
                args = tuple(rounding(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                             for a in args)
            return func(*args, **(kwargs or {}))

    attentions = [m for m in model.modules() if type(m).__name__.endswith("Attention")] if rounding else []
    try:
        for module in attentions:
            def forward(*args, _original=module.forward, **kwargs):
                with RoundedMatmul():
                    return _original(*args, **kwargs)

            module.forward = forward
        yield len(attentions)
    finally:
        for module in attentions:
            module.__dict__.pop("forward", None)


@contextmanager
def llamacpp_numerics(model, gguf: str | Path, *, kv_type: str = "f16"):
    """All of llama.cpp's deliberate numerics at once: activation rounding, the KV cache type, the GELU table.
    Yields what was emulated, e.g. {'activation rounding': 22, 'kv cache f16': 3, 'gelu table': 0}."""
    with ExitStack() as stack:
        yield {
            "activation rounding": stack.enter_context(llamacpp_activation_rounding(model, gguf)),
            f"kv cache {kv_type}": stack.enter_context(llamacpp_kv_cache(model, kv_type)),
            "gelu table": stack.enter_context(llamacpp_gelu(model)),
        }


@contextmanager
def emulated(lowp_model, gguf: str | Path, *, kv_type: str = "f16"):
    """`lowp_model` (an HFModel in float32) computing as llama.cpp does while the block runs."""
    with llamacpp_numerics(lowp_model.model, gguf, kv_type=kv_type):
        yield lowp_model
