"""Timing llama.cpp's prefill and decoding (`parity bench`, in the side's process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class LlamaCppTimer:
    """Prefill `prompt` in one batch after a reset, then decode `continuation` one token at a time."""

    decode_note = None

    def __init__(self, path: Path, options) -> None:
        from parity.core.errors import require

        from parity.capture.gguf.header import read_header

        llama_cpp = require("llama_cpp", extra="llamacpp", package="llama-cpp-python", purpose="benchmarking llama.cpp")
        header = read_header(path)   # a sound GGUF, or one line; llama.cpp's abort past it ends this side only
        trained = header.number(f"{header.architecture}.context_length")
        self.context = (f"{header.architecture}.context_length", trained) if trained else None
        context = options.prompt_tokens + options.decode_tokens + 8
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=max(options.prompt_tokens, 32),
                                   n_ubatch=max(options.prompt_tokens, 32), n_threads=options.threads,
                                   n_threads_batch=options.threads, verbose=False, logits_all=False,
                                   n_gpu_layers=-1 if options.device.startswith("cuda") else 0)
        self.vocab_size = self.llm.n_vocab()
        self.description = f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {options.threads} threads"

    def __repr__(self) -> str:
        return f"<LlamaCppTimer {self.description}>"

    def time(self, prompt: list[int], continuation: list[int]) -> tuple[float, float]:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for token in continuation:
            self.llm.eval([token])
        return prefill, time.perf_counter() - start

    def device_memory(self) -> dict[str, Any]:
        return {}
