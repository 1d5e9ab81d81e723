"""A chat check's prompt, rendered by the server itself: where its rendering differs from the reference's chat
template (another template, a system message of its own, a BOS more or less), the model answers another prompt
from its first token. Asked through llama-server's POST /apply-template (capture/server/template.py), after its
answer; a server without the endpoint is said so, never failed for it. Where the renderings differ, the answer
is scored again after the server's own: if it then agrees, the template is the whole difference."""

from __future__ import annotations

import dataclasses

from parity.core.errors import ParityError
from parity.core.results import Diagnosis

PROBE_TIMEOUT_S = 10.0   # the request's own limit: a server that does not answer it is not waited on
MISSING = (404, 405)
_SHOWN = 24


def with_server_rendering(comparison, reference_model, tokens, options, progress):
    """`comparison` (a chat answer's, scored after the reference's rendering `tokens.follows`) with what the
    server's own rendering of the prompt says: a `chat_template` diagnosis where it differs, or a note."""
    from parity.capture.server.http import StatusError, server_root
    from parity.capture.server.template import PATH, server_rendering
    from parity.commands.check.settings import text_error, text_error_name
    from parity.core.chat import chat_messages
    from parity.core.sequence import compare_sequences

    progress.step(f"asking the server at {server_root(options.candidate)} how it renders the prompt")
    try:
        rendered = server_rendering(options.candidate, chat_messages(options.prompt, options.system),
                                    model=options.server_model, timeout_s=min(PROBE_TIMEOUT_S, options.timeout_s))
    except StatusError as error:
        if error.status not in MISSING:
            return _noted(comparison, f"the server's rendering of the prompt was not checked: {error}")
        return _noted(comparison, f"the server's rendering of the prompt was not checked: it has no POST {PATH} "
                                  "(llama.cpp's llama-server answers it)")
    except ParityError as error:
        return _noted(comparison, f"the server's rendering of the prompt was not checked: {error}")
    ours = tokens.follows
    if rendered == ours:
        return _noted(comparison, f"the server renders the prompt as the reference's chat template does "
                                  f"({len(ours)} characters, POST {PATH})")
    at = next((i for i, (a, b) in enumerate(zip(rendered, ours)) if a != b), min(len(rendered), len(ours)))
    difference = (f"the server renders the prompt otherwise than the reference's chat template (POST {PATH}: "
                  f"{len(rendered)} characters against {len(ours)}): at character {at} it writes "
                  f"{rendered[at:at + _SHOWN]!r} where the template writes {ours[at:at + _SHOWN]!r}")
    own = dataclasses.replace(tokens, follows=rendered)
    try:
        again = compare_sequences(reference_model.scoring(own), own, strict=options.strict,
                                  sent=dict(options.server_options))
    except ParityError:
        again = None
    if comparison:   # its answer agrees regardless: said, not diagnosed
        return _noted(comparison, f"{difference}; its answer agrees with the reference's regardless")
    if again is not None and again:
        message = (f"{difference}; scored after the server's own rendering, its answer agrees with the reference "
                   f"({text_error_name(comparison)} {text_error(again):.2g}, against {text_error(comparison):.2g} "
                   "after the model's template): the template is the difference")
        confidence = "confirmed"
    else:
        message = (f"{difference}; scored after the server's own rendering its answer still parts from the "
                   "reference: the template is one difference, not the only one")
        confidence = None
    return dataclasses.replace(comparison, diagnoses=(Diagnosis("chat_template", "prompt", message, confidence),
                                                      *comparison.diagnoses))


def _noted(comparison, note: str):
    return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (note,))
