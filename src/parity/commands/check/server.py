"""parity check of a candidate that gives text, not tensors: an OpenAI-compatible server, token by token.

The server is asked for the prompt echoed with its greedy continuation and each token's
top-k log-probabilities; the reference scores the same text (core/sequence.py). The server's
own tokenization of the prompt is compared with the reference's (server_tokens.py). A chat
endpoint echoes no prompt: its answer is scored after the prompt as the reference's chat
template renders it, as one user message (after --system's system message); the server's own
rendering is asked where it shows one (server_template.py), and other renderings are tried
where nothing explains a failure (chat_template.py).
"""

from __future__ import annotations

import dataclasses

from parity.capture.candidate import CandidateContext, open_candidate
from parity.core.errors import OptionError


def check_server(options, progress):
    from parity.capture.hf.model import load_model, quiet_transformers
    from parity.commands.check.chat_template import with_template_tried
    from parity.commands.check.server_template import with_server_rendering
    from parity.commands.check.server_tokens import with_prompt_tokenization
    from parity.commands.check.settings import with_settings_tried_on_text
    from parity.core.sequence import compare_sequences

    if options.prompt is None:
        raise OptionError("a server candidate needs --prompt TEXT (it tokenizes the text itself)")
    quiet_transformers()
    context = CandidateContext(server_model=options.server_model, timeout_s=options.timeout_s, progress=progress,
                               server_options=options.server_options)
    with open_candidate(options.candidate, context, needs=("sequence",)) as candidate:
        tokens = candidate.complete(options.prompt, max_tokens=options.max_tokens, progress=progress,
                                    system=options.system)
        chat = candidate.chat
    dtype = options.dtype or "float32"
    progress.step(f"loading {options.model} ({dtype})")
    reference = load_model(options.model, dtype=dtype)
    if chat:   # the server rendered the prompt with its template: the reference renders it with its own
        tokens = dataclasses.replace(tokens, follows=reference.chat_prompt(options.prompt, options.system))
    progress.step("scoring the candidate's text with the reference")
    comparison = compare_sequences(reference.scoring(tokens), tokens,
                                   strict=options.strict, sent=dict(options.server_options))
    if chat:
        comparison = with_server_rendering(comparison, reference, tokens, options, progress)
        comparison = with_template_tried(comparison, reference, tokens, options, progress)
    else:
        comparison = with_prompt_tokenization(comparison, reference, options, progress)
    return with_settings_tried_on_text(comparison, reference, tokens, options, progress)
