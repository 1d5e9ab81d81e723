"""parity tokens against a running server's own tokenizer: llama-cpp-python's OpenAI-compatible server serving
SmolLM2's GGUF, asked through its tokenize endpoint, as the server tokenizes what it is sent."""

import json

import pytest

from conftest import need
from test_cli import parity


@pytest.fixture(scope="module")
def served(smollm2_gguf, tmp_path_factory):
    """The server's URL for SmolLM2's GGUF as it is, and for one whose converter wrote add_bos_token true."""
    from llama_servers import serving, with_metadata_value

    need("llama_cpp")
    need("uvicorn")
    adds_bos = with_metadata_value(smollm2_gguf, "tokenizer.ggml.add_bos_token", "B", 0, 1,   # SmolLM2 adds no BOS
                                   tmp_path_factory.mktemp("bos_gguf") / "smollm2-adds-bos.gguf")
    with serving(smollm2_gguf) as url, serving(adds_bos) as bos_url:
        yield url, bos_url


def test_the_servers_tokenizer_agrees_on_every_hard_case(smollm2_gguf, served):
    result = parity("tokens", smollm2_gguf, served[0], "--json", "-")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-1000:]
    report = json.loads(result.stdout)
    assert len(report["texts"]) == 17 and report["candidate"].endswith("(POST /extras/tokenize)")


def test_a_served_gguf_that_adds_a_bos_is_named_at_every_text(smollm2_gguf, served):
    result = parity("tokens", smollm2_gguf, served[1], "--json", "-")
    assert result.returncode == 1, result.stderr[-1000:]
    report = json.loads(result.stdout)
    assert report["patterns"] == {"extra_bos": 17}, report["patterns"]


PROMPT = "The capital of France is Paris, and the capital of Italy is"


def checked(smollm2_gguf, url):
    result = parity("check", smollm2_gguf, url, "--prompt", PROMPT, "--server-option", "repeat_penalty=1.0",
                    "--json", "-")
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    return result, json.loads(result.stdout)


def test_a_server_check_says_the_server_tokenizes_its_prompt_as_the_reference(smollm2_gguf, served):
    result, report = checked(smollm2_gguf, served[0])
    assert result.returncode == 0, report["diagnoses"]
    assert "the server tokenizes the prompt as the reference does (13 ids, POST /extras/tokenize)" in report["notes"]


def test_a_server_check_names_the_bos_its_server_adds_first(smollm2_gguf, served):
    result, report = checked(smollm2_gguf, served[1])
    assert result.returncode == 1
    first = report["diagnoses"][0]
    assert first["cause"] == "extra_bos" and "14 ids against 13" in first["message"], report["diagnoses"]
