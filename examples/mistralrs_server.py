"""mistral.rs (a Rust inference engine) served as an OpenAI-compatible chat endpoint on loopback, for parity to check.

mistral.rs answers chat completions with log-probabilities, in its own Rust kernels, reading the model
directory (config.json, safetensors, tokenizer.json and its chat template) with its own loader. Its HTTP
server is a Rust binary (`mistralrs serve`, built with cargo); its Python SDK (`pip install mistralrs`) runs
the same engine in process. This serves the SDK's answers as they come, at /v1/chat/completions:

    python examples/mistralrs_server.py MODEL_DIR --port 8123 &
    parity check MODEL_DIR http://127.0.0.1:8123/v1/chat/completions --prompt "The capital of Italy is" -n 12

(`mistralrs serve -m MODEL_DIR` answers the same request at the same address.) Standard library only
besides mistralrs; one request at a time; `--dtype` picks its compute type (f32 by default, bf16, f16).
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHAT = "/v1/chat/completions"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model directory: config.json, weights, tokenizer.json")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--dtype", default="f32", choices=("f32", "bf16", "f16"))
    args = parser.parse_args(argv)
    import mistralrs

    dtype = {"f32": mistralrs.ModelDType.F32, "bf16": mistralrs.ModelDType.BF16, "f16": mistralrs.ModelDType.F16}
    runner = mistralrs.Runner(which=mistralrs.Which.Plain(model_id=args.model, dtype=dtype[args.dtype]))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler(runner, mistralrs))
    print(f"serving {args.model} with mistral.rs at http://127.0.0.1:{args.port}{CHAT}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


def _handler(runner, mistralrs):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):   # noqa: N802 - http.server's name
            if self.path.rstrip("/") != "/v1/models":
                return self._send(404, {"error": f"no {self.path}"})
            self._send(200, {"object": "list", "data": [{"id": "default", "object": "model"}]})

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != CHAT:
                return self._send(404, {"error": f"no {self.path}; this server answers {CHAT}"})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            request = mistralrs.ChatCompletionRequest(
                messages=body["messages"], model=body.get("model", "default"), max_tokens=body.get("max_tokens"),
                temperature=body.get("temperature"), logprobs=bool(body.get("logprobs")),
                top_logprobs=body.get("top_logprobs"))
            try:
                answer = runner.send_chat_completion_request(request)
            except Exception as error:  # noqa: BLE001 - the engine's error, answered as the server would
                return self._send(400, {"error": str(error)})
            self._send(200, _as_json(answer))

        def _send(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def _as_json(answer) -> dict:
    """The SDK's ChatCompletionResponse in the OpenAI shape its HTTP server writes."""
    return {"id": answer.id, "object": "chat.completion", "model": answer.model,
            "choices": [{"index": choice.index, "finish_reason": choice.finish_reason,
                         "message": {"role": "assistant", "content": choice.message.content},
                         "logprobs": None if choice.logprobs is None else
                         {"content": [_token(entry) for entry in choice.logprobs.content or []]}}
                        for choice in answer.choices]}


def _token(entry) -> dict:
    """One token as mistral.rs's server serializes it: the chosen token's text and bytes, each alternative's
    id under "token" and its text under "bytes"."""
    return {"token": entry.token, "logprob": entry.logprob,
            "bytes": None if entry.bytes is None else list(entry.bytes),
            "top_logprobs": [{"token": top.token, "logprob": top.logprob, "bytes": top.bytes}
                             for top in entry.top_logprobs or []]}


if __name__ == "__main__":
    raise SystemExit(main())
