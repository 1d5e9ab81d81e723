"""One protocol for every candidate: what CANDIDATE names, opened once, asked what it can do.

    spec = parse_candidate("llamacpp:model.gguf")          # which backend claims it; nothing opened
    with open_candidate(spec.text, CandidateContext(model_path="model.gguf")) as candidate:
        why = candidate.supports("decode")                 # None: it can; else the reason it cannot
        rows = candidate.logits([1, 2, 3])                 # (T, V)

Each backend is one class in a folder of its own under capture/, registered with
`@register_candidate`: it claims the specs it understands, declares what it can
do (CAPABILITIES), and implements the operations behind them. A command asks a
candidate what it supports, never which backend it is; the reason a candidate
gives for what it cannot do is what the report's "not checked" line says.

    backend   spec                                        module
    server    http(s)://HOST:PORT                         capture/server/candidate.py
    llamacpp  llamacpp:FILE.gguf                          capture/llamacpp/candidate.py
    onnx      FILE.onnx, an onnxruntime-genai folder      capture/onnx/candidate.py
    trace     a trace: .safetensors, .npz, a directory    capture/tracefile/candidate.py
    hf        a model directory (config.json) or .gguf    capture/hf/candidate.py
    torch     FILE.py:FACTORY, module:FACTORY, nn.Module  capture/torch/candidate.py
    distributed  dist:N:FILE.py:FACTORY (check --nproc N)  capture/distributed/candidate.py
    shards    a shards manifest (.json) of rank traces    capture/distributed/files.py

Another backend is one more module with one registered class: list it in
BUILTIN_BACKENDS, or register it from a package's `parity.candidates` entry point.
While a candidate is open, whatever it prints goes to stderr, so that `--json -`
stays JSON.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from parity.core.errors import OptionError
from parity.core.trace import Trace

# What a candidate can be asked for, and what it gives then.
CAPABILITIES: dict[str, str] = {
    "trace": "its checkpoints over one forward pass",
    "logits": "logits for any token ids",
    "decode": "token-by-token decoding through its own cache",
    "cache": "KV cache read back",
    "chunked_prefill": "a prompt prefilled in chunks through its cache",
    "padding": "padded batches with an attention mask",
    "replay": "each block and op rerun on the reference's inputs",
    "gradients": "a backward pass",
    "on_device": "checkpoints measured on its own device",
    "weights": "its parameters by checkpoint",
    "raw": "the outputs of modules with no canonical checkpoint (raw.<module>)",
    "stream": "a capture written to the trace file as it runs",
    "sequence": "text with per-token log-probabilities (a server's completions)",
    "tokenizer": "its own tokenizer",
    "speed": "timed prefill and decoding",
    "module": "a torch.nn.Module to call component by component",
    "load_dtype": "loading at a chosen precision (--candidate-dtype)",
}

# Modules holding the built-in backends, imported on first use (each imports no heavy dependency at import).
BUILTIN_BACKENDS = (
    "parity.capture.server.candidate",
    "parity.capture.llamacpp.candidate",
    "parity.capture.onnx.candidate",
    "parity.capture.tracefile.candidate",
    "parity.capture.hf.candidate",
    "parity.capture.torch.candidate",
    "parity.capture.distributed.candidate",
    "parity.capture.distributed.files",
)
ENTRY_POINT_GROUP = "parity.candidates"


@dataclass(frozen=True)
class CandidateContext:
    """What opening a candidate may need besides its spec."""

    model_path: str | None = None      # the reference model: passed to a factory that takes an argument
    dtype: str | None = None           # the precision a model candidate loads at (None: float32)
    placement: Any = None              # where a model candidate loads (accelerate); None: the CPU
    server_model: str | None = None    # a server's 'model' field
    timeout_s: float = 60.0            # a server's whole exchange
    server_options: tuple = ()         # (field, value) pairs added to a server's request (sampler settings)
    kv_type: str = "f16"               # llama.cpp's KV cache type
    progress: Any = None               # an object with step(message), or None

    def step(self, message: str) -> None:
        if self.progress is not None:
            self.progress.step(message)


@dataclass(frozen=True)
class TraceRequest:
    """What a trace of the candidate should hold."""

    checkpoints: str | None = None     # comma-separated globs
    taps: Any = None                   # the user's checkpoint mapping for a module candidate (--taps)
    weights: bool = False              # also each tapped module's parameters
    raw: bool = True                   # also raw.<module> outputs, where the candidate can have them
    prompt: str | None = None          # the text the tokens came from, recorded in the metadata
    reference_model: Any = None        # the loaded reference (HFModel), for what a backend measures against it
    start_position: int = 0            # the absolute position of the first token (--start-position)
    spill_to: str | None = None        # a trace file to write the trace into as it is made (backends that can;
                                       # the others return it in memory)
    stream: Any = None                 # core/streamed.StreamedCheckpoints: the checkpoints it wants are put there
                                       # as they are made, not kept (backends that can; the check feeds it the
                                       # others' from their traces)


class Candidate:
    """A candidate, opened. Subclasses set the class attributes, `claims` and `open`, and the operations of the
    capabilities they declare; every other operation says why it cannot run."""

    backend: ClassVar[str] = ""                  # the registry's key
    written: ClassVar[str] = ""                  # how its spec is written, for messages: "llamacpp:FILE.gguf"
    nature: ClassVar[str] = ""                   # what it is, where that says why it cannot do more (default: written)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    claim_order: ClassVar[int] = 100             # claims are tried from the lowest: specific forms before general
    undeclared: ClassVar[str] = "a trace without a dtype in its metadata"   # why its precision can be unknown

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.precision: str | None = None        # its dtype when known ("llama.cpp" for llama.cpp)
        self.decode_failure: str | None = None   # why its own decoding could not run, where it could not (its steps
                                                 # from there are NaN: the decode check fails and says this)
        self.rounds_inputs: dict[str, str] = {}    # checkpoints whose op quantizes its input as it runs, and
                                                   # how (a quantized build's): filled as it traces
        self._stack = contextlib.ExitStack()

    def take_declared_precision(self, declared) -> None:
        """The precision a trace's metadata declares (`dtype`), where it is a float precision; else why it is
        unknown (a quantized format's name, "q8")."""
        from parity.core.tolerances import float_precision, not_a_precision

        self.precision = float_precision(declared)
        self.undeclared = not_a_precision(declared) or self.undeclared

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

    # --- declared by each backend ----------------------------------------------------------

    @classmethod
    def claims(cls, spec: Any) -> bool:
        """Whether `spec` names a candidate of this backend (checked in registration order)."""
        raise NotImplementedError

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "Candidate":
        raise NotImplementedError

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        """Refuse, before anything loads, a spec that cannot open (a file that is not there)."""

    @classmethod
    def recorded_tokens(cls, spec: Any) -> list[int] | None:
        """The token ids a candidate that holds one pass already made was run over (a trace file's), read
        without loading it; None for a candidate that runs on whatever ids it is given."""
        return None

    # --- asked by the commands ----------------------------------------------------------------

    def supports(self, capability: str, **context: Any) -> str | None:
        """None when this candidate can give `capability` (see CAPABILITIES); else the reason it cannot,
        in words a report prints after "not checked: ..."."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; one of {', '.join(CAPABILITIES)}")
        if capability in self.capabilities:
            return None
        offering = _offering(capability)
        return (f"the candidate is {self.nature or self.written}: it gives no {CAPABILITIES[capability]}"
                + (f" ({offering} do)" if offering else ""))

    def require(self, capability: str, why: str, **context: Any) -> None:
        """Raise OptionError saying what `why` needs, when the candidate cannot give `capability`."""
        reason = self.supports(capability, **context)
        if reason is not None:
            raise OptionError(f"{why} needs {CAPABILITIES[capability]}, and {reason}")

    def hidden(self, taps=None) -> str | None:
        """Why none of its layers can be seen (its logits alone can be compared), given the user's `taps`; None
        where they can."""
        return None

    @property
    def description(self) -> str:
        """What the candidate is, for a report's header."""
        return f"{self.written} {self.spec}"

    @property
    def numerics(self):
        """How to run the reference so that it computes at this candidate's precision (capture/precision.py),
        or None when the precision is unknown."""
        from parity.capture.precision import DtypeNumerics

        return DtypeNumerics(self.precision) if self.precision else None

    def trace_metadata(self, prompt: str | None) -> dict | None:
        """What its own capture would say of itself in a trace's metadata, where that is more than a module's."""
        return None

    # --- the operations behind the capabilities ------------------------------------------

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        self.require("trace", "a checkpoint comparison")
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """The candidate's own token ids for `text`, where it has a tokenizer."""
        raise OptionError(f"the candidate {self.spec} has no tokenizer of its own: give --tokens")

    def logits(self, ids: list[int], first: int = 0) -> np.ndarray:
        """Logits at positions first.. of one pass over `ids`: (T - first, V) float64 (a backend that can leaves
        the other rows unmade or lets them go as it runs: a long prompt's are T x V)."""
        self.require("logits", "running it on token ids")
        raise NotImplementedError

    def greedy(self, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
        """The candidate's greedy continuation of `prompt`: (tokens, each step's log-probs). A full pass per
        token unless the candidate decodes through its own cache as it generates."""
        from parity.core.generation import greedy

        return greedy(self.logits, prompt, count)

    def incremental(self, prompt: list[int], continuation: list[int], *, record: bool = False, taps=None):
        """(rows (1 + N, V), steps): the prompt prefilled, then each continuation token decoded through the
        candidate's cache; with `record`, each step's checkpoints (step 0 the prefill) where the candidate can
        record them (with the user's `taps`, if given), else []."""
        self.require("decode", "decoding token by token")
        raise NotImplementedError

    def close(self) -> None:
        self._stack.close()


NOT_A_CANDIDATE = ("candidate '{spec}' is neither an existing trace, model directory or .gguf, "
                   "nor FILE.py:FACTORY / module:FACTORY (e.g. my_port.py:build), llamacpp:FILE.gguf or "
                   "http://HOST:PORT")

_REGISTRY: dict[str, type[Candidate]] = {}
_LOADED = False


def register_candidate(cls: type[Candidate]) -> type[Candidate]:
    """Class decorator: add a backend. Its `claims` is tried in `claim_order`, then in registration order."""
    if not cls.backend:
        raise ValueError(f"{cls.__name__} sets no `backend` name")
    if cls.backend in _REGISTRY and _REGISTRY[cls.backend] is not cls:
        raise ValueError(f"a candidate backend named {cls.backend!r} is registered already "
                         f"({_REGISTRY[cls.backend].__name__})")
    _REGISTRY[cls.backend] = cls
    return cls


def backends() -> dict[str, type[Candidate]]:
    """The registered backends, in the order their claims are tried."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in BUILTIN_BACKENDS:
            importlib.import_module(module)
        _load_entry_points()
    ordered = sorted(enumerate(_REGISTRY.values()), key=lambda item: (item[1].claim_order, _builtin_rank(item[1]), item[0]))
    return {cls.backend: cls for _, cls in ordered}


def _builtin_rank(cls: type[Candidate]) -> int:
    """A built-in backend's place in BUILTIN_BACKENDS (others after them): the order does not depend on which
    module some earlier code happened to import first."""
    return BUILTIN_BACKENDS.index(cls.__module__) if cls.__module__ in BUILTIN_BACKENDS else len(BUILTIN_BACKENDS)


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # a third party's package: say which, in one line
            raise OptionError(f"the candidate backend {entry.name} ({entry.value}) failed to load: {error}") from error


@dataclass(frozen=True)
class CandidateSpec:
    """A CANDIDATE argument and the backend that claims it."""

    text: Any                       # the spec as given (a string, or a torch.nn.Module from the Python API)
    backend: type[Candidate] = field(repr=False)

    def __repr__(self) -> str:
        return f"<CandidateSpec {self.backend.backend} {self.text}>"

    @property
    def written(self) -> str:
        return self.backend.written

    def check(self) -> "CandidateSpec":
        """This spec, after its backend's checks that need no loading (files that must exist)."""
        self.backend.check_spec(self.text)
        return self

    def offers(self, capability: str) -> bool:
        """Whether this backend can give `capability` at all (an opened candidate may still refuse it)."""
        return capability in self.backend.capabilities

    def require(self, needs: tuple[str, ...]) -> "CandidateSpec":
        """This spec; OptionError before any work when its backend cannot give a capability in `needs`."""
        for capability in needs:
            if not self.offers(capability):
                raise OptionError(f"candidate '{self.text}' is {self.written}, which gives no "
                                  f"{CAPABILITIES[capability]}; this command takes {_offering(capability)}")
        return self


def parse_candidate(spec: Any) -> CandidateSpec:
    """Which backend claims `spec`; OptionError naming the forms a candidate takes when none does."""
    for backend in backends().values():
        if backend.claims(spec):
            return CandidateSpec(spec, backend)
    raise OptionError(NOT_A_CANDIDATE.format(spec=spec))


@contextlib.contextmanager
def open_candidate(spec: Any, context: CandidateContext = CandidateContext(), *,
                   needs: tuple[str, ...] = ()) -> Iterator[Candidate]:
    """Open the candidate `spec` names, refusing before any work one whose backend cannot give a capability in
    `needs`; closed on exit. Whatever the candidate prints while open goes to stderr."""
    parsed = parse_candidate(spec).require(needs)
    with contextlib.redirect_stdout(sys.stderr):
        candidate = parsed.backend.open(spec, context)
        try:
            yield candidate
        finally:
            candidate.close()


def _offering(capability: str) -> str:
    return ", ".join(backend.written for backend in backends().values() if capability in backend.capabilities)
