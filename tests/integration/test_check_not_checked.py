"""parity check never passes silently: what it could not run is listed with the reason, decoding is
found by trying, and the inputs it cannot use are refused up front in one line.

The command runs in this process (parity.cli.main, output captured), which saves each test the
seconds a fresh interpreter spends importing torch and transformers.
"""

import json

import pytest

from test_cli import TOKEN_ARG

pytest.importorskip("transformers")

PORTS = '''import transformers


class KwargsLlama(transformers.LlamaForCausalLM):
    """A patched model as users write them: forward(input_ids, **kwargs), everything passed through."""

    def forward(self, input_ids, **kwargs):
        return super().forward(input_ids=input_ids, **kwargs)


class LogitsOnly(transformers.LlamaForCausalLM):
    """Takes **kwargs but returns logits alone: no cache to decode with."""

    def forward(self, input_ids, **kwargs):
        return super().forward(input_ids=input_ids).logits


def wrapped(path):
    return KwargsLlama.from_pretrained(path, attn_implementation="eager").eval()


def logits_only(path):
    return LogitsOnly.from_pretrained(path, attn_implementation="eager").eval()


def chatty(path):
    print("hello from the factory")
    return wrapped(path)


def plain(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def negated_head(path):
    model = plain(path)
    model.lm_head.weight.data.neg_()
    return model
'''


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    path = tmp_path_factory.mktemp("ports") / "wrappers.py"
    path.write_text(PORTS)
    return path


@pytest.fixture(scope="module")
def untokenized(tmp_path_factory):
    """Model directories without tokenizer files, as tiny test models and converted checkpoints often are."""
    import tiny_models

    base = tmp_path_factory.mktemp("untokenized")
    return {family: tiny_models.save(family, base / family) for family in ("llama", "gpt2")}


def parity(capsys, *args):
    """(exit code, stdout, stderr) of `parity ARGS`."""
    from parity.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys, *args):
    code, out, err = parity(capsys, "check", *args, "--json", "-")
    assert code in (0, 1), err
    return code, json.loads(out)


def assert_unusable(result, message):
    code, _, err = result
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("parity: error: ") and message in last, err


def not_checked(report):
    return {item["check"]: item["reason"] for item in report["not_checked"]}


