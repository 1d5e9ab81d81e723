"""parity tokens against a tokenizer in another language: transformers.js on Node.js, given the texts as JSON
(--write-texts) and handing back each text's ids (--candidate-ids @FILE.json)."""

import json

import pytest

from conftest import ROOT
from node_packages import node_modules, run_node
from test_cli import assert_unusable, parity

EXAMPLE = ROOT / "examples" / "js" / "tokenize_texts.cjs"

# Mistakes a JS port makes around a correct tokenizer, written as users write them.
PLANTED = '''const {{ AutoTokenizer, env }} = require("@huggingface/transformers");
const {{ readFileSync, writeFileSync }} = require("node:fs");
async function main() {{
  const [dir, textsPath, idsPath] = process.argv.slice(2);
  env.allowRemoteModels = false;
  env.localModelPath = "";
  const tokenizer = await AutoTokenizer.from_pretrained(dir);
  const texts = JSON.parse(readFileSync(textsPath, "utf8"));
  writeFileSync(idsPath, JSON.stringify(texts.map((entry) => ({{ ...entry, ids: Array.from({encode}) }}))));
}}
main();
'''
NO_SPECIAL_TOKENS = "tokenizer.encode(entry.text, { add_special_tokens: false })"
TRIMMED = "tokenizer.encode(entry.text.trim())"


@pytest.fixture(scope="module")
def modules():
    return node_modules("@huggingface/transformers")


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    import tiny_models

    return tiny_models.save_sentencepiece_tokenizer(tmp_path_factory.mktemp("spm"))


def tokenized_by(script, tokenizer_dir, model, directory, modules):
    """The ids file `script` writes for the texts parity tokens writes for `model`."""
    texts, ids = directory / "texts.json", directory / "ids.json"
    written = parity("tokens", model, "--write-texts", texts)
    assert written.returncode == 0 and "--candidate-ids @" in written.stdout, written.stderr
    run_node(script, tokenizer_dir, texts, ids, modules=modules)
    return ids


def test_transformers_js_tokenizes_smollm2_as_transformers_does(modules, smollm2_gguf, tmp_path):
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).save_pretrained(tokenizer_dir)
    ids = tokenized_by(EXAMPLE, tokenizer_dir, smollm2_gguf, tmp_path, modules)
    result = parity("tokens", smollm2_gguf, "--candidate-ids", f"@{ids}", "--json", "-")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    names = [text["name"] for text in report["texts"]]
    assert report["verdict"] == "pass" and len(names) == 17 and {"CJK", "emoji", "chat template"} <= set(names)
    assert report["candidate"] == "ids in ids.json"


# The texts that begin or end with whitespace, but " Hello world": its one leading space is the '▁' the
# tokenizer's Metaspace prepends to a text anyway.
EDGE_WHITESPACE = {"leading spaces", "trailing space", "newlines", "code", "special tokens in text"}


@pytest.mark.parametrize("encode, pattern, failing", [
    (NO_SPECIAL_TOKENS, "missing_bos", None),         # every text: the reference starts each with <s>
    (TRIMMED, "missing_space_prefix", EDGE_WHITESPACE),
])
def test_a_js_ports_mistake_is_named(modules, spm_dir, tmp_path, encode, pattern, failing):
    script = tmp_path / "planted.cjs"
    script.write_text(PLANTED.format(encode=encode))
    ids = tokenized_by(script, spm_dir, spm_dir, tmp_path, modules)
    result = parity("tokens", spm_dir, "--candidate-ids", f"@{ids}", "--json", "-")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert pattern in report["patterns"], report["patterns"]
    names = {text["name"] for text in report["texts"]}
    assert {text["name"] for text in report["texts"] if not text["agrees"]} == (failing or names)


def test_the_texts_and_ids_file_is_checked(spm_dir, tmp_path):
    texts = tmp_path / "texts.json"
    assert parity("tokens", spm_dir, "--prompt", "hello world", "--write-texts", texts).returncode == 0
    assert json.loads(texts.read_text()) == [{"name": "prompt", "text": "hello world"}]
    assert_unusable(parity("tokens", spm_dir, "--write-texts", texts), "exists")
    assert_unusable(parity("tokens", spm_dir, "--write-texts", tmp_path / "x.json", "--candidate-ids", "1"),
                    "compares nothing")
    ids = tmp_path / "ids.json"
    cases = {
        '[{"name": "a", "text": "hello"}]': 'entry 0 has no "ids"',
        '[{"ids": [1, 2]}]': 'entry 0 has no "text"',
        '[{"text": "hello", "ids": [1]}, {"text": "hello", "ids": [1, 2]}]': "the same text with different ids",
        '[{"text": "hello", "ids": [100000]}]': "outside the reference's vocabulary",
        '[{"text": "hello", "ids": [1]}, 3]': "entry 1 is int",
        '[{"text": "hello", "ids": [1]': "not valid JSON",
        '[{"text": "hello", "ids": ' + "[" * 100000: "nested too deeply",
    }
    for written, message in cases.items():
        ids.write_text(written)
        assert_unusable(parity("tokens", spm_dir, "--candidate-ids", f"@{ids}"), message)
    ids.write_text('[{"text": "hello", "ids": [1]}]')
    assert_unusable(parity("tokens", spm_dir, "--prompt", "x", "--candidate-ids", f"@{ids}"), "holds its own texts")
