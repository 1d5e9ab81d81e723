"""A loopback HTTP stand-in that answers POSTs by path, as a server's source says it does, for the endpoints no
installable server here has (llama-server's /apply-template); the requests it got are kept."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading


class _Answers(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        answer = self.server.answers.get(self.path, (404, {"error": "not found"}))
        status, answer = answer(body) if callable(answer) else answer
        data = json.dumps(answer(body) if callable(answer) else answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def answering(answers: dict):
    """(server, http://127.0.0.1:PORT) while a stand-in answers each path in `answers` with (status, JSON or a
    function of the request's JSON), or a function of the request's JSON giving (status, JSON), and 404
    elsewhere; `server.requests` holds (path, body) of each POST."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answers)
    server.requests, server.answers = [], answers
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
