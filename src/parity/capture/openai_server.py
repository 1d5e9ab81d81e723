"""A black-box candidate behind an OpenAI-compatible /v1/completions endpoint.

With `echo` and `logprobs`, the endpoint returns, for every token of the prompt
and of its greedy continuation, the token's text, its character offset and the
top-k next-token log-probabilities. Only the standard library is used.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from parity.core.errors import CaptureError
from parity.core.sequence import TOP_K, CandidateTokens


@dataclass(frozen=True)
class OpenAIServer:
    base_url: str                      # e.g. http://127.0.0.1:8080 (with or without /v1)
    model: str | None = None           # sent as "model"; many local servers ignore it
    timeout_s: float = 60.0
    api_key: str | None = None

    def __repr__(self) -> str:
        return f"<OpenAIServer {self.base_url}>"

    @property
    def completions_url(self) -> str:
        base = self.base_url.rstrip("/")
        return f"{base}/completions" if base.endswith("/v1") else f"{base}/v1/completions"

    def complete(self, prompt: str, *, max_tokens: int, top_logprobs: int = TOP_K) -> CandidateTokens:
        """Greedy continuation of `prompt` with per-token log-probabilities of prompt and continuation."""
        request = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "echo": True, "logprobs": top_logprobs}
        if self.model:
            request["model"] = self.model
        answer = self._post(request)
        return self._parse(answer, prompt)

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.completions_url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:200].decode("utf-8", errors="replace").strip()
            raise CaptureError(f"the server at {self.completions_url} answered HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise self._timeout() from None
            raise CaptureError(
                f"cannot reach the server at {self.completions_url}: {error.reason}; is it running on that address?"
            ) from None
        except (TimeoutError, socket.timeout):
            raise self._timeout() from None
        except (ConnectionError, OSError) as error:
            raise CaptureError(f"the connection to {self.completions_url} failed: {error}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            preview = raw[:80].decode("utf-8", errors="replace")
            raise CaptureError(f"the server at {self.completions_url} answered with something that is not JSON: {preview!r}") from None

    def _timeout(self) -> CaptureError:
        return CaptureError(
            f"the server at {self.completions_url} did not answer within {self.timeout_s:g} s; "
            "check that it is not stuck, or allow more time with --timeout"
        )

    def _parse(self, answer: dict, prompt: str) -> CandidateTokens:
        where = f"the server at {self.completions_url}"
        try:
            choice = answer["choices"][0]
            logprobs = choice["logprobs"]
            pieces = tuple(logprobs["tokens"])
            offsets = tuple(int(offset) for offset in logprobs["text_offset"])
            token_logprobs = tuple(logprobs["token_logprobs"])
            top_logprobs = tuple(logprobs.get("top_logprobs") or [None] * len(pieces))
            text = choice["text"]
        except (KeyError, IndexError, TypeError, ValueError):
            raise CaptureError(
                f"{where} answered JSON that is not a completion with logprobs "
                "(expected choices[0].logprobs with tokens, text_offset, token_logprobs); does it support logprobs?"
            ) from None
        if not (len(pieces) == len(offsets) == len(token_logprobs) == len(top_logprobs)):
            raise CaptureError(f"{where} answered logprobs lists of different lengths")
        if not text.startswith(prompt):
            raise CaptureError(f"{where} did not echo the prompt; parity needs 'echo' to compare prompt positions")
        first_generated = next((i for i, offset in enumerate(offsets) if offset >= len(prompt)), len(pieces))
        return CandidateTokens(text, pieces, offsets, token_logprobs, top_logprobs, first_generated)
