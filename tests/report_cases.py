"""Results to render in the report tests, built from numpy traces (no model needed).

`calibrated_failure()` is a comparison held to a measured noise floor, with an
error planted at layers.2.mlp_act that the later layers inherit; the other
builders give the sections past one forward pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from parity.core.calibrate import noise_floors
from parity.core.compare import CompareConfig, compare
from parity.core.results import (CacheComparison, CheckpointResult, DecodeConsistency, Diagnosis, GenerationComparison,
                                 GreedyDivergence, SamplerCheck, TeacherForced)
from parity.core.trace import make_trace

KINDS = ("attn_norm", "q", "k", "v", "q_rope", "k_rope", "attn_ctx", "attn_out", "resid_mid", "mlp_norm",
         "mlp_gate", "mlp_up", "mlp_act", "mlp_out", "out")
HOSTILE = "<script>alert('x')</script>\x00\x1b[31m\"onmouseover=alert(1) \ud800 | `tick` *bold* # &amp;"


def tensors(layers: int = 4, tokens: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"embed": rng.standard_normal((tokens, 16)), "final_norm": rng.standard_normal((tokens, 16)),
           "logits": rng.standard_normal((tokens, 32))}
    for i in range(layers):
        for kind in KINDS:
            out[f"layers.{i}.{kind}"] = rng.standard_normal((tokens, 16))
        out[f"layers.{i}.attn_probs"] = rng.random((2, tokens, tokens))
    return out


def _noisy(values: dict, scale: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {name: array * (1 + scale * rng.standard_normal(array.shape)) for name, array in values.items()}


def calibrated_failure(layers: int = 4, *, metadata: dict | None = None):
    reference = tensors(layers)
    lowp = _noisy(reference, 1e-3, 1)
    candidate = _noisy(reference, 1e-3, 2)
    for name in list(candidate):
        if name.startswith("layers.") and (int(name.split(".")[1]) > 2 or name in ("layers.2.mlp_act", "layers.2.mlp_out",
                                                                                   "layers.2.out")):
            candidate[name] = candidate[name] + 0.05 * np.random.default_rng(3).standard_normal(candidate[name].shape)
    candidate["logits"] = candidate["logits"] * 1.1
    tokens = list(range(6))
    meta = {"producer": "transformers 5.0 (test)", "arch": "llama", "dtype": "float32", "tokens": tokens}
    config = CompareConfig(noise=noise_floors(make_trace(reference, meta), make_trace(lowp, meta)), noise_dtype="float32")
    comparison = compare(make_trace(reference, meta), make_trace(candidate, {**meta, **(metadata or {})}), config=config)
    diagnosis = Diagnosis("activation_variant", "layers.2.mlp_act",
                          "the MLP activation differs from the reference's: it matches gelu_tanh, not silu")
    return dataclasses.replace(comparison, diagnoses=(diagnosis,), notes=("a note from the comparison",))


def with_unknown_status(comparison):
    """A result type that other checks may add: a checkpoint that could not be checked, with its reason."""
    extra = CheckpointResult("layers.0.q_norm", "not_checked", (6, 16), (6, 16), reason="the candidate has no q_norm tap")
    return dataclasses.replace(comparison, checkpoints=comparison.checkpoints + (extra,))


def decode(failing: bool = True) -> DecodeConsistency:
    errors = (1e-6, 2e-6, 0.2 if failing else 3e-6, 0.3 if failing else 2e-6)
    cache = CacheComparison(keys=((1e-7, 2e-7), (1e-7, 0.5 if failing else 1e-7)), values=((1e-7, 1e-7), (1e-7, 1e-7)),
                            bound=1e-5, first=("keys", 1, 1) if failing else None)
    return DecodeConsistency(prompt_length=6, rel_l2=errors, bounds=(1e-5,) * 4, basis="float32 default for logits",
                             first_step=2 if failing else None, first_checkpoint="layers.1.k_rope" if failing else None,
                             cache=cache, chunked_rel_l2=2e-6, batch_rel_l2=(("left", 0.1), ("right", 1e-6)))


def generation(failing: bool = True) -> GenerationComparison:
    pieces = tuple(f"w{i}" for i in range(30)) + ("<b>&",)
    divergence = GreedyDivergence(step=2, reference_token=5, candidate_token=30, reference_top=((5, 0.6), (30, 0.2)),
                                  margin_nats=1.1, candidate_rank=1) if failing else None
    forced = TeacherForced(kl=(0.001, 0.002, 0.4, 0.01), top1=(True, True, not failing, True), top5=(True,) * 4,
                           margins=(2.0, 1.5, 1.1, 3.0))
    sampler = SamplerCheck(kl=(0.0, 0.3), total_variation=(0.0, 0.2), first_step=1 if failing else None,
                           fitted_temperature=0.7 if failing else None)
    return GenerationComparison(prompt=(1, 2, 3), reference_tokens=(4, 5, 5, 6),
                                candidate_tokens=(4, 5, 30, 6) if failing else (4, 5, 5, 6),
                                divergence=divergence, teacher_forced=forced, sampler=sampler, pieces=pieces)
