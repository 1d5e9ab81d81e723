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
    parser.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                        help="llamacpp:FILE.gguf, FILE.py:FUNCTION or http://HOST:PORT (a server's tokenizer)")
    parser.add_argument("--prompt", help="one text to tokenize")
    parser.add_argument("--file", help="a file holding one text to tokenize")
    parser.add_argument("--candidate-ids", metavar="IDS", dest="ids",
                        help="the candidate's ids for that text: 1,2,3 or @file; or @FILE.json holding "
                             "texts with their ids (what --write-texts writes, each text's ids added)")
    parser.add_argument("--write-texts", metavar="OUT.json",
                        help="write the texts (the hard cases, --prompt or --file) as JSON for another program "
                             "to tokenize, and compare nothing")
    options.deprecated(parser, "--ids", "--candidate-ids", "ids")
    options.add_reports(parser)


def run(args) -> int:
    """Compare a candidate tokenizer's token ids with the reference's, and name what differs.

    MODEL's tokenizer (a model directory or .gguf, loaded by transformers) is the
    reference. CANDIDATE is llamacpp:FILE.gguf (llama.cpp's tokenizer), a model
    directory or .gguf (transformers'), FILE.py:FUNCTION / module:FUNCTION
    (text -> ids), or http://HOST:PORT (a running server's own tokenizer, asked
    at POST /tokenize as llama.cpp's server and vLLM answer, or /extras/tokenize
    as llama-cpp-python's, with the special tokens the model adds). Or give
    --candidate-ids: the ids another program produced for --prompt or --file,
    or a JSON file of texts with their ids (--write-texts writes the texts for
    a program in any language to tokenize). The texts are --prompt, --file (one
    text), or a built-in corpus of hard cases: spaces, newlines, tabs, accents,
    CJK, emoji, digits, code, special tokens written in text, the chat
    template. With no arguments: SmolLM2 in transformers against llama.cpp.
    Exit 1 on any difference.
    """
    from parity.capture.gguf.smollm2 import default_pair
    from parity.capture.hf.model import quiet_transformers
    from parity.capture.tokenized_file import TokenizedTexts, label_of
    from parity.capture.tokenizers import FixedIds, HFTokenizer, candidate_tokenizer, read_ids

    if args.model is None:
        args.model, candidate = default_pair()
        if args.ids is None and args.write_texts is None:
            args.candidate = args.candidate or candidate
    texts = _texts(args)
    if args.write_texts is not None:
        return _write_texts(args, texts)
    if (args.candidate is None) == (args.ids is None):
        raise OptionError("give a CANDIDATE tokenizer or --candidate-ids, not both and not neither")
    tokenized = _tokenized(args.ids)   # before the tokenizer loads
    ids = read_ids(args.ids) if args.ids is not None and tokenized is None else None
    quiet_transformers()
    reference = HFTokenizer(Path(args.model))
    if tokenized is not None:
        if texts is not None:
            raise OptionError(f"{args.ids[1:]} holds its own texts; leave out --prompt and --file")
        texts = [(entry.name, entry.text) for entry in tokenized]
        candidate = TokenizedTexts(tokenized, reference.vocabulary, label_of(args.ids[1:]))
    elif args.ids is not None:
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


def _tokenized(spec: str | None):
    """The texts and ids of a --candidate-ids @FILE.json holding texts; None for ids of one text."""
    if spec is None or not spec.startswith("@"):
        return None
    from parity.capture.tokenized_file import holds_texts, read_tokenized
    from parity.core.text_input import read_text

    source = read_text(spec[1:], what="--candidate-ids @FILE")
    return read_tokenized(source, spec[1:]) if holds_texts(source) else None


def _write_texts(args, texts: list[tuple[str, str]] | None) -> int:
    """Write the texts to compare as JSON [{"name", "text"}], for another program to add each one's "ids"."""
    import json

    from parity.capture.hf.model import quiet_transformers
    from parity.capture.tokenizers import HFTokenizer
    from parity.core.files import check_output_path, write_atomically

    if args.candidate is not None or args.ids is not None:
        raise OptionError("--write-texts writes the texts for another program and compares nothing; leave out "
                          "CANDIDATE and --candidate-ids")
    reports = [option for option in ("json", "html", "junit", "markdown") if getattr(args, option, None)]
    if reports:
        raise OptionError(f"--write-texts compares nothing, so there is no report; leave out --{reports[0]}")
    options.never_over_inputs({"write-texts": args.write_texts}, args)
    check_output_path(args.write_texts, overwrite=args.force, option="--write-texts")
    if texts is None:
        quiet_transformers()
        texts = corpus(HFTokenizer(Path(args.model)))
    entries = [{"name": name, "text": text} for name, text in texts]
    write_atomically(args.write_texts, json.dumps(entries, ensure_ascii=False, indent=1) + "\n",
                     overwrite=args.force, option="--write-texts")
    print(f"wrote {len(entries)} texts to {args.write_texts}: add to each its \"ids\" (the candidate's token ids, "
          f"with the special tokens it adds), then run: parity tokens {args.model} --candidate-ids @{args.write_texts}")
    return 0
