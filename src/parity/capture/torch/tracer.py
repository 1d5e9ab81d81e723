"""ModuleTracer: forward hooks on the modules taps name, recording each checkpoint as the forward makes it."""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import ExitStack
from typing import Any

from parity.capture.torch.compiled import compiled_within
from parity.capture.torch.layout import canonical_layout, first_tensor
from parity.capture.torch.quantized import Quantization, dequantized, packed_parameters, packed_storage
from parity.capture.torch.rows import RowBlocks
from parity.capture.torch.taps import (TapsLike, fill_layer, holds_weights, index_taps, matching_taps,
                                      resolve_taps)
from parity.core.errors import CaptureError, OptionError
from parity.core.names import RAW_PREFIX, TAP_IOS, Tap, parse, select


class ModuleTracer:
    """Hooks the modules `taps` name; a context manager that always removes its hooks.

        with ModuleTracer(model, taps) as tracer:
            model(input_ids)
        tensors = tracer.tensors
    """

    def __init__(self, model, taps: TapsLike, *, checkpoints: str | None = None, weights: bool = False,
                 raw: bool = False, token_count: int | None = None, copy: bool = True, sink=None,
                 host: bool = True, heads: Collection[int] = (), recipes=None, stream=None) -> None:
        self.model = model
        self.taps = resolve_taps(taps)
        self.checkpoints = checkpoints
        self.weights = weights  # also record each output-tapped module's own parameters
        self.raw = raw          # also record every module no tap names, as raw.<path>
        self.token_count = token_count  # T, to tell a head-major per-head tensor from a token-major one
        self.heads = frozenset(heads)   # the config's head counts, for the same
        # copy=False keeps each recorded tensor as the forward made it, with its version counter;
        # `overwritten()` then names any that the forward changed in place after it was recorded.
        self.copy = copy
        # sink: an object with put(name, tensor) and `name in sink` that takes each checkpoint as it is
        # recorded (capture/torch/streaming.py writes it to disk); `tensors` then holds the parameters alone
        self.sink = sink
        # host=False keeps each checkpoint on the device that made it (on-device reduction): a copy, where
        # one is made, is a clone there; the sink then takes the tensor as recorded, while the forward waits
        self.host = host
        # recipes (capture/hf/recipes.py): keeps what rebuilds the attention probabilities in their place;
        # stream (core/streamed.py): takes the checkpoints it wants as they are made, measured and let go
        self.recipes, self.stream = recipes, stream
        self.streamed: set[str] = set()
        self.tensors: dict[str, Any] = {}
        self.quantized: dict[str, Quantization] = {}   # recorded parameters a quantized build holds as integers
        self._holding_weights: list = []   # (module, checkpoint) whose parameters are recorded after the forward
        self.row_blocks = RowBlocks(token_count)   # checkpoints a port's Probe is given a block of rows at a time
        self._versions: dict[str, int] = {}
        self._copying_from: set[Any] = set()  # CUDA devices with copies to the host still queued
        self.matched: set[Tap] = set()
        self._stack = ExitStack()
        # inside a compiled module (capture/torch/compiled.py) a hook only keeps a copy of its tensors, which the
        # graph then hands back; what is recorded of them is worked out after the forward (`_take`)
        self.deferred = compiled_within(model)
        self._pending: list = []   # (how to record, the tensors a hook kept), in the order the forward made them
        self._hooks = 0            # hooks added
        self.kept = 0              # what the hooks of a compiled module kept in the last forward

    def __repr__(self) -> str:
        return f"<ModuleTracer {len(self.taps)} taps, {len(self.tensors)} tensors recorded>"

    def __enter__(self) -> "ModuleTracer":
        try:
            attention_listeners = {}
            exact, patterns = index_taps(self.taps)
            for path, module in self.model.named_modules():
                found = False
                for tap, match in matching_taps(path, exact, patterns):
                    found = True
                    names = tuple(fill_layer(name, match) for name in tap.names)
                    self.matched.add(tap)
                    if tap.io == "attention":
                        attention_listeners[id(module)] = self._attention_listener(names)
                    elif any(names) and tap.io != "weights":
                        self._hook(module, tap, names)
                    if self.weights and holds_weights(tap, names) and self._wanted(names[0]):
                        self._holding_weights.append((module, names[0]))
                if self.raw and not found and path and not _computes_nothing(module) and not _inside_experts(path):
                    self._hook(module, Tap(path, (RAW_PREFIX + path,)), (RAW_PREFIX + path,))
            if attention_listeners:
                from parity.capture.hf.attention import is_hf_model, listening, recording_attention

                from parity.capture.torch.exported import is_exported_module

                if is_exported_module(self.model):   # its graph tells them (capture/torch/exported/)
                    self._stack.enter_context(listening(attention_listeners))
                elif is_hf_model(self.model):
                    self._stack.enter_context(recording_attention(self.model, attention_listeners))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        try:
            self._stack.close()
            if exc_type is None:
                self.kept = len(self._pending)
                for record, kept in self._pending:
                    record(*kept)
                # read after the forward: a quantized layer may settle its storage there (bitsandbytes moves its
                # row scales, repacks 4-bit blocks for its CPU kernel and rounds their scales to bfloat16)
                for module, checkpoint in self._holding_weights:
                    self._record_parameters(module, checkpoint)
                for name, whole in self.row_blocks.finish().items():
                    self._record(name, whole, lambda tensor: tensor)
        finally:
            self._pending.clear()
            self._wait_for_copies()

    def _wait_for_copies(self) -> None:
        """Device tensors are copied to the host in the device's stream order, without stopping the
        forward at each checkpoint; the copies are complete once the device has caught up."""
        if self._copying_from:
            import torch

            for device in self._copying_from:
                torch.cuda.synchronize(device)
            self._copying_from.clear()

    def _record_parameters(self, module, checkpoint: str) -> None:
        """The module's own parameters (packed ones of a torch.ao quantized module too), as float tensors; a
        quantized one's format and rounding kept in `quantized`."""
        storage = packed_storage(module)
        parameters = {**{name: value for name, value in module.named_parameters(recurse=False) if name not in storage},
                      **packed_parameters(module)}
        for parameter, value in parameters.items():
            name = f"{checkpoint}.{parameter}"
            if name in self.tensors:
                continue
            tensor, quantization = dequantized(_resident(module, parameter) if parameter in module._parameters
                                               else value, module)
            self.tensors[name] = _as_linear(module, parameter, tensor)
            if quantization is not None:
                self.quantized[name] = quantization

    def _wanted(self, name: str) -> bool:
        return bool(name) and bool(select([name], self.checkpoints))

    def _store(self, name: str, tensor, layout: str | None = None, start: int | None = None) -> None:
        """Record a checkpoint (the first call wins if a module runs twice); `layout`: its axes, when declared;
        `start`: the tensor holds rows start.. of the token axis (a port's Probe given a block of rows)."""
        if tensor is None or not self._wanted(name) or name in self.tensors:
            return
        if tensor.is_complex():   # Llama 4's RoPE table (freqs_cis): its real and imaginary parts, (..., 2)
            import torch

            tensor = torch.view_as_real(tensor)
        if start is not None:
            self._store_rows(name, tensor.detach(), layout, start)
        elif name not in self.streamed:
            self._record(name, tensor, lambda recorded: self._canonical(name, recorded, layout))

    def _store_rows(self, name: str, block, layout: str | None, start: int) -> None:
        """A block of rows: measured as it comes where the checkpoint streams, else kept until the blocks cover
        every row and recorded whole. Its layout is read from the head counts (a block has fewer rows than the
        pass has tokens) or as declared."""
        block = canonical_layout(name, block, heads=self.heads, declared=layout)
        if self._streams(name):
            self.stream.put(name, _host_float(block), start)
            self.streamed.add(name)
            return
        if self.sink is not None and name in self.sink:
            return
        # a copy: the blocks are held until the last one comes, and the forward may reuse or change a block's
        # memory once it has passed the probe (held as copies, they take what the port's own would)
        whole = self.row_blocks.add(name, self._copy(block), start)
        if whole is not None:
            self._record(name, whole, lambda tensor: tensor)

    def _record(self, name: str, tensor, canonical: Callable) -> None:
        """Record a checkpoint: measured where it streams, handed to the sink, or kept; `canonical` puts it in
        the trace's layout."""
        if self._streams(name):
            self.stream.put(name, _host_float(canonical(tensor.detach())))
            self.streamed.add(name)
            return
        if self.sink is not None:
            if name not in self.sink:
                self._send(name, tensor.detach(), canonical)
            return
        recorded = tensor.detach()
        # an inference-mode tensor (Meta's forward runs under torch.inference_mode) has no version counter to
        # tell whether the forward changes it later: copied as it comes
        copied = self.copy or (self.host and recorded.device.type != "cpu") or recorded.is_inference()
        stored = canonical(self._copy(recorded) if copied else recorded)
        if not copied:
            self._versions[name] = stored._version  # a view shares it with the tensor the forward goes on using
        self.tensors[name] = stored

    def _canonical(self, name: str, tensor, layout: str | None):
        return canonical_layout(name, tensor, token_count=self.token_count, heads=self.heads, declared=layout)

    def _send(self, name: str, recorded, canonical: Callable) -> None:
        """Hand a checkpoint to the sink: the forward's own tensor (the sink checks its version counter
        once written), or a host copy, with the event that says a device's copy has landed."""
        if not self.host:   # the sink uses the tensor now, on its device, before the forward goes on
            copied = self.copy or recorded.is_inference()
            self.sink.put(name, canonical(recorded.clone() if copied else recorded), owned=copied)
            return
        copied = self.copy or recorded.device.type != "cpu" or recorded.is_inference()
        stored = canonical(self._host_copy(recorded) if copied else recorded)
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

    def _take(self, record: Callable, *tensors) -> None:
        """Hand what a hook was given to `record`: at once, or, inside a compiled module, a copy of it kept as
        the graph makes it and recorded after the forward (recording it there would break the graph)."""
        if self.deferred:
            self._pending.append((record, tuple(_kept(tensor) for tensor in tensors)))
        else:
            record(*tensors)

    @property
    def hooks_never_ran(self) -> bool:
        """Inside a compiled module, hooks were added and none ran: the forward ran a graph compiled before they
        were, which dynamo does not guard on hooks by default (capture/torch/compiled.py)."""
        return self.deferred and self._hooks > 0 and self.kept == 0

    def _hook(self, module, tap: Tap, names: tuple[str, ...]) -> None:
        self._hooks += 1
        if tap.io in ("input", "lookup"):
            def record_input(value) -> None:
                if tap.io == "lookup":  # the table row of each id, before any scaling the forward adds
                    import torch

                    value = torch.nn.functional.embedding(value, _resident(module))
                self._store_split(names, value)

            def on_input(_module, args, kwargs):
                value = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_ids"))
                if value is not None:
                    self._take(record_input, value)
            self._stack.callback(module.register_forward_pre_hook(on_input, with_kwargs=True).remove)
        elif tap.io == "heads":
            def record_heads(output, module_input) -> None:
                token_major = self._token_major(output, module_input, names[1] if len(names) > 1 else "")
                self._store(names[0], token_major, "BTHD" if token_major.ndim == 4 else None)

            def on_heads(_module, args, output):
                output = first_tensor(output)
                if output is not None and args:
                    self._take(record_heads, output, args[0])
            self._stack.callback(module.register_forward_hook(on_heads).remove)
        elif tap.io in ("output", "split", "router"):
            layout = getattr(module, "parity_layout", None)   # declared by the port (a Probe's `layout`)
            takes_rows = getattr(module, "parity_takes_rows", False)   # a Probe: its call may give `start`

            def record_output(output, start) -> None:
                if tap.io == "router":
                    self._store_routing(names, output)
                elif tap.io == "split":
                    self._store(names[0], output, start=start)
                    self._store_split(names[1:], output, tap.sizes, start=start)
                else:
                    self._store_split(names, output, tap.sizes, layout, start)

            def on_output(_module, args, kwargs, output):
                start = _rows_start(args, kwargs) if takes_rows else None
                self._take(record_output, output if tap.io == "router" else first_tensor(output), start)
            self._stack.callback(module.register_forward_hook(on_output, with_kwargs=True).remove)
        else:
            raise OptionError(f"tap io must be one of {', '.join(TAP_IOS)}, got '{tap.io}'")

    def _store_split(self, names: tuple[str, ...], tensor, sizes: tuple[int, ...] = (),
                     layout: str | None = None, start: int | None = None) -> None:
        if tensor is None or not names:
            return
        if len(names) == 1:
            self._store(names[0], tensor, layout, start)
            return
        sizes = sizes or self._qkv_widths(names, tensor.shape[-1])
        if sizes and (len(sizes) != len(names) or sum(sizes) != tensor.shape[-1]):
            raise CaptureError(f"cannot split a fused output of width {tensor.shape[-1]} into {', '.join(names)} "
                               f"of widths {', '.join(map(str, sizes))}")
        if not sizes and tensor.shape[-1] % len(names):
            raise CaptureError(
                f"cannot split a fused output of width {tensor.shape[-1]} evenly into {', '.join(names)}"
            )
        parts = tensor.split(list(sizes), dim=-1) if sizes else tensor.chunk(len(names), dim=-1)
        for name, part in zip(names, parts):
            self._store(name, part, start=start)

    def _qkv_widths(self, names: tuple[str, ...], width: int) -> tuple[int, ...]:
        """The widths of a fused q|k|v output from the config's head counts (more query heads than key/value
        heads with grouped-query attention: an even split would cut the wrong places); () when they do not
        tell them."""
        checkpoints = [parse(name) for name in names]
        if [c.kind if c is not None else None for c in checkpoints] != ["q", "k", "v"] or not self.heads:
            return ()
        query, grouped = max(self.heads), min(self.heads)
        if width % (query + 2 * grouped):
            return ()
        head_dim = width // (query + 2 * grouped)
        return (query * head_dim, grouped * head_dim, grouped * head_dim)

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

        def record(query, key, probabilities) -> None:
            self._store(query_name, query.transpose(1, 2), "BTHD")  # (B, H, T, hd) -> (B, T, H, hd)
            self._store(key_name, key.transpose(1, 2), "BTHD")
            if probabilities is not None:
                self._store(probabilities_name, probabilities)  # (B, H, T, S)

        def listen(query, key, probabilities) -> None:
            self._take(record, query, key, probabilities)

        # blocked attention (capture/hf/attention.py) assembles the probabilities only for a listener that keeps them
        listen.wants_probabilities = self._wanted(probabilities_name)
        if listen.wants_probabilities and self.recipes is not None:
            def keep_recipe(*call) -> None:
                self.recipes.keep(probabilities_name, *call)

            listen.keep_recipe = keep_recipe
        if listen.wants_probabilities and self._streams(probabilities_name):
            def take_rows(block, start: int) -> None:                # (B, H, rows, S)
                self.stream.put(probabilities_name, _host_float(block.detach()), start)
                self.streamed.add(probabilities_name)

            listen.take_rows = take_rows
        return listen

    def _streams(self, name: str) -> bool:
        return self.stream is not None and self.stream.wants(name)


