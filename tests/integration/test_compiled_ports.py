"""Modules compiled by torch.compile, as users compile them: `torch.compile(model)`, with fullgraph=True, and
`module.compile()` on its blocks. Inside a compiled graph parity's hooks only keep their tensors; the graph
is guarded on them, and parity's many calls (prefill, steps, chunks, padded batches) may each compile.

Before: fullgraph=True was refused ("the forward pass of OptimizedModule failed: ... is_inference()"); the
wrapper's `(*args, **kwargs)` forward left padded batches unchecked and its `_orig_mod.` paths kept its raw
modules from being compared; a hooked pass after a plain call at the same shape recorded nothing."""

import pytest

from conftest import ROOT
from test_cli import check_json as check

BUILDS = '''import sys

import torch
import transformers

sys.path.insert(0, {examples!r})
import scratch_llama


def transformers_fullgraph(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return torch.compile(model, fullgraph=True)


def scratch_rope_interleaved(path):
    return torch.compile(scratch_llama.rope_interleaved(path), fullgraph=True)


def scratch_blocks_compiled(path):
    model = scratch_llama.build(path)
    for block in model.blocks:
        block.compile(fullgraph=True)
    return model
'''


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "compiled_builds.py"
    path.write_text(BUILDS.format(examples=str(ROOT / "examples")))
    return path


def test_a_transformers_model_compiled_with_fullgraph_passes_with_every_check(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:transformers_fullgraph")
    assert code == 0, [c for c in report["checkpoints"] if c["status"] != "pass"][:3]
    assert report["summary"]["failed"] == 0 and report["summary"]["compared"] >= 48
    assert report["candidate"]["compiled"] == "compiled by torch.compile"
    assert report["decode"]["passed"]
    assert set(report["decode"]["batch_rel_l2"]) == {"left", "right"}   # read from its own forward's signature
    assert not any(item["check"] == "padded batches" for item in report["not_checked"])
    raw = [c for c in report["checkpoints"] if c["name"].startswith("raw.")]
    assert raw and all(c["status"] == "pass" for c in raw)   # paths without `_orig_mod.`


def test_a_bug_in_a_compiled_port_fails_at_its_place_with_its_cause(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:scratch_rope_interleaved")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    assert "rope_layout" in [d["cause"] for d in report["diagnoses"]]
    assert report["summary"]["compared"] == 51


def test_a_port_whose_blocks_are_compiled_in_place_passes(model_dirs, builds, capsys):
    code, report = check(capsys, model_dirs["llama"], f"{builds}:scratch_blocks_compiled", "--decode-steps", "2")
    assert code == 0 and report["summary"]["compared"] == 51 and report["summary"]["failed"] == 0
    assert report["decode"]["passed"]
