"""The server adapter against real servers on loopback: llama.cpp's, one that is down,
one that answers garbage, and one that never answers."""

import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest

from conftest import need
from llama_servers import free_port, serving
from loopback import answering
from parity.capture.server.openai import OpenAIServer
from parity.core.errors import CaptureError
from parity.core.sequence import compare_sequences

PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf):
    need("llama_cpp")
    need("uvicorn")
    with serving(smollm2_gguf) as url:
        yield url


def test_prompt_and_continuation_logprobs_from_the_real_server(llama_server):
    candidate = OpenAIServer(llama_server).complete(PROMPT, max_tokens=6)
    assert candidate.text.startswith(PROMPT) and len(candidate.text) > len(PROMPT)
    assert candidate.first_generated < len(candidate.pieces) == len(candidate.offsets)
    assert candidate.offsets[0] == 0 and candidate.text.startswith("".join(candidate.pieces))
    assert all(len(row) >= 5 for row in candidate.top_logprobs[1:])


def test_the_servers_one_token_shift_is_adapted_with_a_note_and_held_under_strict(llama_server, smollm2_reference):
    candidate = OpenAIServer(llama_server).complete(PROMPT, max_tokens=6)
    comparison = compare_sequences(smollm2_reference.reference_tokens(candidate.text), candidate)
    # Its echoed log-probabilities score each token with the distribution after it: read shifted back, noted.
    assert comparison, comparison.first_divergence
    assert any(note.startswith("adapted (logprob_shift)") for note in comparison.notes), comparison.notes
    generated = [p for p in comparison.positions if p.generated]
    assert generated and all(p.agrees or p.near_tie for p in generated)
    # and it drops the last generated token from its log-probabilities: that is said, not hidden.
    assert any("cover" in note for note in comparison.notes)
    held = compare_sequences(smollm2_reference.reference_tokens(candidate.text), candidate,
                             strict=frozenset({"logprob_shift"}))
    assert not held and [d.cause for d in held.diagnoses] == ["token_shift"]


REPEATED = "The cat sat on the mat. The cat sat on the mat. The cat sat on the"


def test_the_servers_default_repeat_penalty_is_named_and_greedy_settings_pass(llama_server, smollm2_reference):
    """llama-cpp-python's default repeat_penalty 1.1 picks tokens that are not its own top-1 at temperature 0."""
    served = OpenAIServer(llama_server).complete(REPEATED, max_tokens=24)
    comparison = compare_sequences(smollm2_reference.reference_tokens(served.text), served)
    assert not comparison
    assert [d.cause for d in comparison.diagnoses] == ["sampler_not_greedy"], comparison.diagnoses
    assert "--server-option repeat_penalty=1.0" in comparison.diagnoses[0].message
    options = {"repeat_penalty": 1.0}
    greedy = OpenAIServer(llama_server, options=tuple(options.items())).complete(REPEATED, max_tokens=24)
    comparison = compare_sequences(smollm2_reference.reference_tokens(greedy.text), greedy, sent=options)
    assert comparison, comparison.first_divergence
    assert not comparison.diagnoses


def test_check_passes_the_server_with_a_sampler_option(llama_server, smollm2_gguf, tmp_path):
    from parity.cli import main

    report = tmp_path / "server.json"
    code = main(["check", str(smollm2_gguf), llama_server, "--prompt", REPEATED, "-n", "24",
                 "--server-option", "repeat_penalty=1.0", "--json", str(report)])
    assert code == 0
    assert json.loads(report.read_text())["headline"].startswith("prompt: top-1 agrees at ")
    assert main(["check", str(smollm2_gguf), llama_server, "--prompt", REPEATED, "-n", "24",
                 "--json", str(report), "--force"]) == 1
    assert [d["cause"] for d in json.loads(report.read_text())["diagnoses"]] == ["sampler_not_greedy"]


def test_a_server_that_is_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CaptureError, match="cannot reach the server at .*is it running"):
        OpenAIServer(url, timeout_s=5).complete(PROMPT, max_tokens=2)


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.server.answers.pop(0)
        self.send_response(200 if not body.startswith(b"500") else 500)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def garbage_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Garbage)
    server.answers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_a_server_that_answers_garbage_is_a_clear_error(garbage_server):
    url = f"http://127.0.0.1:{garbage_server.server_port}"
    garbage_server.answers += [b"<html>hello</html>", json.dumps({"choices": [{"text": PROMPT}]}).encode(), b"500 overloaded"]
    with pytest.raises(CaptureError, match="something that is not JSON: '<html>hello</html>'"):
        OpenAIServer(url).complete(PROMPT, max_tokens=2)
    with pytest.raises(CaptureError, match="not a completion with logprobs"):
        OpenAIServer(url).complete(PROMPT, max_tokens=2)
    with pytest.raises(CaptureError, match="answered HTTP 500"):
        OpenAIServer(url).complete(PROMPT, max_tokens=2)


