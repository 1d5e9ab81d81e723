"""The planted-bug suite: every bug of planted_bugs.BUGS, in six families (Llama, Qwen3, GPT-2, Mistral
with a window, Llama 3 and YaRN and linear RoPE scaling, Gemma 3), diagnosed in process.

Each bug lists the causes that name it rightly. A bug's answer is right when one of its causes
is named, wrong when any other cause is (no_known_cause and precision_noise are neither),
and a `confirmed` cause must be one of its causes. The rates are computed and asserted:
at least 90% right, none wrong, every confirmed right.
"""

import pytest

pytest.importorskip("transformers")

from planted_bugs import BUGS, families  # noqa: E402

NEUTRAL = {"no_known_cause", "precision_noise"}
RIGHT_RATE = 0.9


@pytest.fixture(scope="module")
def outcomes():
    """bug -> (causes named, causes confirmed, comparison), each bug diagnosed once."""
    planted, found = families(), {}
    for name, bug in BUGS.items():
        comparison = planted.diagnosed(bug.family, bug.ops, layer=bug.layer, dtype=bug.dtype)
        named = {d.cause for d in comparison.diagnoses} - NEUTRAL
        confirmed = {d.cause for d in comparison.diagnoses if d.confidence == "confirmed"}
        found[name] = (named, confirmed, comparison)
    return found


def test_the_suite_is_large_and_covers_every_family():
    assert len(BUGS) >= 40
    families = {bug.family for bug in BUGS.values()}
    assert {"llama", "qwen3", "gpt2", "mistral", "llama3", "gemma3"} <= families
    assert {bug.dtype for bug in BUGS.values()} == {"float32", "bfloat16"}


def test_the_rates(outcomes):
    right = [name for name, (named, _, _) in outcomes.items() if named & BUGS[name].causes]
    wrong = {name: sorted(named - BUGS[name].causes) for name, (named, _, _) in outcomes.items()
             if named - BUGS[name].causes}
    confirmed_wrong = {name: sorted(confirmed - BUGS[name].causes) for name, (_, confirmed, _) in outcomes.items()
                       if confirmed - BUGS[name].causes}
    unexplained = sorted(set(outcomes) - set(right))
    print(f"\n{len(right)}/{len(outcomes)} right ({len(right) / len(outcomes):.1%}), {len(wrong)} wrong, "
          f"{sum(bool(c) for _, c, _ in outcomes.values())} with a confirmed cause, {len(confirmed_wrong)} confirmed wrong")
    assert not wrong, wrong
    assert not confirmed_wrong, confirmed_wrong
    assert len(right) >= RIGHT_RATE * len(outcomes), unexplained


@pytest.mark.parametrize("name", BUGS)
def test_each_bug_is_found_and_named_rightly_or_not_at_all(outcomes, name):
    named, confirmed, comparison = outcomes[name]
    assert not comparison, "the planted bug must make the comparison fail"
    assert not named - BUGS[name].causes, [d.message for d in comparison.diagnoses]
    assert confirmed <= BUGS[name].causes
