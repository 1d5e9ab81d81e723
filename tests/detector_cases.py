"""Constructed examples for detector tests: a reference trace, a candidate with one planted change."""

from __future__ import annotations

import numpy as np

from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose

CONFIG = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32,
          "head_dim": 8, "rms_norm_eps": 1e-6, "hidden_act": "silu", "rope_parameters": {"rope_theta": 10000.0}}


def diagnoses(reference: dict, candidate: dict, config: dict = CONFIG) -> list[tuple[str, str]]:
    """(cause, checkpoint) of every diagnosis of `candidate` against `reference` (float32 traces)."""
    metadata = {"dtype": "float32", "config": config}
    reference_trace, candidate_trace = make_trace(reference, metadata), make_trace(candidate, {"dtype": "float32"})
    comparison = diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)
    return [(d.cause, d.checkpoint) for d in comparison.diagnoses]


def causes(reference: dict, candidate: dict, config: dict = CONFIG) -> set[str]:
    return {cause for cause, _ in diagnoses(reference, candidate, config)} - {"precision_noise", "no_known_cause"}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