# --- a server that misbehaves on purpose, on loopback ----------------------------

FAULTS = {  # scenario -> what the one-line error must say
    "drip": "did not finish answering within 3 s",
    "silent": "did not finish answering within 3 s",
    "endless": "sent more than 33,554,432 bytes",
    "endless_chunked": "sent more than 33,554,432 bytes",
    "huge_length": "announced a 1,000,000,000,000-byte answer",
    "bad_status": "bad HTTP status line 'HTTP/1.1 OK-ish",
    "not_http": "bad HTTP status line 'SSH-2.0",
    "many_headers": "got more than 100 headers",
    "long_header": "header or status line over 65,536 bytes",
    "deep_json": "JSON nested too deeply",
    "text_int": "choices[0].text = 5, expected a string",
    "logprobs_str": "token_logprobs[1] = 'high', expected a log-probability",
    "logprobs_positive": "token_logprobs[1] = 3.0, expected a log-probability",
    "offsets_float": "text_offset[1] = 2.5, expected an integer character offset",
    "offsets_beyond": "text_offset[3] = 1000000000, expected an integer character offset from 0 to 11",
    "top_row_list": "top_logprobs[1] = [[[1]]], expected null or an object",
    "lengths_differ": "lists of different lengths (tokens 1, text_offset 4",
    "no_choices": "empty choices list",
    "no_logprobs": "without choices[0].logprobs",
    "no_echo": "(not comparable): the top_logprobs of token 0 are missing",
    "truncated": "closed the connection after 117 bytes of its answer (118 more were due)",
    "reset": "failed: Connection reset by peer",
    "close_at_once": "closed the connection without answering",
    "not_json": r"not JSON: '<html><body>\x1b[31mhello",  # escaped: no terminal control codes
    "not_utf8": "not JSON",
    "http_500": r"answered HTTP 500 Internal Server Error: 'model overloaded\nretry later'",
    "http_404": "answered HTTP 404 Not Found",
    "redirect": "HTTP 302 Found, a redirect to 'http://example.com/v1/completions'; give the address",
    # answers that are well formed but cannot be compared: each once passed
    "echo_only": "(not comparable): 0 tokens in choices[0].logprobs.tokens",
    "zero_tokens": "(not comparable): 0 tokens in choices[0].logprobs.tokens",
    "no_top_logprobs": "(not comparable): top_logprobs[1] is null",
    "top_logprobs_null": "(not comparable): top_logprobs[1] is null",
    "top_row_empty": "(not comparable): top_logprobs[1] is an empty object",
    "one_token": "(not comparable): 1 token in choices[0].logprobs.tokens",
    "offsets_misaligned": "(not comparable): token 1 (' w2') starts at offset 1, where the token before it ends at 2",
    "pieces_elsewhere": "(not comparable): token 1 is ' w9' but the text at offset 2 holds ' w2'",
    "prompt_only": "(not comparable): the text is the prompt alone (finish_reason 'length')",
    "surrogate_text": "choices[0].text holds the lone surrogate escape \\ud800 at character 9",
    "surrogate_piece": "tokens[3] = ' w\\udc04', expected Unicode text",
}


@pytest.fixture(scope="module")
def misbehaving():
    from misbehaving_server import MisbehavingServer

    server = MisbehavingServer()
    yield server
    server.close()


def test_the_misbehaving_servers_good_answer_is_read(misbehaving):
    from misbehaving_server import PROMPT as SHORT

    candidate = OpenAIServer(misbehaving.url("good"), timeout_s=3).complete(SHORT, max_tokens=1)
    assert candidate.pieces == ("w1", " w2", " w3", " w4") and candidate.first_generated == 3


@pytest.mark.parametrize("scenario", sorted(FAULTS))
def test_each_server_fault_is_one_line_naming_the_server_in_bounded_time_and_memory(misbehaving, scenario):
    import tracemalloc

    from misbehaving_server import PROMPT as SHORT

    url = misbehaving.url(scenario)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(CaptureError) as raised:
            OpenAIServer(url, timeout_s=3).complete(SHORT, max_tokens=1)
        elapsed_s = time.monotonic() - started
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(raised.value)
    assert "\n" not in message and "\x1b" not in message and f"{url}/v1/completions" in message
    assert FAULTS[scenario] in message, message
    assert elapsed_s < 4.0
    assert peak_bytes < 3 * 33_554_432   # the answer is capped at 32 MiB however much the server sends


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf")])
def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout_s):
    from parity.core.errors import OptionError

    with pytest.raises(OptionError, match="positive number of seconds"):
        OpenAIServer("http://127.0.0.1:1", timeout_s=timeout_s)


