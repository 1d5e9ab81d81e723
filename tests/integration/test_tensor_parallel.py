"""A tensor-parallel port on two processes through torch.distributed (gloo on CPU), as a user runs it.

The example TP=2 Llama (examples/tp_llama.py) passes `parity check --nproc 2` against the tiny Llama;
each TP bug it plants is localized to its checkpoint and rank, before or in its collective, with its
cause; rank traces written elsewhere merge and compare from the CLI; a rank that crashes or hangs, a
layout that does not fit, a missing rank file are each one line and exit 2.
"""

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch.distributed")

import shard_cases  # noqa: E402
import tiny_models  # noqa: E402
from conftest import ROOT, TOKENS  # noqa: E402
from parity.core.trace import save_trace  # noqa: E402

PORT = ROOT / "examples" / "tp_llama.py"
TOKEN_ARG = ",".join(map(str, TOKENS))


@pytest.fixture(autouse=True)
def gloo(monkeypatch):
    """gloo on the CPU, even where there are GPUs."""
    monkeypatch.setenv("PARITY_DIST_BACKEND", "gloo")


def run(capsys, *args):
    """`parity ARGS` in this process (the rank processes' server, once started, serves every test)."""
    from parity.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys, model_dir, factory, *args):
    code, out, err = run(capsys, "check", model_dir, f"{PORT}:{factory}", "--nproc", "2", "--tokens", TOKEN_ARG,
                         "--json", "-", *args)
    return code, (json.loads(out) if code in (0, 1) else None), err


def one_line_error(code, err, says):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("parity: error: ") and says in lines[-1] and "Traceback" not in err, err


@pytest.fixture(scope="module")
def bias_model(tmp_path_factory):
    """The tiny Llama with attention biases: o_proj, a row-parallel layer, has one."""
    directory = tmp_path_factory.mktemp("llama_bias")
    tiny_models.save("llama", directory, attention_bias=True)
    return directory


def test_tensor_parallel_example_passes_check_on_two_processes(model_dirs, capsys):
    code, report, _ = check(capsys, model_dirs["llama"], "build")
    assert code == 0, [c for c in report["checkpoints"] if c["status"] != "pass"][:3]
    assert report["summary"]["compared"] == 51 and report["summary"]["failed"] == 0 and report["calibrated"]
    assert report["generation"]["first_divergence"] is None                 # greedy through the ranks' logits
    assert report["candidate"]["tensor_parallel"]["world_size"] == 2
    assert not any(note.startswith("tensor parallel") for note in report["notes"])


# factory -> (first divergence, where on the ranks, the cause, words of its evidence)
BUGS = {
    "all_reduce_missing": ("layers.0.attn_out", "in the all-reduce, on ranks 0, 1", "all_reduce_missing",
                           "the candidate's layers.0.attn_out on each rank equals that rank's partial alone"),
    "all_reduce_twice": ("layers.0.mlp_out", "in the all-reduce, on ranks 0, 1", "all_reduce_doubled",
                         "is 2 times the reference, the number of ranks"),
    "gather_reversed": ("logits", "in the all-gather, on ranks 0, 1", "gather_order",
                        "holds the reference's slices in the order of ranks 1, 0"),
    "bias_every_rank": ("layers.0.attn_out", "before the all-reduce, on ranks 0, 1", "row_parallel_bias",
                        "which equals layers.0.attn_out.bias"),
    "kv_heads_uneven": ("layers.0.k", "on rank 0 itself", "uneven_heads",
                        "rank 0 holds 2 (heads 0, 1), rank 1 holds 1 (head 1)"),
    "vocab_mask_inside": ("embed", "before the all-reduce, on ranks 0, 1", "vocab_mask",
                          "rank 0 (ids 0..47) zeroes the rows of 9 tokens in its own range"),
}


@pytest.mark.parametrize("factory", BUGS)
def test_tensor_parallel_each_planted_bug_is_named_at_its_checkpoint_and_rank(model_dirs, bias_model, factory,
                                                                              capsys):
    checkpoint, where, cause, evidence = BUGS[factory]
    bias = factory == "bias_every_rank"
    code, report, _ = check(capsys, bias_model if bias else model_dirs["llama"], factory, "--decode-steps", "0",
                            *(["--weights"] if bias else []))
    assert code == 1 and report["first_divergence"]["checkpoint"] == checkpoint
    causes = {d["cause"]: d for d in report["diagnoses"]}
    assert cause in causes and causes[cause]["checkpoint"] == checkpoint and evidence in causes[cause]["message"], \
        report["diagnoses"]
    assert len(causes) == 1, report["diagnoses"]                              # nothing else is blamed
    note = next(note for note in report["notes"] if note.startswith("tensor parallel over 2 ranks"))
    assert f"{checkpoint} first parts from the reference {where}" in note, note


def test_tensor_parallel_a_rank_that_crashes_is_one_line_naming_it(model_dirs, capsys):
    code, _, err = check(capsys, model_dirs["llama"], "crash_on_rank_1")
    one_line_error(code, err, "rank 1 of 2 failed tracing the forward pass over 10 tokens: the forward pass failed: "
                              "RuntimeError: rank 1 lost its shard (at ")
    assert "tp_llama.py:" in err


