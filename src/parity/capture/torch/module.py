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

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from parity.core.errors import CaptureError, OptionError
from parity.core.names import FAMILY_TAPS, HEAD_KINDS, RAW_PREFIX, TAP_IOS, Tap, parse, select
from parity.core.trace import Trace, make_trace

TapsLike = str | Mapping[str, str | Sequence[str]] | Sequence[Tap]
_IO_SUFFIXES = tuple(TAP_IOS)


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
                 raw: bool = False, token_count: int | None = None, copy: bool = True, sink=None,
                 host: bool = True) -> None:
        self.model = model
        self.taps = resolve_taps(taps)
        self.checkpoints = checkpoints
        self.weights = weights  # also record each output-tapped module's own parameters
        self.raw = raw          # also record every module no tap names, as raw.<path>
        self.token_count = token_count  # T, to tell a head-major per-head tensor from a token-major one
        # copy=False keeps each recorded tensor as the forward made it, with its version counter;
        # `overwritten()` then names any that the forward changed in place after it was recorded.
        self.copy = copy
        # sink: an object with put(name, tensor) and `name in sink` that takes each checkpoint as it is
        # recorded (capture/torch/streaming.py writes it to disk); `tensors` then holds the parameters alone
        self.sink = sink
        # host=False keeps each checkpoint on the device that made it (on-device reduction): a copy, where
        # one is made, is a clone there; the sink then takes the tensor as recorded, while the forward waits
        self.host = host
        self.tensors: dict[str, Any] = {}
        self._versions: dict[str, int] = {}
        self._copying_from: set[Any] = set()  # CUDA devices with copies to the host still queued
        self.matched: set[Tap] = set()
        self._stack = ExitStack()

    def __repr__(self) -> str:
        return f"<ModuleTracer {len(self.taps)} taps, {len(self.tensors)} tensors recorded>"

    def __enter__(self) -> "ModuleTracer":
        try:
            attention_listeners = {}
            exact, patterns = _index(self.taps)
            for path, module in self.model.named_modules():
                found = False
                for tap, match in _matches(path, exact, patterns):
                    found = True
                    names = tuple(_fill(name, match) for name in tap.names)
                    self.matched.add(tap)
                    if tap.io == "attention":
                        attention_listeners[id(module)] = self._attention_listener(names)
                    elif any(names):
                        self._hook(module, tap, names)
                    if self.weights and (tap.io == "heads" or (tap.io == "output" and len(names) == 1)) and self._wanted(names[0]):
                        for parameter, value in module.named_parameters(recurse=False):
                            self.tensors.setdefault(f"{names[0]}.{parameter}", _as_linear(module, parameter, value))
                if self.raw and not found and path and not _computes_nothing(module):
                    self._hook(module, Tap(path, (RAW_PREFIX + path,)), (RAW_PREFIX + path,))
            if attention_listeners:
                from parity.capture.hf.attention import is_hf_model, recording_attention

                if is_hf_model(self.model):
                    self._stack.enter_context(recording_attention(self.model, attention_listeners))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._stack.close()
        finally:
            self._wait_for_copies()

    def _wait_for_copies(self) -> None:
        """Device tensors are copied to the host in the device's stream order, without stopping the
        forward at each checkpoint; the copies are complete once the device has caught up."""
        if self._copying_from:
            import torch

            for device in self._copying_from:
                torch.cuda.synchronize(device)
            self._copying_from.clear()

    def _wanted(self, name: str) -> bool:
        return bool(name) and bool(select([name], self.checkpoints))

    def _store(self, name: str, tensor) -> None:
        if tensor is None or not self._wanted(name) or name in self.tensors:  # first call wins if a module runs twice
            return
        if self.sink is not None:
            if name not in self.sink:
                self._send(name, tensor.detach())
            return
        recorded = tensor.detach()
        copied = self.copy or (self.host and recorded.device.type != "cpu")
        stored = _canonical_layout(name, self._copy(recorded) if copied else recorded)
        if not copied:
            self._versions[name] = stored._version  # a view shares it with the tensor the forward goes on using
        self.tensors[name] = stored

    def _send(self, name: str, recorded) -> None:
        """Hand a checkpoint to the sink: the forward's own tensor (the sink checks its version counter
        once written), or a host copy, with the event that says a device's copy has landed."""
        if not self.host:   # the sink uses the tensor now, on its device, before the forward goes on
            self.sink.put(name, _canonical_layout(name, recorded.clone() if self.copy else recorded), owned=self.copy)
            return
        copied = self.copy or recorded.device.type != "cpu"
        stored = _canonical_layout(name, self._host_copy(recorded) if copied else recorded)
        ready = None
        if recorded.device.type == "cuda":
            import torch

            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(recorded.device))
        self.sink.put(name, stored, owned=copied, ready=ready)

    def _copy(self, tensor):
        return self._host_copy(tensor) if self.host else tensor.clone()

    def _host_copy(self, tensor):
        """A copy in host memory. From a CUDA device it goes into pinned memory and is queued behind the
        kernels that made the tensor, so a later in-place change cannot reach it; __exit__ waits for it."""
        if tensor.device.type != "cuda":
            return tensor.to("cpu", copy=True)
        import torch

        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        self._copying_from.add(tensor.device)
        return host

    def overwritten(self) -> list[str]:
        """Checkpoints recorded without a copy whose tensor the forward then changed in place."""
        return [name for name, version in self._versions.items() if self.tensors[name]._version != version]

    def _hook(self, module, tap: Tap, names: tuple[str, ...]) -> None:
        if tap.io in ("input", "lookup"):
            def on_input(hooked, args, kwargs):
                value = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_ids"))
                if value is None:
                    return
                if tap.io == "lookup":  # the table row of each id, before any scaling the forward adds
                    import torch

                    value = torch.nn.functional.embedding(value, hooked.weight)
                self._store_split(names, value)
            self._stack.callback(module.register_forward_pre_hook(on_input, with_kwargs=True).remove)
        elif tap.io == "heads":
            def on_heads(_module, args, output):
                output = _first_tensor(output)
                if output is not None and args:
                    self._store(names[0], self._token_major(output, args[0], names[1] if len(names) > 1 else ""))
            self._stack.callback(module.register_forward_hook(on_heads).remove)
        elif tap.io in ("output", "split", "router"):
            def on_output(_module, _args, output):
                if tap.io == "router":
                    self._store_routing(names, output)
                elif tap.io == "split":
                    self._store(names[0], _first_tensor(output))
                    self._store_split(names[1:], _first_tensor(output), tap.sizes)
                else:
                    self._store_split(names, _first_tensor(output), tap.sizes)
            self._stack.callback(module.register_forward_hook(on_output).remove)
        else:
            raise OptionError(f"tap io must be one of {', '.join(TAP_IOS)}, got '{tap.io}'")

    def _store_split(self, names: tuple[str, ...], tensor, sizes: tuple[int, ...] = ()) -> None:
        if tensor is None or not names:
            return
        if len(names) == 1:
            self._store(names[0], tensor)
            return
        if sizes and (len(sizes) != len(names) or sum(sizes) != tensor.shape[-1]):
            raise CaptureError(f"cannot split a fused output of width {tensor.shape[-1]} into {', '.join(names)} "
                               f"of widths {', '.join(map(str, sizes))}")
        if not sizes and tensor.shape[-1] % len(names):
            raise CaptureError(
                f"cannot split a fused output of width {tensor.shape[-1]} evenly into {', '.join(names)}"
            )
        parts = tensor.split(list(sizes), dim=-1) if sizes else tensor.chunk(len(names), dim=-1)
        for name, part in zip(names, parts):
            self._store(name, part)

    def _token_major(self, output, module_input, projection: str):
        """A per-head (B, A, C, hd) output as (B, T, H, hd): the axis of length T is the tokens';
        when both are, the input is compared with the flat projection recorded before."""
        if output.ndim != 4 or self.token_count is None:
            return output
        tokens, first, second = self.token_count, output.shape[1], output.shape[2]
        if first == tokens and second != tokens:
            return output
        if second == tokens and first != tokens:
            return output.transpose(1, 2)
        recorded = self.tensors.get(projection)
        if recorded is not None and recorded.shape == (tokens, first * output.shape[3]):
            head_major = module_input.transpose(1, 2).reshape(recorded.shape).to(recorded.dtype)
            if not module_input[0].reshape(recorded.shape).to(recorded.dtype).equal(recorded) and head_major.equal(recorded):
                return output.transpose(1, 2)
        return output

    def _store_routing(self, names: tuple[str, ...], output) -> None:
        """An MoE router's (logits, top-k weights, top-k ids): the logits; the ids chosen per
        token, ascending; and the weights as a dense (T, E) table, zero for experts not chosen."""
        import torch

        logits_name, experts_name, weights_name = (names + ("", "", ""))[:3]
        if isinstance(output, torch.Tensor):
            self._store(logits_name, output)
            return
        logits, weights, experts = (list(output) + [None, None, None])[:3]
        self._store(logits_name, logits)
        if experts is None or weights is None:
            return
        logits = logits.reshape(-1, logits.shape[-1])                          # (T, E)
        experts, weights = experts.reshape(logits.shape[0], -1), weights.reshape(logits.shape[0], -1)  # (T, k)
        dense = torch.zeros(logits.shape, dtype=weights.dtype, device=weights.device).scatter(1, experts, weights)
        self._store(experts_name, experts.sort(dim=-1).values.to(torch.int64))
        self._store(weights_name, dense)

    def _attention_listener(self, names: tuple[str, ...]) -> Callable:
        query_name, key_name, probabilities_name = (names + ("", "", ""))[:3]

        def listen(query, key, probabilities) -> None:
            self._store(query_name, query.transpose(1, 2))  # (B, H, T, hd) -> (B, T, H, hd)
            self._store(key_name, key.transpose(1, 2))
            if probabilities is not None:
                self._store(probabilities_name, probabilities)  # (B, H, T, S)

        return listen


