"""A candidate, from the CANDIDATE argument every command takes, opened once and closed after.

    spec                                      kind      what it gives
    a trace (.safetensors, .npz, a directory  trace     its recorded tensors; its metadata tells its precision
      with manifest.json)
    llamacpp:FILE.gguf                        llamacpp  llama.cpp, run layer by layer; logits; incremental decoding
    http(s)://HOST:PORT                       server    an OpenAI-compatible server (text and log-probabilities)
    FILE.py:FACTORY / module:FACTORY          factory   a torch.nn.Module; traced with hooks, decoded through its cache
    a model directory (config.json) or .gguf  model     transformers, at the dtype asked for

    with open_candidate(spec, model_path=reference_dir, accept=("factory", "llamacpp")) as source:
        rows = source.logits(ids)                 # (T, V)
        trace = source.trace(ids, checkpoints="layers.*")

While a candidate is open, whatever it prints goes to stderr, so that `--json -`
stays JSON. Capture modules and commands use this module; it imports no command.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.capture.torch.factory import build_module
from parity.core.errors import OptionError
from parity.core.trace import Trace

LLAMACPP_PREFIX = "llamacpp:"
SERVER_PREFIXES = ("http://", "https://")
KINDS = ("trace", "llamacpp", "server", "factory", "model")
DESCRIBED = {"trace": "a trace file", "llamacpp": "llamacpp:FILE.gguf", "server": "http://HOST:PORT",
              "factory": "FILE.py:FACTORY", "model": "a model directory or .gguf"}


def kind_of(spec: str) -> str:
    """Which of KINDS a CANDIDATE spec names (see the module docstring); OptionError when none."""
    if hasattr(spec, "named_modules"):  # the Python API (parity.testing) passes a torch.nn.Module itself
        return "factory"
    if spec.startswith(SERVER_PREFIXES):
        return "server"
    if spec.startswith(LLAMACPP_PREFIX):
        return "llamacpp"
    path = Path(spec)
    if path.exists() and not spec.endswith(".py"):
        return "model" if path.suffix == ".gguf" or (path / "config.json").is_file() else "trace"
    if ":" in spec:
        return "factory"
    raise OptionError(f"candidate '{spec}' is neither an existing trace, model directory or .gguf, "
                      "nor FILE.py:FACTORY / module:FACTORY (e.g. my_port.py:build)")


@dataclass
class CandidateSource:
    """An opened candidate. Fields beyond `spec` and `kind` are set for the kinds that have them."""

    spec: str
    kind: str
    precision: str | None = None      # the candidate's dtype when known ("llama.cpp" for llama.cpp)
    path: Path | None = None          # trace, llama.cpp .gguf, model directory or .gguf
    model: Any = None                 # factory, model: the torch.nn.Module
    hf: Any = None                    # model: the loaded HFModel (its tokenizer, its family's taps)
    loaded: Trace | None = None       # trace
    server: Any = None                # server: the OpenAIServer
    kv_type: str = "f16"              # llama.cpp: the KV cache type to run with; then the one it ran with
    lowp_model: Any = None            # llama.cpp: the float32 reference copy that emulates it (parity check)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _runner: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"<CandidateSource {self.kind} {self.spec}>"

    @property
    def is_llamacpp(self) -> bool:
        return self.kind == "llamacpp"

    @property
    def gguf(self) -> Path | None:
        return self.path if self.is_llamacpp else None

    @property
    def runner(self):
        """llama.cpp candidates: the LlamaCppRunner, loaded on first use and freed when the source closes."""
        if not self.is_llamacpp:
            raise OptionError(f"{self.spec} is not a llama.cpp candidate")
        if self._runner is None:
            from parity.capture.llamacpp.runner import LlamaCppRunner

            self._runner = self._stack.enter_context(LlamaCppRunner(self.path, kv_type=self.kv_type))
        return self._runner

    @property
    def may_have_raw(self) -> bool:
        """Can this candidate hold raw.<module> outputs: a trace that has some, a transformers model?"""
        from parity.core.names import is_raw

        if self.loaded is not None:
            return any(is_raw(name) for name in self.loaded.tensors)
        return self.hf is not None or (self.model is not None and is_transformers(self.model))

    @property
    def kind_description(self) -> str:
        return DESCRIBED[self.kind]

    def decode_support(self, prompt: list[int]) -> str | None:
        """None when the candidate decodes token by token through a cache (a torch model: found by trying it
        on `prompt`); else why not."""
        if self.is_llamacpp:
            return None
        if self.model is None:
            return f"the candidate is {self.kind_description}: it does not run"
        from parity.capture.torch.incremental import decode_support

        return decode_support(self.model, prompt)

    @property
    def decodes(self) -> bool:
        """Can this candidate decode token by token through a cache? (tried on token ids 0, 1)"""
        return self.decode_support([0, 1]) is None

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of one pass over `ids`: (T, V) float64."""
        if self.is_llamacpp:
            return self.runner.logits(ids)
        if self.model is None:
            raise OptionError(f"{self.spec} is {DESCRIBED[self.kind]}: it gives no logits to run; "
                              "give llamacpp:FILE.gguf, a model directory or FILE.py:FACTORY")
        from parity.capture.torch.incremental import full_logits

        return full_logits(self.model, ids)

    def trace(self, tokens: list[int], *, checkpoints: str | None = None, taps=None, weights: bool = False,
              prompt: str | None = None, progress=None, raw: bool = True) -> Trace:
        """The candidate's checkpoints over `tokens` (a trace candidate: the trace it holds); `raw`: also
        the raw.<module> outputs of a transformers model mapped from its structure."""
        step = progress.step if progress is not None else (lambda message: None)
        if self.loaded is not None:
            return self.loaded
        if self.is_llamacpp:
            step(f"running {self.path.name} in llama.cpp over {len(tokens)} tokens")
            trace = self.runner.capture(tokens, checkpoints=checkpoints, prompt=prompt)
            self.kv_type = trace.metadata.get("kv_type") or self.kv_type
            return trace
        if self.hf is not None and taps is None:
            step(f"capturing the candidate {self.path.name} over {len(tokens)} tokens")
            return self.hf.capture(tokens, checkpoints=checkpoints, prompt=prompt, weights=weights, raw=raw)
        if self.model is None:
            raise OptionError(f"{self.spec} is {DESCRIBED[self.kind]}: it has no checkpoints to trace")
        from parity.capture.torch.module import trace_module

        step(f"capturing the candidate over {len(tokens)} tokens")
        raw = raw and self.raw_allowed(taps)
        return trace_module(self.model, tokens, taps=self.taps(taps), checkpoints=checkpoints, weights=weights, raw=raw)

    def raw_allowed(self, taps=None) -> bool:
        """Can the candidate's raw.<module> outputs line up with the reference's: a transformers model traced
        by its family's taps, or by its own structure (no taps of the user's)."""
        if self.hf is not None and taps is None:
            return True
        return (self.model is not None and not taps and not getattr(self.model, "parity_taps", None)
                and is_transformers(self.model))

    def taps(self, taps=None):
        """Where the checkpoints live in the candidate's module: `taps` if given, else its `parity_taps`
        attribute, its family's (model candidates), or its naming (transformers, nanoGPT)."""
        if taps:
            return taps
        if getattr(self.model, "parity_taps", None):
            return self.model.parity_taps
        if self.hf is not None:
            return self.hf.mapping.taps
        return infer_taps(self.model, self.spec)

    def close(self) -> None:
        self._runner = None
        self._stack.close()


