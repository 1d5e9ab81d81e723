"""parity tokens: the candidate tokenizer's ids against the reference's, over texts that break tokenizers."""

from __future__ import annotations

from parity.core.results import TokenizerComparison
from parity.core.tokenization import compare_ids

# (name, text): the cases ports get wrong. The special-token and chat-template
# cases are added from the reference tokenizer's own special tokens.
HARD_CASES: tuple[tuple[str, str], ...] = (
    ("plain", "Hello world"),
    ("empty", ""),
    ("leading space", " Hello world"),
    ("leading spaces", "   indented text"),
    ("trailing space", "Hello world "),
    ("repeated spaces", "a  b   c    d"),
    ("newlines", "line one\nline two\n\nline four\n"),
    ("tabs", "a\tb\t\tc"),
    ("accents", "café naïve résumé Ångström"),
    ("CJK", "你好，世界。日本語のテキスト、한국어"),
    ("emoji", "I ❤️ llamas 🦙 and 👩‍💻"),
    ("scripts", "Ελληνικά русский العربية עברית"),
    ("digits", "3.14159 1234567890 2026-11-22 0x1F"),
    ("code", "def f(x):\n    return x ** 2  # square\n"),
    ("punctuation", "Wait... what?! (yes) [no] {maybe} — “quoted”"),
)


def corpus(reference) -> list[tuple[str, str]]:
    """The hard cases, plus text containing the reference's special tokens and its chat template."""
    cases = list(HARD_CASES)
    specials = reference.special_texts() if hasattr(reference, "special_texts") else []
    if specials:
        cases.append(("special tokens in text", f"{specials[0]}user\nHi there{specials[-1]}\n"))
    chat = reference.chat([{"role": "user", "content": "What is 2+2?"}]) if hasattr(reference, "chat") else None
    if chat:
        cases.append(("chat template", chat))
    return cases


def compare_tokenizers(reference, candidate, texts: list[tuple[str, str]]) -> TokenizerComparison:
    results = tuple(
        compare_ids(name, text, reference.encode(text), candidate.encode(text), reference.vocabulary, candidate.vocabulary)
        for name, text in texts
    )
    return TokenizerComparison(results, reference.label, candidate.label)
