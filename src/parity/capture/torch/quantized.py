"""Quantized parameters read as the values a build computes with, and the rounding their grid gives.

A quantized PyTorch build holds its weights as integers and scales: torchao's tensor
subclasses (`quantize_(model, Int8WeightOnlyConfig())`, also the weight inside its
dynamic-activation configs), PyTorch's own quantized tensors (`torch.ao` dynamic
quantization, whose Linear gives its weight by calling `weight()`), bitsandbytes'
(transformers' `BitsAndBytesConfig`: LLM.int8() rows, 4-bit NF4/FP4 blocks), optimum-quanto's
(`quantize(model, weights=qint8)`, transformers' `QuantoConfig`: its weight subclasses once
frozen; before `freeze()` the module keeps its float weight and quantizes it at each call, so
what it computes with is its `qweight`), or another library's subclass with a `dequantize()`
of its own. parity reads each as the float values it
stands for, and where the grid is readable (a scale per element or block) also the
size of the error that rounding the reference's weights to the nearest point of that
grid gives: sqrt(sum(step² / 12)), the L2 norm of a round-to-nearest error spread
evenly over a step (for a code of uneven levels, NF4's, the step of a value is the
width of the interval that rounds to its level). diagnose/rounding.py holds the measured error to it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How one parameter is stored: its format in words, and the L2 norm of the error that rounding to its grid
    gives (None where the grid cannot be read)."""

    format: str
    rounding_l2: float | None
    inputs: str | None = None   # how the op quantizes its input as it runs, where it does


    def __repr__(self) -> str:
        rounding = "unknown" if self.rounding_l2 is None else f"{self.rounding_l2:.3g}"
        return f"<Quantization {self.format}, rounding l2 {rounding}>"

    def as_dict(self) -> dict:
        return {"format": self.format, "rounding_l2": self.rounding_l2,
                **({"inputs": self.inputs} if self.inputs else {})}


def packed_parameters(module) -> dict[str, Any]:
    """A quantized module's weight (and bias) that it keeps packed, not as parameters, and gives by a call:
    torch.ao's (calling `weight()` and `bias()`), HQQ's HQQLinear (`dequantize()`, read by dequantized());
    empty for any other module."""
    if _is_hqq(module):
        return {"weight": HqqWeight(module)}
    if not hasattr(module, "_packed_params"):
        return {}
    found = {name: getattr(module, name)() for name in ("weight", "bias") if callable(getattr(module, name, None))}
    return {name: value for name, value in found.items() if value is not None}


def packed_storage(module) -> set[str]:
    """The parameters that hold a quantized module's packed weight, read through packed_parameters() instead:
    HQQ's `W_q`."""
    return {"W_q"} if _is_hqq(module) else set()


