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
A `:input` suffix records the module's first positional input instead of its output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from parity.core.errors import CaptureError, OptionError
from parity.core.names import FAMILY_TAPS, HEAD_KINDS, Tap, parse, select
from parity.core.trace import Trace, make_trace

TapsLike = str | Mapping[str, str | Sequence[str]] | Sequence[Tap]
_IO_SUFFIXES = ("input", "output", "attention")


def resolve_taps(taps: TapsLike) -> tuple[Tap, ...]:
    """Turn a family name, a {pattern: name(s)} mapping, Tap objects, or a list
    mixing them (`["nanogpt", {"h.{i}.attn.probs": "layers.{i}.attn_probs"}]`) into Taps.
    In a list, a later entry for the same module and io replaces an earlier one,
    and an entry with no names (`"h.{i}.attn.c_attn": ()`) removes it."""
    if isinstance(taps, (list, tuple)) and not all(isinstance(tap, Tap) for tap in taps):
        # later entries for the same module and io replace earlier ones; no names removes a tap
        merged = {(tap.module, tap.io): tap for part in taps for tap in resolve_taps(part)}
        return tuple(tap for tap in merged.values() if tap.names)
    if isinstance(taps, Tap):
        return (taps,)
    if isinstance(taps, str):
        if taps not in FAMILY_TAPS:
            raise OptionError(f"no built-in mapping named '{taps}'; choose one of {', '.join(FAMILY_TAPS)}")
        return FAMILY_TAPS[taps]
    if isinstance(taps, Mapping):
        resolved = []
        for pattern, names in taps.items():
            module, io = pattern, "output"
            if pattern.rsplit(":", 1)[-1] in _IO_SUFFIXES:
                module, io = pattern.rsplit(":", 1)
            names = (names,) if isinstance(names, str) else tuple(names)
            resolved.append(Tap(module=module, names=names, io=io))
        return tuple(resolved)
    return tuple(taps)


def _compile(pattern: str) -> re.Pattern:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:] + r"\Z")
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\*", r"[^.]+")
    return re.compile(regex + r"\Z")


class ModuleTracer:
    """Hooks the modules `taps` name; a context manager that always removes its hooks.

        with ModuleTracer(model, taps) as tracer:
            model(input_ids)
        tensors = tracer.tensors
    """

    def __init__(self, model, taps: TapsLike, *, checkpoints: str | None = None, weights: bool = False,
                 copy: bool = True) -> None:
        self.model = model
        self.taps = resolve_taps(taps)
        self.checkpoints = checkpoints
        self.weights = weights  # also record each output-tapped module's own parameters
        # copy=False keeps each recorded tensor as the forward made it, with its version counter;
        # `overwritten()` then names any that the forward changed in place after it was recorded.
        self.copy = copy
        self.tensors: dict[str, Any] = {}
        self._versions: dict[str, int] = {}
        self.matched: set[Tap] = set()
        self._stack = ExitStack()

    def __repr__(self) -> str:
        return f"<ModuleTracer {len(self.taps)} taps, {len(self.tensors)} tensors recorded>"

    def __enter__(self) -> "ModuleTracer":
        try:
            attention_listeners = {}
            for path, module in self.model.named_modules():
                for tap in self.taps:
                    match = _compile(tap.module).match(path)
                    if match is None:
                        continue
                    names = tuple(_fill(name, match) for name in tap.names)
                    self.matched.add(tap)
                    if tap.io == "attention":
                        attention_listeners[id(module)] = self._attention_listener(names)
                    else:
                        self._hook(module, tap.io, names)
                    if self.weights and tap.io == "output" and len(names) == 1 and self._wanted(names[0]):
                        for parameter, value in module.named_parameters(recurse=False):
                            self.tensors.setdefault(f"{names[0]}.{parameter}", value.detach().to("cpu").clone())
            if attention_listeners:
                from parity.capture.hf_attention import is_hf_model, recording_attention

                if is_hf_model(self.model):
                    self._stack.enter_context(recording_attention(self.model, attention_listeners))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _wanted(self, name: str) -> bool:
        return bool(name) and bool(select([name], self.checkpoints))

    def _store(self, name: str, tensor) -> None:
        if not self._wanted(name) or name in self.tensors:  # first call wins if a module runs twice
            return
        recorded = tensor.detach()
        copied = self.copy or recorded.device.type != "cpu"
        stored = _canonical_layout(name, recorded.to("cpu", copy=True) if copied else recorded)
        if not copied:
            self._versions[name] = stored._version  # a view shares it with the tensor the forward goes on using
        self.tensors[name] = stored

    def overwritten(self) -> list[str]:
        """Checkpoints recorded without a copy whose tensor the forward then changed in place."""
        return [name for name, version in self._versions.items() if self.tensors[name]._version != version]

    def _hook(self, module, io: str, names: tuple[str, ...]) -> None:
        if io == "input":
            def on_input(_module, args):
                if args:
                    self._store_split(names, args[0])
            self._stack.callback(module.register_forward_pre_hook(on_input).remove)
        elif io == "output":
            def on_output(_module, _args, output):
                self._store_split(names, _first_tensor(output))
            self._stack.callback(module.register_forward_hook(on_output).remove)
        else:
            raise OptionError(f"tap io must be 'input', 'output' or 'attention', got '{io}'")

    def _store_split(self, names: tuple[str, ...], tensor) -> None:
        if tensor is None:
            return
        if len(names) == 1:
            self._store(names[0], tensor)
            return
        if tensor.shape[-1] % len(names):
            raise CaptureError(
                f"cannot split a fused output of width {tensor.shape[-1]} evenly into {', '.join(names)}"
            )
        for name, part in zip(names, tensor.chunk(len(names), dim=-1)):
            self._store(name, part)

    def _attention_listener(self, names: tuple[str, ...]) -> Callable:
        query_name, key_name, probabilities_name = (names + ("", "", ""))[:3]

        def listen(query, key, probabilities) -> None:
            self._store(query_name, query.transpose(1, 2))  # (B, H, T, hd) -> (B, T, H, hd)
            self._store(key_name, key.transpose(1, 2))
            if probabilities is not None:
                self._store(probabilities_name, probabilities)  # (B, H, T, S)

        return listen


