"""A real HTTP server on loopback that misbehaves on purpose, one way per path prefix.

POST http://127.0.0.1:PORT/<scenario>/v1/completions gets the answer named by
<scenario>, written byte by byte on a raw socket (no HTTP library in between,
so anything can be sent). Used by the server adapter's tests and the CLI's.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

PROMPT = "w1 w2 w3"


def completion(text: str = PROMPT + " w4", **overrides) -> dict:
    """A well-formed echo+logprobs completion of PROMPT, with fields replaced by `overrides`."""
    logprobs = {"tokens": ["w1", " w2", " w3", " w4"], "text_offset": [0, 2, 5, 8],
                "token_logprobs": [None, -1.0, -0.5, -0.25],
                "top_logprobs": [None, {" w2": -1.0}, {" w3": -0.5}, {" w4": -0.25}]}
    logprobs.update({k: v for k, v in overrides.items() if k in logprobs})
    choice = {"text": text, "logprobs": logprobs, **{k: v for k, v in overrides.items() if k not in logprobs}}
    return {"choices": [choice]}


def _without_top_logprobs(document: dict) -> dict:
    del document["choices"][0]["logprobs"]["top_logprobs"]
    return document


def _json(document) -> bytes:
    return json.dumps(document).encode()


def _head(status: str = "200 OK", headers: tuple[str, ...] = (), length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(body: bytes, status: str = "200 OK", headers: tuple[str, ...] = ()) -> bytes:
    return _head(status, headers, len(body)) + body


# Each scenario gets the connected socket (the request already read) and writes what it wants.
def _send(data: bytes):
    return lambda connection: connection.sendall(data)


def _drip(connection) -> None:
    """A valid answer, one byte every half second: each read succeeds, the whole never ends in time."""
    for byte in _answer(_json(completion())):
        connection.sendall(bytes([byte]))
        time.sleep(0.5)


def _endless(connection) -> None:
    """200 and a body that never ends, as fast as the client reads."""
    connection.sendall(_head())
    chunk = b" " * 65536
    while True:
        connection.sendall(chunk)


def _endless_chunked(connection) -> None:
    connection.sendall(_head(headers=("Transfer-Encoding: chunked",)))
    chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"
    while True:
        connection.sendall(chunk)


def _truncated(connection) -> None:
    body = _json(completion())
    connection.sendall(_head(length=len(body)) + body[: len(body) // 2])


def _reset(connection) -> None:
    connection.sendall(_head(length=1000) + b'{"choices": [')
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST


def _silent(connection) -> None:
    time.sleep(60)


SCENARIOS = {
    "good": _send(_answer(_json(completion()))),
    "drip": _drip,
    "endless": _endless,
    "endless_chunked": _endless_chunked,
    "huge_length": _send(_head(length=10**12) + b"{}"),
    "bad_status": _send(b"HTTP/1.1 OK-ish\r\n\r\n{}"),
    "not_http": _send(b"SSH-2.0-OpenSSH_9.6\r\n"),
    "many_headers": _send(_answer(b"{}", headers=tuple(f"X-Header-{i}: {i}" for i in range(150)))),
    "long_header": _send(_answer(b"{}", headers=("X-Long: " + "a" * 100_000,))),
    "deep_json": _send(_answer(b"[" * 100_000 + b"]" * 100_000)),
    "text_int": _send(_answer(_json(completion(text=5)))),
    "logprobs_str": _send(_answer(_json(completion(token_logprobs=[None, "high", -0.5, -0.25])))),
    "logprobs_positive": _send(_answer(_json(completion(token_logprobs=[None, 3.0, -0.5, -0.25])))),
    "offsets_float": _send(_answer(_json(completion(text_offset=[0, 2.5, 5, 8])))),
    "offsets_beyond": _send(_answer(_json(completion(text_offset=[0, 2, 5, 10**9])))),
    "top_row_list": _send(_answer(_json(completion(top_logprobs=[None, [[[1]]], None, None])))),
    "lengths_differ": _send(_answer(_json(completion(tokens=["w1"])))),
    "no_choices": _send(_answer(_json({"choices": []}))),
    "no_logprobs": _send(_answer(_json({"choices": [{"text": PROMPT}]}))),
    "no_echo": _send(_answer(_json(completion(text=" w4")))),
    "truncated": _truncated,
    "reset": _reset,
    "close_at_once": _send(b""),
    "not_json": _send(_answer(b"<html><body>\x1b[31mhello</body></html>")),
    "not_utf8": _send(_answer(b"\xff\xfe{\x00}\x00")),
    "http_500": _send(_answer(b"model overloaded\nretry later", "500 Internal Server Error")),
    "http_404": _send(_answer(b"not found", "404 Not Found")),
    "redirect": _send(_answer(b"", "302 Found", ("Location: http://example.com/v1/completions",))),
    "silent": _silent,
    # well-formed JSON that says nothing comparable: each once passed as "no divergence"
    "echo_only": _send(_answer(_json(completion(text=PROMPT, tokens=[], text_offset=[], token_logprobs=[],
                                                top_logprobs=[])))),
    "zero_tokens": _send(_answer(_json(completion(tokens=[], text_offset=[], token_logprobs=[], top_logprobs=[])))),
    "no_top_logprobs": _send(_answer(_json(_without_top_logprobs(completion())))),
    "top_logprobs_null": _send(_answer(_json(completion(top_logprobs=None)))),
    "top_row_empty": _send(_answer(_json(completion(top_logprobs=[None, {}, {" w3": -0.5}, {" w4": -0.25}])))),
    "one_token": _send(_answer(_json(completion(tokens=[PROMPT + " w4"], text_offset=[0], token_logprobs=[None],
                                                top_logprobs=[None])))),
    "offsets_misaligned": _send(_answer(_json(completion(text_offset=[0, 1, 4, 7])))),
    "pieces_elsewhere": _send(_answer(_json(completion(tokens=["w1", " w9", " w3", " w4"])))),
    "pieces_unmatched": _send(_answer(_json(completion(tokens=["w", "1 w", "2 w", "3 w4"], text_offset=[0, 1, 4, 7],
                                                       top_logprobs=[None, {"1 w": -1.0}, {"2 w": -0.5},
                                                                     {"3 w4": -0.25}])))),
    "prompt_only": _send(_answer(_json(completion(text=PROMPT, tokens=["w1", " w2", " w3"], text_offset=[0, 2, 5],
                                                  token_logprobs=[None, -1.0, -0.5],
                                                  top_logprobs=[None, {" w2": -1.0}, {" w3": -0.5}],
                                                  finish_reason="length")))),
    "surrogate_text": _send(_answer(_json(completion(text=PROMPT + " \ud800", tokens=["w1", " w2", " w3", " \ud800"])))),
    "surrogate_piece": _send(_answer(_json(completion(tokens=["w1", " w2", " w3", " w\udc04"])))),
}


class MisbehavingServer:
    """Listens on 127.0.0.1; `url(scenario)` is the base URL that gets that scenario."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, scenario: str) -> str:
        assert scenario in SCENARIOS, scenario
        return f"http://127.0.0.1:{self.port}/{scenario}"

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        try:
            scenario = _read_request(connection)
            SCENARIOS.get(scenario, _send(_answer(b"no such scenario", "404 Not Found")))(connection)
        except OSError:
            pass   # the client gave up: that is what most scenarios are for
        finally:
            connection.close()


def _read_request(connection: socket.socket) -> str:
    """Read the request's head and body; return the scenario named by its path's first segment."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(65536)
        if not piece:
            raise OSError("the client closed before sending a request")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0)
    while len(body) < length:
        piece = connection.recv(65536)
        if not piece:
            break
        body += piece
    return lines[0].split(" ")[1].strip("/").split("/")[0]
