"""Timing a torch module's prefill and its decoding through its cache (`parity bench`, in the side's process)."""

from __future__ import annotations

import time
from typing import Any

from parity.core.errors import OptionError


class ModuleTimer:
    """Prefill `prompt` in one batch with a fresh cache, then decode `continuation` one token at a time."""

    def __init__(self, module, options, *, described: str) -> None:
        import torch

        from parity.capture.torch.incremental import decode_support
        from parity.capture.torch.module import dtype_of
        from parity.capture.torch.opaque import returned_precision

        torch.set_num_threads(options.threads)
        self.torch, self.device = torch, options.device
        self.model = module.to(device=options.device).eval()
        self.decodes = decode_support(self.model, [0, 1]) is None
        self.decode_note = None if self.decodes else "not measured: the candidate's forward takes no cache"
        config = getattr(self.model, "config", None)
        self.vocab_size = getattr(config, "vocab_size", None) or (config or {}).get("vocab_size") \
            or _embedding_rows(self.model) or _logits_width(self.model, options.device)   # no config: a port,
        if not self.vocab_size:                                          # a program, a function of token ids
            raise OptionError(f"{described}: the model has no config.vocab_size and no nn.Embedding to draw token "
                              "ids from, and its forward on two tokens returned no logits")
        dtype = dtype_of(self.model) or returned_precision(self.model) or "precision unknown"
        self.description = f"{described}, {dtype}, {options.threads} threads, {options.device}"

    def __repr__(self) -> str:
        return f"<ModuleTimer {self.description}>"

    def time(self, prompt: list[int], continuation: list[int]) -> tuple[float, float | None]:
        from parity.capture.torch.incremental import call_with_cache

        torch = self.torch
        ids = torch.tensor([prompt], device=self.device)
        with torch.no_grad():
            start = _now(self.device)
            if not self.decodes:
                self.model(ids)
                return _now(self.device) - start, None
            _, cache = call_with_cache(self.model, ids, None)
            prefill = _now(self.device) - start
            start = _now(self.device)
            for step, token in enumerate(continuation):
                _, cache = call_with_cache(self.model, torch.tensor([[token]], device=self.device), cache,
                                           start=len(prompt) + step)
            return prefill, _now(self.device) - start

    def device_memory(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            return {"peak_device_mib": self.torch.cuda.max_memory_allocated() / 2 ** 20}
        return {}


def _now(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _logits_width(model, device: str) -> int | None:
    """The width of the logits the model returns for two tokens (its vocabulary), or None where it returns none."""
    import torch

    from parity.capture.torch.layout import first_tensor

    with torch.no_grad():
        logits = first_tensor(model(torch.zeros((1, 2), dtype=torch.int64, device=device)))
    return int(logits.shape[-1]) if logits is not None and logits.ndim >= 2 else None


def _embedding_rows(model) -> int | None:
    """The rows of the model's first nn.Embedding (its token table), or None."""
    import torch

    return next((module.num_embeddings for module in model.modules() if isinstance(module, torch.nn.Embedding)),
                None)
