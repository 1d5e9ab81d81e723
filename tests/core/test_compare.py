import numpy as np
import pytest

from parity.core.compare import CompareConfig, compare
from parity.core.results import FAIL, PASS
from parity.core.tolerances import user_tolerance
from parity.core.trace import make_trace

RNG = np.random.default_rng(2)


def reference_tensors():
    return {
        "embed": RNG.standard_normal((4, 8)).astype(np.float32),
        "layers.0.attn_norm": RNG.standard_normal((4, 8)).astype(np.float32),
        "layers.0.attn_probs": RNG.random((2, 4, 4)).astype(np.float32),
        "layers.0.out": RNG.standard_normal((4, 8)).astype(np.float32),
        "layers.1.attn_norm": RNG.standard_normal((4, 8)).astype(np.float32),
        "layers.1.out": RNG.standard_normal((4, 8)).astype(np.float32),
        "logits": RNG.standard_normal((4, 16)).astype(np.float32),
    }


def test_identical_traces_pass_and_are_truthy():
    tensors = reference_tensors()
    comparison = compare(make_trace(tensors), make_trace(dict(tensors)))
    assert comparison and comparison.verdict == PASS and comparison.first_divergence is None
    assert comparison.passed_count == len(tensors)
    assert repr(comparison) == f"<Comparison {len(tensors)}/{len(tensors)} passed>"


def test_first_divergence_follows_data_flow_not_file_order():
    tensors = reference_tensors()
    candidate = dict(reversed(list(tensors.items())))  # file order reversed
    candidate["layers.1.out"] = tensors["layers.1.out"] + 1.0
    candidate["layers.0.out"] = tensors["layers.0.out"].copy()
    candidate["layers.0.out"][3, 5] += 0.5
    comparison = compare(make_trace(tensors), make_trace(candidate))
    assert not comparison
    divergence = comparison.first_divergence
    assert (divergence.checkpoint, divergence.layer, divergence.kind, divergence.position) == ("layers.0.out", 0, "out", 3)
    assert [r.name for r in comparison.checkpoints] == [
        "embed", "layers.0.attn_norm", "layers.0.attn_probs", "layers.0.out", "layers.1.attn_norm", "layers.1.out", "logits",
    ]


def test_missing_and_extra_checkpoints_are_listed_not_fatal():
    tensors = reference_tensors()
    candidate = {k: v for k, v in tensors.items() if k != "layers.0.attn_probs"}
    candidate["layers.0.q"] = np.zeros((4, 8), np.float32)
    comparison = compare(make_trace(tensors), make_trace(candidate))
    assert comparison.missing == ("layers.0.attn_probs",)
    assert comparison.extra == ("layers.0.q",)
    assert comparison  # nothing compared failed


def test_shape_mismatch_is_a_failure_of_that_checkpoint():
    tensors = reference_tensors()
    candidate = dict(tensors, **{"layers.1.out": np.zeros((5, 8), np.float32)})
    comparison = compare(make_trace(tensors), make_trace(candidate))
    result = comparison.result("layers.1.out")
    assert result.status == FAIL and result.metrics is None
    assert result.reason == "shape mismatch: reference [4, 8], candidate [5, 8]"
    assert comparison.first_divergence.checkpoint == "layers.1.out"


@pytest.mark.parametrize("candidate_shape", [(24, 8), (3, 8)])
def test_a_raw_module_output_of_another_shape_is_not_comparable_not_a_failure(candidate_shape):
    # an MoE's activation, called once per expert in the reference's loop and once over every routed token by
    # transformers' grouped experts: a correct candidate had failed on it
    from parity.core.results import NOT_COMPARABLE

    tensors = dict(reference_tensors(), **{"raw.model.layers.1.mlp.experts.act_fn": np.ones((12, 8), np.float32)})
    candidate = dict(tensors, **{"raw.model.layers.1.mlp.experts.act_fn": np.ones(candidate_shape, np.float32)})
    comparison = compare(make_trace(tensors), make_trace(candidate))
    result = comparison.result("raw.model.layers.1.mlp.experts.act_fn")
    assert result.status == NOT_COMPARABLE and "ran otherwise on the two sides" in result.reason
    assert comparison.passed and comparison.first_divergence is None


def test_a_raw_output_of_integer_ids_that_differ_is_a_selection_not_a_failure():
    # a sparse attention's indexer (AXK2's) outputs the ids of the keys it keeps: in bfloat16 a near tie of its
    # scores ordered two of them otherwise, and ids compared as magnitudes failed a correct model
    from parity.core.results import NOT_COMPARABLE

    kept = np.tile(np.arange(12, dtype=np.int64), (12, 1))                   # (T, k)
    reordered = kept.copy()
    reordered[7, [1, 2]] = reordered[7, [2, 1]]
    elsewhere = kept.copy()
    elsewhere[3, 0] = 11
    tensors = dict(reference_tensors(), **{"raw.model.layers.1.self_attn.indexer": kept})
    for ids, detail in ((reordered, "row 7; the same ids in each row, in another order"), (elsewhere, "row 3)")):
        comparison = compare(make_trace(tensors), make_trace(dict(tensors, **{
            "raw.model.layers.1.self_attn.indexer": ids})))
        result = comparison.result("raw.model.layers.1.self_attn.indexer")
        assert result.status == NOT_COMPARABLE and result.reason.startswith("integer ids differ at")
        assert detail in result.reason and comparison.passed
    floats = dict(tensors, **{"raw.model.layers.1.self_attn.indexer": kept.astype(np.float32)})
    comparison = compare(make_trace(floats), make_trace(dict(floats, **{
        "raw.model.layers.1.self_attn.indexer": elsewhere.astype(np.float32)})))
    assert comparison.result("raw.model.layers.1.self_attn.indexer").status == FAIL   # magnitudes: held as ever


