"""Fuzz inputs for the server path: OpenAI completions answers, valid seeds made from a reference, mutated.

Shared by tests/capture/server/test_server_fuzz.py (a few hundred) and scripts/fuzz_surfaces.py
(10,000). The seeds are what an honest server running the reference's own model would answer for
PROMPT (tiny_models' llama and its word tokenizer): every position agrees. `mutate` edits the JSON
document (a key dropped, a value of another type, lists cut or grown, offsets moved, token texts
changed, surrogates, escapes) or its bytes. `pipeline` runs what `parity check MODEL URL` runs on an
answer; `comparable` is the oracle: the issue's rules written again, independently, so that a pass of
an answer it rejects is counted as a silent pass.
"""

from __future__ import annotations

import copy
import json
import math
import random

PROMPT = "w1 w2 w3"
MAX_TOKENS = 3
WHERE = "the server at http://127.0.0.1:9/v1/completions"
_PARTIAL = ("", "\ufffd", "bytes:")


def seeds(reference) -> list[bytes]:
    """Answers of an honest server: full, with the first row null, as llama-cpp-python drops the last token, and
    not echoed: as llama.cpp's llama-server answers (the chat shape) and in the completions shape."""
    continuation = greedy(reference, PROMPT, MAX_TOKENS)
    document = _honest(reference, PROMPT + continuation)
    dropped = copy.deepcopy(document)
    for key in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
        dropped["choices"][0]["logprobs"][key].pop()
    stopped = _honest(reference, PROMPT + greedy(reference, PROMPT, 1))
    stopped["choices"][0]["finish_reason"] = "stop"
    content, entries = _generated_honest(reference, PROMPT, False, MAX_TOKENS)
    llama_server = {"choices": [{"text": content, "logprobs": {"content": entries}, "finish_reason": "length"}]}
    legacy = {"choices": [{"text": content, "finish_reason": "length", "logprobs": {
        "tokens": [entry["token"] for entry in entries], "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [{top["token"]: top["logprob"] for top in entry["top_logprobs"]} for entry in entries]}}]}
    return [json.dumps(doc).encode() for doc in (document, dropped, stopped, llama_server, legacy)]


def greedy(reference, prompt: str, count: int) -> str:
    """The reference's greedy continuation of `prompt`, `count` tokens of it, as text."""
    text = prompt
    for _ in range(count):
        chosen = int(reference.reference_tokens(text).logprobs[-1].argmax())
        text = reference.tokenizer.decode(reference.tokenize(text) + [chosen], skip_special_tokens=True)
    assert text.startswith(prompt), text
    return text[len(prompt):]


def _honest(reference, text: str) -> dict:
    tokens = reference.reference_tokens(text)
    rows = [i for i, piece in enumerate(tokens.pieces) if piece]          # the BOS has no text
    pieces, offsets, token_logprobs, top = [], [], [], []
    for position, index in enumerate(rows):
        pieces.append(tokens.pieces[index])
        offsets.append(tokens.offsets[index])
        if position == 0 or index == 0:
            token_logprobs.append(None)
            top.append(None)
            continue
        row = tokens.logprobs[index - 1]
        best = sorted(range(len(row)), key=lambda i: -row[i])[:5]
        top.append({tokens.vocab_pieces[i]: float(row[i]) for i in best})
        piece_ids = [i for i, piece in enumerate(tokens.vocab_pieces) if piece == tokens.pieces[index]]
        token_logprobs.append(float(max(row[i] for i in piece_ids)) if piece_ids else None)
    logprobs = {"tokens": pieces, "text_offset": offsets, "token_logprobs": token_logprobs, "top_logprobs": top}
    return {"choices": [{"text": text, "logprobs": logprobs, "finish_reason": "length"}]}


# --- mutation -------------------------------------------------------------------------------------

_VALUES = [None, True, 0, -1, 1, 2**63, 1e308, -1e308, "", "x", "\x1b[2J", "\u202e", "\ud800", [], {}, [[[]]],
           {"a": 1}, 0.5, -0.0, "w1", " w2"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three edits of the document, or of its bytes (one time in five)."""
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if document is None or rng.random() < 0.2:
        return _mutate_bytes(data, rng)
    for _ in range(rng.randint(1, 3)):
        document = _mutate_document(document, rng)
    return json.dumps(document).encode()


def _mutate_document(document, rng: random.Random):
    paths = list(_paths(document))
    path = rng.choice(paths)
    parent, key = _locate(document, path)
    if parent is None:
        return rng.choice(_VALUES)
    value = parent[key]
    choice = rng.randrange(9)
    if choice == 0 and isinstance(parent, dict):
        del parent[key]
    elif choice == 1:
        parent[key] = copy.deepcopy(rng.choice(_VALUES))
    elif choice == 2 and isinstance(value, list):
        cut = rng.randrange(len(value) + 1)
        parent[key] = value[:cut] if rng.random() < 0.5 else value + value[cut:]
    elif choice == 3 and isinstance(value, list) and len(value) > 1:
        i, j = rng.sample(range(len(value)), 2)
        value[i], value[j] = value[j], value[i]
    elif choice == 4 and isinstance(value, int) and not isinstance(value, bool):
        parent[key] = value + rng.choice((-3, -1, 1, 2, 1000, -10**6))
    elif choice == 5 and isinstance(value, str):
        parent[key] = rng.choice((value + "x", value[1:], "", value.upper(), value + "\ud800", "bytes:\\xe2",
                                  "\ufffd", value + "\x1b]0;t\x07", value * 50))
    elif choice == 6 and isinstance(value, float):
        parent[key] = rng.choice((math.inf, -math.inf, 0.5, 5.0, -1e-300, value * 2, -value))
    elif choice == 7 and isinstance(value, dict):
        if value and rng.random() < 0.5:
            del value[rng.choice(list(value))]
        else:
            value[rng.choice(("w9", " w4", "", "\ud800", "x" * 100))] = rng.choice((-0.1, 0.0, 3.0, "-1", None))
    else:
        parent[key] = [value] if rng.random() < 0.5 else {"value": value}
    return document


def _paths(document, prefix=()):
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document[:12]):
            yield from _paths(value, prefix + (index,))


def _locate(document, path):
    if not path:
        return None, None
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    return parent, path[-1]


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    body = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(body) or 1)
        choice = rng.randrange(5)
        if choice == 0 and body:
            body[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            body[position:position] = rng.choice((b'"\\ud800"', b"[" * 50, b"\\u0000", b"NaN", b"1e999", b"\xff",
                                                  b'"\\udc80x"', b"-Infinity"))
        elif choice == 2:
            del body[position:position + rng.randint(1, 20)]
        elif choice == 3:
            del body[position:]
        else:
            body[position:position] = rng.randbytes(rng.randint(1, 8))
    return bytes(body)


# --- what parity does with an answer, and the oracle ----------------------------------------------------


def pipeline(raw: bytes, reference) -> str:
    """'pass' or 'fail' (the comparison's verdict, rendered to the console and to JSON as `check` would),
    or 'refused: <message>' for a ParityError. Anything else raises."""
    from parity.capture.server.completion import parse_completion
    from parity.capture.server.openai import decode_answer
    from parity.core.errors import ParityError
    from parity.core.sequence import compare_sequences
    from parity.report import registry

    try:
        candidate = parse_completion(decode_answer(raw, WHERE), PROMPT, WHERE, max_tokens=MAX_TOKENS)
        comparison = compare_sequences(reference.scoring(candidate), candidate)
    except ParityError as error:
        return f"refused: {error}"
    registry.render(comparison, "console").encode("utf-8")        # strict: a surrogate would raise here
    registry.render(comparison, "json").encode("utf-8")
    return "pass" if comparison else "fail"


def comparable(raw: bytes, reference) -> bool:
    """The issue's rules for an answer the check can compare, checked without parity's parser."""
    try:
        document = json.loads(raw.decode("utf-8"))
        choice = document["choices"][0]
        text, logprobs = choice["text"], choice["logprobs"]
        if isinstance(text, str) and isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            generated = text[len(PROMPT):] if text.startswith(PROMPT) else text      # llama-server's shape
            return _generated_comparable(generated, _entries_pieces(logprobs["content"]), reference, PROMPT, False)
        pieces, rows, token_logprobs = logprobs["tokens"], logprobs.get("top_logprobs"), logprobs["token_logprobs"]
        offsets = logprobs["text_offset"] if isinstance(text, str) and text.startswith(PROMPT) else None
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return False
    if isinstance(text, str) and _unicode(text) and not text.startswith(PROMPT):   # not echoed
        if not (isinstance(pieces, list) and isinstance(rows, list) and isinstance(token_logprobs, list)
                and len(pieces) == len(rows) == len(token_logprobs)):
            return False
        legal = all(isinstance(p, str) and _unicode(p) for p in pieces) and all(
            v is None or (_number(v) and v <= 1e-3) for v in token_logprobs) and all(
            isinstance(row, dict) and row and _row(row) for row in rows)
        return legal and _generated_comparable(text, pieces, reference, PROMPT, False)
    if not (isinstance(text, str) and _unicode(text) and text.startswith(PROMPT)):
        return False
    if not (isinstance(pieces, list) and isinstance(offsets, list) and isinstance(rows, list)
            and isinstance(token_logprobs, list) and len(pieces) >= 2
            and len(pieces) == len(offsets) == len(rows) == len(token_logprobs)):
        return False
    if not all(isinstance(p, str) and _unicode(p) for p in pieces):
        return False
    if not all(type(o) is int and 0 <= o <= len(text) for o in offsets):
        return False
    if not all(v is None or (_number(v) and v <= 1e-3) for v in token_logprobs):
        return False
    if rows[0] is not None and not _row(rows[0]):
        return False
    if not all(isinstance(row, dict) and row and _row(row) for row in rows[1:]):
        return False
    position, after_partial = 0, False
    for piece, offset in zip(pieces, offsets):
        if offset != position and not (after_partial and offset > position):
            return False
        partial = piece == "" or "\ufffd" in piece or piece.startswith("bytes:")
        if not partial and text[offset:offset + len(piece)] != piece:
            return False
        position, after_partial = (position if partial else offset + len(piece)), partial
    if len(text) - position > 1024:
        return False
    if len(text) == len(PROMPT) and choice.get("finish_reason") != "stop":
        return False
    if sum(offset >= len(PROMPT) for offset in offsets) > MAX_TOKENS + 1:
        return False
    truth = reference.reference_tokens(text)
    at = {offset: piece for offset, piece in zip(truth.offsets, truth.pieces) if piece}
    return any(at.get(offset) == piece for piece, offset in list(zip(pieces, offsets))[1:])


def _row(row) -> bool:
    return isinstance(row, dict) and len(row) <= 1000 and all(
        isinstance(k, str) and _unicode(k) and _number(v) and v <= 1e-3 for k, v in row.items())


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- chat answers: the generated tokens alone, after the prompt the template renders ---------------------

CHAT_WHERE = "the server at http://127.0.0.1:9/v1/chat/completions"
CHAT_TEMPLATE = "{% for message in messages %}<s>{{ message['content'] }}{% endfor %}"


def with_chat_template(reference):
    """`reference` with a chat template on its word tokenizer (which has none): one message, after a BOS."""
    reference.tokenizer.chat_template = CHAT_TEMPLATE
    return reference


def chat_seeds(reference) -> list[bytes]:
    """Answers of an honest chat server (OpenAI's shape, and mistral.rs's: alternatives by id with their text),
    and one that stopped after a token."""
    rendered = reference.chat_prompt(PROMPT)
    full = _chat_honest(reference, rendered, MAX_TOKENS)
    by_id = copy.deepcopy(full)
    for entry in by_id["choices"][0]["logprobs"]["content"]:
        entry["top_logprobs"] = [{"token": 7 + i, "logprob": top["logprob"], "bytes": top["token"]}
                                 for i, top in enumerate(entry["top_logprobs"])]
    stopped = _chat_honest(reference, rendered, 1)
    stopped["choices"][0]["finish_reason"] = "stop"
    return [json.dumps(doc).encode() for doc in (full, by_id, stopped)]


def _chat_honest(reference, rendered: str, count: int) -> dict:
    content, entries = _generated_honest(reference, rendered, True, count)
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": entries}, "finish_reason": "length"}]}


def _generated_honest(reference, follows: str, templated: bool, count: int) -> tuple[str, list[dict]]:
    """The reference's greedy continuation of `follows` and its `logprobs.content` entries (top-5 each)."""
    prompt_ids = list(reference.tokenizer(follows, add_special_tokens=not templated)["input_ids"])
    ids = list(prompt_ids)
    for _ in range(count):
        row = reference.reference_tokens(_after(reference, prompt_ids, ids), follows, templated).logprobs[-1]
        ids.append(int(row.argmax()))
    content = _after(reference, prompt_ids, ids)
    tokens = reference.reference_tokens(content, follows, templated)
    entries = []
    for index in range(len(prompt_ids), len(tokens.pieces)):
        row = tokens.logprobs[index - 1]
        best = sorted(range(len(row)), key=lambda i: -row[i])[:5]
        top = [{"token": tokens.vocab_pieces[i], "logprob": float(row[i])} for i in best]
        entries.append({"token": tokens.pieces[index], "logprob": top[0]["logprob"], "top_logprobs": top})
    return content, entries


def _after(reference, prompt_ids: list[int], ids: list[int]) -> str:
    decode = reference.tokenizer.decode
    return decode(ids)[len(decode(prompt_ids)):]


def chat_pipeline(raw: bytes, reference) -> str:
    """What `parity check MODEL URL/v1/chat/completions` does with an answer: 'pass', 'fail' or 'refused: ...'."""
    import dataclasses

    from parity.capture.server.chat_completion import ENDPOINT, parse_chat_completion
    from parity.capture.server.openai import decode_answer
    from parity.core.errors import ParityError
    from parity.core.sequence import compare_sequences
    from parity.report import registry

    try:
        candidate = parse_chat_completion(decode_answer(raw, CHAT_WHERE, ENDPOINT), CHAT_WHERE, max_tokens=MAX_TOKENS)
        candidate = dataclasses.replace(candidate, follows=reference.chat_prompt(PROMPT))
        comparison = compare_sequences(reference.scoring(candidate), candidate)
    except ParityError as error:
        return f"refused: {error}"
    registry.render(comparison, "console").encode("utf-8")
    registry.render(comparison, "json").encode("utf-8")
    return "pass" if comparison else "fail"


def chat_comparable(raw: bytes, reference) -> bool:
    """The rules for a chat answer the check can compare, checked without parity's parser: a text; at least
    one token, each with a text and a top-k row of texts (or ids with their text) and log-probabilities; the
    tokens laid end to end along the text (a part of a character lets the next start a character later);
    no more than asked for; and one token where the reference has the same one."""
    try:
        document = json.loads(raw.decode("utf-8"))
        choice = document["choices"][0]
        text, entries = choice["message"]["content"], choice["logprobs"]["content"]
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        return False
    return _generated_comparable(text, _entries_pieces(entries), reference, reference.chat_prompt(PROMPT), True)


def _entries_pieces(entries) -> list[str] | None:
    """The token texts of a `logprobs.content` list whose every entry is legal, else None."""
    if not isinstance(entries, list):
        return None
    pieces = []
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("token"), str) and _unicode(entry["token"])):
            return None
        if entry.get("logprob") is not None and not (_number(entry["logprob"]) and entry["logprob"] <= 1e-3):
            return None
        top = entry.get("top_logprobs")
        if not (isinstance(top, list) and 0 < len(top) <= 1000 and all(_chat_alternative(item) for item in top)):
            return None
        pieces.append(entry["token"])
    return pieces


def _generated_comparable(text, pieces, reference, follows: str, templated: bool) -> bool:
    """Generated tokens alone: at least one, no more than asked for, laid end to end along `text`, and one of
    them where the reference, run after `follows`, has the same token."""
    if not (isinstance(text, str) and _unicode(text) and pieces and len(pieces) <= MAX_TOKENS + 1):
        return False
    position, after_partial, offsets = 0, False, []
    for piece in pieces:
        partial = piece == "" or "\ufffd" in piece or piece.startswith("bytes:")
        if not partial and text[position:position + len(piece)] != piece:
            if not (after_partial and text[position + 1:position + 1 + len(piece)] == piece):
                return False
            position += 1
        offsets.append(position)
        position, after_partial = (position if partial else position + len(piece)), partial
    if len(text) - position > 1024:
        return False
    truth = reference.reference_tokens(text, follows, templated)
    at = {offset: piece for offset, piece in zip(truth.offsets, truth.pieces) if piece}
    return any(at.get(offset) == piece for piece, offset in zip(pieces, offsets))


def _chat_alternative(item) -> bool:
    if not isinstance(item, dict) or not (_number(item.get("logprob")) and item["logprob"] <= 1e-3):
        return False
    token, text = item.get("token"), item.get("bytes")
    if isinstance(token, str):
        return _unicode(token)
    return type(token) is int and isinstance(text, str) and _unicode(text)
