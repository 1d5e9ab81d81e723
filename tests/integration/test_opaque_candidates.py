"""Candidates parity cannot see inside, as users hand them over: a function of token ids that returns logits
(a numpy port, a binding to a C++ or Rust port) and a model compiled by AOTInductor (`torch._inductor.
aoti_compile_and_package`, loaded by `aoti_load_package`: one native call, no modules, no parameters) wrapped in
a module. Their logits, greedy run and generation are checked; every layer is "not checked", and the verdict
says it covers the logits alone.

Before: a function was refused ("returned function, not a torch.nn.Module"), and the compiled package's wrapper
too ("parity cannot tell where the checkpoints live"); a check that can run did not."""

import shutil

import pytest

from conftest import ROOT, STRICT
from test_cli import TOKEN_ARG, check_json as check

FUNCTIONS = '''import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, {examples!r})
import numpy_llama


def _port(path, dtype, bug=None):
    config, weights = numpy_llama.load(Path(path))
    return lambda ids: numpy_llama.forward(config, weights, np.asarray(ids)[0].tolist(), np.dtype(dtype),
                                           bug)["logits"]           # (T, V)


def float32(path):
    return _port(path, "float32")


def float16(path):
    return _port(path, "float16")


def rope_interleaved(path):
    return _port(path, "float32", "rope_interleaved")


def decoder(path):
    return numpy_llama.decoder(path)             # forward(input_ids, positions=None, cache=None)


def decoder_rope_interleaved(path):
    return numpy_llama.decoder(path, bug="rope_interleaved")


def decoder_positions_ignored(path):
    """A cache kept, but each call's tokens rotated from position 0: the prompt passes, decoding does not."""
    step = numpy_llama.decoder(path)

    def forward(input_ids, positions=None, cache=None):
        return step(input_ids, None, cache)

    forward.parity_dtype = "float32"
    return forward


def padded_vocabulary(path):
    """Its vocabulary padded past the tokenizer's (as nanoGPT and Megatron pad theirs), the padding's logits
    large enough to win any argmax."""
    port = _port(path, "float32")
    return lambda ids: np.pad(port(ids), ((0, 0), (0, 32)), constant_values=50.0)


def narrower_vocabulary(path):
    port = _port(path, "float32")
    return lambda ids: port(ids)[:, :50]


def not_logits(path):
    return lambda ids: "logits"


def bfloat16_with_float32_head(path):
    """A bfloat16 port whose head runs in float32: its logits are float32, not bfloat16 values."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    head = model.lm_head.weight.detach().float()

    def forward(input_ids):
        with torch.no_grad():
            return model.model(input_ids).last_hidden_state.float() @ head.T
    return forward


def bfloat16_with_float32_head_declared(path):
    forward = bfloat16_with_float32_head(path)
    forward.parity_dtype = "bfloat16"
    return forward


def fails_past_four_tokens(path):
    """A binding whose kernel breaks on inputs longer than four tokens (a buffer sized by a window)."""
    port = _port(path, "float32")

    def forward(input_ids):
        if input_ids.shape[1] > 4:
            raise ValueError("buffer to copy is of size 5 but current storage size is 4")
        return port(input_ids)
    return forward


class Compiled(torch.nn.Module):
    """An AOTInductor package as one wraps it to call it: no submodules, its forward one native call."""

    def __init__(self, package):
        super().__init__()
        self.runner = torch._inductor.aoti_load_package(package)

    def forward(self, input_ids):
        return self.runner(input_ids)


def aoti(path):
    return Compiled(str(Path(__file__).with_suffix(".pt2")))      # compiled there by the aoti test's fixture


def aoti_widened(path):
    """Its bfloat16 logits widened to float32, as a binding hands them over."""
    compiled = Compiled(str(Path(__file__).with_suffix(".pt2")))
    return lambda input_ids: compiled(input_ids).float()
'''


def _not_checked(report) -> dict:
    return {item["check"]: item["reason"] for item in report["not_checked"]}


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    path = tmp_path_factory.mktemp("opaque") / "opaque_builds.py"
    path.write_text(FUNCTIONS.format(examples=str(ROOT / "examples")))
    return path