def _fill(name: str, match: re.Match) -> str:
    return name.replace("{i}", match.group("i")) if "{i}" in name else name


def _first_tensor(output):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return getattr(output, "logits", None)


def _canonical_layout(name: str, tensor):
    """Drop a batch axis of one and flatten heads: (1, T, H, hd) -> (T, H*hd).

    Ports mix batched and unbatched tensors, so a leading axis of size 1 is taken
    for the batch wherever it appears; for one-token inputs, where that guess can
    be wrong, the comparison aligns tensors that differ only by axes of size 1."""
    if tensor.ndim >= 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    checkpoint = parse(name)
    if checkpoint is not None and checkpoint.kind in HEAD_KINDS and tensor.ndim == 3:
        tensor = tensor.reshape(tensor.shape[0], -1)
    return tensor


def trace_module(
    model,
    tokens,
    *,
    taps: TapsLike = "hf",
    checkpoints: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    forward: Callable | None = None,
    weights: bool = False,
) -> Trace:
    """Run one forward pass of `model` over `tokens` and return the checkpoints `taps` name.

    `tokens` is a list of ids or a (1, T) tensor; `forward(model, input_ids)` replaces
    `model(input_ids)` for models with another calling convention; `weights` also
    records each tapped module's own parameters (`layers.3.q.weight`). When no tap
    records `logits`, the forward's return value (a tensor, a tuple's first
    tensor, or `.logits`) is used.
    """
    import torch

    input_ids = _input_ids(tokens, model)
    # Record the forward's own tensors without copying them; if the forward changed one in
    # place after it was recorded, run it again copying each as it arrives.
    tracer, output = _traced_forward(model, input_ids, taps, checkpoints, weights, forward, copy=False)
    if tracer.overwritten():
        tracer, output = _traced_forward(model, input_ids, taps, checkpoints, weights, forward, copy=True)
    tensors = dict(tracer.tensors)
    logits = _first_tensor(output)
    if "logits" not in tensors and logits is not None and select(["logits"], checkpoints):
        tensors["logits"] = _canonical_layout("logits", logits.detach().cpu())
    if not tensors:
        raise CaptureError(
            f"no checkpoint was recorded from {type(model).__name__}: none of its module paths matched the taps; "
            f"list them with [name for name, _ in model.named_modules()] and map them (see docs/capture.md)"
        )
    base = {
        "producer": f"torch:{type(model).__module__}.{type(model).__name__}",
        "dtype": _dtype_of(model),
        "tokens": input_ids.reshape(-1).tolist(),
    }
    return make_trace(tensors, {**base, **(metadata or {})})


def _traced_forward(model, input_ids, taps, checkpoints, weights, forward, *, copy: bool):
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ModuleTracer(model, taps, checkpoints=checkpoints, weights=weights, copy=copy) as tracer:
            output = forward(model, input_ids) if forward else model(input_ids)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        raise CaptureError(f"the forward pass of {type(model).__name__} failed: {error}") from error
    finally:
        model.train(was_training)
    return tracer, output


def _input_ids(tokens, model):
    import torch

    ids = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    ids = ids.reshape(1, -1)  # (T,) -> (1, T)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "meta":  # weights offloaded by accelerate: its hooks move inputs where each module runs
        device = torch.device("cpu")
    return ids.to(device)


def _dtype_of(model) -> str | None:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return None
