"""Tracing any torch.nn.Module with forward hooks, given where each checkpoint lives.

    trace = trace_module(model, [1, 2, 3], taps="hf")
    trace = trace_module(my_port, ids, taps={
        "blocks.{i}.norm1": "layers.{i}.attn_norm",
        "blocks.{i}.attn.out_proj:input": "layers.{i}.attn_ctx",
        "blocks.{i}.attn.qkv": ["layers.{i}.q", "layers.{i}.k", "layers.{i}.v"],  # fused, split evenly
        "re:blocks\\.(?P<i>\\d+)\\.attn\\.rope_q": "layers.{i}.q_rope",
    })

A pattern is a module path in which `{i}` matches the layer index and `*` any
one path segment, or a regular expression after `re:` with a group named `i`.
A `:input` suffix records the module's first positional input instead of its output;
the other suffixes are listed in core/names.py (TAP_IOS). With `raw=True`, every
module no tap names is recorded too, under `raw.<module path>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from parity.capture.torch.compiled import compiled_in_place, compiled_within
from parity.capture.torch.layout import canonical_layout, config_heads, first_tensor
from parity.capture.torch.taps import TapsLike, resolve_taps  # noqa: F401  (the module's public names)
from parity.capture.torch.tracer import ModuleTracer
from parity.core.errors import CaptureError, OptionError
from parity.core.names import select
from parity.core.trace import Trace, make_trace


def trace_module(
    model,
    tokens,
    *,
    taps: TapsLike = "hf",
    checkpoints: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    forward: Callable | None = None,
    weights: bool = False,
    raw: bool = False,
    config: Any = None,
    **tracing,
) -> Trace:
    """Run one forward pass of `model` over `tokens` and return the checkpoints `taps` name.

    `tokens` is a list of ids or a (1, T) tensor; `forward(model, input_ids)` replaces
    `model(input_ids)` for models with another calling convention; `weights` also
    records each tapped module's own parameters (`layers.3.q.weight`); `raw` records
    every module no tap names, under `raw.<module path>`. When no tap
    records `logits`, the forward's return value (a tensor, a tuple's first
    tensor, or `.logits`) is used. `config` (the model's own `.config` when not
    given; a dict or an object) tells the head counts that per-head tensors are
    read by (capture/torch/layout.py). `tracing`: ModuleTracer's `recipes` and `stream`, for checkpoints
    rebuilt or measured as they are made instead of stored (core/streamed.py).
    """
    from parity.capture.torch.exported import exported_module, is_exported

    model = exported_module(model) if is_exported(model) else compiled_in_place(model)
    input_ids = input_ids_of(tokens, model)
    heads = config_heads(config if config is not None else getattr(model, "config", None))
    quantized: dict = {}
    tensors = recorded_tensors(model, input_ids, taps, forward, checkpoints=checkpoints, weights=weights, raw=raw,
                               heads=heads, quantized=quantized, **tracing)
    return make_trace(tensors, {**base_metadata(model, input_ids), **quantized_metadata(quantized),
                                **(metadata or {})})


def recorded_tensors(model, input_ids, taps, forward, *, checkpoints: str | None, host: bool = True,
                     quantized: dict | None = None, **options) -> dict[str, Any]:
    """The checkpoints of one forward pass, by name: on the host, or (host=False) left on the device.
    `quantized`, where given, is filled with the recorded parameters a quantized build holds as integers.

    The forward's own tensors are recorded without copying them; if the forward changed one in place
    after it was recorded, it runs again copying each as it arrives."""
    options = dict(checkpoints=checkpoints, token_count=input_ids.shape[-1], host=host, **options)
    tracer, output = traced_forward(model, input_ids, taps, forward, copy=False, **options)
    if tracer.overwritten():
        tracer, output = traced_forward(model, input_ids, taps, forward, copy=True, **options)
    tensors = dict(tracer.tensors)
    if quantized is not None:
        quantized.update(tracer.quantized)
    logits = returned_logits(output, checkpoints, present=tensors)
    if logits is not None:
        tensors["logits"] = logits.cpu() if host else logits
    if not tensors:
        raise nothing_recorded(model)
    return tensors


def returned_logits(output, checkpoints: str | None, *, present):
    """The forward's return value (a tensor, a tuple's first tensor, or `.logits`) in the canonical layout,
    where no tap recorded `logits` (not in `present`) and the selection wants it; else None."""
    logits = first_tensor(output)
    if "logits" in present or logits is None or not select(["logits"], checkpoints):
        return None
    return canonical_layout("logits", logits.detach())


def nothing_recorded(model) -> CaptureError:
    return CaptureError(
        f"no checkpoint was recorded from {type(model).__name__}: none of its module paths matched the taps; "
        f"list them with [name for name, _ in model.named_modules()] and map them (see docs/capture.md)"
    )


def base_metadata(model, input_ids) -> dict:
    """What any trace of a torch module says of its producer, precision and tokens."""
    exported_from = getattr(model, "exported_from", None)     # a program made by torch.export (capture/torch/exported/)
    compiled = "exported by torch.export" if exported_from else \
        "compiled by torch.compile" if compiled_within(model) else None
    name = getattr(model, "name", None) if type(model).__name__ == "OpaqueModel" else None   # a function's spec
    return {
        "producer": f"torch:{exported_from or name or f'{type(model).__module__}.{type(model).__name__}'}",
        "dtype": dtype_of(model),
        "tokens": input_ids.reshape(-1).tolist(),
        **({"compiled": compiled} if compiled else {}),
    }


def quantized_metadata(quantized: dict) -> dict:
    """The trace metadata that says how each recorded quantized parameter is stored (none where none is)."""
    return {"quantized_weights": {name: q.as_dict() for name, q in quantized.items()}} if quantized else {}


def traced_forward(model, input_ids, taps, forward, *, copy: bool, sink=None, host: bool = True, **options):
    import torch

    from parity.capture.torch.factory import describe_error
    from parity.capture.torch.positions import positions_filled

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), positions_filled(model), compiled_guards(model), \
                ModuleTracer(model, taps, copy=copy, sink=sink, host=host, **options) as tracer:
            output = forward(model, input_ids) if forward else model(input_ids)
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as error:
        raise CaptureError(f"the forward pass of {type(model).__name__} failed: {describe_error(error)}") \
            from error
    finally:
        model.train(was_training)
    if tracer.hooks_never_ran:
        raise CaptureError(f"{type(model).__name__} is compiled and ran a graph compiled before parity's hooks were "
                           "added (torch.compile does not guard a graph on hooks by default): call "
                           "torch._dynamo.reset() before tracing it, or check it with parity check or "
                           "parity.testing, which guard the graphs they compile")
    return tracer, output


def compiled_guards(model):
    """While a compiled module is traced: its graphs guarded on hooks, and recompiles allowed
    (capture/torch/compiled.py); nothing for another module."""
    from contextlib import nullcontext

    from parity.capture.torch.compiled import recompiles_allowed

    return recompiles_allowed() if compiled_within(model) else nullcontext()


def input_ids_of(tokens, model):
    import torch

    ids = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    return ids.reshape(1, -1).to(model_device(model))  # (T,) -> (1, T)


def model_device(model):
    """Where the model's inputs go: the device of its first weights (the CPU when accelerate offloaded
    them: its hooks move inputs to wherever each module runs)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.device("cpu") if device.type == "meta" else device


def ids_tensor(ids, model):
    """Token ids (nested lists) as a long tensor on the model's device."""
    import torch

    return torch.tensor(ids, dtype=torch.long, device=model_device(model))


DECLARABLE = ("float64", "float32", "bfloat16", "float16")


def dtype_of(model) -> str | None:
    """The precision a module computes in: its `parity_dtype` attribute where it declares one (a kernel that
    computes in bfloat16 under float32 weights), else the dtype that holds most of its floating-point parameters'
    elements; None without. Most, not the first: a bfloat16 model keeps its norms, router and gates in float32
    (transformers' `_keep_in_fp32_modules`), and those may come first."""
    declared = getattr(model, "parity_dtype", None)
    if declared is not None:
        if declared not in DECLARABLE:
            raise OptionError(f"{type(model).__name__}.parity_dtype is {str(declared)[:40]!r}; set it to one of "
                              f"{', '.join(DECLARABLE)} (the precision the module computes in) or leave it out")
        return declared
    elements: dict[str, int] = {}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            name = str(parameter.dtype).removeprefix("torch.")
            elements[name] = elements.get(name, 0) + parameter.numel()
    return max(elements, key=elements.__getitem__) if elements else None
