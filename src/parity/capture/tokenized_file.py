"""Texts another program tokenized, read from one JSON file: a tokenizer candidate in any language.

The file is a JSON list with one object per text, `{"name": ..., "text": ..., "ids": [...]}`
("name" optional): what `parity tokens --write-texts` writes, with each text's "ids" added by
the program whose tokenizer is checked (a JS, Rust or C++ port). The texts compared are the file's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from parity.core.errors import OptionError
from parity.core.tokenization import Vocabulary


@dataclass(frozen=True)
class TokenizedText:
    name: str
    text: str
    ids: tuple[int, ...]

    def __repr__(self) -> str:
        return f"<TokenizedText {self.name!r}: {len(self.ids)} ids>"


@dataclass(frozen=True)
class TokenizedTexts:
    """The candidate whose ids for each text are the file's."""

    texts: tuple[TokenizedText, ...]
    vocabulary: Vocabulary
    label: str

    def __repr__(self) -> str:
        return f"<TokenizedTexts {len(self.texts)} texts: {self.label}>"

    def __post_init__(self) -> None:
        from parity.capture.tokenizers import check_ids

        for entry in self.texts:
            check_ids(list(entry.ids), self.vocabulary, f"--candidate-ids: the text {entry.name!r} holds")

    def encode(self, text: str) -> list[int]:
        return next(list(entry.ids) for entry in self.texts if entry.text == text)


def holds_texts(source: str) -> bool:
    """Whether `source` (the text of a --candidate-ids @FILE) is a JSON list of objects, not a list of ids."""
    stripped = source.lstrip()
    if not stripped.startswith("["):
        return False
    return stripped[1:].lstrip().startswith("{")


def read_tokenized(source: str, path: str) -> tuple[TokenizedText, ...]:
    """The texts and ids in `source` (the text of the file at `path`); OptionError naming the entry at fault."""
    try:
        entries = json.loads(source)
    except json.JSONDecodeError as error:
        raise OptionError(f"--candidate-ids {path}: not valid JSON ({error.msg} at line {error.lineno}); write a "
                          'list of {"name", "text", "ids"} objects') from None
    except RecursionError:
        raise OptionError(f"--candidate-ids {path}: JSON nested too deeply to be texts and ids; write a list of "
                          '{"name", "text", "ids"} objects') from None
    if not isinstance(entries, list) or not entries:
        raise OptionError(f"--candidate-ids {path}: holds no texts; write a list of "
                          '{"name", "text", "ids"} objects')
    texts = tuple(_entry(entry, index, path) for index, entry in enumerate(entries))
    _refuse_repeats(texts, path)
    return texts


def _entry(entry, index: int, path: str) -> TokenizedText:
    from parity.capture.tokenizers import integer_ids

    where = f"--candidate-ids {path}: entry {index}"
    if not isinstance(entry, dict):
        raise OptionError(f"{where} is {type(entry).__name__}, not an object; write each text as "
                          '{"name", "text", "ids"}')
    text, ids = entry.get("text"), entry.get("ids")
    if not isinstance(text, str):
        raise OptionError(f'{where} has no "text" string; write the text that was tokenized beside its ids')
    if not isinstance(ids, list) or not integer_ids(ids):
        raise OptionError(f'{where} has no "ids" list of integers; add the candidate\'s token ids for its text')
    name = entry.get("name")
    return TokenizedText(name if isinstance(name, str) and name else f"text {index}", text, tuple(ids))


def _refuse_repeats(texts: tuple[TokenizedText, ...], path: str) -> None:
    seen: dict[str, TokenizedText] = {}
    for entry in texts:
        earlier = seen.setdefault(entry.text, entry)
        if earlier is not entry and earlier.ids != entry.ids:
            raise OptionError(f"--candidate-ids {path}: the texts {earlier.name!r} and {entry.name!r} are the same "
                              "text with different ids; keep one of them")


def label_of(path: str) -> str:
    return f"ids in {Path(path).name}"
