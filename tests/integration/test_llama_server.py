"""parity check against llama.cpp's own HTTP server, llama-server, serving SmolLM2's GGUF: its /v1/completions
(which does not echo the prompt, and writes its log-probabilities in the chat shape), its /v1/chat/completions with
its own rendering of the prompt (/apply-template), and its /tokenize.

llama-server is a C++ binary that no package here installs: `bash scripts/build_llama_server.sh` builds it from
the llama-cpp-python sdist the set-up keeps (7.5 minutes on 2 cores) into the cache, and these tests run where
PARITY_LLAMA_SERVER names it (not in `make test`, whose time they would add to: 110 s); elsewhere they are
skipped, and the same answers are tested on loopback stand-ins written from its source (tests/capture/server/test_openai_server.py, test_template.py)."""

import json
import os
from pathlib import Path

import pytest

from test_cli import parity

PROMPT = "The capital of France is Paris, and the capital of Italy is"
BINARY = os.environ.get("PARITY_LLAMA_SERVER")

pytestmark = pytest.mark.skipif(not BINARY, reason="PARITY_LLAMA_SERVER names no llama-server binary (bash "
                                                   "scripts/build_llama_server.sh builds one)")


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf):
    """llama-server's URL serving SmolLM2's GGUF with its own template, and with its built-in ChatML
    (--chat-template chatml: no system message where SmolLM2's template writes its default one)."""
    from llama_servers import free_port, started

    def serve(*flags):
        port = free_port()
        command = [str(Path(BINARY).expanduser()), "-m", str(smollm2_gguf), "--host", "127.0.0.1", "--port",
                   str(port), "-c", "512", *flags]
        return started(command, f"http://127.0.0.1:{port}", ready="/health")

    with serve() as url, serve("--chat-template", "chatml") as chatml_url:
        yield url, chatml_url


def checked(model, url):
    result = parity("check", model, url, "--prompt", PROMPT, "-n", "12", "--json", "-")
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    return result, json.loads(result.stdout)


def test_its_completion_not_echoed_agrees_and_it_tokenizes_as_the_reference(smollm2_gguf, llama_server):
    result, report = checked(smollm2_gguf, llama_server[0])
    assert result.returncode == 0, report["diagnoses"]
    assert report["summary"]["compared"] == 12 and report["summary"]["unaligned"] == 0
    assert any(note.startswith("the server did not echo the prompt") for note in report["notes"])
    assert "the server tokenizes the prompt as the reference does (13 ids, POST /tokenize)" in report["notes"]


def test_its_chat_answer_agrees_after_the_same_rendering(smollm2_gguf, llama_server):
    result, report = checked(smollm2_gguf, f"{llama_server[0]}/v1/chat/completions")
    assert result.returncode == 0, report["diagnoses"]
    assert any(note.startswith("the server renders the prompt as the reference's chat template does")
               for note in report["notes"])


def test_its_chatml_rendering_is_named_where_it_parts_from_the_models_template(smollm2_gguf, llama_server):
    result, report = checked(smollm2_gguf, f"{llama_server[1]}/v1/chat/completions")
    assert result.returncode == 1
    first = report["diagnoses"][0]
    assert (first["cause"], first["confidence"]) == ("chat_template", "confirmed"), report["diagnoses"]
    assert "at character 12 it writes 'user\\nThe capital of Fran' where the template writes 'system\\nYou are " \
           "a helpful'" in first["message"]
