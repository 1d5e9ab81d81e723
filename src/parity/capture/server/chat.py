"""A black-box candidate behind an OpenAI-compatible /v1/chat/completions endpoint.

Many servers (mistral.rs, Ollama, LM Studio, OpenAI's own) give log-probabilities
only for chat: the prompt is sent as one user message (after a system message where
one is given), the server renders it with
its own chat template, and answers the generated tokens alone, each with the top-k
log-probabilities that chose it (chat_completion.py). The check renders the same
message with the reference's chat template and scores the answer after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.capture.server.chat_completion import ENDPOINT, parse_chat_completion
from parity.capture.server.openai import OpenAIServer, check_prompt
from parity.core.chat import chat_messages
from parity.core.sequence import TOP_K, CandidateTokens


def is_chat_url(url: str) -> bool:
    """Whether `url` names a chat completions endpoint (http://HOST:PORT/v1/chat/completions)."""
    return url.rstrip("/").endswith("/chat/completions")


@dataclass(frozen=True)
class OpenAIChatServer(OpenAIServer):
    endpoint = ENDPOINT

    def __repr__(self) -> str:
        return f"<OpenAIChatServer {self.base_url}>"

    @property
    def completions_url(self) -> str:
        base = self.base_url.rstrip("/")
        if is_chat_url(base):
            return base
        return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}{ENDPOINT}"

    def complete(self, prompt: str, *, max_tokens: int, top_logprobs: int = TOP_K,
                 system: str | None = None) -> CandidateTokens:
        """The greedy answer to `prompt`, sent as one user message (after `system` as a system message, where
        given), with each generated token's log-probabilities (its `follows` left for the check to render)."""
        check_prompt(prompt)
        if system is not None:
            check_prompt(system, "the system message")
        request = {"temperature": 0, **dict(self.options), "messages": chat_messages(prompt, system),
                   "max_tokens": max_tokens, "logprobs": True, "top_logprobs": top_logprobs}
        if self.model:
            request["model"] = self.model
        answer = self._post(request)
        return parse_chat_completion(answer, f"the server at {self.completions_url}", max_tokens=max_tokens)
