from parity.core.printable import REPLACEMENT, is_printable, printable


def test_control_characters_escapes_and_surrogates_are_replaced_one_for_one():
    hostile = "a\x1b[2Jb\x1b]0;title\x07c\rd\ne\tf\x7fg\x9bh\u202ei\ud800j\u200bk"
    cleaned = printable(hostile)
    assert len(cleaned) == len(hostile)
    assert cleaned == "a" + REPLACEMENT + "[2Jb" + REPLACEMENT + "]0;title" + REPLACEMENT + "c" + REPLACEMENT + "d" \
        + REPLACEMENT + "e" + REPLACEMENT + "f" + REPLACEMENT + "g" + REPLACEMENT + "h" + REPLACEMENT + "i" \
        + REPLACEMENT + "j" + REPLACEMENT + "k"
    cleaned.encode("utf-8")  # would raise on a surrogate


def test_ordinary_text_in_any_script_is_kept():
    for text in ("layers.0.q", "café 東京 🙂 Ünïcödé", "SmolLM2-135M (float32)", ""):
        assert printable(text) == text and is_printable(text)


def test_non_strings_are_printed_as_their_str():
    assert printable(ValueError("bad\nthing")) == "bad" + REPLACEMENT + "thing"
