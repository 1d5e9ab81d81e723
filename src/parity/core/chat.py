"""The messages of a chat check: what a chat endpoint is sent and what the reference's chat template renders.

OpenAI's shape, `[{"role": ..., "content": ...}]`: a system message where one is given, then the prompt as
the user's message. Both sides are given the same list (capture/server/chat.py sends it; HFModel.chat_prompt
renders it), so the answer is scored after the prompt the server was asked.
"""

from __future__ import annotations


def chat_messages(prompt: str, system: str | None = None) -> list[dict]:
    """`system` (where given) as a system message, then `prompt` as the user's."""
    user = [{"role": "user", "content": prompt}]
    return user if system is None else [{"role": "system", "content": system}, *user]
