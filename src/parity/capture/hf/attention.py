"""Recording q/k after RoPE and the attention probabilities inside transformers.

RoPE and softmax are functions in transformers, not modules, so no hook sees
them. transformers routes an attention call through its AttentionInterface,
keyed by `config._attn_implementation`, or for "eager" straight to the model
file's own `eager_attention_forward`. While a trace is recorded, parity puts a
wrapper in their place (the interface's entry for the model's key, the model
file's function) that calls the implementation it replaced unchanged and hands
its inputs and probabilities to whoever listens for that attention module.
`config._attn_implementation` itself is left as it is: model code reads it
(Falcon runs its own attention unless it says "sdpa", DeepSeek-V3.2 and others
add their sparse index mask only for "eager" and "sdpa", GPT-2 upcasts only for
"eager"), so a key of parity's own would change what the model computes. A model
whose attention goes through neither is recorded by its hooks alone.

Long inputs: eager attention makes its (B, H, T, S) scores several times over
(the scores, the masked scores, the softmax in float32, its cast back), which at
T=8,192 is gigabytes per layer. When one layer's probabilities would pass
ROW_BLOCK_BYTES, the wrapper runs the same implementation on blocks of query rows
with the matching rows of the mask: each row's softmax sees the same scores (to
the last bits of a matmul's summation order, ~1e-16 relative in float64), and the
probabilities exist a block at a time (assembled only for a listener that records
them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# id(attention module) -> listener(query, key, probabilities)
# query: (B, H, T, hd) after RoPE; key: (B, Hkv, S, hd) after RoPE, before GQA
# expansion; probabilities: (B, H, T, S), or None for fused kernels (sdpa, flash)
# and for blocked attention when the listener's `wants_probabilities` is False.
# A listener may also have `keep_recipe(implementation, module, query, key, value, mask,
# args, kwargs)`, which keeps what rebuilds the probabilities in their place (capture/hf/
# recipes.py), or `take_rows(block, start)`, which takes them a (B, H, rows, S) block at a
# time as they are made (core/streamed.py); the listener then gets None.
_LISTENERS: dict[int, Callable] = {}

# One layer's probabilities larger than this are computed in blocks of query rows (eager attention only).
ROW_BLOCK_BYTES = 64 << 20


def _recording_attention(name: str, implementation: Callable) -> Callable:
    """`implementation` (the attention for the key `name`), telling each listener what it was given and made."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        listener = _LISTENERS.get(id(module))
        wanted = listener is not None and getattr(listener, "wants_probabilities", True)
        keep = getattr(listener, "keep_recipe", None) if wanted else None
        if keep is not None and name == "eager" and _rows_of(query, attention_mask):
            keep(implementation, module, query, key, value, attention_mask, args, kwargs)
            wanted = False                 # rebuilt from what was kept (capture/hf/recipes.py), never made whole
        take_rows = getattr(listener, "take_rows", None) if wanted else None
        rows = _block_rows(name, query, key, attention_mask)
        if rows is None:
            output, probabilities = implementation(module, query, key, value, attention_mask, *args, **kwargs)
            if take_rows is not None and probabilities is not None:
                take_rows(probabilities, 0)
                probabilities = None
        else:
            output, probabilities = _in_row_blocks(implementation, rows, wanted, module, query, key, value,
                                                   attention_mask, *args, take_rows=take_rows, **kwargs)
        if listener is not None:
            listener(query, key, probabilities if wanted else None)
        return output, probabilities

    attention.parity_recording = True
    return attention


