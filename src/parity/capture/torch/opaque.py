"""A candidate parity cannot see inside: a function of token ids that returns logits.

    def build(model_path):                      # FILE.py:build
        port = my_port.load("model.bin")        # a binding to a C++ or Rust port, a numpy port, an AOTInductor
        return lambda input_ids: port.forward(np.asarray(input_ids))     # package: (1, T) int64 -> (1, T, V)

Its logits are compared (and the greedy run, and everything else that needs logits
alone); each layer is "not checked", with the reason. The function is called as a
module's forward is: with a (1, T) int64 tensor of token ids, on the CPU; it returns
the logits as a tensor or an array, (1, T, V) or (T, V), or an object with `.logits`
(a transformers output). A module whose structure names no decoder blocks is checked
the same way (capture/torch/candidate.py: `hidden`).

A function that can show what it computes returns a mapping instead: {"logits": ...,
"layers.0.attn_norm": ..., "layers.0.q": ...}, each tensor under its checkpoint name
(docs/trace-format.md), in any layout a Probe reads ([T, H, hd], [H, T, S], ...). Those
checkpoints are then compared too, each through a Probe of its own; which it returns
is read off one call on two tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from parity.core.errors import CaptureError
from parity.core.names import HEAD_KINDS, parse


class OpaqueModel(torch.nn.Module):
    """A function of token ids as a module: what parity calls, hooks and times as it does any module. It holds no
    parameters, so its precision is what it declares (`parity_dtype` on the function), else unknown.

    A function that takes more than the ids (`forward(input_ids, positions=None, cache=None)` returning
    (logits, cache); `start_pos` with a cache it holds itself) is called with them: its module's forward has
    the function's signature, and parity decodes through its cache and places it at far positions as it does
    a module's (docs/porting.md)."""

    def __init__(self, function: Callable, name: str) -> None:
        super().__init__()
        self.function = function
        self.name = name
        declared = getattr(function, "parity_dtype", None)
        if declared is not None:
            self.parity_dtype = declared
        self.takes_more = len(_parameters(function)) > 1
        if self.takes_more:
            self.forward = self._forward_with_arguments()
        self.probes = torch.nn.ModuleDict()              # one Probe per checkpoint it returns beside its logits
        self._intermediates: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"OpaqueModel({self.name})"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:     # (B, T) -> (B, T, V)
        return self._logits(self.function(input_ids))

    def _forward_with_arguments(self) -> Callable:
        """A forward taking what the function takes, its signature the function's; (logits, cache, ...) kept."""
        import inspect

        def forward(*args, **kwargs):
            output = self.function(*args, **kwargs)
            if isinstance(output, (tuple, list)) and output:
                return (self._logits(output[0]), *output[1:])
            return self._logits(output)

        forward.__signature__ = inspect.signature(self.function)
        return forward

    def intermediates(self) -> tuple[str, ...]:
        """The checkpoints the function returns beside its logits, read off one call on two tokens (once): each
        given a Probe and named in its `parity_taps`. () where it returns its logits alone, or that call fails
        (the check's own call then says why)."""
        if self._intermediates is not None:
            return self._intermediates
        self._intermediates = ()
        try:
            with torch.no_grad():
                output = self.function(torch.zeros((1, 2), dtype=torch.int64))
        except Exception:   # noqa: BLE001  (the user's code; its check says what fails, where it does)
            return ()
        output = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(output, Mapping):
            self._intermediates = tuple(name for name in self._checked_names(output) if name != "logits")
            layout = getattr(self.function, "parity_layout", None)   # its per-head tensors' axes, where declared
            for name in self._intermediates:
                self.probes[_key(name)] = _new_probe(layout if parse(name).kind in HEAD_KINDS else None)
            if self._intermediates:
                self.parity_taps = {f"probes.{_key(name)}": name for name in self._intermediates}
        return self._intermediates

    def _checked_names(self, output: Mapping) -> list[str]:
        """The keys of a returned mapping, each "logits" or a checkpoint name; CaptureError naming one that is not."""
        names = list(output)
        if "logits" not in names:
            raise CaptureError(f"{self.name} returned a mapping without \"logits\" ({', '.join(map(str, names[:4]))}); "
                               "return the logits under \"logits\", beside the checkpoints it shows")
        stray = next((name for name in names if name != "logits" and (not isinstance(name, str) or parse(name) is None)),
                     None)
        if stray is not None:
            raise CaptureError(f"{self.name} returned {stray!r}, which is not a checkpoint name; name each tensor by "
                               "its checkpoint (layers.0.q, layers.0.attn_probs, ...: docs/trace-format.md)")
        return names

    def _shown(self, output: Mapping):
        """The logits of a returned mapping, its other tensors handed to their Probes (recorded while traced)."""
        for name in self._checked_names(output):
            if name != "logits" and _key(name) in self.probes:
                self.probes[_key(name)](self._tensor(name, output[name]))
        return output["logits"]

    def _tensor(self, name: str, value) -> torch.Tensor:
        """A returned checkpoint as a tensor; CaptureError naming it where it is not numbers."""
        if isinstance(value, torch.Tensor):
            return value
        array = np.asarray(value) if not isinstance(value, (str, bytes)) else None
        if array is None or array.dtype.kind not in "fiub":
            raise CaptureError(f"{self.name} returned {name} as {type(value).__name__}, not a tensor or an array of "
                               "numbers")
        return torch.from_numpy(np.ascontiguousarray(array))

    def _logits(self, output) -> torch.Tensor:
        """What the function returned as (B, T, V) logits, as a module's forward returns them."""
        if isinstance(output, Mapping):
            output = self._shown(output)
        output = getattr(output, "logits", output)
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        if not isinstance(output, torch.Tensor):
            try:
                array = np.asarray(output)
            except (TypeError, ValueError):
                array = None
            if array is None or array.dtype.kind != "f":
                raise CaptureError(f"{self.name} returned {type(output).__name__}, not logits; return a tensor or "
                                   "an array of (1, T, V) or (T, V) floats")
            output = torch.from_numpy(np.ascontiguousarray(array))
        if output.ndim not in (2, 3) or not output.is_floating_point():
            raise CaptureError(f"{self.name} returned a {output.dtype} tensor of shape {list(output.shape)}, not "
                               "logits; return (1, T, V) or (T, V) floats")
        return output[None] if output.ndim == 2 else output       # (T, V) -> (1, T, V)