def test_a_wrapper_taking_kwargs_is_decode_checked(model_dirs, ports, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{ports}:wrapped", "--tokens", TOKEN_ARG)
    assert code == 0, report
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5 and report["decode"]["cache"]["passed"]
    assert report["generation"]["first_divergence"] is None
    skipped = not_checked(report)
    assert "decode" not in skipped and "kv_cache" not in skipped and "greedy" not in skipped
    assert "**kwargs" in skipped["padding"]                      # a mask through **kwargs may be dropped: said so
    assert skipped["replay"].startswith("not asked for") and skipped["weights"].startswith("not asked for")


def test_a_model_without_a_cache_is_reported_not_decode_checked_with_the_reason(model_dirs, ports, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{ports}:logits_only", "--tokens", TOKEN_ARG)
    assert code == 0 and report["decode"] is None
    assert report["generation"] is not None                        # greedy needs only logits: it ran
    skipped = not_checked(report)
    assert skipped["decode"] == skipped["kv_cache"] == skipped["chunked_prefill"]
    assert "returned no cache" in skipped["decode"]


def test_console_lists_what_was_not_checked(model_dirs, ports, capsys):
    code, out, err = parity(capsys, "check", model_dirs["llama"], f"{ports}:logits_only", "--tokens", TOKEN_ARG,
                            "--decode-steps", "0")
    assert code == 0, err
    assert "not checked: greedy, decode, KV cache, chunked prefill, padded batches: --decode-steps 0" in out


def test_a_trace_candidate_says_why_decoding_was_not_checked(model_dirs, tmp_path, capsys):
    trace = tmp_path / "candidate.safetensors"
    assert parity(capsys, "capture", model_dirs["llama"], "--tokens", TOKEN_ARG, "-o", trace)[0] == 0
    code, report = check(capsys, model_dirs["llama"], trace, "--tokens", TOKEN_ARG)
    assert code == 0 and report["decode"] is None and report["generation"] is None
    assert "one forward pass" in not_checked(report)["decode"] and "greedy" in not_checked(report)


def test_no_tokenizer_does_not_stop_a_run_given_token_ids(untokenized, ports, capsys):
    code, report = check(capsys, untokenized["llama"], f"{ports}:wrapped", "--tokens", TOKEN_ARG)
    assert code == 0 and report["decode"]["passed"] and report["generation"]["first_divergence"] is None
    assert report["generation"]["candidate_tokens"] == report["generation"]["reference_tokens"]


def test_a_tokenizer_whose_package_is_missing_does_not_stop_a_run_given_token_ids(model_dirs, ports, tmp_path,
                                                                                  capsys):
    # transformers raises ImportError for a tokenizer class whose package is not installed (BioGPT's needs
    # sacremoses): with token ids given, the run went on to decoding and ended in a traceback
    import shutil

    pytest.importorskip("transformers")
    if __import__("importlib").util.find_spec("sacremoses") is not None:
        pytest.skip("sacremoses is installed: BioGptTokenizer loads")
    model = shutil.copytree(model_dirs["llama"], tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    (model / "tokenizer_config.json").write_text('{"tokenizer_class": "BioGptTokenizer"}')
    (model / "vocab.json").write_text('{"a": 0, "b": 1}')
    (model / "merges.txt").write_text("#version\na b\n")
    code, report = check(capsys, model, f"{ports}:wrapped", "--tokens", TOKEN_ARG)
    assert code == 0 and report["decode"]["passed"] and report["generation"]["first_divergence"] is None
    prompted = parity(capsys, "check", model, f"{ports}:wrapped", "--prompt", "w1 w2")
    assert_unusable(prompted, "no usable tokenizer (You need to install sacremoses")


def test_generate_without_a_tokenizer_shows_token_ids(untokenized, ports, capsys):
    code, out, err = parity(capsys, "generate", untokenized["llama"], f"{ports}:negated_head", "--tokens", TOKEN_ARG,
                            "-n", "4")
    assert code == 1 and "Traceback" not in err, err
    assert "greedy: first different token at step 0: reference '<" in out


@pytest.mark.parametrize("family, what", [("llama", "no usable tokenizer"), ("gpt2", "its tokenizer is empty")])
def test_a_prompt_on_a_model_without_a_tokenizer_is_refused_up_front(untokenized, ports, family, what, capsys):
    result = parity(capsys, "check", untokenized[family], f"{ports}:wrapped", "--prompt", "w1 w2")
    assert_unusable(result, what)
    assert "--tokens" in result[2] and "building the candidate" not in result[2]


def test_a_factory_that_prints_leaves_json_on_stdout(model_dirs, ports, capsys):
    code, out, err = parity(capsys, "check", model_dirs["llama"], f"{ports}:chatty", "--tokens", TOKEN_ARG,
                            "--decode-steps", "0", "--json", "-")
    assert code == 0, err
    assert json.loads(out)["verdict"] == "pass" and "hello from the factory" in err


@pytest.mark.parametrize("family, field", [("gpt2", "n_positions = 128"), ("llama", "max_position_embeddings = 128")])
def test_a_prompt_longer_than_the_model_takes_is_refused_naming_the_limit(model_dirs, ports, family, field, capsys):
    tokens = ",".join(["5"] * 130)
    result = parity(capsys, "check", model_dirs[family], f"{ports}:plain", "--tokens", tokens)
    assert_unusable(result, field)
    assert "the prompt is 130 tokens" in result[2] and "capturing" not in result[2]
    with_decoding = parity(capsys, "check", model_dirs[family], f"{ports}:plain", "--tokens", ",".join(["5"] * 126))
    assert_unusable(with_decoding, "the prompt (126 tokens) with --decode-steps 4 is 130 tokens")