@pytest.fixture(scope="module")
def aoti_package(model_dirs, functions):
    """The tiny Llama in bfloat16, exported with a dynamic length and compiled by AOTInductor (about 20 s)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        if STRICT:
            raise RuntimeError("AOTInductor needs a C++ compiler (c++ or g++)")
        pytest.skip("no C++ compiler for AOTInductor")
    import torch
    import transformers
    from torch.export import Dim

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dirs["llama"], dtype=torch.bfloat16).eval()

    class Logits(torch.nn.Module):     # what is exported: the logits alone, as an inference build returns them
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids, use_cache=False).logits

    ids = torch.tensor([[0, 17, 5, 40, 8, 9, 31, 22, 64, 3]])
    program = torch.export.export(Logits(), (ids,), dynamic_shapes=({1: Dim("T", min=2, max=64)},))
    return torch._inductor.aoti_compile_and_package(program, package_path=str(functions.with_suffix(".pt2")))


def test_a_numpy_port_given_as_a_function_is_checked_on_its_logits(model_dirs, functions, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:float32")
    assert code == 0, report["checkpoints"]
    assert [c["name"] for c in report["checkpoints"]] == ["logits"]      # the reference captured for them alone
    assert not report["missing"]                                         # not "only in the reference" x 50
    reasons = _not_checked(report)
    assert "is a function of token ids" in reasons["layers"] and "docs/trace-format.md" in reasons["layers"]
    assert "parity_dtype" in reasons["calibration"]                      # float32 logits: precision not guessed
    assert "takes no cache" in reasons["decode"] and "takes no attention mask" in reasons["padding"]
    assert report["generation"]["first_divergence"] is None              # greedy, by whole passes
    assert report["candidate"]["producer"].endswith(":float32")


def test_the_verdict_says_it_covers_the_logits_alone(model_dirs, functions):
    from test_cli import parity

    result = parity("check", model_dirs["llama"], f"{functions}:float32", "--tokens", TOKEN_ARG)
    assert result.returncode == 0, result.stderr[-2000:]
    verdict = " ".join(result.stdout.split())
    assert "PASS 1/1 checkpoints within tolerance (the logits alone: its layers could not be seen)" in verdict
    assert "not checked: layers:" in verdict


def test_a_half_precision_function_is_calibrated_at_the_precision_of_its_logits(model_dirs, functions, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:float16")
    assert code == 0, report["checkpoints"]
    assert report["candidate"]["dtype"] == "float16" and report["calibrated"]
    assert "calibration" not in _not_checked(report)


def test_a_planted_bug_behind_a_function_still_fails_at_the_logits(model_dirs, functions, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:rope_interleaved")
    assert code == 1
    assert report["first_divergence"]["checkpoint"] == "logits"


def test_an_aotinductor_package_is_checked_on_its_logits_at_its_precision(model_dirs, functions, aoti_package,
                                                                          capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:aoti")
    assert code == 0, report["checkpoints"]
    assert [c["name"] for c in report["checkpoints"]] == ["logits"]
    assert report["candidate"]["dtype"] == "bfloat16" and report["calibrated"]    # read off its logits
    assert "holds no modules and no parameters" in _not_checked(report)["layers"]
    assert report["generation"]["first_divergence"] is None
    # widened to float32, every value still a bfloat16 (was: held to float32's noise, FAIL, declared_precision)
    code, report = check(capsys, model_dirs["llama"], f"{functions}:aoti_widened")
    assert code == 0 and report["candidate"]["dtype"] == "bfloat16" and report["calibrated"]


def test_a_function_with_its_own_cache_is_decoded_through_it(model_dirs, functions, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:decoder")
    assert code == 0, report["decode"]
    assert report["candidate"]["dtype"] == "float32" and report["calibrated"]     # the parity_dtype it declares
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) == 5
    assert report["decode"]["cache"]["passed"]                                   # its numpy keys read back
    assert report["decode"]["chunked_prefill_rel_l2"] < 1e-5
    assert set(_not_checked(report)) == {"layers", "weights", "replay", "padding"}


def test_a_function_placed_at_far_positions(model_dirs, functions, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:decoder", "--start-position", "100000")
    assert code == 0, report["checkpoints"]
    code, report = check(capsys, model_dirs["llama"], f"{functions}:decoder_rope_interleaved",
                         "--start-position", "100000")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "logits"


def test_a_function_decoding_at_the_wrong_positions_fails_its_decoding(model_dirs, functions, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{functions}:decoder_positions_ignored")
    assert code == 1
    assert report["summary"]["failed"] == 0                  # its whole passes are right
    assert not report["decode"]["passed"] and report["decode"]["first_step"] == 1     # the first token decoded


@pytest.mark.parametrize("spec, args, message", [
    ("not_logits", (), "returned str, not logits"),
    ("float32", ("--checkpoints", "layers.*"), "leaves out the logits"),
    ("float32", ("--replay",), "none can be seen"),
    ("float32", ("--gradients",), "sees none of its parameters"),
    ("float32", ("--on-device",), "holds no parameters to tell it by"),
    ("float32", ("--start-position", "1000"), "take absolute positions"),
])
def test_what_a_function_cannot_give_is_one_line(model_dirs, functions, spec, args, message):
    from test_cli import assert_unusable, parity

    assert_unusable(parity("check", model_dirs["llama"], f"{functions}:{spec}", "--tokens", TOKEN_ARG, *args),
                    message)


def test_a_function_is_benchmarked_with_token_ids_drawn_from_its_logits_width(model_dirs, functions):
    from test_cli import parity

    result = parity("bench", model_dirs["llama"], f"{functions}:float32", "--prompt-tokens", "8",
                    "--decode-tokens", "2", "--repeats", "1", "--warmup", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "precision unknown" in result.stdout and "takes no cache" in result.stdout


def test_the_component_suite_says_a_function_shows_no_components(model_dirs, functions):
    from test_cli import assert_unusable, parity

    assert_unusable(parity("sanity", f"{functions}:float32", "--reference", model_dirs["llama"]),
                    "checks a model's components one by one, and")


def test_a_padded_vocabulary_is_read_through_the_reference_vocabulary(model_dirs, functions, capsys):
    """Its greedy run and generation never pick a padding column (was: argmax over the padding), and a narrower
    vocabulary is "not checked" (was: a traceback, "operands could not be broadcast together")."""
    code, report = check(capsys, model_dirs["llama"], f"{functions}:padded_vocabulary")
    assert code == 0 and report["generation"]["first_divergence"] is None
    assert any("vocab_padding" in note for note in report["notes"])
    from test_cli import parity

    result = parity("generate", model_dirs["llama"], f"{functions}:padded_vocabulary", "--tokens", TOKEN_ARG,
                    "-n", "4")
    assert result.returncode == 0 and "greedy: the 4 tokens are the same" in result.stdout, result.stderr[-2000:]
    code, report = check(capsys, model_dirs["llama"], f"{functions}:narrower_vocabulary")
    assert code == 1 and "50 columns where the reference's vocabulary has 96" in _not_checked(report)["greedy"]


@pytest.mark.parametrize("command, stage", [("check", "the greedy run"), ("generate", "greedy decoding")])
def test_a_function_failing_on_longer_inputs_than_the_prompt_is_one_line(model_dirs, functions, capsys, command,
                                                                         stage):
    """Its forward pass over the prompt runs; the greedy run's longer inputs raise in its code (was: a
    traceback)."""
    from parity.cli import main

    capsys.readouterr()
    code = main([command, str(model_dirs["llama"]), f"{functions}:fails_past_four_tokens", "--tokens", "0,17,5,40"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error.startswith(f"parity: error: the candidate failed on {stage}") and "ValueError: buffer" in error
    assert "opaque_builds.py:" in error                                  # where in the user's code


def test_a_16_bit_function_returning_float32_logits_is_told_which_precision_its_error_fits(model_dirs, functions,
                                                                                        capsys):
    """Held to float32 (its precision is never assumed), it fails; the note measures bfloat16's and float16's
    noise and says that its error is within bfloat16's, and how to declare it; declared, it passes."""
    code, report = check(capsys, model_dirs["llama"], f"{functions}:bfloat16_with_float32_head")
    assert code == 1
    [note] = [note for note in report["notes"] if note.startswith("its error is within 3x the noise that bfloat16")]
    assert 'parity_dtype = "bfloat16"' in note and " and float16" not in note
    code, report = check(capsys, model_dirs["llama"], f"{functions}:bfloat16_with_float32_head_declared")
    assert code == 0 and report["calibrated"], report["checkpoints"]




def test_a_bug_the_size_of_bfloat16_noise_is_not_offered_that_precision(model_dirs, functions, capsys):
    """RoPE rotated in pairs errs as much as bfloat16 rounds at the tiny model's logits, but leaves position 0
    exact, where a bfloat16 computation rounds too."""
    code, report = check(capsys, model_dirs["llama"], f"{functions}:rope_interleaved")
    assert code == 1
    assert any(note.startswith("its error is not what bfloat16, float16 or int8 rounding makes")
               for note in report["notes"]), report["notes"]