@contextlib.contextmanager
def open_candidate(spec: str, *, model_path: str | None = None, dtype: str = "float32",
                   accept: tuple[str, ...] = KINDS, server_model: str | None = None, timeout_s: float = 60.0,
                   progress=None, placement=None) -> Iterator[CandidateSource]:
    """Open the candidate `spec` names. `model_path` (the reference model) is passed to a factory that takes
    an argument; `dtype` is the precision a model candidate loads at, and `placement` where (default: the
    CPU); `accept` lists the kinds the command can use. Whatever the candidate prints while open goes to
    stderr."""
    kind = kind_of(spec)
    if kind not in accept:
        raise OptionError(f"candidate '{spec}' is {DESCRIBED[kind]}; this command takes "
                          f"{', '.join(DESCRIBED[k] for k in accept)}")
    step = progress.step if progress is not None else (lambda message: None)
    with contextlib.redirect_stdout(sys.stderr):
        source = _open(spec, kind, model_path=model_path, dtype=dtype, server_model=server_model,
                       timeout_s=timeout_s, step=step, placement=placement)
        try:
            yield source
        finally:
            source.close()


def _open(spec: str, kind: str, *, model_path, dtype, server_model, timeout_s, step, placement) -> CandidateSource:
    if kind == "server":
        import time

        from parity.capture.server.openai import OpenAIServer

        server = OpenAIServer(spec, model=server_model, timeout_s=timeout_s, run_deadline=time.monotonic() + timeout_s)
        return CandidateSource(spec, kind, server=server)
    if kind == "llamacpp":
        path = Path(spec.removeprefix(LLAMACPP_PREFIX))
        if not path.is_file():
            raise OptionError(f"{path}: no such .gguf file for the llama.cpp candidate")
        return CandidateSource(spec, kind, precision="llama.cpp", path=path)
    if kind == "trace":
        from parity.core.trace import load_trace

        step(f"reading {spec}")
        trace = load_trace(spec)
        return CandidateSource(spec, kind, precision=trace.metadata.get("dtype"), path=Path(spec), loaded=trace)
    if kind == "model":
        from parity.capture.hf.model import load_model

        step(f"loading {spec} as the candidate ({dtype})")
        hf = load_model(spec, dtype=dtype, placement=placement)
        return CandidateSource(spec, kind, precision=dtype, path=Path(spec), model=hf.model, hf=hf)
    if hasattr(spec, "named_modules"):
        model, spec = spec, type(spec).__name__
    else:
        step(f"building the candidate from {spec}")
        model = build_module(spec, model_path)
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()), None)
    return CandidateSource(spec, kind, precision=dtype, model=model)


def is_transformers(model) -> bool:
    from parity.capture.hf.attention import is_hf_model

    return hasattr(model, "config") and is_hf_model(model)


def infer_taps(model, spec: str):
    """A transformers model (a modified one, another version) mapped from its structure; else the
    built-in mapping a module's naming implies: Llama-likes or nanoGPT."""
    if is_transformers(model):
        from parity.capture.hf.structure import map_model

        return map_model(model, where=str(spec)).taps
    names = {name for name, _ in model.named_modules()}
    if "model.layers.0" in names:
        return "hf"
    if "transformer.h.0" in names:
        return "nanogpt"
    raise OptionError(
        f"parity cannot tell where the checkpoints live in {spec}: set a `parity_taps` attribute on the "
        "model or pass --taps (see docs/capture.md)"
    )
