"""A chat answer held beside the server's own rendering of its prompt (llama-server's POST /apply-template, on a
loopback stand-in): the same rendering said in a note, another one named `chat_template` with the first character
where they part, and confirmed where the answer agrees after the server's own."""

import dataclasses
import io
from types import SimpleNamespace

import pytest

import server_fuzz
from loopback import answering
from parity.capture.server.chat_completion import parse_chat_completion
from parity.commands.check.server_template import with_server_rendering
from parity.core.sequence import compare_sequences
from parity.report.progress import Progress

pytest.importorskip("transformers")
TEMPLATE = "{% for message in messages %}<s>{{ message['content'] }} w9{% endfor %}"


@pytest.fixture(scope="module")
def reference(model_dirs):
    """The tiny Llama with a chat template, its head scaled so that its predictions are peaked (no near ties)."""
    import torch

    from parity.capture.hf.model import load_model

    reference = load_model(model_dirs["llama"])
    reference.tokenizer.chat_template = TEMPLATE
    with torch.no_grad():
        reference.model.lm_head.weight.mul_(80)
    return reference


def checked(reference, server_renders, answers):
    """The comparison of an honest answer after `server_renders`, with the server's rendering asked."""
    raw = server_fuzz._chat_honest(reference, server_renders, 4)
    tokens = dataclasses.replace(parse_chat_completion(raw, "the server"),
                                 follows=reference.chat_prompt(server_fuzz.PROMPT))
    comparison = compare_sequences(reference.scoring(tokens), tokens)
    with answering(answers) as (_, url):
        options = SimpleNamespace(candidate=f"{url}/v1/chat/completions", prompt=server_fuzz.PROMPT, system=None,
                                  server_model=None, timeout_s=10.0, strict=frozenset(), server_options=())
        return with_server_rendering(comparison, reference, tokens, options, Progress(io.StringIO()))


def test_a_server_rendering_as_the_template_does_is_said_in_a_note(reference):
    rendered = reference.chat_prompt(server_fuzz.PROMPT)
    result = checked(reference, rendered, {"/apply-template": (200, {"prompt": rendered})})
    assert result and not result.diagnoses
    assert "the server renders the prompt as the reference's chat template does (14 characters, POST " \
           "/apply-template)" in result.notes


def test_a_server_rendering_otherwise_is_named_where_it_parts_and_confirmed_by_its_own_rendering(reference):
    result = checked(reference, server_fuzz.PROMPT, {"/apply-template": (200, {"prompt": server_fuzz.PROMPT})})
    assert not result
    (diagnosis,) = result.diagnoses
    assert (diagnosis.cause, diagnosis.confidence) == ("chat_template", "confirmed")
    assert "(POST /apply-template: 8 characters against 14): at character 0 it writes 'w1 w2 w3' where the " \
           "template writes '<s>w1 w2 w3 w9'" in diagnosis.message
    assert diagnosis.message.endswith("the template is the difference")


def test_a_server_without_the_endpoint_is_said_not_checked(reference):
    result = checked(reference, server_fuzz.PROMPT, {})
    assert not result and not result.diagnoses
    assert any(note.startswith("the server's rendering of the prompt was not checked: it has no POST "
                               "/apply-template") for note in result.notes)
