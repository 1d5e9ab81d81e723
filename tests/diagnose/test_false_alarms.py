"""Correct ports draw no cause: in float32 and bfloat16 every family passes with nothing but precision_noise,
and no general mechanism names a cause at any checkpoint even when that checkpoint is made to fail (the
candidate's rounding is then all the error there is)."""

import dataclasses

import pytest

pytest.importorskip("transformers")

from planted_bugs import FAMILIES, ROUNDING, UNRECORDED, families  # noqa: E402
from parity.core.names import parse  # noqa: E402
from parity.core.results import Divergence  # noqa: E402
from parity.diagnose import diagnose  # noqa: E402

# The causes the general mechanisms name (identities, wiring, fits of RoPE, masks, norms, heads, structure).
MECHANISMS = {"rope_layout", "rope_direction", "rope_position_offset", "rope_theta", "rope_scaling", "rope_angles",
              "causal_mask", "sliding_window", "softmax_normalization", "norm_weight_convention", "norm_variant",
              "residual_scale", "wiring", "layout_permuted", "gqa_head_mapping", "attention_scale", "structure",
              "activation_variant", "norm_epsilon"}
STRESSED = ("llama3", "yarn", "mistral", "qwen3", "gemma3", "gpt2")
STRESSED_LAYERS = {"gemma3": (0, 1)}   # the windowed layer and the global one; elsewhere layer 1 stands for all


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_correct_port_gets_no_cause_but_precision_noise(family, dtype):
    comparison = families().diagnosed(family, dtype=dtype)
    assert comparison, comparison.first_divergence
    assert {d.cause for d in comparison.diagnoses} <= {"precision_noise"}


# The format a port's rounding leaves its first failing checkpoint in, where every value is of it
HELD_IN = {"llama: softmax taken in float16": "float16", "llama: weights rounded to bfloat16": "bfloat16"}


@pytest.mark.parametrize("name", ROUNDING)
def test_rounding_in_a_port_draws_no_cause_but_the_format_it_holds(name):
    """A port that rounds where the model does not (a softmax in float16, weights in bfloat16) may fail the
    comparison; no mistake of the computation describes it. Where the failing checkpoint's values are all of
    the narrower format, that is said (declared_precision), and nothing else."""
    bug = ROUNDING[name]
    comparison = families().diagnosed(bug.family, bug.ops, dtype=bug.dtype)
    causes = {d.cause: d.message for d in comparison.diagnoses}
    if name in HELD_IN:
        assert set(causes) == {"declared_precision"}, comparison.diagnoses
        assert f"is a {HELD_IN[name]}" in causes["declared_precision"]
    else:
        assert set(causes) <= {"no_known_cause", "precision_noise"}, comparison.diagnoses


def failing_at(comparison, name):
    """The comparison as if `name` were where the candidate first fails and where its error starts."""
    checkpoint = parse(name)
    divergence = Divergence(name, checkpoint.layer, checkpoint.kind, 0)
    results = tuple(dataclasses.replace(r, status="fail") if r.name == name else r for r in comparison.checkpoints)
    return dataclasses.replace(comparison, checkpoints=results, first_divergence=divergence, origin=divergence)


def named_at_any_checkpoint(family: str, dtype: str, unrecorded: frozenset = frozenset()) -> dict[str, list[str]]:
    """checkpoint -> the mechanisms' causes named when the correct port is made to fail there alone."""
    reference, candidate, comparison = families().compared(family, dtype=dtype, calibrated=True, unrecorded=unrecorded)
    assert comparison
    named = {}
    for result in comparison.checkpoints:
        if parse(result.name).layer not in (None, *STRESSED_LAYERS.get(family, (1,))):
            continue
        found = diagnose(failing_at(comparison, result.name), reference, candidate)
        causes = {d.cause for d in found.diagnoses} & MECHANISMS
        if causes:
            named[result.name] = sorted(causes)
    return named


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", STRESSED)
def test_no_mechanism_names_rounding_at_any_checkpoint(family, dtype):
    """float32 against a float64 reference, and bfloat16, each with tolerances calibrated on the reference model."""
    named = named_at_any_checkpoint(family, dtype)
    assert not named, named


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", STRESSED)
def test_nor_where_the_port_records_no_rope_or_probabilities(family, dtype):
    """The same with q_rope, k_rope and attn_probs unrecorded (RoPE and softmax inline): the searches over other
    RoPE tables and other masks recompute the attention from the reference's tensors, and rounding alone must not
    fit one."""
    named = named_at_any_checkpoint(family, dtype, UNRECORDED)
    assert not named, named
