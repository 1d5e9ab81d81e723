"""A chat answer that parts from the reference, scored after the prompts other chat templates render.

A chat endpoint renders the prompt itself, and what it renders is not sent back: a server that
falls back to another template (llama.cpp's ChatML where a GGUF holds none, llama-cpp-python's
`--chat_format`, a template read from another model), or that adds its own BOS before a template
that writes one, answers another prompt, and parts from the reference from its first token. So a
failed chat answer that nothing else explains is scored again after each rendering a server may
have made: the model's own template with an empty system message (or, where one is sent,
without it: a server that drops it), without the assistant's header, without its BOS or after a
second one, and the common templates (ChatML, Llama 2 and 3, Mistral, Gemma, the prompt alone)
where the vocabulary holds their special tokens, each with and without the BOS. A rendering is named
`chat_template` where the reference scored after it agrees with the answer's top-1 at every
position and takes at least half of its error (the mean KL over the top-k) away (`confirmed`), or
leaves at most a tenth of it (`likely`).

Each rendering tried is one forward pass of the reference over its prompt and the answer.
"""

from __future__ import annotations

import dataclasses

from parity.core.results import Diagnosis

CONFIRMED_LEFT = 0.5
LIKELY_LEFT = 0.1

# name -> (template with {prompt}, its system message with {system} (written before the template where it is
# whole, in place of {prompt} where it joins the user's turn), special tokens the vocabulary must hold as single
# tokens), as each family's own template writes them
KNOWN = {
    "ChatML (llama.cpp's fallback)": ("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
                                      "<|im_start|>system\n{system}<|im_end|>\n", ("<|im_start|>", "<|im_end|>")),
    "Llama 3's template": ("<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>"
                           "assistant<|end_header_id|>\n\n",
                           "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
                           ("<|start_header_id|>", "<|eot_id|>")),
    "Llama 2's template": ("[INST] {prompt} [/INST]", "<<SYS>>\n{system}\n<</SYS>>\n\n{prompt}", ()),
    "Mistral's template": ("[INST]{prompt}[/INST]", "{system}\n\n{prompt}", ("[INST]", "[/INST]")),
    "Gemma's template": ("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n",
                         "{system}\n\n{prompt}", ("<start_of_turn>", "<end_of_turn>")),
    "the prompt alone, no template": ("{prompt}", "{system}\n\n{prompt}", ()),
}


def with_template_tried(comparison, reference_model, tokens, options, progress):
    """A failed chat `comparison` that nothing explains, with the rendering of the prompt named under which the
    reference agrees with the server's answer."""
    from parity.commands.check.settings import text_error, text_error_name
    from parity.core.sequence import compare_sequences

    if comparison or comparison.diagnoses or not (tokens.follows and tokens.follows_template):
        return comparison
    tried = renderings(reference_model.tokenizer, options.prompt, tokens.follows, options.system)
    progress.step(f"scoring the server's answer after {len(tried)} other renderings of the prompt, to see whether "
                  "it answers another prompt than the model's chat template renders")
    before, best = text_error(comparison), None
    for name, rendered in tried:
        try:
            rendered_tokens = dataclasses.replace(tokens, follows=rendered)
            again = compare_sequences(reference_model.scoring(rendered_tokens), rendered_tokens,
                                      strict=options.strict, sent=dict(options.server_options))
        except Exception:   # noqa: BLE001 - a rendering the model cannot take (too long, not comparable)
            continue
        error = text_error(again)
        if best is None or (bool(again), -error) > (best[1], -best[2]):
            best = (name, bool(again), error, rendered)
    if best is None or before <= 0:
        return comparison
    name, passed, error, rendered = best
    left = error / before
    confidence = ("confirmed" if passed and left <= CONFIRMED_LEFT else "likely" if left <= LIKELY_LEFT else None)
    if confidence is None:
        return comparison
    clause = ("the reference scored after it agrees with the answer's top-1 at every position" if passed
              else f"the reference scored after it leaves {left:.0%} of the disagreement")
    message = (f"the server answers another prompt than the model's chat template renders: {name} "
               f"({_shown(rendered)}); {clause} ({text_error_name(comparison)} {error:.2g}, against {before:.2g} "
               "after the model's template); check the server's chat template (llama.cpp falls back to ChatML where "
               "a GGUF holds none; llama-cpp-python's --chat_format; a BOS the server adds before one the template "
               "writes)")
    return dataclasses.replace(comparison, diagnoses=tuple(comparison.diagnoses) + (
        Diagnosis("chat_template", "prompt", message, confidence=confidence),))


def renderings(tokenizer, prompt: str, own: str, system: str | None = None) -> list[tuple[str, str]]:
    """(name, rendered prompt) for each way a server may render `prompt` as one user message (after `system`, a
    system message, where given) otherwise than `own` (the model's template renders it so), without repeats."""
    from parity.core.chat import chat_messages

    bos = tokenizer.bos_token or ""
    found: dict[str, str] = {}

    def add(name: str, rendered: str | None) -> None:
        if rendered is not None and rendered != own and rendered not in found.values():
            found[name] = rendered

    if system is None:
        add("the model's template with an empty system message", _rendered(tokenizer, chat_messages(prompt, "")))
    else:
        add("the model's template without the system message (the server dropped it)",
            _rendered(tokenizer, chat_messages(prompt)))
    add("the model's template without the assistant's header (no generation prompt)",
        _rendered(tokenizer, chat_messages(prompt, system), generation_prompt=False))
    if bos and own.startswith(bos):
        add("the model's template without its BOS", own[len(bos):])
        add("the model's template after a second BOS (the server's and the template's)", bos + own)
    elif bos:
        add("the model's template after a BOS", bos + own)
    vocabulary = tokenizer.get_vocab()
    for name, (template, system_part, specials) in KNOWN.items():
        if all(special in vocabulary for special in specials):
            rendered = _known(template, system_part, prompt, system)
            add(name, rendered)
            if bos:
                add(f"{name} after a BOS", bos + rendered)
    return list(found.items())


def _known(template: str, system_part: str, prompt: str, system: str | None) -> str:
    """A KNOWN template's rendering of `prompt` after `system` (None: no system message)."""
    def filled(text: str, field: str, value: str) -> str:   # once, never inside a value filled before
        before, _, after = text.partition(field)
        return before + value + after

    if system is None:
        return filled(template, "{prompt}", prompt)
    if "{prompt}" in system_part:   # the system message joins the user's turn
        before, _, after = system_part.partition("{prompt}")
        return filled(template, "{prompt}", filled(before, "{system}", system) + prompt + after)
    return filled(system_part, "{system}", system) + filled(template, "{prompt}", prompt)


def _rendered(tokenizer, messages: list[dict], generation_prompt: bool = True) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception:  # noqa: BLE001 - a template that refuses a system message
        return None


def _shown(rendered: str) -> str:
    text = repr(rendered)
    return text if len(text) <= 90 else text[:60] + "..." + text[-25:]