def test_the_run_deadline_bounds_a_request_with_a_longer_timeout(misbehaving):
    from misbehaving_server import PROMPT as SHORT

    started = time.monotonic()
    server = OpenAIServer(misbehaving.url("drip"), timeout_s=30, run_deadline=time.monotonic() + 1.5)
    with pytest.raises(CaptureError, match="did not finish answering within 1.5 s"):
        server.complete(SHORT, max_tokens=1)
    assert time.monotonic() - started < 2.5


def test_a_server_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(CaptureError, match="did not finish answering within 1 s"):
            OpenAIServer(url, timeout_s=1).complete(PROMPT, max_tokens=2)
        assert time.monotonic() - started < 10
    finally:
        listener.close()


def test_an_answer_whose_tokens_match_no_reference_token_is_not_comparable(misbehaving):
    """The tokens tile the text, so the answer is read; but no token lies where a reference token with the
    same text does, so no position can be compared: that is an error, never a pass."""
    from misbehaving_server import PROMPT as SHORT
    from parity.core.sequence import ReferenceTokens

    candidate = OpenAIServer(misbehaving.url("pieces_unmatched"), timeout_s=3).complete(SHORT, max_tokens=1)
    pieces = ("w1", " w2", " w3", " w4")
    reference = ReferenceTokens(pieces, (0, 2, 5, 8), np.log(np.full((4, 4), 0.25)), pieces)
    with pytest.raises(CaptureError, match=r"cannot be compared \(not comparable\): none of its 3 tokens after the "
                                           r"first starts where a reference token"):
        compare_sequences(reference, candidate)


def test_a_prompt_that_is_not_unicode_is_refused_before_sending(misbehaving):
    from parity.core.errors import OptionError

    with pytest.raises(OptionError, match="not Unicode text .*give the prompt as UTF-8 text"):
        OpenAIServer(misbehaving.url("good"), timeout_s=3).complete("caf\udce9", max_tokens=1)


def test_a_token_that_is_part_of_a_character_may_leave_it_uncovered():
    """llama-cpp-python decodes each byte token of a multi-byte character alone, to "", and the next token
    starts after the character: the tiling allows that gap, and only there."""
    from parity.capture.server.completion import parse_completion

    text = "ab \u00e9 cd"
    logprobs = {"tokens": ["ab", " ", "", "", " cd"], "text_offset": [0, 2, 3, 3, 4],
                "token_logprobs": [None, -1, -1, -1, -1], "top_logprobs": [None] + [{"x": -1.0}] * 4}
    candidate = parse_completion({"choices": [{"text": text, "logprobs": logprobs}]}, "ab", "the server")
    assert candidate.pieces[-1] == " cd"
    logprobs["text_offset"] = [0, 2, 3, 4, 4]   # a whole token may not leave a gap
    logprobs["tokens"] = ["ab", " ", "x", "", " cd"]
    with pytest.raises(CaptureError, match="token 2 is 'x' but the text at offset 3 holds"):
        parse_completion({"choices": [{"text": text, "logprobs": logprobs}]}, "ab", "the server")


# --- a server that refuses echo and answers its continuation alone, as llama.cpp's llama-server does -----------


def _refusing_echo(answer):
    """llama-server's /v1/completions (tools/server/server-common.cpp) in its earlier builds: `echo` is a 400
    "Only no echo is supported"; otherwise `answer`, the continuation in the chat shape."""
    refused = {"error": {"code": 400, "message": "Only no echo is supported", "type": "invalid_request_error"}}
    return lambda body: (400, refused) if body.get("echo") else (200, answer)


def test_a_server_that_refuses_echo_is_asked_again_and_its_continuation_compared(model_dirs):
    import server_fuzz
    from parity.capture.hf.model import load_model

    reference = load_model(model_dirs["llama"])
    with answering({"/v1/completions": _refusing_echo(json.loads(server_fuzz.seeds(reference)[3]))}) as (server, url):
        candidate = OpenAIServer(url).complete(server_fuzz.PROMPT, max_tokens=3)
    assert [body.get("echo") for _, body in server.requests] == [True, None]
    assert candidate.follows == server_fuzz.PROMPT and not candidate.follows_template
    assert candidate.first_generated == 0 and len(candidate.pieces) == 3
    comparison = compare_sequences(reference.scoring(candidate), candidate)
    assert comparison and [p.index for p in comparison.positions] == [0, 1, 2]
    assert "the server did not echo the prompt: its 3 generated tokens are compared" in " ".join(comparison.notes)
