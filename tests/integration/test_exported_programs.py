"""Programs made by torch.export, as users make them: `torch.export.export(model, ...)` with and without
dynamic shapes, its `.module()`, transformers' own ExecuTorch recipe (a static cache held in buffers,
`forward(input_ids, cache_position)`), and a port written from scratch.

Before: an ExportedProgram was refused ("returned ExportedProgram, not a torch.nn.Module") and its `.module()`
ended in a traceback (`eval()` is not supported); a static-shape program ended decoding in a traceback
("Guard failed: input_ids.size()[1] == 10")."""

import pytest

from conftest import ROOT
from test_cli import TOKEN_ARG, check_json as check

BUILDS = '''import sys

import torch
import transformers
from torch.export import Dim

sys.path.insert(0, {examples!r})
import nanogpt_port
import scratch_llama

IDS = torch.tensor([[0, 17, 5, 40, 8, 9, 31, 22, 64, 3]])


def _model(path, **options):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **options).eval()


def dynamic(path):
    return torch.export.export(_model(path), (IDS,), kwargs={{"use_cache": False}},
                               dynamic_shapes=({{1: Dim("T", min=2, max=64)}}, None))


def static_module(path):
    return torch.export.export(_model(path, attn_implementation="eager"), (IDS,),
                               kwargs={{"use_cache": False}}).module()


def executorch_recipe(path):
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model = _model(path)
    model.generation_config.cache_implementation = "static"
    exportable = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=32)
    length = Dim("T", min=1, max=32)
    return exportable.export(input_ids=IDS, dynamic_shapes={{"input_ids": {{1: length}},
                                                            "cache_position": {{0: length}}}})


def nanogpt(path):
    return torch.export.export(nanogpt_port.build(path), (IDS,))


def scratch_rope_interleaved(path):
    model = scratch_llama.rope_interleaved(path)
    program = torch.export.export(model, (IDS,))
    program.parity_taps = model.parity_taps      # the module's own attribute is not exported
    return program
'''


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    path = tmp_path_factory.mktemp("exported") / "exported_builds.py"
    path.write_text(BUILDS.format(examples=str(ROOT / "examples")))
    return path


def _not_checked(report) -> dict:
    return {item["check"]: item["reason"] for item in report["not_checked"]}


def test_an_exported_transformers_model_passes_with_its_attention_read_off_the_graph(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:dynamic", "--weights")
    assert code == 0, [c for c in report["checkpoints"] if c["status"] != "pass"][:3]
    assert report["candidate"]["compiled"] == "exported by torch.export"
    names = {c["name"] for c in report["checkpoints"]}
    assert {"layers.0.q_rope", "layers.0.k_rope", "layers.0.attn_out", "layers.0.mlp_out.weight",
            "embed.weight"} <= names
    assert report["summary"]["failed"] == 0 and report["summary"]["compared"] >= 78
    assert report["generation"]["first_divergence"] is None     # greedy, at lengths it was not given
    assert "batch of 1" in _not_checked(report)["padding"]


def test_a_program_exported_for_one_length_is_checked_at_it_and_says_what_it_cannot(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:static_module")
    assert code == 0 and report["summary"]["failed"] == 0
    assert "layers.0.attn_probs" in {c["name"] for c in report["checkpoints"]}    # eager attention's softmax
    assert "exported for 10 tokens only" in _not_checked(report)["greedy"]
    from parity.cli import main

    capsys.readouterr()
    assert main(["check", str(model_dirs["llama"]), f"{builds}:static_module", "--tokens", "0,17,5"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "takes input_ids of shape (1, 10) and was given (1, 3)" in error and "Traceback" not in error
    # replay feeds a module the reference's input: a program's modules cannot run alone (was: a replay that
    # measured the program's own run again, each op's "own" error the one it inherited)
    assert main(["check", str(model_dirs["llama"]), f"{builds}:static_module", "--tokens", TOKEN_ARG,
                 "--replay"]) == 2
    assert "made by torch.export" in capsys.readouterr().err


def test_transformers_executorch_recipe_decodes_through_its_static_cache(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:executorch_recipe")
    assert code == 0 and report["summary"]["failed"] == 0
    assert report["decode"]["passed"] and len(report["decode"]["rel_l2"]) >= 5
    assert {"layers.0.q_rope", "layers.0.k_rope"} <= {c["name"] for c in report["checkpoints"]}  # out of the cache


def test_a_bug_in_an_exported_port_fails_at_its_place_with_its_cause(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:scratch_rope_interleaved")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    assert "rope_layout" in [d["cause"] for d in report["diagnoses"]]


def test_nanogpt_exported_is_read_in_gpt2s_names(model_dirs, builds, capsys):
    """Given no taps, its fused c_attn is split into q, k and v, as GPT-2's names say; before, it was mapped
    by its structure alone, and q, k, v and qkv were only in the reference."""
    code, report = check(capsys, model_dirs["gpt2"], f"{builds}:nanogpt")
    assert code == 0 and report["summary"]["failed"] == 0
    assert {"layers.0.q", "layers.0.k", "layers.0.qkv", "pos_embed"} <= {c["name"] for c in report["checkpoints"]}
