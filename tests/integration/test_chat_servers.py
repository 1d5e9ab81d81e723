"""parity check against chat endpoints (/v1/chat/completions: the server renders the prompt with its own template
and echoes none): llama-cpp-python's server serving SmolLM2's GGUF, and mistral.rs (a Rust engine, its Python
SDK served on loopback by examples/mistralrs_server.py) on SmolLM2 saved as a model directory."""

import json
import sys
from pathlib import Path

import pytest

from conftest import need
from test_cli import parity

PROMPT = "The capital of France is Paris, and the capital of Italy is"
ROOT = Path(__file__).resolve().parents[2]


def checked(capsys, model, url, *flags):
    """(exit code, JSON report) of `parity check MODEL URL --prompt PROMPT -n 12`, run in this process (no
    interpreter importing torch per check)."""
    from parity.cli import main

    capsys.readouterr()
    code = main(["check", str(model), url, "--prompt", PROMPT, "-n", "12", "--json", "-", *flags])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def llama_chat(smollm2_gguf):
    """The chat endpoints of llama-cpp-python's server on SmolLM2's GGUF: with the GGUF's own template, and with
    its built-in ChatML (--chat_format chatml), which writes an empty system message where the template writes
    SmolLM2's default one."""
    from llama_servers import serving

    need("llama_cpp")
    need("uvicorn")
    with serving(smollm2_gguf) as url, serving(smollm2_gguf, flags=("--chat_format", "chatml")) as chatml_url:
        yield f"{url}/v1/chat/completions", f"{chatml_url}/v1/chat/completions"


def test_the_servers_chat_answer_agrees_after_the_models_own_template(capsys, smollm2_gguf, llama_chat):
    code, report = checked(capsys, smollm2_gguf, llama_chat[0], "--server-option", "repeat_penalty=1.0")
    assert code == 0, report["diagnoses"]
    assert report["headline"].startswith("prompt: not compared (not echoed); greedy continuation: ")
    assert report["summary"]["compared"] == 12 and report["summary"]["unaligned"] == 0
    assert any(note.startswith("a chat answer: its 12 generated tokens") for note in report["notes"])


def test_a_server_on_another_chat_template_is_named_from_its_first_token(capsys, smollm2_gguf, llama_chat):
    """Before chat endpoints were read its answer could not be checked; scored with a near tie read as any flip
    where the reference's top two are close, it passed."""
    code, report = checked(capsys, smollm2_gguf, llama_chat[1], "--server-option", "repeat_penalty=1.0")
    assert code == 1
    assert report["first_divergence"]["position"] == 0
    first = report["diagnoses"][0]
    assert (first["cause"], first["confidence"]) == ("chat_template", "confirmed"), report["diagnoses"]
    assert "the model's template with an empty system message" in first["message"]


@pytest.fixture(scope="module")
def mistral_rs_dirs(smollm2_reference, smollm2_model_dir, tmp_path_factory):
    """SmolLM2 as a model directory mistral.rs reads (its tokenizer beside it, and RoPE's base written as
    `rope_theta`: mistral.rs 0.9.5 refuses a config.json without it, as transformers 5 writes it), and the same
    with `rope_theta` 10000, as a converter that did not find the base writes it."""
    need("mistralrs")
    directories = {}
    for name, rope_theta in (("as_is", None), ("rope_10000", 10000.0)):
        directory = tmp_path_factory.mktemp(f"mistralrs_{name}")
        for path in smollm2_model_dir.iterdir():
            if path.name != "config.json":
                (directory / path.name).symlink_to(path)
        smollm2_reference.tokenizer.save_pretrained(directory)
        config = json.loads((smollm2_model_dir / "config.json").read_text())
        config["rope_theta"] = rope_theta or config["rope_parameters"]["rope_theta"]
        (directory / "config.json").write_text(json.dumps(config))
        directories[name] = directory
    return directories


@pytest.fixture(scope="module")
def mistral_rs(mistral_rs_dirs):
    from llama_servers import free_port, started

    def serve(directory):
        port = free_port()
        command = [sys.executable, str(ROOT / "examples" / "mistralrs_server.py"), str(directory), "--port", str(port)]
        return started(command, f"http://127.0.0.1:{port}")

    with serve(mistral_rs_dirs["as_is"]) as url, serve(mistral_rs_dirs["rope_10000"]) as rope_url:
        yield url, rope_url


def test_mistral_rs_answers_as_the_reference_does(capsys, mistral_rs_dirs, mistral_rs):
    code, report = checked(capsys, mistral_rs_dirs["as_is"], f"{mistral_rs[0]}/v1/chat/completions")
    assert code == 0, report["diagnoses"]
    assert report["summary"]["compared"] == 12 and report["summary"]["mean_kl_topk"] < 1e-3


def test_a_system_message_is_sent_and_rendered_on_both_sides(capsys, mistral_rs_dirs, mistral_rs):
    """--system: mistral.rs renders it with its own reading of the template (minijinja), the reference with
    transformers'; SmolLM2's template writes its default system message only where none is sent."""
    code, report = checked(capsys, mistral_rs_dirs["as_is"], f"{mistral_rs[0]}/v1/chat/completions",
                           "--system", "You answer with one word.")
    assert code == 0, report["diagnoses"]
    assert report["summary"]["compared"] >= 2 and report["summary"]["mean_kl_topk"] < 1e-3


def test_mistral_rs_reading_the_rope_base_otherwise_is_named(capsys, mistral_rs_dirs, mistral_rs):
    code, report = checked(capsys, mistral_rs_dirs["as_is"], f"{mistral_rs[1]}/v1/chat/completions")
    assert code == 1
    first = report["diagnoses"][0]
    assert (first["cause"], first["confidence"]) == ("rope_theta", "confirmed"), report["diagnoses"]


def test_a_server_that_answers_chat_alone_is_told_where_to_be_checked(mistral_rs_dirs, mistral_rs):
    result = parity("check", mistral_rs_dirs["as_is"], mistral_rs[0], "--prompt", PROMPT, "-n", "4")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("parity: error: ") and "Traceback" not in result.stderr
    assert "HTTP 404" in lines[-1] and f"give {mistral_rs[0]}/v1/chat/completions as the candidate" in lines[-1]

