"""A server's own tokenizer: the token ids a running server makes of a text, through its tokenize endpoint.

OpenAI's API has none, but the servers people run do: llama.cpp's llama-server and vLLM answer
POST /tokenize ({"content"} for llama.cpp, {"prompt"} for vLLM; both asked to add the special tokens
the model adds, as transformers does), llama-cpp-python's server POST /extras/tokenize ({"input"}),
Text Generation Inference POST /tokenize ({"inputs"}). The first endpoint that answers is kept; its
ids are read with the reference's vocabulary, which a server of the same model shares.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from parity.capture.server.http import StatusError, post, server_root
from parity.capture.server.openai import decode_answer
from parity.core.errors import CaptureError
from parity.core.tokenization import Vocabulary

MISSING = (404, 405)   # what a server answers for an endpoint it does not have


def _asked(text: str, model: str | None) -> dict:
    named = {"model": model} if model else {}
    return {**named, "content": text, "prompt": text, "inputs": text, "add_special": True,
            "add_special_tokens": True, "parse_special": True}


# (path, request body): tried in order until one answers
ENDPOINTS = (("/tokenize", _asked),
             ("/extras/tokenize", lambda text, model: {**({"model": model} if model else {}), "input": text}))


@dataclass
class ServerTokenizer:
    base_url: str                      # http://HOST:PORT, with or without /v1
    vocabulary: Vocabulary
    model: str | None = None
    timeout_s: float = 60.0            # per request
    _endpoint: tuple | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"<ServerTokenizer {self.base_url}>"

    @property
    def root(self) -> str:
        return server_root(self.base_url)

    @property
    def endpoint(self) -> str:
        """The request that answers (the first tried, until one has)."""
        return f"POST {self._endpoint[0] if self._endpoint else ENDPOINTS[0][0]}"

    @property
    def label(self) -> str:
        return f"the tokenizer of the server at {self.root} ({self.endpoint})"

    def encode(self, text: str) -> list[int]:
        if self._endpoint is not None:
            return self._ask(self._endpoint, text)
        missing = []
        for endpoint in ENDPOINTS:
            try:
                ids = self._ask(endpoint, text)
            except StatusError as error:
                if error.status not in MISSING:
                    raise
                missing.append(f"{endpoint[0]} (HTTP {error.status})")
                continue
            self._endpoint = endpoint
            return ids
        raise CaptureError(f"the server at {self.root} has no tokenize endpoint parity knows: {', '.join(missing)}; "
                           "llama.cpp's llama-server and vLLM answer POST /tokenize, llama-cpp-python's server "
                           "POST /extras/tokenize")

    def _ask(self, endpoint: tuple, text: str) -> list[int]:
        path, body = endpoint
        url = self.root + path
        raw = post(url, json.dumps(body(text, self.model)).encode(), headers={"Content-Type": "application/json"},
                   deadline=time.monotonic() + self.timeout_s)
        return _ids(decode_answer(raw, f"the server at {url}"), url, self.vocabulary)


def _ids(answer: Any, url: str, vocabulary: Vocabulary) -> list[int]:
    """The ids in a tokenize answer: {"tokens": [ids]}, {"tokens": [{"id"}...]} or [{"id"}...]."""
    from parity.capture.tokenizers import check_ids, integer_ids

    tokens = answer.get("tokens") if isinstance(answer, dict) else answer
    if not isinstance(tokens, list):
        raise CaptureError(f"the server at {url} answered without a list of tokens ({type(answer).__name__}); "
                           "is it a tokenize endpoint?")
    ids = [token.get("id") if isinstance(token, dict) else token for token in tokens]
    if not integer_ids(ids):
        raise CaptureError(f"the server at {url} answered tokens that are not integer ids: {str(tokens[:4])[:80]}")
    return check_ids(ids, vocabulary, f"the server at {url} answered")