# Modules that store a matmul's weight as (in, out) where torch.nn.Linear stores (out, in):
# transformers' Conv1D (GPT-2). Their weights are recorded as nn.Linear's, so that a port
# written with nn.Linear compares with them as it should.
IN_OUT_STORAGE = frozenset({"Conv1D"})


def _as_linear(module, parameter: str, value):
    """A parameter as nn.Linear would store it: (out, in) for a weight."""
    value = value.detach().to("cpu")
    if parameter == "weight" and type(module).__name__ in IN_OUT_STORAGE and value.ndim == 2:
        value = value.t()
    return value.contiguous().clone()


def _fill(name: str, match: re.Match | None) -> str:
    return name.replace("{i}", match.group("i")) if match is not None and "{i}" in name else name


def _index(taps: tuple[Tap, ...]):
    """Taps by literal module path, and the compiled patterns of the others
    (a transformers model mapped from its structure has hundreds of literal taps)."""
    exact: dict[str, list[Tap]] = {}
    patterns = []
    for tap in taps:
        if tap.module.startswith("re:") or "{i}" in tap.module or "*" in tap.module:
            patterns.append((tap, _compile(tap.module)))
        else:
            exact.setdefault(tap.module, []).append(tap)
    return exact, patterns


def _matches(path: str, exact, patterns):
    for tap in exact.get(path, ()):
        yield tap, None
    for tap, pattern in patterns:
        match = pattern.match(path)
        if match is not None:
            yield tap, match


