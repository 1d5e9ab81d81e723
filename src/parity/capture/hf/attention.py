"""Recording q/k after RoPE and the attention probabilities inside transformers.

RoPE and softmax are functions in transformers, not modules, so no hook sees
them. transformers routes every attention call through its AttentionInterface,
keyed by `config._attn_implementation`. While a trace is recorded, parity puts a
wrapper under its own key that calls the model's configured implementation
(its own `eager_attention_forward` for "eager") unchanged and hands its
inputs and probabilities to whoever listens for that attention module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# id(attention module) -> listener(query, key, probabilities)
# query: (B, H, T, hd) after RoPE; key: (B, Hkv, S, hd) after RoPE, before GQA
# expansion; probabilities: (B, H, T, S), or None for fused kernels (sdpa, flash).
_LISTENERS: dict[int, Callable] = {}
_PREFIX = "parity_recording:"


def _recording_attention(original: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        implementation = ALL_ATTENTION_FUNCTIONS.get_interface(original, eager)
        output, probabilities = implementation(module, query, key, value, attention_mask, *args, **kwargs)
        listener = _LISTENERS.get(id(module))
        if listener is not None:
            listener(query, key, probabilities)
        return output, probabilities

    return attention


def _register(original: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = _PREFIX + original
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _recording_attention(original))
        # The mask must be built exactly as for the wrapped implementation.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name


def _configs(model) -> Iterator:
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            yield config


@contextmanager
def recording_attention(model, listeners: dict[int, Callable]):
    """Route `model`'s attention through the recorder while the block runs; restore after."""
    originals = [(config, config._attn_implementation) for config in _configs(model)]
    try:
        for config, original in originals:
            original = original or "eager"
            if not original.startswith(_PREFIX):
                config._attn_implementation = _register(original)
        _LISTENERS.update(listeners)
        yield
    finally:
        for key in listeners:
            _LISTENERS.pop(key, None)
        for config, original in originals:
            config._attn_implementation = original


def is_hf_model(model) -> bool:
    """True for transformers models, whose attention goes through AttentionInterface."""
    return any(type(module).__module__.startswith("transformers.") for module in model.modules())
