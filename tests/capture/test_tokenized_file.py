"""Texts another program tokenized, read from a JSON file."""

import pytest

from parity.capture.tokenized_file import TokenizedTexts, holds_texts, read_tokenized
from parity.core.errors import OptionError
from parity.core.tokenization import Vocabulary

VOCABULARY = Vocabulary(piece=str, bos=1, eos=2, special=frozenset({1, 2}), size=10)


def test_a_list_of_objects_holds_texts_and_a_list_of_ids_does_not():
    assert holds_texts(' [ {"text": "a", "ids": [1]}]')
    assert not holds_texts("[1, 2, 3]") and not holds_texts("1,2,3") and not holds_texts("[]")


def test_each_text_keeps_its_ids_and_a_name():
    texts = read_tokenized('[{"name": "plain", "text": "hi", "ids": [1, 5]}, {"text": "", "ids": []}]', "ids.json")
    assert [(entry.name, entry.text, entry.ids) for entry in texts] == [("plain", "hi", (1, 5)), ("text 1", "", ())]
    candidate = TokenizedTexts(texts, VOCABULARY, "ids in ids.json")
    assert candidate.encode("hi") == [1, 5] and candidate.encode("") == []


def test_a_text_repeated_with_the_same_ids_is_kept():
    assert len(read_tokenized('[{"text": "a", "ids": [3]}, {"text": "a", "ids": [3]}]', "ids.json")) == 2


@pytest.mark.parametrize("source, message", [
    ('[{"text": "a", "ids": [true]}]', 'no "ids" list of integers'),
    ('[{"text": "a", "ids": [1.5]}]', 'no "ids" list of integers'),
    ('[{"text": 3, "ids": [1]}]', 'no "text" string'),
    ("{}", "holds no texts"),
])
def test_a_malformed_entry_is_named(source, message):
    with pytest.raises(OptionError, match=message):
        read_tokenized(source, "ids.json")


def test_an_id_outside_the_vocabulary_names_its_text():
    texts = read_tokenized('[{"name": "emoji", "text": "x", "ids": [1, 12]}]', "ids.json")
    with pytest.raises(OptionError, match="'emoji' holds the id 12"):
        TokenizedTexts(texts, VOCABULARY, "ids in ids.json")
