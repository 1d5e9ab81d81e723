"""The server adapter against real servers on loopback: llama.cpp's, one that is down,
one that answers garbage, and one that never answers."""

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import need
from parity.capture.openai_server import OpenAIServer
from parity.core.errors import CaptureError
from parity.core.sequence import compare_sequences

PROMPT = "The capital of France is Paris. The capital of Germany is"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf):
    need("llama_cpp")
    need("uvicorn")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_prompt_and_continuation_logprobs_from_the_real_server(llama_server):
    candidate = OpenAIServer(llama_server).complete(PROMPT, max_tokens=6)
    assert candidate.text.startswith(PROMPT) and len(candidate.text) > len(PROMPT)
    assert candidate.first_generated < len(candidate.pieces) == len(candidate.offsets)
    assert candidate.offsets[0] == 0 and candidate.text.startswith("".join(candidate.pieces))
    assert all(len(row) >= 5 for row in candidate.top_logprobs[1:])


def test_comparison_with_the_reference_finds_the_servers_one_token_shift(llama_server, smollm2_reference):
    candidate = OpenAIServer(llama_server).complete(PROMPT, max_tokens=6)
    comparison = compare_sequences(smollm2_reference.reference_tokens(candidate.text), candidate)
    generated = [p for p in comparison.positions if p.generated]
    # The greedy continuation is the reference's own choice at every step: the model computes the same function.
    assert generated and all(p.agrees or p.near_tie for p in generated)
    # But its echoed log-probabilities score each token with the distribution after it, not the one that predicts it.
    assert not comparison
    assert [d.cause for d in comparison.diagnoses] == ["token_shift"]
    # and it drops the last generated token from its log-probabilities: that is said, not hidden.
    assert any("cover" in note for note in comparison.notes)


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
    garbage_server.answers += [b"<html>hello</html>", json.dumps({"choices": [{"text": "x"}]}).encode(), b"500 overloaded"]
    with pytest.raises(CaptureError, match="something that is not JSON: '<html>hello</html>'"):
        OpenAIServer(url).complete(PROMPT, max_tokens=2)
    with pytest.raises(CaptureError, match="not a completion with logprobs"):
        OpenAIServer(url).complete(PROMPT, max_tokens=2)
    with pytest.raises(CaptureError, match="answered HTTP 500"):
        OpenAIServer(url).complete(PROMPT, max_tokens=2)


def test_a_server_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(CaptureError, match="did not answer within 1 s"):
            OpenAIServer(url, timeout_s=1).complete(PROMPT, max_tokens=2)
        assert time.monotonic() - started < 10
    finally:
        listener.close()
