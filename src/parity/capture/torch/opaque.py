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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from parity.core.errors import CaptureError


class OpaqueModel(torch.nn.Module):
    """A function of token ids as a module: what parity calls, hooks and times as it does any module. It holds no
    parameters, so its precision is what it declares (`parity_dtype` on the function), else unknown."""

    def __init__(self, function: Callable, name: str) -> None:
        super().__init__()
        self.function = function
        self.name = name
        declared = getattr(function, "parity_dtype", None)
        if declared is not None:
            self.parity_dtype = declared

    def __repr__(self) -> str:
        return f"OpaqueModel({self.name})"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:     # (B, T) -> (B, T, V)
        output = self.function(input_ids)
        output = getattr(output, "logits", output)
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        if isinstance(output, torch.Tensor):
            return output
        try:
            array = np.asarray(output)
        except (TypeError, ValueError):
            array = None
        if array is None or array.dtype.kind != "f" or array.ndim not in (2, 3):
            raise CaptureError(f"{self.name} returned {type(output).__name__}, not logits; return a tensor or an "
                               "array of (1, T, V) or (T, V) floats")
        return torch.from_numpy(np.ascontiguousarray(array))


def is_opaque(model) -> bool:
    return isinstance(model, OpaqueModel)


def why_hidden(model: OpaqueModel) -> str:
    return (f"{model.name} is a function of token ids: parity sees only the logits it returns; to compare its "
            "layers, return a torch.nn.Module that records them (docs/capture.md) or write a trace of them "
            "(docs/trace-format.md)")


def returned_precision(model) -> str | None:
    """The precision of a module that holds no floating-point parameters and declares none, read off the logits
    it returns for two tokens where they are 16-bit (a forward cannot compute finer than it returns); None where
    they are float32 (a 16-bit computation may return them widened) or the call fails."""
    try:
        with torch.no_grad():
            output = model(torch.zeros((1, 2), dtype=torch.int64))
    except Exception:   # noqa: BLE001  (the user's code; its check says what fails, where it does)
        return None
    from parity.capture.torch.layout import first_tensor

    logits = first_tensor(output)
    if logits is None or logits.dtype not in (torch.bfloat16, torch.float16):
        return None
    return str(logits.dtype).removeprefix("torch.")
