"""Reading a chat completions answer: the OpenAI shape and mistral.rs's, every field checked, and what cannot
be compared refused in one line."""

import copy

import pytest

from parity.capture.server.chat import OpenAIChatServer, is_chat_url
from parity.capture.server.chat_completion import parse_chat_completion
from parity.core.errors import CaptureError

WHERE = "the server at http://127.0.0.1:9/v1/chat/completions"


def answer(tokens=(("L", -2.9), ("'", -0.6), ("Al", -1.9)), content=None, finish="length") -> dict:
    """An OpenAI chat answer: each token with a top-2 whose first entry is the token itself."""
    entries = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode()),
                "top_logprobs": [{"token": piece, "logprob": logprob, "bytes": None},
                                 {"token": "x", "logprob": logprob - 1, "bytes": None}]}
               for piece, logprob in tokens]
    text = "".join(piece for piece, _ in tokens) if content is None else content
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": entries}, "finish_reason": finish}]}


def test_the_answer_is_read_with_every_row_and_offsets_where_each_token_ends():
    candidate = parse_chat_completion(answer(), WHERE, max_tokens=3)
    assert candidate.text == "L'Al" and candidate.pieces == ("L", "'", "Al")
    assert candidate.offsets == (0, 1, 2) and candidate.first_generated == 0
    assert candidate.top_logprobs[0] == {"L": -2.9, "x": -3.9}
    assert candidate.token_logprobs == (-2.9, -0.6, -1.9)


def test_mistral_rs_alternatives_by_id_are_read_by_their_text():
    document = answer()
    for entry in document["choices"][0]["logprobs"]["content"]:
        entry["top_logprobs"] = [{"token": 60 + i, "logprob": top["logprob"], "bytes": top["token"]}
                                 for i, top in enumerate(entry["top_logprobs"])]
    candidate = parse_chat_completion(document, WHERE)
    assert candidate.top_logprobs[2] == {"Al": -1.9, "x": -2.9}


def test_a_token_that_is_part_of_a_character_lets_the_next_start_after_it():
    document = answer(tokens=(("\ufffd", -1.0), ("\ufffd", -0.1), (" ok", -0.5)), content="é ok")
    candidate = parse_chat_completion(document, WHERE)
    assert candidate.offsets == (0, 0, 1)


def mutated(change):
    document = copy.deepcopy(answer())
    change(document)
    return document


CHOICE = ("choices", 0)


def _set(path, value):
    def change(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


REFUSED = {
    "not an object": (lambda d: d.clear() or d.update({"choices": "x"}), "choices = 'x', expected a JSON list"),
    "no logprobs": (_set(CHOICE + ("logprobs",), None), "choices[0].logprobs = None"),
    "no content list": (_set(CHOICE + ("logprobs", "content"), None), "choices[0].logprobs.content = None"),
    "a token that is no text": (_set(CHOICE + ("logprobs", "content", 1, "token"), 7), "content[1].token = 7"),
    "a logprob above 0": (_set(CHOICE + ("logprobs", "content", 0, "logprob"), 3.0), "content[0].logprob = 3.0"),
    "an alternative with no text": (_set(CHOICE + ("logprobs", "content", 0, "top_logprobs"), [{"token": 5}]),
                                    "top_logprobs[0] = {'token': 5}"),
    "no top_logprobs": (_set(CHOICE + ("logprobs", "content", 1, "top_logprobs"), []),
                        "the top_logprobs of token 1 are empty"),
    "nothing generated": (_set(CHOICE + ("logprobs", "content"), []), "its log-probabilities hold no token"),
    "tokens that are not the text": (_set(CHOICE + ("message", "content"), "Lx'Al"), "token 1 is \"'\""),
    "a lone surrogate": (_set(CHOICE + ("message", "content"), "\ud800"), "lone surrogate escape \\ud800"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_answer_that_cannot_be_read_or_compared_is_refused_in_one_line(case):
    change, said = REFUSED[case]
    with pytest.raises(CaptureError) as raised:
        parse_chat_completion(mutated(change), WHERE, max_tokens=3)
    message = str(raised.value)
    assert said in message and WHERE in message and "\n" not in message, message


def test_more_tokens_than_asked_for_is_not_comparable():
    with pytest.raises(CaptureError, match="3 generated tokens where 1 were asked for"):
        parse_chat_completion(answer(), WHERE, max_tokens=1)


def test_the_chat_endpoint_is_named_by_its_address():
    assert is_chat_url("http://h:1/v1/chat/completions/") and not is_chat_url("http://h:1/v1")
    assert OpenAIChatServer("http://h:1/v1/chat/completions").completions_url == "http://h:1/v1/chat/completions"
    assert OpenAIChatServer("http://h:1/v1").completions_url == "http://h:1/v1/chat/completions"
