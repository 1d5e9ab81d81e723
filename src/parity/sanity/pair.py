"""The candidate and its reference, side by side, with what the component tests need of them.

The reference is transformers' own class for the candidate's config, holding the
candidate's weights (loaded by name); or, with --reference DIR, that model with
its own weights, loaded into the candidate by name. Components are found by
transformers' module names (`model.layers.0.self_attn`, ...) on both sides.

A component is called the way its own model calls it: one forward pass records
each component's arguments (forward pre-hooks), and a test calls it again with
the hidden states replaced by its own inputs, the other arguments (position
embeddings, masks) as the model made them. So a candidate's attention may take
any signature its author chose.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from parity.core.errors import OptionError
from parity.core.metrics import measure
from parity.core.results import Tolerance, one_line
from parity.core.tolerances import sanity_tolerance


MAX_TOKENS = 1 << 22          # batch x length; far past what a component test needs, far below what overflows
MAX_SEQ_LENGTH = 1 << 20
MAX_SEED = 2**53              # torch takes seeds below 2^64; the tests' salts are added to seed x 1000


class UnusableOutput(Exception):
    """The candidate's module returned something that is not a tensor: the test's finding, in its words."""


@dataclass(frozen=True)
class SanityConfig:
    """How the tests run. Batch, length and tolerances are the course script's defaults."""

    batch_size: int = 2
    seq_length: int = 32
    rtol: float | None = None        # None: the dtype's in core/tolerances.py
    atol: float | None = None
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    long_length: int = 512           # stability: the long sequence (capped at max_position_embeddings)
    large_scale: float = 1e3         # stability: hidden states and lm_head weights scaled by this
    strict: bool = False             # a test not checked fails the run (--strict)

    def __post_init__(self) -> None:
        for name, value, low in (("--batch-size", self.batch_size, 1), ("--seq-length", self.seq_length, 2)):
            if type(value) is not int or value < low:
                raise OptionError(f"{name} must be an integer of at least {low}, got {value!r}")
        tokens = self.batch_size * self.seq_length
        if self.seq_length > MAX_SEQ_LENGTH or tokens > MAX_TOKENS:
            raise OptionError(f"--batch-size {self.batch_size:,} x --seq-length {self.seq_length:,} is {tokens:,} "
                              f"random tokens, more than parity sanity runs ({MAX_TOKENS:,} in all, "
                              f"{MAX_SEQ_LENGTH:,} in a row): the component tests need a few thousand; "
                              "give smaller ones")
        if type(self.seed) is not int or not 0 <= self.seed <= MAX_SEED:
            raise OptionError(f"--seed must be an integer from 0 to 2^53, got {str(self.seed)[:30]}")

    @property
    def tolerance(self) -> Tolerance:
        return sanity_tolerance(self.dtype, rtol=self.rtol, atol=self.atol)