def _rows_start(args: tuple, kwargs: dict) -> int | None:
    """A Probe call's `start` (its second argument): None for a whole tensor."""
    start = kwargs.get("start", args[1] if len(args) > 1 else None)
    return None if start is None else int(start) if hasattr(start, "__index__") else start


def _kept(value):
    """A copy of what a hook was given, as the graph makes it (tensors in a router's tuple too); other values as
    they are. The forward may change a tensor in place once its hook has run."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return [_kept(item) for item in value] if isinstance(value, list) else tuple(_kept(item) for item in value)
    return value


def _host_float(tensor):
    """A tensor as a numpy array on the host, a format numpy lacks (bfloat16) widened to float32."""
    import torch

    if tensor.dtype.is_floating_point and tensor.element_size() < 4:
        tensor = tensor.to(torch.float32)
    return tensor.cpu().numpy()


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


def _computes_nothing(module) -> bool:
    """Containers (never called) and modules that are the identity in eval mode."""
    import torch

    return isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Dropout, torch.nn.Identity))


def _resident(module, parameter: str = "weight"):
    """The module's parameter; read from accelerate's offload map when it is on the meta device (an offloaded
    module's weights come in only inside its forward, after the pre-hooks ran), in its dtype."""
    value = getattr(module, parameter)
    if value.device.type != "meta":
        return value
    hook = getattr(module, "_hf_hook", None)
    for candidate in (hook, *getattr(hook, "hooks", ())):
        weights_map = getattr(candidate, "weights_map", None)
        if weights_map is not None and parameter in weights_map:
            return weights_map[parameter].to(dtype=value.dtype, device=getattr(candidate, "execution_device", None)
                                             or "cpu")
    raise CaptureError(f"{type(module).__name__}'s {parameter} is on the meta device and no offload map holds it")


def _inside_experts(path: str) -> bool:
    """A module inside an MoE's experts block: it sees the routed tokens in whatever order and grouping the
    experts' implementation chooses (a loop over experts, or every token sorted by expert at once), so its
    raw output means nothing outside that implementation; the block's own output is compared."""
    return ".experts." in f".{path}"
