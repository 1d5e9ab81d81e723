"""Fuzzed server answers (tests/server_fuzz.py): an honest server's answer, mutated, through what
`check MODEL URL` does with it. Only parity's one-line refusal or a verdict; a pass only of an answer
the oracle finds comparable. scripts/fuzz_surfaces.py runs 10,000."""

import random

import pytest

import server_fuzz

pytest.importorskip("transformers")
COUNT = 300


@pytest.fixture(scope="module")
def reference(model_dirs):
    from parity.capture.hf.model import load_model

    return load_model(model_dirs["llama"])


def test_the_honest_answers_pass(reference):
    for seed in server_fuzz.seeds(reference):
        assert server_fuzz.pipeline(seed, reference) == "pass" and server_fuzz.comparable(seed, reference)


def test_mutated_answers_are_refused_in_one_line_or_compared_and_never_pass_silently(reference):
    never_silent(server_fuzz.seeds(reference), server_fuzz.pipeline, server_fuzz.comparable, reference, seed=24)


def never_silent(seeds, pipeline, comparable, reference, *, seed):
    """COUNT mutations of `seeds` through `pipeline`: each refused in one line, or compared; a pass only of an
    answer `comparable` admits; both outcomes reached."""
    rng = random.Random(seed)
    outcomes = {"pass": 0, "fail": 0, "refused": 0}
    for index in range(COUNT):
        data = server_fuzz.mutate(rng.choice(seeds), rng)
        said = pipeline(data, reference)   # anything but parity's own error would raise here
        if said.startswith("refused: "):
            message = said.removeprefix("refused: ")
            assert "\n" not in message and "\x1b" not in message and "; " in message, (index, message)
            outcomes["refused"] += 1
            continue
        outcomes[said] += 1
        if said == "pass":
            assert comparable(data, reference), (index, data[:400])
    assert outcomes["refused"] and outcomes["pass"], outcomes


@pytest.fixture(scope="module")
def chat_reference(model_dirs):
    from parity.capture.hf.model import load_model

    return server_fuzz.with_chat_template(load_model(model_dirs["llama"]))


def test_the_honest_chat_answers_pass(chat_reference):
    for seed in server_fuzz.chat_seeds(chat_reference):
        assert server_fuzz.chat_pipeline(seed, chat_reference) == "pass"
        assert server_fuzz.chat_comparable(seed, chat_reference)


def test_mutated_chat_answers_are_refused_in_one_line_or_compared_and_never_pass_silently(chat_reference):
    never_silent(server_fuzz.chat_seeds(chat_reference), server_fuzz.chat_pipeline, server_fuzz.chat_comparable,
                 chat_reference, seed=25)
