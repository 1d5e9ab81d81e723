"""What every detector sees: the comparison, both traces, the model's configuration,
and one rule for "the candidate matches this hypothesis"."""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.core.config_shape import config_shape
from parity.core.metrics import CHUNK_ELEMENTS, norm_ratio, rel_l2
from parity.core.results import Comparison
from parity.core.trace import Trace

EXPLAINED = 0.2   # a hypothesis must leave at most this share of the candidate's error ...
CLOSE = 0.05      # ... and match the candidate to this rel_l2, to count as strong evidence
# rel_l2 that a dtype's rounding alone leaves between two computations of the same tensor (a few
# roundings of a sum, a product, an activation): "the same tensor" below this, at that precision
ROUNDING = {"float64": 1e-9, "float32": 2e-5, "float16": 4e-3, "bfloat16": 2.5e-2}


# a dtype's machine epsilon: the relative error of one rounding of one value
MACHINE_EPSILON = {"float64": 2.2e-16, "float32": 1.2e-7, "float16": 9.8e-4, "bfloat16": 7.8e-3}


def rounding(dtype: str | None) -> float:
    return ROUNDING.get(dtype or "float32", ROUNDING["float32"])


def machine_epsilon(dtype: str | None) -> float:
    return MACHINE_EPSILON.get(dtype or "float32", MACHINE_EPSILON["float32"])


@dataclass(frozen=True)
class ModelConfig:
    """What detectors need to know of the reference model, read from its trace's `config`."""

    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float | None = None
    norm_eps: float | None = None
    norm: str = "rms"            # "rms" or "layer"
    activation: str | None = None  # "silu", "gelu_tanh", "gelu"
    hidden: int | None = None    # hidden_size: one of the widths a scale factor is matched with
    layers: int | None = None    # num_hidden_layers
    # the config as the reference's trace records it (RoPE parameters per layer, layer types, ...)
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    architecture: dict = field(default_factory=dict, compare=False, repr=False)  # the trace's per-layer facts

    def __repr__(self) -> str:
        return f"<ModelConfig heads={self.heads}/{self.kv_heads} head_dim={self.head_dim} eps={self.norm_eps}>"


