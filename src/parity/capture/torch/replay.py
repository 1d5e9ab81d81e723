"""Replay: run a PyTorch candidate's modules on the reference's inputs, to measure each one's own error.

A normal run mixes two errors at every checkpoint: the one its op makes and the
one it inherits. Replay feeds each module the reference's value of its input
and records its output, as Polygraphy's layerwise inputs and torch's shadow
modules do, so the error left is the module's own.

Which checkpoint a module's input is gets found by value: in a normal run, the
module's first input is compared with the checkpoints the candidate recorded,
and the one it equals names it. The reference's value is fed in the candidate's own layout:
where the candidate keeps a checkpoint another way (q and k in the interleaved RoPE order,
core/conventions.py), the adaptation is inverted first (conventions.as_stored). Two passes:
  - blocks: only the blocks' inputs are replaced (each layer in isolation);
  - ops:    every tapped module's input is replaced (each op in isolation).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from parity.capture.torch.module import input_ids_of
from parity.capture.torch.taps import compile_pattern, fill_layer, resolve_taps, TapsLike
from parity.capture.torch.tracer import ModuleTracer
from parity.core.conventions import adapt, as_stored
from parity.core.names import inputs_of, parse
from parity.core.trace import Trace, make_trace


@dataclass(frozen=True)
class Replay:
    blocks: Trace   # block outputs, each block fed the reference's input
    ops: Trace      # every checkpoint, each tapped module fed the reference's input

    def __repr__(self) -> str:
        return f"<Replay {len(self.blocks.tensors)} block outputs, {len(self.ops.tensors)} op outputs>"


def replay_module(model, reference: Trace, *, taps: TapsLike, checkpoints: str | None = None) -> Replay:
    import torch

    input_ids = input_ids_of(reference.tokens, model)
    feeds, recorded = _module_inputs(model, input_ids, taps, checkpoints)     # module path -> checkpoint name
    blocks = {path: name for path, name in feeds.items() if _is_block(path, model, taps)}
    stored, _ = adapt(reference, make_trace(recorded))                         # the candidate's conventions
    fed = {name: value for name in set(feeds.values()) if name in reference
           and (value := as_stored(stored, name, reference[name])) is not None}   # in the candidate's layout
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            traces = [_replayed(model, input_ids, fed, reference.tokens, taps, checkpoints, substitutions)
                      for substitutions in (blocks, feeds)]
    finally:
        model.train(was_training)
    return Replay(*traces)


def _module_inputs(model, input_ids, taps, checkpoints) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(module path -> the checkpoint its first input equals, for each module that produces a checkpoint;
    the checkpoints a normal run records)."""
    import torch

    inputs, produced = {}, {}
    with ExitStack() as stack, torch.no_grad():
        tracer = stack.enter_context(ModuleTracer(model, taps, checkpoints=checkpoints))
        for path, module, names in _tapped_modules(model, taps):
            produced[path] = names

            def remember(_module, args, path=path):
                if args and isinstance(args[0], torch.Tensor) and path not in inputs:
                    inputs[path] = args[0].detach().to("cpu").float().numpy()

            stack.callback(module.register_forward_pre_hook(remember).remove)
        model(input_ids)
    recorded = {name: tensor.float().numpy() for name, tensor in tracer.tensors.items()}
    feeds = {path: name for path, value in inputs.items()
             if (name := _identify(value, recorded, produced[path])) is not None}
    return feeds, recorded


def _identify(value: np.ndarray, recorded: dict[str, np.ndarray], own: tuple[str, ...]) -> str | None:
    flat = value.reshape(-1)
    expected = {source for name in own for source in inputs_of(name, recorded)}
    candidates = [name for name in recorded if name not in own and recorded[name].size == flat.size]
    for name in sorted(candidates, key=lambda n: n not in expected):          # the data-flow input first
        if np.array_equal(recorded[name].reshape(-1), flat):
            return name
    return None


def _tapped_modules(model, taps):
    """(path, module, checkpoint names) of every module an output tap records."""
    resolved = [tap for tap in resolve_taps(taps) if tap.io == "output"]
    for path, module in model.named_modules():
        for tap in resolved:
            match = compile_pattern(tap.module).match(path)
            if match:
                yield path, module, tuple(fill_layer(name, match) for name in tap.names if name)


def _is_block(path: str, model, taps) -> bool:
    return any(path == tapped and any(parse(n) and parse(n).kind == "out" for n in names)
               for tapped, _, names in _tapped_modules(model, taps))


def _replayed(model, input_ids, fed: dict[str, np.ndarray], tokens, taps, checkpoints,
              substitutions: dict[str, str]) -> Trace:
    """The candidate's checkpoints with each module in `substitutions` given the reference's value of its
    input (`fed`: checkpoint -> that value in the candidate's layout)."""
    import torch

    modules = dict(model.named_modules())
    with ExitStack() as stack:
        # The tracer's hooks go first: an input tap records what the candidate computed (inline code
        # such as a residual add, from substituted inputs), and only then is the input replaced.
        tracer = stack.enter_context(ModuleTracer(model, taps, checkpoints=checkpoints))
        for path, name in substitutions.items():
            if name not in fed:
                continue
            value = torch.from_numpy(np.ascontiguousarray(fed[name]))

            def substitute(_module, args, value=value):
                original = args[0]
                if value.numel() != original.numel():
                    return None
                return (value.reshape(original.shape).to(original.dtype).to(original.device), *args[1:])

            stack.callback(modules[path].register_forward_pre_hook(substitute).remove)
        model(input_ids)
    return make_trace(dict(tracer.tensors), {"producer": "replay", "tokens": list(tokens or [])})
