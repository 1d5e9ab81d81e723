"""parity tokens: the candidate tokenizer's ids against the reference's, over texts that break tokenizers."""

from __future__ import annotations

from pathlib import Path

from parity.commands import options
from parity.commands.output import finish
from parity.core.errors import OptionError
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


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?", help="reference tokenizer: model directory or .gguf")
    parser.add_argument("candidate", metavar="CANDIDATE", nargs="?", help="llamacpp:FILE.gguf or FILE.py:FUNCTION")
    parser.add_argument("--prompt", help="one text to tokenize")
    parser.add_argument("--file", help="a file holding one text to tokenize")
    parser.add_argument("--candidate-ids", metavar="IDS", dest="ids",
                        help="the candidate's ids for that text: 1,2,3 or @file")
    options.deprecated(parser, "--ids", "--candidate-ids", "ids")
    options.add_reports(parser)


def run(args) -> int:
    """Compare a candidate tokenizer's token ids with the reference's, and name what differs.

    MODEL's tokenizer (a model directory or .gguf, loaded by transformers) is the
    reference. CANDIDATE is llamacpp:FILE.gguf (llama.cpp's tokenizer), a model
    directory or .gguf (transformers'), or FILE.py:FUNCTION / module:FUNCTION
    (text -> ids); or give --candidate-ids (the ids another program produced for
    --prompt or --file). The texts are --prompt, --file (one text), or a built-in
    corpus of hard cases: spaces, newlines, tabs, accents, CJK, emoji, digits,
    code, special tokens written in text, the chat template. With no arguments:
    SmolLM2 in transformers against llama.cpp. Exit 1 on any difference.
    """
    from parity.capture.gguf.smollm2 import default_pair
    from parity.capture.hf.model import quiet_transformers
    from parity.capture.tokenizers import FixedIds, HFTokenizer, candidate_tokenizer, read_ids

    if args.model is None:
        args.model, candidate = default_pair()
        args.candidate = args.candidate or candidate
    texts = _texts(args)
    if (args.candidate is None) == (args.ids is None):
        raise OptionError("give a CANDIDATE tokenizer or --candidate-ids, not both and not neither")
    ids = read_ids(args.ids) if args.ids is not None else None   # before the tokenizer loads
    quiet_transformers()
    reference = HFTokenizer(Path(args.model))
    if args.ids is not None:
        if texts is None:
            raise OptionError("--candidate-ids are for one text: give it with --prompt or --file")
        candidate = FixedIds(ids, reference.vocabulary)
    else:
        candidate = candidate_tokenizer(args.candidate, reference.vocabulary)
    return finish(compare_tokenizers(reference, candidate, texts if texts is not None else corpus(reference)), args)


def _texts(args) -> list[tuple[str, str]] | None:
    if args.prompt is not None and args.file is not None:
        raise OptionError("give --prompt or --file, not both")
    if args.prompt is not None:
        return [("prompt", args.prompt)]
    if args.file is not None:
        from parity.core.text_input import read_text

        return [(Path(args.file).name, read_text(args.file, what="--file"))]
    return None