def model_config(trace: Trace, layer: int | None = None) -> ModelConfig:
    """The reference's configuration; at `layer`, that layer's own where the model's layers differ: its head
    size (Gemma 4's global layers: 512 where the config's head_dim says 256) and its layer type's RoPE
    parameters (Gemma 3 and 4 keep one set per layer type)."""
    config: dict[str, Any] = trace.metadata.get("config") or {}
    shape = config_shape(config)
    rope = config.get("rope_parameters") or {}
    layer_types = config.get("layer_types")
    if layer is not None and isinstance(layer_types, list) and layer < len(layer_types) \
            and isinstance(rope.get(layer_types[layer]), dict):
        rope = rope[layer_types[layer]]
    rope_type = rope.get("rope_type", (config.get("rope_scaling") or {}).get("rope_type", "default"))
    gpt2 = config.get("model_type") == "gpt2"
    activation = config.get("hidden_act") or config.get("activation_function")
    architecture = trace.metadata.get("architecture")
    architecture = architecture if isinstance(architecture, dict) else {}
    layer_head_dim = _facts_of(architecture, layer).get("head_dim")
    return ModelConfig(
        heads=shape.heads,
        kv_heads=shape.kv_heads,
        head_dim=layer_head_dim if isinstance(layer_head_dim, int) and layer_head_dim > 0 else shape.head_dim,
        rope_theta=None if gpt2 or rope_type != "default" else rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        norm_eps=config.get("rms_norm_eps") or config.get("layer_norm_epsilon"),
        norm="layer" if gpt2 else "rms",
        activation={"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(activation, activation),
        hidden=shape.hidden,
        layers=shape.layers,
        raw=dict(config),
        architecture=architecture,
    )


def attended_values(prefix: str, names) -> str:
    """The values a layer's attention weighs (`prefix` "layers.{i}."): v_norm where the model norms them per head
    (Gemma 4) and the trace holds it, else v."""
    return prefix + "v_norm" if prefix + "v_norm" in names else prefix + "v"


def layer_facts(config: ModelConfig, layer: int | None) -> dict:
    """What the reference's trace records of one layer (`architecture.layers[i]`: window, rotary_dim, ...)."""
    return _facts_of(config.architecture, layer)


def _facts_of(architecture: dict, layer: int | None) -> dict:
    layers = architecture.get("layers")
    if layer is None or not isinstance(layers, list) or layer >= len(layers) or not isinstance(layers[layer], dict):
        return {}
    return layers[layer]


@dataclass(frozen=True)
class Context:
    comparison: Comparison
    reference: Trace
    candidate: Trace
    config: ModelConfig = field(default_factory=ModelConfig)
    # fits shared by several detectors (a RoPE fit, a norm's weights), computed once per diagnosis
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    # hypotheses tried and how near each came: (checkpoint, what, rel_l2 left, rel_l2 before), for no_known_cause
    tried: list = field(default_factory=list, compare=False, repr=False)

    def __repr__(self) -> str:
        return f"<Context {self.comparison!r}>"

    def remember(self, key, compute):
        """compute() once per diagnosis for `key`."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def consider(self, name: str, what: str, candidate: np.ndarray, hypothesis: np.ndarray,
                 reference: np.ndarray, *, exact: float | None = None) -> float | None:
        """matches(candidate, hypothesis, reference), and within `exact` when given (a hypothesis computed
        from the candidate's own inputs reproduces it to its rounding), with the attempt kept as a near
        miss for no_known_cause."""
        found = matches(candidate, hypothesis, reference)
        if hypothesis.shape == candidate.shape and np.all(np.isfinite(hypothesis)):
            self.tried.append((name, what, rel_l2(hypothesis, candidate), rel_l2(reference, candidate)))
        return None if found is None or (exact is not None and found > exact) else found

    def noise(self, name: str) -> float:
        """The rel_l2 the comparison allowed at `name` (its calibrated bound, or its rtol), at least rounding."""
        result = self.comparison.result(name)
        floor = rounding(self.candidate.dtypes.get(name))
        tolerance = result.tolerance if result is not None else None
        if tolerance is None:
            return floor
        return max(floor, tolerance.max_rel_l2 if tolerance.calibrated else tolerance.rtol)

    @property
    def focus(self) -> list[str]:
        """The checkpoints worth explaining: where the error was introduced and where it first shows."""
        names = []
        for divergence in (self.comparison.origin, self.comparison.first_divergence):
            if divergence is not None and divergence.checkpoint not in names:
                names.append(divergence.checkpoint)
        return names

    def focused(self, *kinds: str):
        """(name, checkpoint, reference, candidate) for each focus checkpoint that both traces hold
        in one shape, of the given kinds (any kind when none is given)."""
        from parity.core.names import parse

        for name in self.focus:
            checkpoint = parse(name)
            pair = self.pair(name)
            if checkpoint is not None and pair is not None and (not kinds or checkpoint.kind in kinds):
                yield (name, checkpoint, *pair)

    def pair(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(reference, candidate) in float64 when both hold `name` in the same shape."""
        if name not in self.reference or name not in self.candidate:
            return None
        from parity.core.compare import TRUNCATABLE
        from parity.core.layout import last_positions, last_rows

        reference_shape, candidate_shape = self.reference.shape_of(name), self.candidate.shape_of(name)
        kept = last_positions(reference_shape, candidate_shape) if name in TRUNCATABLE else 0
        if not kept and reference_shape != candidate_shape:
            return None  # decided from the headers: neither tensor is read
        reference, candidate = self.reference[name], self.candidate[name]
        if kept:  # the candidate computes the last position(s) only, as the comparison noted
            reference = last_rows(reference, kept)
        if reference.shape != candidate.shape:
            return None
        return widened(reference), widened(candidate)


# A checkpoint is widened to float64 for the detectors' arithmetic up to this size (256 MiB of float64,
# a 32M-element tensor): within parity compare's memory bound (2x the largest pair + 300 MB) a pair
# of that size fits widened with room for a detector's temporaries. A larger one is used as read
# (float32 for traces of float32 or narrower), without a copy: its sums are still taken in float64
# (rel_l2 widens chunk by chunk), but elementwise hypotheses are computed in float32, whose rounding
# (1e-7) is far below any detector's threshold (1e-3 and up).
WIDEN_BELOW_ELEMENTS = 32 << 20


def widened(array: np.ndarray) -> np.ndarray:
    """`array` in float64 when it is small enough to copy within the memory bound; else as read
    (integers and float16 are widened whatever their size: they cannot carry the arithmetic)."""
    array = np.asarray(array)
    if array.size <= WIDEN_BELOW_ELEMENTS or array.dtype not in (np.float32, np.float64):
        return array.astype(np.float64)
    return array


def matches(candidate: np.ndarray, hypothesis: np.ndarray, reference: np.ndarray) -> float | None:
    """rel_l2 of candidate against a hypothesis when the hypothesis explains the candidate
    (it leaves at most EXPLAINED of the error against the reference, and at most CLOSE); else None."""
    if hypothesis.shape != candidate.shape or not np.all(np.isfinite(hypothesis)):
        return None
    residual = rel_l2(hypothesis, candidate)
    error = rel_l2(reference, candidate)
    return residual if residual <= min(CLOSE, EXPLAINED * error) else None


def matches_scaled(candidate: np.ndarray, factor: float, reference: np.ndarray) -> float | None:
    """matches(candidate, factor * reference, reference), summed a chunk at a time in float64: the
    hypothesis is never made whole, so a large pair stays within compare's memory bound."""
    measured = scaled_residual(candidate, factor, reference)
    if measured is None:
        return None
    residual, error = measured
    return residual if explains(residual, error) else None


def explains(residual: float, error: float) -> bool:
    """The rule of matches(): a hypothesis leaving `residual` of a candidate whose error is `error` explains it."""
    return residual <= min(CLOSE, EXPLAINED * error)


def scaled_residual(candidate: np.ndarray, factor: float, reference: np.ndarray) -> tuple[float, float] | None:
    """(rel_l2 of the candidate against factor * reference, rel_l2 of the candidate against the reference), summed
    a chunk at a time in float64; None when the shapes differ or the hypothesis overflows."""
    if candidate.shape != reference.shape:
        return None
    reference_flat, candidate_flat = reference.reshape(-1), candidate.reshape(-1)
    reference_squares = error_squares = residual_squares = 0.0
    for start in range(0, reference_flat.size, CHUNK_ELEMENTS):
        reference_chunk = reference_flat[start:start + CHUNK_ELEMENTS].astype(np.float64)
        candidate_chunk = candidate_flat[start:start + CHUNK_ELEMENTS].astype(np.float64)
        hypothesis = factor * reference_chunk
        if not np.all(np.isfinite(hypothesis)):
            return None
        reference_squares += float(np.dot(reference_chunk, reference_chunk))
        work = np.subtract(candidate_chunk, hypothesis, out=hypothesis)   # the chunk's residual, then its error
        residual_squares += float(np.dot(work, work))
        np.subtract(candidate_chunk, reference_chunk, out=work)
        error_squares += float(np.dot(work, work))
    residual = norm_ratio(math.sqrt(residual_squares), abs(factor) * math.sqrt(reference_squares))
    return residual, norm_ratio(math.sqrt(error_squares), math.sqrt(reference_squares))


def same_tensor(context: "Context", candidate: np.ndarray, name: str, *, own: bool = True) -> float | None:
    """rel_l2 of `candidate` against the checkpoint `name` when they are the same tensor up to rounding:
    `name` as the candidate itself records it (then only rounding may separate them), else (or when
    `own` is False) as the reference records it, to within the noise the comparison allows."""
    own = own and name in context.candidate and context.candidate.shape_of(name) == candidate.shape
    trace = context.candidate if own else context.reference
    if name not in trace or trace.shape_of(name) != candidate.shape:
        return None
    floor = rounding(context.candidate.dtypes.get(name))
    if not own:
        floor = max(floor, context.noise(name))
    left = rel_l2(widened(trace[name]), candidate)
    return left if left <= floor else None


def reproduces(reference: np.ndarray, model: np.ndarray) -> bool:
    """Does a model of the reference's own step reproduce it (so that an alternative can be trusted)?"""
    return model.shape == reference.shape and bool(np.all(np.isfinite(model))) and rel_l2(reference, model) <= CLOSE
