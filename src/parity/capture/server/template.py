"""A server's own rendering of a chat prompt: the text its chat template makes of the messages it is sent.

A chat endpoint echoes no prompt, but llama.cpp's llama-server shows what it renders: POST /apply-template
with {"messages"} answers {"prompt"}, the text its chat endpoint generates after (the assistant's header
included). Other servers have no such endpoint; asking one is answered 404 or 405.
"""

from __future__ import annotations

import json
import time

from parity.capture.server.comparable import check_unicode
from parity.capture.server.http import post, server_root
from parity.capture.server.openai import decode_answer
from parity.core.errors import CaptureError

PATH = "/apply-template"


def server_rendering(url: str, messages: list[dict], *, model: str | None = None, timeout_s: float = 10.0) -> str:
    """What the server at `url` renders `messages` into (llama-server's POST /apply-template); a StatusError where
    it has no such endpoint, a CaptureError where its answer holds no prompt."""
    address = server_root(url) + PATH
    body = {"messages": messages, **({"model": model} if model else {})}
    raw = post(address, json.dumps(body).encode(), headers={"Content-Type": "application/json"},
               deadline=time.monotonic() + timeout_s)
    answer = decode_answer(raw, f"the server at {address}", PATH)
    prompt = answer.get("prompt") if isinstance(answer, dict) else None
    if not isinstance(prompt, str):
        raise CaptureError(f"the server at {address} answered without a \"prompt\" string; is it llama-server's "
                           "/apply-template?")
    check_unicode(prompt, f"the server at {address}", "prompt")
    return prompt