def test_tensor_parallel_a_rank_that_hangs_stops_at_the_timeout(model_dirs, capsys):
    started = time.monotonic()
    code, _, err = check(capsys, model_dirs["llama"], "stall_on_rank_1", "--timeout", "6")
    one_line_error(code, err, "did not finish tracing the forward pass over 10 tokens within 6 s")
    assert time.monotonic() - started < 60


def test_tensor_parallel_a_port_without_a_layout_or_one_that_does_not_fit_is_refused(model_dirs, capsys, tmp_path):
    port = tmp_path / "ports.py"
    port.write_text(
        f"import sys\nsys.path.insert(0, {str(PORT.parent)!r})\nimport tp_llama\n\n"
        "def no_layout(path):\n"
        "    model = tp_llama.build(path)\n"
        "    model.parity_shards = None\n"
        "    return model\n\n"
        "def misfit(path):   # k declared whole on every rank, while rank 0 holds two heads and rank 1 one\n"
        "    model = tp_llama.build(path, tp_llama.Bugs(kv_split='uneven'))\n"
        "    model.parity_shards = {**tp_llama.TensorParallelLlama.parity_shards, 'layers.{i}.k': 'replicated'}\n"
        "    return model\n")
    code, _, err = run(capsys, "check", model_dirs["llama"], f"{port}:no_layout", "--nproc", "2", "--tokens", TOKEN_ARG)
    one_line_error(code, err, "declares no `parity_shards`, so its ranks' checkpoints cannot be merged")
    code, _, err = run(capsys, "check", model_dirs["llama"], f"{port}:misfit", "--nproc", "2", "--tokens", TOKEN_ARG)
    one_line_error(code, err, "layers.0.k is declared replicated but the ranks hold other shapes (rank 0 [10, 32], "
                              "rank 1 [10, 16])")
    code, _, err = run(capsys, "check", model_dirs["llama"], model_dirs["llama"], "--nproc", "2", "--tokens", TOKEN_ARG)
    one_line_error(code, err, "--nproc runs a port's FILE.py:FACTORY")


@pytest.fixture(scope="module")
def rank_files(reference_traces, tmp_path_factory):
    """The reference trace, and rank traces of a right TP=2 run and of one with uneven KV heads, saved."""
    folder = tmp_path_factory.mktemp("ranks")
    reference = save_trace(reference_traces["llama"], folder / "reference.safetensors")
    ranks = shard_cases.rank_traces(reference_traces["llama"])
    right = shard_cases.save_ranks(ranks, folder)
    uneven = shard_cases.save_ranks(shard_cases.plant(ranks, "uneven_heads"), folder, stem="uneven")
    return reference, right, uneven


def test_tensor_parallel_rank_files_compare_from_the_command_line(rank_files, tmp_path):
    reference, right, _ = rank_files
    result = subprocess.run([sys.executable, "-m", "parity", "compare", str(reference), *map(str, reversed(right)),
                             "--json", str(tmp_path / "report.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  51/51" in result.stdout
    assert json.loads((tmp_path / "report.json").read_text())["candidate"]["tensor_parallel"]["world_size"] == 2


def test_tensor_parallel_a_diverging_rank_file_is_named_and_a_manifest_merges_alike(rank_files, model_dirs, capsys):
    reference, right, uneven = rank_files
    code, out, _ = run(capsys, "compare", reference, *uneven, "--json", "-")
    report = json.loads(out)
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.k"
    assert [d["cause"] for d in report["diagnoses"]] == ["uneven_heads"]
    manifest = right[0].parent / "shards.json"
    manifest.write_text(json.dumps({"format": "parity-shards/1", "ranks": [path.name for path in right],
                                    "layout": shard_cases.LAYOUT}))
    code, out, _ = run(capsys, "compare", reference, manifest)
    assert code == 0 and "PASS  51/51" in out


def test_tensor_parallel_bad_rank_files_are_one_line(rank_files, capsys, tmp_path):
    reference, right, _ = rank_files
    code, _, err = run(capsys, "compare", reference, right[0])
    one_line_error(code, err, "declares 2 ranks (shards.world_size) but 1 rank trace was given: rank 1 missing")
    code, _, err = run(capsys, "compare", reference, right[0], tmp_path / "rank1.safetensors")
    one_line_error(code, err, "rank trace 2 of 2: ")
    reference, _, uneven = rank_files
    manifest = uneven[0].parent / "misfit.json"   # k declared whole on every rank: rank 0 holds 2 heads, rank 1 one
    manifest.write_text(json.dumps({"format": "parity-shards/1", "ranks": [path.name for path in uneven],
                                    "layout": {**shard_cases.LAYOUT, "layers.{i}.k": "replicated"}}))
    code, _, err = run(capsys, "compare", reference, manifest)
    one_line_error(code, err, "layers.0.k is declared replicated but the ranks hold other shapes (rank 0 [10, 32], "
                              "rank 1 [10, 16])")
    manifest.write_text(json.dumps({"format": "parity-shards/1", "ranks": [str(path) for path in uneven]}))
    code, _, err = run(capsys, "compare", reference, manifest)
    one_line_error(code, err, "lies outside the manifest's folder")
