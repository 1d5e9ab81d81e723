"""parity tokens end to end, with planted tokenizer bugs as Python functions around a real tokenizer."""

import json

import pytest

from test_cli import assert_unusable, parity

PLANTED = '''from transformers import AutoTokenizer
TOKENIZER = AutoTokenizer.from_pretrained({directory!r})
SPACE = TOKENIZER.convert_tokens_to_ids("▁")

def correct(text):
    return TOKENIZER(text)["input_ids"]

def doubled_bos(text):
    return [TOKENIZER.bos_token_id] + correct(text)

def dropped_space_prefix(text):
    return [i for i in correct(text) if i != SPACE]

def split_special(text):
    return TOKENIZER(text, split_special_tokens=True)["input_ids"]
'''


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    import tiny_models

    directory = tmp_path_factory.mktemp("spm")
    tiny_models.save_sentencepiece_tokenizer(directory)
    functions = directory / "planted.py"
    functions.write_text(PLANTED.format(directory=str(directory)))
    return directory


TEXT = "<|user|> hello \nworld"


@pytest.mark.parametrize("function, pattern", [
    ("doubled_bos", "extra_bos"),
    ("dropped_space_prefix", "missing_space_prefix"),
    ("split_special", "special_token_split"),
])
def test_a_planted_tokenizer_bug_is_named(tokenizer_dir, function, pattern):
    result = parity("tokens", tokenizer_dir, f"{tokenizer_dir / 'planted.py'}:{function}", "--prompt", TEXT, "--json", "-")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "tokenizer" and report["patterns"] == {pattern: 1}


def test_the_aligned_diff_shows_each_tokens_text(tokenizer_dir):
    result = parity("tokens", tokenizer_dir, f"{tokenizer_dir / 'planted.py'}:split_special", "--prompt", TEXT)
    assert "3 '<|user|>'" in result.stdout and "special_token_split" in result.stdout


def test_a_correct_tokenizer_passes_the_whole_corpus(tokenizer_dir):
    result = parity("tokens", tokenizer_dir, f"{tokenizer_dir / 'planted.py'}:correct")
    assert result.returncode == 0, result.stdout
    assert "special tokens in text" in result.stdout and "PASS" in result.stdout


def test_ids_from_another_program(tokenizer_dir, tmp_path):
    ids = json.loads(parity("tokens", tokenizer_dir, f"{tokenizer_dir / 'planted.py'}:correct", "--prompt", TEXT,
                            "--json", "-").stdout)["texts"][0]["reference_ids"]
    written = tmp_path / "ids.json"
    written.write_text(json.dumps(ids))
    assert parity("tokens", tokenizer_dir, "--prompt", TEXT, "--candidate-ids", f"@{written}").returncode == 0
    doubled = ",".join(map(str, [ids[0]] + ids))
    assert "extra_bos" in parity("tokens", tokenizer_dir, "--prompt", TEXT, "--candidate-ids", doubled).stdout
    assert_unusable(parity("tokens", tokenizer_dir, "--candidate-ids", "1,2"), "--candidate-ids are for one text")
    assert_unusable(parity("tokens", tokenizer_dir, "--prompt", TEXT, "--candidate-ids", "1,x"), "must be integers")