def _computes_nothing(module) -> bool:
    """Containers (never called) and modules that are the identity in eval mode."""
    import torch

    return isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Dropout, torch.nn.Identity))


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
    raw: bool = False,
) -> Trace:
    """Run one forward pass of `model` over `tokens` and return the checkpoints `taps` name.

    `tokens` is a list of ids or a (1, T) tensor; `forward(model, input_ids)` replaces
    `model(input_ids)` for models with another calling convention; `weights` also
    records each tapped module's own parameters (`layers.3.q.weight`); `raw` records
    every module no tap names, under `raw.<module path>`. When no tap
    records `logits`, the forward's return value (a tensor, a tuple's first
    tensor, or `.logits`) is used.
    """
    input_ids = _input_ids(tokens, model)
    tensors = recorded_tensors(model, input_ids, taps, forward, checkpoints=checkpoints, weights=weights, raw=raw)
    return make_trace(tensors, {**base_metadata(model, input_ids), **(metadata or {})})


def recorded_tensors(model, input_ids, taps, forward, *, checkpoints: str | None, host: bool = True,
                     **options) -> dict[str, Any]:
    """The checkpoints of one forward pass, by name: on the host, or (host=False) left on the device.

    The forward's own tensors are recorded without copying them; if the forward changed one in place
    after it was recorded, it runs again copying each as it arrives."""
    options = dict(checkpoints=checkpoints, token_count=input_ids.shape[-1], host=host, **options)
    tracer, output = _traced_forward(model, input_ids, taps, forward, copy=False, **options)
    if tracer.overwritten():
        tracer, output = _traced_forward(model, input_ids, taps, forward, copy=True, **options)
    tensors = dict(tracer.tensors)
    logits = returned_logits(output, checkpoints, present=tensors)
    if logits is not None:
        tensors["logits"] = logits.cpu() if host else logits
    if not tensors:
        raise nothing_recorded(model)
    return tensors


def returned_logits(output, checkpoints: str | None, *, present):
    """The forward's return value (a tensor, a tuple's first tensor, or `.logits`) in the canonical layout,
    where no tap recorded `logits` (not in `present`) and the selection wants it; else None."""
    logits = _first_tensor(output)
    if "logits" in present or logits is None or not select(["logits"], checkpoints):
        return None
    return _canonical_layout("logits", logits.detach())


def nothing_recorded(model) -> CaptureError:
    return CaptureError(
        f"no checkpoint was recorded from {type(model).__name__}: none of its module paths matched the taps; "
        f"list them with [name for name, _ in model.named_modules()] and map them (see docs/capture.md)"
    )


def base_metadata(model, input_ids) -> dict:
    """What any trace of a torch module says of its producer, precision and tokens."""
    return {
        "producer": f"torch:{type(model).__module__}.{type(model).__name__}",
        "dtype": _dtype_of(model),
        "tokens": input_ids.reshape(-1).tolist(),
    }


def _traced_forward(model, input_ids, taps, forward, *, copy: bool, sink=None, host: bool = True, **options):
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ModuleTracer(model, taps, copy=copy, sink=sink, host=host, **options) as tracer:
            output = forward(model, input_ids) if forward else model(input_ids)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        raise CaptureError(f"the forward pass of {type(model).__name__} failed: {error}") from error
    finally:
        model.train(was_training)
    return tracer, output


def _input_ids(tokens, model):
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


def _dtype_of(model) -> str | None:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return None
