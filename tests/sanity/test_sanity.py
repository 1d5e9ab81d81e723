"""The 11 sanity tests on a hand-written Llama: the correct one passes all, each planted bug fails its test."""

import pytest

pytest.importorskip("transformers")

from llama_course import Bugs, course_config, default_model  # noqa: E402

from parity.sanity import SanityConfig, run_sanity  # noqa: E402
from parity.sanity import TEST_NAMES  # noqa: E402


def small_config(**overrides):
    values = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, vocab_size=128, max_position_embeddings=256)
    return course_config(**{**values, **overrides})


def run(bugs=Bugs(), **settings):
    return run_sanity(default_model(bugs, config=small_config()), SanityConfig(**settings))


def statuses(report):
    return {result.name: result.status for result in report.results}


def test_the_correct_model_passes_all_eleven_tests():
    report = run()
    assert [result.name for result in report.results] == list(TEST_NAMES)
    assert statuses(report) == {name: "passed" for name in TEST_NAMES}, [r for r in report.results if not r]
    assert report and report.summary["overall_status"] == "PASSED" and report.summary["success_rate"] == "100.0%"


@pytest.mark.parametrize("bugs, test, words", [
    (Bugs(norm="no_mean"), "norm", "norm modules x 2 input scales) differ; first model.layers.0.input_layernorm"),
    (Bugs(rope_base="hidden"), "rope", "tables differ; first cos"),
    (Bugs(gqa="tile"), "attention", "GQA head mapping"),
    (Bugs(loss_shift=False), "loss", "labels are not shifted"),
    (Bugs(read_cache=False), "kv_cache", "decoding through the cache differs from the full pass: step 16"),
    (Bugs(detach="model.layers.1.mlp.down_proj.weight"), "gradients",
     "got no gradient: model.layers.1.mlp.down_proj.weight: broken autograd"),
    (Bugs(naive_cross_entropy=True), "stability", "a cross-entropy that overflows"),
    # the attention's own inputs scaled up: through the embedding the norm would rescale them first
    (Bugs(naive_softmax=True), "stability", "hidden states of size 1000 into model.layers.0.self_attn give"),
])
def test_each_planted_bug_fails_its_test(bugs, test, words):
    report = run(bugs)
    result = next(r for r in report.results if r.name == test)
    assert result.status == "failed" and words in result.message, result
    assert not report and report.summary["overall_status"] == "FAILED"


def test_dropout_left_on_is_said_to_be_randomness_not_a_missing_causal_mask():
    """Before: 'changing the last position changes the outputs before it; the causal mask is missing or wrong'."""
    results = {result.name: result for result in run(Bugs(dropout_on=True)).results}
    for test in ("attention", "forward"):
        assert results[test].status == "failed", results[test]
        assert "two runs of the candidate on the same input differ" in results[test].message, results[test]
        assert "dropout left on" in results[test].message and "causal mask" not in results[test].message


def test_bugs_outside_a_component_leave_it_passing():
    """A cache that is not read and a detached weight touch nothing the forward pass computes."""
    for bugs in (Bugs(read_cache=False), Bugs(detach="model.layers.0.self_attn.o_proj.weight")):
        failed = [name for name, status in statuses(run(bugs)).items() if status != "passed"]
        assert failed == ["kv_cache"] if not bugs.read_cache else failed == ["gradients"]


def test_a_missing_module_is_reported_under_structure_and_its_test_is_not_checked():
    model = default_model(config=small_config())
    del model.model.rotary_emb  # noqa: the port computes positions some other way
    report = run_sanity(model, SanityConfig())
    results = {result.name: result for result in report.results}
    assert results["structure"].status == "failed" and "module model.rotary_emb is missing" in results["structure"].message
    assert results["rope"].status in ("skipped", "failed")
    assert not report


def test_an_unexpected_parameter_is_named():
    import torch

    model = default_model(config=small_config())
    model.extra_scale = torch.nn.Parameter(torch.ones(1))
    result = run_sanity(model, SanityConfig()).results[0]
    assert result.status == "failed" and "unexpected parameter extra_scale" in result.message


def test_the_correct_model_passes_in_bfloat16():
    assert run(dtype="bfloat16")


def test_json_shape():
    data = run().to_dict()
    assert set(data) == {"timestamp", "summary", "environment", "test_config", "results"}
    assert set(data["summary"]) == {"total_tests", "passed", "failed", "skipped", "success_rate", "overall_status"}
    assert data["test_config"]["batch_size"] == 2 and data["test_config"]["seq_length"] == 32
    assert data["test_config"]["rtol"] == pytest.approx(1e-3) and data["test_config"]["atol"] == pytest.approx(1e-4)
    assert all(set(result) == {"name", "status", "message", "metrics"} for result in data["results"])


def test_a_reference_directory_gives_its_weights_to_the_candidate(tmp_path):
    import torch
    import transformers

    torch.manual_seed(3)
    transformers.LlamaForCausalLM(small_config()).save_pretrained(tmp_path)
    candidate = default_model(config=small_config(), seed=1)                 # other weights than the reference's
    report = run_sanity(candidate, SanityConfig(), reference=str(tmp_path))
    assert report, [result for result in report.results if not result]
    saved = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(candidate.model.layers[1].mlp.up_proj.weight, saved.model.layers[1].mlp.up_proj.weight)


def test_a_candidate_without_config_is_refused():
    import torch

    from parity.core.errors import OptionError

    with pytest.raises(OptionError, match="has no .config"):
        run_sanity(torch.nn.Linear(2, 2), SanityConfig())