@dataclass
class Pair:
    """The two models, their config, and the inputs shared by every test."""

    candidate: Any
    reference: Any
    config: Any
    settings: SanityConfig
    missing: list[str] = field(default_factory=list)      # reference parameters the candidate lacks
    unexpected: list[str] = field(default_factory=list)   # candidate parameters the reference lacks
    mismatched: list[str] = field(default_factory=list)   # same name, other shape
    names: dict[str, str] = field(default_factory=dict)  # a port with its own names: reference name -> its (names.py)
    _calls: dict[str, dict[str, tuple]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Pair {type(self.candidate).__name__} vs {type(self.reference).__name__}>"

    @property
    def device(self) -> torch.device:
        return torch.device(self.settings.device)

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.settings.seed * 1000 + salt)

    def token_ids(self, length: int | None = None, batch: int | None = None, salt: int = 0) -> torch.Tensor:
        shape = (batch or self.settings.batch_size, length or self.settings.seq_length)
        return torch.randint(0, self.config.vocab_size, shape, generator=self.generator(salt)).to(self.device)

    def hidden(self, salt: int = 0, scale: float = 1.0) -> torch.Tensor:
        """Random hidden states (B, T, D), at the run's dtype and device."""
        shape = (self.settings.batch_size, self.settings.seq_length, self.config.hidden_size)
        values = torch.randn(shape, generator=self.generator(salt)) * scale
        return values.to(device=self.device, dtype=getattr(torch, self.settings.dtype))

    def module(self, side: str, name: str):
        """The submodule `name` of the candidate or the reference; None when it has none."""
        model = self.candidate if side == "candidate" else self.reference
        return dict(model.named_modules()).get(self.name(side, name))

    def name(self, side: str, name: str) -> str:
        """The side's name of the reference's module or parameter `name`."""
        return self.names.get(name, name) if side == "candidate" else name

    def parameter(self, side: str, name: str):
        """The side's parameter the reference calls `name`; None when it has none."""
        model = self.candidate if side == "candidate" else self.reference
        return dict(model.named_parameters()).get(self.name(side, name))

    def model(self, side: str):
        return self.candidate if side == "candidate" else self.reference

    def forward(self, side: str, ids: torch.Tensor, **kwargs):
        """The side's model on token ids: as `input_ids=` where its forward takes it, else as its first argument
        (a port's own forward(ids, ...)); keyword arguments it does not take are left out."""
        return call_model(self.model(side), ids, **kwargs)

    def takes(self, side: str, argument: str) -> bool:
        return accepts(self.model(side), argument)

    def loss(self, side: str, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The side's loss on `labels`: its own (forward with labels) where it computes one, else the
        cross-entropy of its logits as transformers computes it (shifted, ignore_index -100)."""
        if self.takes(side, "labels"):
            loss = getattr(self.forward(side, ids, labels=labels), "loss", None)
            if loss is None:
                raise UnusableOutput(f"given labels, the {side} returned no .loss")
            return loss
        logits = logits_of(self.forward(side, ids)).float()
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)

    def call(self, side: str, name: str, hidden: torch.Tensor, module=None) -> torch.Tensor:
        """Module `name` (or `module` in its place) called as its model calls it, on `hidden` in place of
        its hidden states."""
        args, kwargs = self._recorded(side, name)
        if args and isinstance(args[0], torch.Tensor):
            args = (hidden, *args[1:])
        elif "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": hidden}
        else:
            raise OptionError(f"the {side}'s {name} was called without hidden states as its first argument")
        return first_tensor((module or self.module(side, name))(*args, **kwargs))

    def recorded_output(self, side: str, name: str):
        return self._recorded(side, name, output=True)

    def _recorded(self, side: str, name: str, output: bool = False):
        if side not in self._calls:
            self._calls[side] = record_calls(self.candidate if side == "candidate" else self.reference,
                                             self.token_ids())
        recorded = self.name(side, name)
        if recorded not in self._calls[side]:
            raise OptionError(f"the {side}'s {recorded} is never called by its forward pass")
        args, kwargs, result = self._calls[side][recorded]
        return result if output else (args, kwargs)

    def compare(self, reference: torch.Tensor, candidate: torch.Tensor, tolerance: Tolerance | None = None) -> dict:
        """Metrics of `candidate` against `reference` (same shape), and whether it is within the tolerance."""
        tolerance = tolerance or self.settings.tolerance
        if not isinstance(candidate, torch.Tensor) or not (candidate.is_floating_point() or candidate.is_complex()):
            raise UnusableOutput(f"the candidate returned {_kind(candidate)} where the reference returns a tensor "
                                 f"of shape {tuple(reference.shape)}")
        if tuple(reference.shape) != tuple(candidate.shape):
            return {"passed": False, "shape_reference": list(reference.shape), "shape_candidate": list(candidate.shape)}
        metrics = measure(to_numpy(reference), to_numpy(candidate), tolerance)
        return {"passed": tolerance.admits(metrics), "max_abs": metrics.max_abs, "rel_l2": metrics.rel_l2,
                "mismatched": metrics.mismatched, "numel": metrics.numel,
                "explanation": one_line(tolerance.explain(metrics)),
                "nonfinite_candidate": metrics.nan_candidate + metrics.inf_candidate,
                "nonfinite_reference": metrics.nan_reference + metrics.inf_reference}


def record_calls(model, input_ids: torch.Tensor) -> dict[str, tuple]:
    """Each submodule's (args, kwargs, output) of its first call in one forward pass over `input_ids`."""
    calls: dict[str, tuple] = {}
    handles = []

    def hooks(name: str):
        def before(module, args, kwargs):
            calls.setdefault(name, [args, kwargs, None])

        def after(module, args, kwargs, output):
            if calls[name][2] is None:
                calls[name][2] = output
        return before, after

    try:
        for name, module in model.named_modules():
            if name:
                before, after = hooks(name)
                handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
                handles.append(module.register_forward_hook(after, with_kwargs=True))
        with torch.no_grad():
            call_model(model, input_ids, use_cache=False)  # a cache would grow with each replayed call
    finally:
        for handle in handles:
            handle.remove()
    return {name: tuple(call) for name, call in calls.items()}


def _parameters(model) -> dict:
    import inspect

    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def accepts(model, argument: str) -> bool:
    """Whether the model's forward names `argument` or takes **kwargs."""
    parameters = _parameters(model)
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def call_model(model, ids: torch.Tensor, **kwargs):
    """`model` on token ids: `input_ids=` where its forward names it, else as the first argument (a port's own
    forward(ids, ...)); other keywords only where it takes them."""
    kept = {key: value for key, value in kwargs.items() if accepts(model, key)}
    if "input_ids" in _parameters(model):
        return model(input_ids=ids, **kept)
    return model(ids, **kept)


def first_tensor(output) -> torch.Tensor:
    """A module's main output: the tensor itself, or the first element of a tuple."""
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise UnusableOutput(f"a module of the candidate returned {_kind(output)}, not a tensor (or a tuple "
                             "starting with one)")
    return output


def logits_of(output) -> torch.Tensor:
    if hasattr(output, "logits"):
        return first_tensor(output.logits)
    return first_tensor(output)


def _kind(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor"
    return type(value).__name__


def to_numpy(tensor: torch.Tensor):
    return tensor.detach().to("cpu", torch.float64).numpy()


@contextlib.contextmanager
def scaled_parameter(model, name: str, factor: float):
    """The parameter `name` multiplied by `factor` inside the block, restored after."""
    parameter = dict(model.named_parameters())[name]
    original = parameter.detach().clone()
    with torch.no_grad():
        parameter.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            parameter.copy_(original)
