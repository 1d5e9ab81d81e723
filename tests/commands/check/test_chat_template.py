"""A chat answer that parts from the reference, scored after other renderings of its prompt: the one the server
made is named (`chat_template`), and only renderings the vocabulary can hold are tried."""

import dataclasses
import io
from types import SimpleNamespace

import pytest

import server_fuzz
from parity.capture.server.chat_completion import parse_chat_completion
from parity.commands.check.chat_template import renderings, with_template_tried
from parity.core.sequence import compare_sequences
from parity.report.progress import Progress

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference(model_dirs):
    """The tiny Llama with a chat template (a BOS, the message, a word after), its head scaled so that its predictions are peaked (no near ties)."""
    import torch

    from parity.capture.hf.model import load_model

    reference = load_model(model_dirs["llama"])
    reference.tokenizer.chat_template = "{% for message in messages %}<s>{{ message['content'] }} w9{% endfor %}"
    with torch.no_grad():
        reference.model.lm_head.weight.mul_(80)
    return reference


def test_only_renderings_the_vocabulary_holds_are_tried(reference):
    own = reference.chat_prompt("w1 w2")
    tried = dict(renderings(reference.tokenizer, "w1 w2", own))
    assert own == "<s>w1 w2 w9"
    assert tried["the prompt alone, no template"] == "w1 w2" and tried["Llama 2's template"] == "[INST] w1 w2 [/INST]"
    assert tried["the model's template without its BOS"] == "w1 w2 w9"
    assert tried["the model's template after a second BOS (the server's and the template's)"] == "<s><s>w1 w2 w9"
    assert not any(name.startswith(("ChatML", "Gemma", "Llama 3", "Mistral")) for name in tried)   # no such tokens
    assert own not in tried.values() and len(set(tried.values())) == len(tried)


def answered_after(reference, rendered):
    """What an honest server that renders the prompt as `rendered` answers, checked as a chat answer."""
    raw = server_fuzz._chat_honest(reference, rendered, 4)
    candidate = parse_chat_completion(raw, "the server")
    candidate = dataclasses.replace(candidate, follows=reference.chat_prompt(server_fuzz.PROMPT))
    return candidate, compare_sequences(reference.scoring(candidate), candidate)


OPTIONS = SimpleNamespace(prompt=server_fuzz.PROMPT, system=None, strict=frozenset(), server_options=())


def test_an_answer_to_the_prompt_alone_is_named_with_the_rendering_it_answered(reference):
    candidate, comparison = answered_after(reference, server_fuzz.PROMPT)
    assert not comparison and not comparison.diagnoses
    named = with_template_tried(comparison, reference, candidate, OPTIONS, Progress(io.StringIO()))
    (diagnosis,) = named.diagnoses
    assert (diagnosis.cause, diagnosis.confidence) == ("chat_template", "confirmed")
    assert diagnosis.message.startswith("the server answers another prompt than the model's chat template renders: "
                                        "the prompt alone, no template")


def test_an_answer_to_the_models_own_rendering_is_left_alone(reference):
    candidate, comparison = answered_after(reference, reference.chat_prompt(server_fuzz.PROMPT))
    assert comparison
    assert with_template_tried(comparison, reference, candidate, OPTIONS, Progress(io.StringIO())) is comparison


def test_with_a_system_message_every_rendering_carries_it_and_one_drops_it(reference):
    own = reference.chat_prompt("w1 w2", "w3")
    tried = dict(renderings(reference.tokenizer, "w1 w2", own, "w3"))
    assert own == "<s>w3 w9<s>w1 w2 w9"
    assert tried["the model's template without the system message (the server dropped it)"] == "<s>w1 w2 w9"
    assert tried["Llama 2's template"] == "[INST] <<SYS>>\nw3\n<</SYS>>\n\nw1 w2 [/INST]"
    assert tried["the prompt alone, no template"] == "w3\n\nw1 w2"
    assert "the model's template with an empty system message" not in tried


def test_a_server_that_drops_the_system_message_is_named(reference):
    raw = server_fuzz._chat_honest(reference, reference.chat_prompt(server_fuzz.PROMPT), 4)
    candidate = dataclasses.replace(parse_chat_completion(raw, "the server"),
                                    follows=reference.chat_prompt(server_fuzz.PROMPT, "w3 w7"))
    comparison = compare_sequences(reference.scoring(candidate), candidate)
    assert not comparison
    options = SimpleNamespace(prompt=server_fuzz.PROMPT, system="w3 w7", strict=frozenset(), server_options=())
    (diagnosis,) = with_template_tried(comparison, reference, candidate, options, Progress(io.StringIO())).diagnoses
    assert (diagnosis.cause, diagnosis.confidence) == ("chat_template", "confirmed")
    assert "the model's template without the system message (the server dropped it)" in diagnosis.message
