"""A server check's prompt, tokenized by the server itself: where its ids differ from the reference tokenizer's
(a BOS added twice or left out, special tokens not parsed), the model reads other tokens than the reference's
from the start, and every later disagreement inherits that. Asked through the server's tokenize endpoint
(capture/server/tokenize.py), after its completion; a server without one is said so, never failed for it."""

from __future__ import annotations

import dataclasses

from parity.core.errors import ParityError
from parity.core.results import Diagnosis

PROBE_TIMEOUT_S = 10.0   # the tokenize request's own limit: a server that does not answer it is not waited on


def with_prompt_tokenization(comparison, reference_model, options, progress):
    """`comparison` (a server's, core/sequence.py) with what the server's tokenization of the prompt says: a
    diagnosis naming how it differs from the reference's, or a note that it agrees or could not be asked."""
    from parity.capture.server.tokenize import ServerTokenizer
    from parity.capture.tokenizers import vocabulary_of
    from parity.core.tokenization import compare_ids, describe

    vocabulary = vocabulary_of(reference_model.tokenizer)
    server = ServerTokenizer(options.candidate, vocabulary, model=options.server_model,
                             timeout_s=min(PROBE_TIMEOUT_S, options.timeout_s))
    progress.step(f"asking the server at {server.root} how it tokenizes the prompt")
    try:
        ids = server.encode(options.prompt)
    except ParityError as error:
        return _noted(comparison, f"the server's tokenization of the prompt was not checked: {error}")
    tokens = compare_ids("prompt", options.prompt, reference_model.tokenize(options.prompt), ids, vocabulary,
                         vocabulary)
    if tokens:
        return _noted(comparison, f"the server tokenizes the prompt as the reference does ({len(ids)} ids, "
                                  f"{server.endpoint})")
    first = tokens.differences[0]
    shown = ", ".join(f"{i} {text!r}" for i, text in first.candidate[:4]) or "nothing"
    expected = ", ".join(f"{i} {text!r}" for i, text in first.reference[:4]) or "nothing"
    message = (f"the server tokenizes the prompt otherwise than the reference ({len(ids)} ids against "
               f"{len(tokens.reference_ids)}): at token {first.reference_start} it has {shown} where the reference "
               f"has {expected}: {describe(first.pattern)}; its model reads other tokens than the reference's, "
               "and what it predicts parts from there (parity tokens MODEL URL compares its tokenizer on every "
               "hard case)")
    if comparison:   # its answers agree regardless: said, not diagnosed
        return _noted(comparison, f"{message}; its answers agree with the reference's regardless")
    return dataclasses.replace(comparison, diagnoses=(Diagnosis(first.pattern, "tokens", message),
                                                      *comparison.diagnoses))   # upstream of all the others


def _noted(comparison, note: str):
    return dataclasses.replace(comparison, notes=tuple(comparison.notes) + (note,))