@dataclasses.dataclass(frozen=True)
class HqqWeight:
    """HQQ's HQQLinear weight: `W_q` packed, `meta` its scale and zero point per group, its float weight given by
    the module's `dequantize()`."""

    module: Any

    def __repr__(self) -> str:
        return f"<HqqWeight {self.module.meta.get('nbits')} bits>"

    def read(self) -> tuple[Any, Quantization]:
        """(the float weight, its format and its grid's rounding): a uniform grid of 2^nbits levels whose step is
        its group's scale, the groups rows of the weight reshaped to `group_size` columns (axis 1) or columns of it
        reshaped to `group_size` rows (axis 0). HQQ chooses each group's zero point to fit the weight (its
        half-quadratic solver), not to round it to the nearest level."""
        import torch

        meta = self.module.meta
        values = self.module.dequantize().detach().to(torch.float32)
        nbits, group, axis = meta.get("nbits"), meta.get("group_size"), meta.get("axis")
        described = f"{nbits}-bit in groups of {group} (hqq HQQLinear)"
        scale = meta.get("scale")
        if not torch.is_tensor(scale) or meta.get("quant_scale") or not group or values.numel() % group:
            return values, Quantization(described, None)
        grouped = (values.numel() // group, group) if axis == 1 else (group, values.numel() // group)
        if scale.numel() != values.numel() // group:
            return values, Quantization(described, None)
        steps = scale.detach().to(torch.float64).reshape(grouped[0] if axis == 1 else 1, -1).expand(grouped)
        return values, Quantization(described, _rounding_l2(steps.reshape(values.shape)))


def _is_hqq(module) -> bool:
    return type(module).__name__ == "HQQLinear" and type(module).__module__.startswith("hqq")


def dequantized(value, module=None) -> tuple[Any, Quantization | None]:
    """`value` (a parameter of `module`) as a plain float tensor, and how it was stored where it was quantized
    (else None)."""
    import torch

    if isinstance(value, HqqWeight):
        return value.read()
    value = _computed_weight(module, value)
    inner, inputs = value, input_rounding(module, value)
    while hasattr(inner, "original_weight_tensor"):   # torchao's wrapper that quantizes the op's input as it runs
        inner = inner.original_weight_tensor
    if getattr(inner, "is_quantized", False):
        return inner.dequantize(), dataclasses.replace(_torch_quantized(inner), inputs=inputs)
    if type(inner).__module__.startswith("bitsandbytes"):
        return _bitsandbytes(inner, module) or (value, None)
    if type(inner) in (torch.Tensor, torch.nn.Parameter) or type(inner).dequantize is torch.Tensor.dequantize:
        return value, None                # a subclass that does not say how it dequantizes holds its values as is
    return inner.dequantize(), dataclasses.replace(_subclass(inner), inputs=inputs)


def input_rounding(module, weight=None) -> str | None:
    """How `module` quantizes its input as it runs, read from its type and its weight (`weight`, else its own), or
    None: torch.ao's dynamic quantization (one scale over each call's tokens), torchao's wrapper that quantizes the
    op's input (its function's name), bitsandbytes' LLM.int8()."""
    if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic"):
        return f"{type(module).__name__} of torch.ao's dynamic quantization, a scale per call"
    weight = getattr(module, "weight", None) if weight is None else weight
    if hasattr(weight, "original_weight_tensor"):
        return getattr(getattr(weight, "input_quant_func", None), "__name__", None) or "torchao"
    quanto = _quanto_activations(module)
    if quanto is not None:
        return quanto
    if type(weight).__name__ == "Int8Params" and type(weight).__module__.startswith("bitsandbytes"):
        threshold = getattr(getattr(module, "state", None), "threshold", 0.0) or 0.0
        return "cast to float16 and quantized to int8 per token (bitsandbytes LLM.int8())" + (
            f", input columns over {threshold:g} kept in float16" if threshold > 0 else "")
    return None


def _computed_weight(module, value):
    """The weight `module` computes with in place of its parameter `value`: an optimum-quanto module not frozen
    yet holds its float weight and quantizes it at each call (its `qweight`); `value` itself for any other."""
    if module is None or not type(module).__module__.startswith("optimum.quanto") \
            or getattr(module, "weight_qtype", None) is None or value is not getattr(module, "weight", None) \
            or getattr(module, "frozen", True):
        return value
    import torch

    with torch.no_grad():
        return module.qweight


def _quanto_activations(module) -> str | None:
    """How an optimum-quanto module quantizes its activations (`quantize(model, activations=...)`): its input and
    its output each on a fixed grid, their scales set by calibration; None where it does not."""
    qtype = getattr(module, "activation_qtype", None)
    if qtype is None or not type(module).__module__.startswith("optimum.quanto"):
        return None
    name = getattr(qtype, "name", str(qtype))
    return (f"quantized to {name} with a fixed, calibrated scale, and its output too ({type(module).__name__} of "
            "optimum-quanto's activation quantization)")


def _torch_quantized(tensor) -> Quantization:
    """PyTorch's own quantized tensor: a scale for the whole tensor or one per channel along an axis."""
    import torch

    scheme = tensor.qscheme()
    name = str(tensor.dtype).removeprefix("torch.")
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        steps = torch.full(tensor.shape, float(tensor.q_scale()), dtype=torch.float64)
        return Quantization(f"{name} (PyTorch, one scale)", _rounding_l2(steps))
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        axis = tensor.q_per_channel_axis()
        shape = [1] * tensor.dim()
        shape[axis] = -1
        steps = tensor.q_per_channel_scales().to(torch.float64).reshape(shape).expand(tensor.shape)
        return Quantization(f"{name} (PyTorch, a scale per channel)", _rounding_l2(steps))
    return Quantization(f"{name} (PyTorch, {scheme})", None)


def _subclass(tensor) -> Quantization:
    """A tensor subclass with `dequantize()`; torchao's affine ones give their scales by block, optimum-quanto's
    by row or by group of a row."""
    kind = f"{type(tensor).__module__.split('.')[0]} {type(tensor).__name__}"
    if type(tensor).__module__.startswith("optimum.quanto"):
        return _quanto(tensor, kind)
    block = tuple(getattr(tensor, "block_size", ()) or ())
    impl = getattr(tensor, "tensor_impl", None)
    if not block or impl is None or not hasattr(impl, "get_plain"):
        return Quantization(kind, None)
    try:
        integers, scale, _ = impl.get_plain()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return Quantization(kind, None)
    described = f"{str(integers.dtype).removeprefix('torch.')} in blocks of {'x'.join(map(str, block))} ({kind})"
    steps = _per_element(scale, tuple(tensor.shape), block)
    return Quantization(described, None if steps is None else _rounding_l2(steps))


def _quanto(tensor, kind: str) -> Quantization:
    """An optimum-quanto weight: integers (qint8, or qint4/qint2 packed) times a scale per row (its axis 0) or per
    group of a row's consecutive elements, minus a shift for the grouped ones: a uniform grid whose step is the
    scale; or float8 codes times a scale per row, whose step is the code's spacing at its magnitude (finfo's eps
    times its power of two, the subnormals' below the smallest normal) times the scale."""
    import torch

    qtype, scale = getattr(tensor, "qtype", None), getattr(tensor, "_scale", None)
    name = getattr(qtype, "name", "quantized")
    if scale is None or getattr(tensor, "_axis", 0) != 0 or tensor.numel() % max(scale.numel(), 1):
        return Quantization(f"{name} ({kind})", None)
    group = tensor.numel() // scale.numel()                    # the elements one scale covers, in row-major order
    row = tensor.numel() // tensor.shape[0]
    described = f"{name}, a scale per row" if group == row else f"{name} in groups of {group}"
    steps = scale.detach().to(torch.float64).reshape(-1, 1).expand(-1, group).reshape(tensor.shape)
    if getattr(qtype, "is_floating_point", False):
        codes = getattr(tensor, "_data", None)
        if codes is None or not codes.dtype.is_floating_point or codes.shape != tensor.shape:
            return Quantization(f"{name} ({kind})", None)
        steps = steps * _float_spacing(codes)
    return Quantization(f"{described} ({kind})", _rounding_l2(steps))


def _float_spacing(codes):
    """The spacing of a float format's values at each of `codes` (float64): eps x 2^exponent, the subnormals'
    spacing below the smallest normal."""
    import torch

    info = torch.finfo(codes.dtype)
    magnitude = codes.detach().to(torch.float64).abs().clamp_min(info.tiny)
    return info.eps * torch.exp2(torch.floor(torch.log2(magnitude)))


def _bitsandbytes(tensor, module) -> tuple[Any, Quantization] | None:
    """bitsandbytes' LLM.int8() weight (int8 rows and their absmax, `SCB`) or 4-bit one (a code of 16 levels
    scaled by each block's absmax); None for one not quantized yet."""
    import torch

    name = type(tensor).__name__
    # the row scales move from the weight to the module's state at its first forward
    row_absmax = next((scb for scb in (getattr(tensor, "SCB", None), getattr(getattr(module, "state", None), "SCB", None))
                       if scb is not None), None)
    if name == "Int8Params" and tensor.dtype == torch.int8 and row_absmax is not None:
        steps = row_absmax.detach().to(torch.float64)[:, None].expand(tensor.shape) / 127
        values = (tensor.data.to(torch.float64) * steps).to(torch.float32)   # as int8_vectorwise_dequant gives
        return values, Quantization("int8, a scale per row (bitsandbytes Int8Params)", _rounding_l2(steps),
                                    input_rounding(module, tensor))
    state = getattr(tensor, "quant_state", None)
    if name != "Params4bit" or state is None:
        return None
    from bitsandbytes import functional

    packed = tensor.data
    if getattr(state, "packing_format_for_cpu", False):   # repacked for its CPU kernel at its first forward
        unpack = getattr(functional, "_convert_weight_packed_for_cpu_inverse", None)
        if unpack is None:
            return None
        packed, state = unpack(packed, copy.deepcopy(state))   # it rewrites the state it is given
        if state.absmax.dim() == 2:   # [K / block, N] in the packed layout, in bfloat16, which the kernel uses
            state.absmax = state.absmax.T.reshape(-1).to(torch.float32)
    values = functional.dequantize_4bit(packed, state).to(torch.float32)
    absmax = state.absmax
    if getattr(state, "nested", False):
        absmax = functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    described = f"{state.quant_type} in blocks of {state.blocksize} (bitsandbytes Params4bit)"
    steps = _code_steps(values, state.code, absmax, state.blocksize)
    return values, Quantization(described, None if steps is None else _rounding_l2(steps))


def _code_steps(values, code, absmax, block: int):
    """For values each a level of `code` (any 16 or 256 levels in [-1, 1]) times its block's absmax: the width of
    the interval that rounds to its level, as a step (a uniform grid's is its step). None where the blocks do not
    tile the values."""
    import torch

    flat = values.detach().reshape(-1).to(torch.float64)
    scale = absmax.detach().reshape(-1).to(torch.float64).repeat_interleave(block)
    if scale.numel() < flat.numel():
        return None
    scale = scale[:flat.numel()]
    levels = torch.sort(code.detach().to(torch.float64).reshape(-1)).values
    middles = (levels[1:] + levels[:-1]) / 2
    widths = torch.cat([middles[:1] - levels[:1], middles[1:] - middles[:-1], levels[-1:] - middles[-1:]])
    normalized = torch.where(scale > 0, flat / scale.clamp_min(1e-300), torch.zeros_like(flat))
    return (widths[torch.bucketize(normalized, middles)] * scale).reshape(values.shape)


def _per_element(scale, shape: tuple[int, ...], block: tuple[int, ...]):
    """A scale per block spread over the elements of each block; None where the shapes do not say how."""
    import torch

    if len(block) != len(shape) or any(size % b for size, b in zip(shape, block)):
        return None
    blocks = [size // b for size, b in zip(shape, block)]
    if scale.numel() != math.prod(blocks):
        return None
    steps = scale.to(torch.float64).reshape(blocks)
    for axis, repeat in enumerate(block):
        steps = steps.repeat_interleave(repeat, dim=axis)
    return steps


def _rounding_l2(steps) -> float:
    """The L2 norm of a round-to-nearest error, uniform over each element's step: sqrt(sum(step²) / 12)."""
    return math.sqrt(float((steps.double() ** 2).sum()) / 12.0)