def _key(name: str) -> str:
    """A checkpoint name as a module's name (which holds no dots): layers.0.q -> layers_0_q."""
    return name.replace(".", "_")


def _new_probe(layout: str | None):
    from parity.capture.torch.probe import Probe

    return Probe(layout=layout)


def _parameters(function: Callable) -> list:
    import inspect

    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):     # a builtin or a binding Python cannot read: called with the ids alone
        return []


def is_opaque(model) -> bool:
    return isinstance(model, OpaqueModel)


def why_hidden(model, spec: str) -> str | None:
    """Why none of a module's layers can be seen, where what it is says so: a function of token ids, or a module
    holding no modules and no parameters (a compiled blob's wrapper). None for any other module (whether its
    naming maps is for its mapping to say)."""
    if is_opaque(model):
        if model.intermediates():
            return None
        return (f"{model.name} is a function of token ids: parity sees only the logits it returns; to compare its "
                "layers, return them beside the logits ({\"logits\": ..., \"layers.0.q\": ...}), return a "
                "torch.nn.Module that records them (docs/capture.md) or write a trace of them (docs/trace-format.md)")
    if len(list(model.modules())) == 1 and not any(True for _ in model.parameters()):
        return (f"{spec} holds no modules and no parameters (a compiled program or a binding, run as one call): "
                "parity sees only the logits its forward returns; to compare its layers, record them "
                "(docs/capture.md) or write a trace of them (docs/trace-format.md)")
    return None


# What a function cannot give: what it would need to take beyond the ids (a function of the ids alone), and
# what no function shows.
NEEDS_ARGUMENT = {"decode": "cache", "cache": "cache", "chunked_prefill": "cache", "padding": "attention mask"}
SHOWS_NOTHING = ("replay", "gradients", "weights", "raw")


def function_cannot(model: OpaqueModel, capability: str) -> str | None:
    """Why the function cannot give `capability`, where what it is says so; else None (then tried as a module's
    forward is)."""
    if capability in SHOWS_NOTHING:
        return f"{model.name} is a function of token ids: parity sees none of its parameters or modules"
    if capability in NEEDS_ARGUMENT and not model.takes_more:
        return (f"{model.name} is a function of token ids, called on whole sequences: it takes no "
                f"{NEEDS_ARGUMENT[capability]} (a function or module whose forward takes one can be checked so, "
                "docs/porting.md)")
    return None


def returned_precision(model) -> str | None:
    """The precision of a module that holds no floating-point parameters and declares none, read off the logits
    it returns for two tokens: 16-bit logits are that precision (a forward cannot compute finer than it
    returns); float32 logits every one of which is a bfloat16 (or a float16) are a 16-bit computation widened
    at the end (a float32 one makes such values by chance with odds of 2^-16 each). None where nothing says
    (float32 values, or none but whole numbers) or the call fails."""
    try:
        with torch.no_grad():
            output = model(torch.zeros((1, 2), dtype=torch.int64))
    except Exception:   # noqa: BLE001  (the user's code; its check says what fails, where it does)
        return None
    from parity.capture.torch.layout import first_tensor

    logits = first_tensor(output)
    if logits is None or not logits.is_floating_point():
        return None
    if logits.dtype in (torch.bfloat16, torch.float16):
        return str(logits.dtype).removeprefix("torch.")
    if logits.dtype != torch.float32 or not bool((logits != logits.round()).any()):
        return None
    for narrow in (torch.bfloat16, torch.float16):     # bfloat16's values are mostly float16's too: it first
        if torch.equal(logits.to(narrow).to(torch.float32), logits):
            return str(narrow).removeprefix("torch.")
    return None
