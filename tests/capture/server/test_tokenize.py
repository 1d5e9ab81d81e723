"""A server's own tokenizer through its tokenize endpoint: which endpoint answers, and what is read of it.
(The real llama-cpp-python server: tests/integration/test_server_tokenizer.py.)"""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from parity.capture.server.tokenize import ServerTokenizer
from parity.core.errors import ParityError
from parity.core.tokenization import Vocabulary

VOCABULARY = Vocabulary(piece=str, bos=1, eos=2, size=100)


def serving(routes: dict):
    """A loopback server answering POST path with routes[path](request body) -> (status, answer); 404 elsewhere."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = routes[self.path](body) if self.path in routes else (404, {"error": "not found"})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def server():
    started = []

    def start(routes):
        running, url = serving(routes)
        started.append(running)
        return url

    yield start
    for each in started:
        each.shutdown()


def test_llama_cpp_servers_tokenize_with_the_special_tokens_added(server):
    seen = []
    url = server({"/tokenize": lambda body: (seen.append(body), (200, {"tokens": [1, len(body["content"])]}))[1]})
    tokenizer = ServerTokenizer(url + "/v1", VOCABULARY)
    assert tokenizer.encode("hello") == [1, 5] and tokenizer.encode("hi") == [1, 2]
    assert seen[0]["add_special"] is True and seen[0]["add_special_tokens"] is True and seen[0]["prompt"] == "hello"
    assert tokenizer.label.endswith("(POST /tokenize)") and "/v1" not in tokenizer.label


def test_a_server_without_tokenize_is_asked_at_llama_cpp_pythons_endpoint(server):
    url = server({"/extras/tokenize": lambda body: (200, {"tokens": [7, 8] if body["input"] == "ab" else []})})
    tokenizer = ServerTokenizer(url, VOCABULARY)
    assert tokenizer.encode("ab") == [7, 8] and tokenizer.label.endswith("(POST /extras/tokenize)")


def test_tokens_given_as_objects_are_read_by_their_id(server):
    url = server({"/tokenize": lambda body: (200, [{"id": 4, "text": "a"}, {"id": 9, "text": "b"}])})
    assert ServerTokenizer(url, VOCABULARY).encode("ab") == [4, 9]


@pytest.mark.parametrize("routes, message", [
    ({}, "has no tokenize endpoint parity knows: /tokenize (HTTP 404), /extras/tokenize (HTTP 404)"),
    ({"/tokenize": lambda body: (500, {"error": "boom"})}, "answered HTTP 500"),
    ({"/tokenize": lambda body: (200, {"count": 3})}, "without a list of tokens"),
    ({"/tokenize": lambda body: (200, {"tokens": ["a", "b"]})}, "tokens that are not integer ids"),
    ({"/tokenize": lambda body: (200, {"tokens": [1, 400]})}, "the id 400, outside the reference's vocabulary"),
])
def test_what_a_server_cannot_answer_is_one_error(server, routes, message):
    with pytest.raises(ParityError, match=re.escape(message)):
        ServerTokenizer(server(routes), VOCABULARY).encode("x")
