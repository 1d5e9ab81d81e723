from parity.core.results import TokenizerComparison
from parity.core.tokenization import Vocabulary, compare_ids

PIECES = {1: "<s>", 2: "</s>", 3: "<|user|>", 10: "<", 11: "|", 12: "user", 13: ">", 20: "", 21: "hello", 22: "\n",
          23: "world", 24: "hel", 25: "lo"}
VOCABULARY = Vocabulary(piece=PIECES.get, bos=1, eos=2, special=frozenset({1, 2, 3}))


def patterns(reference, candidate):
    return [d.pattern for d in compare_ids("t", "", reference, candidate, VOCABULARY, VOCABULARY).differences]


def test_identical_ids_agree():
    result = compare_ids("t", "hello", [1, 21], [1, 21], VOCABULARY, VOCABULARY)
    assert result and not result.differences


def test_named_patterns():
    assert patterns([1, 21, 23], [1, 1, 21, 23]) == ["extra_bos"]
    assert patterns([1, 21, 23], [21, 23]) == ["missing_bos"]
    assert patterns([1, 21], [1, 21, 2]) == ["extra_eos"]
    assert patterns([1, 21, 20, 22, 23], [1, 21, 22, 23]) == ["missing_space_prefix"]
    assert patterns([1, 3, 21], [1, 10, 11, 12, 11, 13, 21]) == ["special_token_split"]
    assert patterns([1, 21, 23], [1, 24, 25, 23]) == ["different_segmentation"]
    assert patterns([1, 21, 23], [1, 21, 21]) == ["different_text"]


def test_differences_carry_positions_and_the_text_of_each_token():
    difference = compare_ids("t", "", [1, 3, 21], [1, 10, 11, 12, 11, 13, 21], VOCABULARY, VOCABULARY).differences[0]
    assert difference.reference_start == 1 and difference.reference == ((3, "<|user|>"),)
    assert [piece for _, piece in difference.candidate] == ["<", "|", "user", "|", ">"]


def test_comparison_counts_patterns():
    texts = (compare_ids("a", "", [1, 21], [1, 1, 21], VOCABULARY, VOCABULARY),
             compare_ids("b", "", [1, 21], [1, 21], VOCABULARY, VOCABULARY))
    comparison = TokenizerComparison(texts, "ref", "cand")
    assert not comparison and comparison.patterns == {"extra_bos": 1}
