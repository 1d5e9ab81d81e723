"""A black-box candidate behind an OpenAI-compatible /v1/completions endpoint.

With `echo` and `logprobs`, the endpoint returns, for every token of the prompt
and of its greedy continuation, the token's text, its character offset and the
top-k next-token log-probabilities. A server that refuses `echo` (llama.cpp's
llama-server: "Only no echo is supported") is asked again without it, and its
continuation is compared alone. Only the standard library is used; each request
has a total deadline and a size cap (`http_post`), and every field read from the
answer is checked (`completion`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from parity.capture.server.completion import parse_completion
from parity.capture.server.http import StatusError, post, preview, server_root
from parity.core.errors import CaptureError, OptionError
from parity.core.sequence import TOP_K, CandidateTokens


@dataclass(frozen=True)
class OpenAIServer:
    base_url: str                      # e.g. http://127.0.0.1:8080 (with or without /v1)
    model: str | None = None           # sent as "model"; many local servers ignore it
    timeout_s: float = 60.0            # total, per request: connecting, sending, waiting and reading
    api_key: str | None = None
    run_deadline: float | None = None  # time.monotonic() by which every request of the run must be done
    options: tuple[tuple[str, Any], ...] = ()   # more request fields (sampler settings: repeat_penalty=1.0, ...)

    endpoint = "/v1/completions"       # what it is asked at, named in what a fault says

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < math.inf):
            raise OptionError(f"the server timeout must be a positive number of seconds, got {self.timeout_s!r}")

    def __repr__(self) -> str:
        return f"<OpenAIServer {self.base_url}>"

    @property
    def completions_url(self) -> str:
        base = self.base_url.rstrip("/")
        return f"{base}/completions" if base.endswith("/v1") else f"{base}/v1/completions"

    def complete(self, prompt: str, *, max_tokens: int, top_logprobs: int = TOP_K) -> CandidateTokens:
        """Greedy continuation of `prompt` with per-token log-probabilities of prompt and continuation."""
        check_prompt(prompt)
        request = {"temperature": 0, **dict(self.options),
                   "prompt": prompt, "max_tokens": max_tokens, "echo": True, "logprobs": top_logprobs}
        if self.model:
            request["model"] = self.model
        try:
            answer = self._post(request)
        except StatusError as error:
            if error.status == 404:
                raise CaptureError(f"{error}; a server that answers chat completions only is checked at its chat "
                                   f"endpoint: give {server_root(self.base_url)}/v1/chat/completions as the candidate"
                                   ) from None
            if not refuses_echo(error):
                raise
            del request["echo"]             # llama.cpp's llama-server: "Only no echo is supported"
            answer = self._post(request)
        return parse_completion(answer, prompt, f"the server at {self.completions_url}", max_tokens=max_tokens)

    def _post(self, body: dict) -> dict:
        """The JSON answer to `body` POSTed to this server's endpoint, within the request's and the run's deadline."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.timeout_s
        if self.run_deadline is not None:
            deadline = min(deadline, self.run_deadline)
        raw = post(self.completions_url, json.dumps(body).encode(), headers=headers, deadline=deadline)
        return decode_answer(raw, f"the server at {self.completions_url}", self.endpoint)


def refuses_echo(error: StatusError) -> bool:
    """Whether a server's error answer is its refusal of `echo` (a 4xx whose message names it)."""
    return 400 <= error.status < 500 and b"echo" in error.detail.lower()


def check_prompt(prompt: str, what: str = "the prompt") -> None:
    """Refuse a prompt (or a system message: `what`) that cannot be sent as JSON text."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise OptionError(f"{what} holds {prompt[error.start]!r} at character {error.start}, which is not "
                          f"Unicode text (bytes that are not UTF-8?); give {what} as UTF-8 text") from None


def decode_answer(raw: bytes, where: str, endpoint: str = "/v1/completions") -> Any:
    """The JSON document a server sent, or a CaptureError quoting its start."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CaptureError(f"{where} answered JSON nested too deeply to be a completion: {preview(raw)}; "
                           f"check that it is an OpenAI-compatible {endpoint} endpoint") from None
    except (ValueError, UnicodeDecodeError):
        raise CaptureError(f"{where} answered with something that is not JSON: {preview(raw)}; "
                           f"is it an OpenAI-compatible {endpoint} endpoint?") from None