def test_permuted_attention_probabilities_pass_and_say_how_they_were_aligned():
    tensors = reference_tensors()
    candidate = dict(tensors, **{"layers.0.attn_probs": tensors["layers.0.attn_probs"].transpose(1, 0, 2).copy()})
    comparison = compare(make_trace(tensors), make_trace(candidate))
    result = comparison.result("layers.0.attn_probs")
    assert result.status == PASS and result.layout == "axes permuted (1, 0, 2)"
    assert result.shape_candidate == (4, 2, 4)


def test_a_permuted_layout_that_still_differs_fails_with_its_best_alignment():
    tensors = reference_tensors()
    wrong = (tensors["layers.0.attn_probs"] + 0.5).transpose(1, 0, 2).copy()
    result = compare(make_trace(tensors), make_trace(dict(tensors, **{"layers.0.attn_probs": wrong}))).result("layers.0.attn_probs")
    assert result.status == FAIL and "best alignment" in result.reason


def test_nan_in_candidate_fails_where_it_appears():
    tensors = reference_tensors()
    poisoned = tensors["layers.1.attn_norm"].copy()
    poisoned[2, 1] = np.nan
    comparison = compare(make_trace(tensors), make_trace(dict(tensors, **{"layers.1.attn_norm": poisoned})))
    assert comparison.first_divergence.checkpoint == "layers.1.attn_norm"
    assert comparison.first_divergence.position == 2
    assert comparison.result("layers.1.attn_norm").metrics.nan_candidate == 1


def test_inf_in_candidate_is_reported():
    tensors = reference_tensors()
    overflowed = tensors["logits"].copy()
    overflowed[0, 0] = np.inf
    result = compare(make_trace(tensors), make_trace(dict(tensors, logits=overflowed))).result("logits")
    assert result.status == FAIL and result.metrics.inf_candidate == 1


def test_empty_tensors_pass():
    empty = {"embed": np.zeros((0, 8), np.float32)}
    comparison = compare(make_trace(empty), make_trace(dict(empty)))
    assert comparison and comparison.result("embed").metrics.numel == 0


def test_user_tolerance_replaces_defaults():
    tensors = reference_tensors()
    shifted = {k: v + 1e-3 for k, v in tensors.items()}
    assert not compare(make_trace(tensors), make_trace(shifted))
    loose = CompareConfig(tolerance=user_tolerance(1e-2, 0.0))
    comparison = compare(make_trace(tensors), make_trace(shifted), config=loose)
    assert comparison and comparison.checkpoints[0].tolerance.basis == "user"


def test_default_tolerance_uses_the_lower_precision_of_the_two_sides():
    tensors = reference_tensors()
    noisy = {k: v * (1 + 1e-3) for k, v in tensors.items()}  # 0.1%: bf16 noise, a float32 bug
    as_float32 = compare(make_trace(tensors, {"dtype": "float32"}), make_trace(noisy, {"dtype": "float32"}))
    as_bfloat16 = compare(make_trace(tensors, {"dtype": "float64"}), make_trace(noisy, {"dtype": "bfloat16"}))
    assert not as_float32 and as_bfloat16


def test_checkpoint_filter():
    tensors = reference_tensors()
    comparison = compare(make_trace(tensors), make_trace(tensors), config=CompareConfig(checkpoints="layers.*.out"))
    assert [r.name for r in comparison.checkpoints] == ["layers.0.out", "layers.1.out"]


def test_different_token_ids_are_noted():
    tensors = reference_tensors()
    comparison = compare(make_trace(tensors, {"tokens": [1, 2, 3, 4]}), make_trace(tensors, {"tokens": [1, 1, 2, 3, 4]}))
    assert comparison.notes == (
        "the traces were made from different token ids: reference has 4, candidate 5; first difference at position 1",
    )


@pytest.mark.parametrize("value", [np.float64, np.float16])
def test_tensor_dtype_is_kept_in_metrics_computation(value):
    tensors = {"embed": np.arange(6, dtype=value).reshape(2, 3)}
    assert compare(make_trace(tensors), make_trace(tensors))


def test_a_divergence_that_begins_far_along_the_sequence_is_reported_as_beginning_there():
    from parity.report import registry

    tokens = 6000
    reference = {"embed": RNG.standard_normal((tokens, 8)).astype(np.float32)}
    reference["layers.0.out"] = RNG.standard_normal((tokens, 8)).astype(np.float32)
    candidate = {name: value.copy() for name, value in reference.items()}
    growth = np.linspace(0.01, 0.5, tokens - 5000, dtype=np.float32)[:, None]
    candidate["layers.0.out"][5000:] += growth * reference["layers.0.out"][5000:]   # grows from position 5,000
    comparison = compare(make_trace(reference), make_trace(candidate))
    divergence = comparison.first_divergence
    assert divergence.checkpoint == "layers.0.out" and divergence.onset == 5000
    assert divergence.position > 5500   # the worst position lies far after where it begins
    console = registry.render(comparison, "console", width=200)
    assert "begins at token position 5000" in console and "... 4997:" in console
    assert '"onset_position": 5000' in registry.render(comparison, "json")
    page = registry.render(comparison, "html")
    assert "begins 5000" in page and page.count("<rect") < 1200   # 6,000 positions drawn as at most 512 bars


def test_a_passing_checkpoint_has_no_onset():
    from parity.core.compare import onset_position

    assert onset_position((0.1, 0.2, 0.1), bound=0.3) is None
    assert onset_position((0.1, float("nan"), 0.5), bound=0.3) == 1
    assert onset_position((), bound=0.3) is None and onset_position((0.5,), bound=None) is None
