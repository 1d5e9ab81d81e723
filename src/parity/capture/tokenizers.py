"""Tokenizers to compare: transformers', llama.cpp's, a Python function, or ids from any program.

Each side answers `encode(text) -> ids` and describes its vocabulary (the text of
each id, BOS, EOS, special ids) for naming the patterns of a difference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from parity.core.errors import OptionError
from parity.core.tokenization import Vocabulary


@dataclass
class HFTokenizer:
    path: Path

    def __post_init__(self) -> None:
        from parity.capture.hf.model import load_tokenizer

        self._tokenizer = load_tokenizer(self.path)

    def __repr__(self) -> str:
        return f"<HFTokenizer {self.path}>"

    @property
    def label(self) -> str:
        return f"transformers tokenizer of {Path(self.path).name}"

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text)["input_ids"])

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        return vocabulary_of(self._tokenizer)

    def special_texts(self) -> list[str]:
        return [token for token in self._tokenizer.all_special_tokens if token]

    def chat(self, messages: list[dict]) -> str | None:
        if not getattr(self._tokenizer, "chat_template", None):
            return None
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class LlamaCppTokenizer:
    gguf: Path

    def __post_init__(self) -> None:
        from parity.capture.llamacpp.runner import LlamaCppRunner

        self._runner = LlamaCppRunner(self.gguf).__enter__()

    def __repr__(self) -> str:
        return f"<LlamaCppTokenizer {self.gguf}>"

    def close(self) -> None:
        self._runner.__exit__(None, None, None)

    @property
    def label(self) -> str:
        return f"llama.cpp tokenizer of {Path(self.gguf).name}"

    def encode(self, text: str) -> list[int]:
        return self._runner.tokenize(text, add_special=True, parse_special=True)

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(piece=self._runner.piece, bos=self._runner.special_id("bos"),
                          eos=self._runner.special_id("eos"), special=self._runner.control_ids(),
                          size=self._runner.vocab_size)


@dataclass
class FunctionTokenizer:
    """A Python function text -> ids (`module:function` or `file.py:function`); its ids read with the
    reference's vocabulary, which it is meant to share."""

    spec: str
    vocabulary: Vocabulary

    def __post_init__(self) -> None:
        from parity.capture.torch.factory import load_factory

        self._function = load_factory(self.spec, what="a function that takes a text and returns ids")

    def __repr__(self) -> str:
        return f"<FunctionTokenizer {self.spec}>"

    @property
    def label(self) -> str:
        return self.spec

    def encode(self, text: str) -> list[int]:
        ids = self._function(text)
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise OptionError(f"{self.spec} returned {type(ids).__name__}, not a list of token ids") from None
        return check_ids(ids, self.vocabulary, f"{self.spec} returned")


@dataclass
class FixedIds:
    """Ids another program wrote, for one text."""

    ids: list[int]
    vocabulary: Vocabulary
    label: str = "ids given"

    def __repr__(self) -> str:
        return f"<FixedIds {len(self.ids)} ids>"

    def __post_init__(self) -> None:
        check_ids(self.ids, self.vocabulary, "--candidate-ids holds")

    def encode(self, text: str) -> list[int]:
        return list(self.ids)


def check_ids(ids: list[int], vocabulary: Vocabulary, source: str) -> list[int]:
    """`ids`, after checking each is in the vocabulary; the first one outside it is named."""
    size = vocabulary.size
    outside = next((i for i in ids if i < 0 or (size is not None and i >= size)), None)
    if outside is not None:
        within = f"ids 0 to {size - 1}" if size is not None else "ids are 0 or more"
        raise OptionError(f"{source} the id {outside}, outside the reference's vocabulary ({within}); "
                          "give ids of the reference's tokenizer")
    return ids


def integer_ids(values) -> bool:
    """Whether `values` (read from JSON) are all integers (not booleans, which JSON's true and false become)."""
    return all(isinstance(value, int) and not isinstance(value, bool) for value in values)


def vocabulary_of(tokenizer) -> Vocabulary:
    """What a transformers tokenizer says of its vocabulary: each id's text, BOS, EOS, its special ids."""
    return Vocabulary(piece=lambda i: tokenizer.decode([i]), bos=tokenizer.bos_token_id,
                      eos=tokenizer.eos_token_id, special=frozenset(tokenizer.all_special_ids), size=len(tokenizer))


def candidate_tokenizer(spec: str, vocabulary: Vocabulary):
    """The tokenizer a CANDIDATE spec names: llama.cpp's (llamacpp:FILE.gguf), transformers' (a model
    directory or .gguf) or a function text -> ids (FILE.py:FUNCTION), read with `vocabulary` (the reference's)."""
    from parity.capture.candidate import parse_candidate

    parsed = parse_candidate(spec)
    if parsed.offers("tokenizer"):
        return parsed.backend.open_tokenizer(spec, vocabulary)
    raise OptionError(f"candidate '{spec}' is not a tokenizer: give llamacpp:FILE.gguf, a model directory or .gguf, "
                      "or FILE.py:FUNCTION (text -> ids)")


def read_ids(spec: str) -> list[int]:
    """'1,2,3', or '@file' holding a JSON list or whitespace/comma-separated integers."""
    from parity.core.text_input import read_text

    text = read_text(spec[1:], what="--candidate-ids @FILE") if spec.startswith("@") else spec
    cleaned = text.strip().strip("[]").replace(",", " ").split()
    try:
        ids = [int(part) for part in cleaned]
    except ValueError:
        raise OptionError(f"--candidate-ids must be integers (comma- or space-separated, or a JSON list), got "
                          f"{text[:40]!r}") from None
    if not ids:
        raise OptionError("--candidate-ids is empty; give the candidate's token ids, e.g. --candidate-ids 1,2,3 or "
                          "--candidate-ids @ids.json")
    negative = next((i for i in ids if i < 0), None)
    if negative is not None:
        raise OptionError(f"--candidate-ids holds the negative id {negative}; give token ids of 0 or more")
    return ids
