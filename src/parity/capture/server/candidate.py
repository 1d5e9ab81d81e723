"""An OpenAI-compatible server as the candidate: `http(s)://HOST:PORT`, compared token by token.

It gives no tensors: only text, with each token's offset and its top-k next-token
log-probabilities, for a prompt and its greedy continuation (openai.py); or, given
as `http(s)://HOST:PORT/v1/chat/completions`, for its answer to the prompt sent as
a user message (chat.py).
"""

from __future__ import annotations

import time
from typing import Any

from parity.capture.candidate import Candidate, CandidateContext, register_candidate
from parity.core.errors import OptionError

PREFIXES = ("http://", "https://")


@register_candidate
class ServerCandidate(Candidate):
    backend = "server"
    written = "http://HOST:PORT"
    claim_order = 10
    capabilities = frozenset({"sequence", "tokenizer"})

    def __init__(self, spec: str, server) -> None:
        super().__init__(spec)
        self.server = server

    @classmethod
    def claims(cls, spec: Any) -> bool:
        return isinstance(spec, str) and spec.startswith(PREFIXES)

    @classmethod
    def open(cls, spec: str, context: CandidateContext) -> "ServerCandidate":
        from parity.capture.server.chat import OpenAIChatServer, is_chat_url
        from parity.capture.server.openai import OpenAIServer

        server = OpenAIChatServer if is_chat_url(spec) else OpenAIServer
        return cls(spec, server(spec, model=context.server_model, timeout_s=context.timeout_s,
                                run_deadline=time.monotonic() + context.timeout_s,
                                options=tuple(context.server_options)))

    @property
    def chat(self) -> bool:
        """Whether it is asked at a chat endpoint: it renders the prompt with its own template and echoes none."""
        return self.server.endpoint.endswith("/chat/completions")

    @classmethod
    def open_tokenizer(cls, spec: str, vocabulary):
        """The server's own tokenizer, through its tokenize endpoint (tokenize.py)."""
        from parity.capture.server.tokenize import ServerTokenizer

        return ServerTokenizer(spec, vocabulary)

    @property
    def description(self) -> str:
        return f"the server at {self.spec}"

    def complete(self, prompt: str, *, max_tokens: int, progress=None, system: str | None = None):
        """The server's greedy continuation of `prompt`, with per-token log-probabilities (CandidateTokens); a
        chat endpoint's answer to it after `system`, a system message, where one is given."""
        if system is not None and not self.chat:
            raise OptionError(f"--system is sent as a chat message; {self.spec} is a completions endpoint: give its "
                              "/v1/chat/completions address, or put the system text in --prompt")
        if progress is not None:
            sent = "".join(f", {key}={value}" for key, value in self.server.options)
            progress.step(f"asking {self.server.completions_url} for {max_tokens} greedy tokens with "
                          f"log-probabilities (temperature 0{sent})")
        if system is not None:
            return self.server.complete(prompt, max_tokens=max_tokens, system=system)
        return self.server.complete(prompt, max_tokens=max_tokens)