def _block_rows(name: str, query, key, attention_mask) -> int | None:
    """Query rows per block when this call's probabilities would pass ROW_BLOCK_BYTES; None to run it whole.
    Only eager attention with an explicit (B, 1|H, T, S) mask is blocked: a block of rows is then exactly
    those rows of the whole (a fused kernel's is_causal would align a block's rows to the wrong keys)."""
    batch, heads, tokens = query.shape[:3]
    columns = key.shape[-2]
    row_bytes = batch * heads * columns * max(query.element_size(), 4)
    if name != "eager" or tokens * row_bytes <= ROW_BLOCK_BYTES or attention_mask is None:
        return None
    return max(1, ROW_BLOCK_BYTES // row_bytes) if _rows_of(query, attention_mask) else None


def _rows_of(query, attention_mask) -> bool:
    """Whether a block of query rows with the same rows of the mask is that block of the whole call: the mask
    is None (every row sees every key) or (B, 1|H, T, S)."""
    if attention_mask is None:
        return True
    return attention_mask.ndim == 4 and attention_mask.shape[-2] == query.shape[2]


def _in_row_blocks(implementation, rows: int, wanted: bool, module, query, key, value, attention_mask,
                   *args, take_rows=None, **kwargs):
    """(output, probabilities) of `implementation` run on `rows` query rows at a time: output (B, T, H, hd)
    as the whole call gives it; probabilities (B, H, T, S) assembled when `wanted`, else None; or each block
    handed to `take_rows(block, start)` as it is made, and None."""
    import torch

    tokens = query.shape[2]
    outputs, probabilities = [], None
    for start in range(0, tokens, rows):
        stop = min(tokens, start + rows)
        output, block = implementation(module, query[:, :, start:stop], key, value,
                                       attention_mask[:, :, start:stop], *args, **kwargs)
        if output.shape[1] != stop - start:   # an implementation whose output is not token-major
            output, probabilities = implementation(module, query, key, value, attention_mask, *args, **kwargs)
            if take_rows is not None and probabilities is not None:
                take_rows(probabilities, 0)
                probabilities = None
            return output, probabilities
        outputs.append(output)                                          # (B, rows, H, hd)
        if take_rows is not None and block is not None:
            take_rows(block, start)
        elif wanted and block is not None:
            if probabilities is None:
                probabilities = block.new_empty((*block.shape[:2], tokens, block.shape[-1]))
            probabilities[:, :, start:stop] = block                     # (B, H, rows, S)
        del block
    return torch.cat(outputs, dim=1), probabilities


def _configs(model) -> Iterator:
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            yield config


def _model_files(model) -> Iterator:
    """The Python modules of `model`'s classes that define an `eager_attention_forward`, each once."""
    seen = set()
    for module in model.modules():
        namespace = sys.modules.get(type(module).__module__)
        if namespace is not None and id(namespace) not in seen and callable(getattr(namespace, _EAGER, None)):
            seen.add(id(namespace))
            yield namespace


_EAGER = "eager_attention_forward"


@contextmanager
def recording_attention(model, listeners: dict[int, Callable]):
    """Route `model`'s attention through the recorder while the block runs; restore after."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    restore: list[Callable[[], None]] = []
    try:
        for namespace in _model_files(model):
            eager = getattr(namespace, _EAGER)
            if not getattr(eager, "parity_recording", False):
                setattr(namespace, _EAGER, _recording_attention("eager", eager))
                restore.append(lambda namespace=namespace, eager=eager: setattr(namespace, _EAGER, eager))
        for key in {config._attn_implementation for config in _configs(model)} - {None, "eager"}:
            restore += _wrapped_entries(ALL_ATTENTION_FUNCTIONS, key)
        with listening(listeners):
            yield
    finally:
        for undo in reversed(restore):
            undo()


@contextmanager
def listening(listeners: dict[int, Callable]):
    """While the block runs, each listener hears its attention module's calls (by the module's id), whoever
    makes them: the recorder above, or an exported program's graph (capture/torch/exported/)."""
    _LISTENERS.update(listeners)
    try:
        yield
    finally:
        for key in listeners:
            _LISTENERS.pop(key, None)


def listener_of(module) -> Callable | None:
    return _LISTENERS.get(id(module))


def _wrapped_entries(interface, key: str) -> list[Callable[[], None]]:
    """Put the recorder in the place of the interface's entry for `key` (its local one, where the instance
    overrides the class's, and the class's); returns what undoes it."""
    undo = []
    for mapping in (interface._local_mapping, type(interface)._global_mapping):
        implementation = mapping.get(key)
        if implementation is None or getattr(implementation, "parity_recording", False):
            continue
        mapping[key] = _recording_attention(key, implementation)
        undo.append(lambda mapping=mapping, implementation=implementation: mapping.__setitem__(key, implementation))
    return undo


def is_hf_model(model) -> bool:
    """True for transformers models, whose attention goes through AttentionInterface."""
    return any(type(module).__module__.startswith("transformers.") for module in model.modules())


@contextmanager
def long_input_attention(model):
    """While the block runs, a transformers model's eager attention runs in blocks of query rows once a layer's
    probabilities would pass ROW_BLOCK_BYTES, recording nothing (a forward for its logits or its cache at a long
    input: whole, eager attention makes several (B, H, T, T) tensors per layer, 4.8 GB each in float64 at
    T=8,192). Any other module runs as it is."""
    if not is_hf_model(model):
        yield
        return
    with recording_attention(model, {}):
        yield


def kept_logits(model, rows: int) -> dict:
    """The keyword that has a transformers model put only its last `rows` positions through its output head
    (logits_to_keep); {} for rows=0 (all of them) and for a model whose forward does not take it."""
    import inspect

    if not rows or not is_hf_model(model):
        return {}
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": rows} if "logits_to_keep" in parameters else {}
