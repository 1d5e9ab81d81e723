"""Tensor-parallel traces without processes: the shard layout, the merge of rank traces, and the per-rank
comparison that names the rank and the collective; each TP bug, planted in rank traces made from a
reference, localized with its cause."""

import json

import numpy as np
import pytest

import shard_cases
from parity.core.compare import compare
from parity.core.errors import OptionError, TraceError
from parity.core.shards import ShardLayout, compare_shards, load_sharded, merge_ranks, parse_shard
from parity.core.trace import make_trace, save_trace


def test_tensor_parallel_layout_reads_each_kind_and_refuses_anything_else():
    assert [str(parse_shard(v, "x")) for v in ("replicated", "split:heads", "split:-1", "partial", "partial:vocab")] \
        == ["replicated", "split:heads", "split:-1", "partial", "partial:vocab"]
    for bad in ("split", "split:rows", "partial:heads", "sum", 3):
        with pytest.raises(OptionError, match="replicated, split:heads"):
            parse_shard(bad, "port.py, 'layers.{i}.q'")
    with pytest.raises(OptionError, match="not an object of checkpoint -> layout"):
        ShardLayout.parse(["split:heads"])


def test_tensor_parallel_layout_takes_a_name_then_patterns_in_order_and_parameters_follow_their_module():
    layout = ShardLayout.parse(shard_cases.LAYOUT)
    assert str(layout.of("layers.7.q")) == "split:heads" and str(layout.of("layers.7.out")) == "replicated"
    assert str(layout.of("local.layers.2.attn_out")) == "partial"
    # a column-parallel weight: rows; a row-parallel one: columns and the whole bias; a vocab-parallel table: rows
    assert [str(layout.of(name)) for name in ("layers.0.q.weight", "layers.0.q.bias", "layers.0.attn_out.weight",
                                              "layers.0.attn_out.bias", "embed.weight", "logits.weight",
                                              "layers.0.attn_norm.weight")] \
        == ["split:0", "split:0", "split:1", "replicated", "split:0", "split:0", "replicated"]
    with pytest.raises(OptionError, match=r"no shard layout for layers.3.q; declare it \(e.g. \"layers.\{i\}.q\""):
        ShardLayout.parse({"embed": "replicated"}, where="port.py").of("layers.3.q")


def _rank(rank, tensors, layout, world_size=2, tokens=(1, 60, 2)):
    return make_trace(tensors, {"tokens": list(tokens), "shards": {"rank": rank, "world_size": world_size,
                                                                   "layout": layout}})


def test_tensor_parallel_merge_concatenates_sums_and_keeps_by_the_layout_in_rank_order():
    layout = {"layers.0.q": "split:heads", "layers.0.attn_probs": "split:heads", "local.layers.0.attn_out": "partial",
              "*": "replicated"}
    q, probs, partial, out = (np.arange(24.0).reshape(3, 8), np.arange(36.0).reshape(4, 3, 3),
                              np.ones((3, 4)), np.full((3, 4), 2.0))
    tensors = [{"layers.0.q": q[:, 4 * r:4 * (r + 1)], "layers.0.attn_probs": probs[2 * r:2 * (r + 1)],
                "local.layers.0.attn_out": partial * (r + 1), "layers.0.attn_out": out} for r in range(2)]
    sharded = merge_ranks([_rank(1, tensors[1], layout), _rank(0, tensors[0], layout)])   # given out of order
    assert sharded.tensors.shape_of("layers.0.q") == (3, 8)                                  # from the headers
    np.testing.assert_array_equal(sharded["layers.0.q"], q)
    np.testing.assert_array_equal(sharded["layers.0.attn_probs"], probs)
    np.testing.assert_array_equal(sharded.local["layers.0.attn_out"], 3 * partial)
    np.testing.assert_array_equal(sharded["layers.0.attn_out"], out)
    assert "local.layers.0.attn_out" not in sharded.tensors and sharded.world_size == 2
    assert sharded.metadata["tensor_parallel"]["world_size"] == 2 and "shards" not in sharded.metadata


@pytest.mark.parametrize("case, says", [
    ("missing", "declares 2 ranks (shards.world_size) but 1 rank trace was given: rank 1 missing"),
    ("twice", "both declare rank 0"),
    ("misfit", "layers.0.attn_out is declared replicated but the ranks hold other shapes (rank 0 [3, 4], "
               "rank 1 [3, 2])"),
    ("off_axis", "declared split:heads (axis 1) but the ranks' tensors differ on axis 0 too"),
    ("tokens", "ran other tokens than"),
    ("names", "lacks layers.0.q: every rank records the same checkpoints"),
    ("no_layout", "no shard layout is declared"),
])
def test_tensor_parallel_rank_traces_that_are_not_one_run_are_refused_saying_why(case, says):
    layout = {"layers.0.q": "split:heads", "*": "replicated"}
    first = {"layers.0.q": np.ones((3, 4)), "layers.0.attn_out": np.ones((3, 4))}
    second = dict(first)
    ranks = (0, 1)
    tokens = [(1, 60, 2), (1, 60, 2)]
    if case == "misfit":
        second["layers.0.attn_out"] = np.ones((3, 2))
    if case == "off_axis":
        second["layers.0.q"] = np.ones((2, 4))
    if case == "tokens":
        tokens[1] = (1, 2, 3)
    if case == "names":
        del second["layers.0.q"]
    if case == "twice":
        ranks = (0, 0)
    traces = [_rank(ranks[0], first, layout, tokens=tokens[0]), _rank(ranks[1], second, layout, tokens=tokens[1])]
    if case == "missing":
        traces = traces[:1]
    if case == "no_layout":
        traces = [make_trace(first), make_trace(second)]
    with pytest.raises((TraceError, OptionError), match=says.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        merge_ranks(traces, where=["rank0.safetensors", "rank1.safetensors"][:len(traces)])


def test_tensor_parallel_shards_of_a_right_run_pass_on_every_rank(reference_traces):
    reference = reference_traces["llama"]
    sharded = merge_ranks(shard_cases.rank_traces(reference))
    comparison = compare(reference, sharded)
    shards = compare_shards(reference, sharded, comparison)
    assert comparison and shards, shards
    q = shards.result("layers.0.k")
    assert [rank.part for rank in q.ranks] == ["head 0 of 2", "head 1 of 2"]
    embed = shards.result("local.embed")
    assert embed.ranks[1].part == "the rows of its tokens (vocab 48..95), zeros elsewhere" and all(embed.ranks)
    partial = shards.result("local.layers.0.attn_out")
    assert partial.merged and [rank.result.status for rank in partial.ranks] == ["not_comparable"] * 2


# bug -> (first divergence, its ranks, the stage, the cause, words of the cause's evidence)
BUGS = {
    "all_reduce_missing": ("layers.0.attn_out", (0, 1), "in the all-reduce", "all_reduce_missing",
                           "equals that rank's partial alone"),
    "all_reduce_doubled": ("layers.0.mlp_out", (0, 1), "in the all-reduce", "all_reduce_doubled",
                           "is 2 times the reference, the number of ranks"),
    "gather_order": ("logits", (0, 1), "in the all-gather", "gather_order", "in the order of ranks 1, 0"),
    "row_parallel_bias": ("layers.0.attn_out", (0, 1), "before the all-reduce", "row_parallel_bias",
                          "which equals layers.0.attn_out.bias"),
    "uneven_heads": ("layers.0.k", (0,), "on the rank", "uneven_heads",
                     "rank 0 holds 2 (heads 0, 1), rank 1 holds 1 (head 1)"),
    "vocab_mask": ("embed", (0, 1), "before the all-reduce", "vocab_mask",
                   "rank 0 (ids 0..47) zeroes the rows of 9 tokens in its own range"),
}


@pytest.mark.parametrize("bug", BUGS)
def test_tensor_parallel_each_planted_bug_is_localized_to_its_checkpoint_rank_and_cause(reference_traces, bug):
    from parity.diagnose import diagnose

    checkpoint, ranks, stage, cause, evidence = BUGS[bug]
    reference = reference_traces["llama"]
    sharded = merge_ranks(shard_cases.plant(shard_cases.rank_traces(reference), bug))
    comparison = diagnose(compare(reference, sharded), reference, sharded)
    first = compare_shards(reference, sharded, comparison).first_divergence
    assert (first.checkpoint, first.ranks, first.stage) == (checkpoint, ranks, stage)
    assert comparison.first_divergence.checkpoint == checkpoint
    found = {d.cause: d for d in comparison.diagnoses}
    assert cause in found and found[cause].checkpoint == checkpoint and evidence in found[cause].message, \
        comparison.diagnoses
    note = next(note for note in comparison.notes if note.startswith("tensor parallel over 2 ranks"))
    said_stage = f"on {first.where} itself" if stage == "on the rank" else f"{stage}, on {first.where}"
    assert f"{checkpoint} first parts from the reference {said_stage}" in note, note


def test_tensor_parallel_rank_files_and_a_manifest_merge_alike(reference_traces, tmp_path):
    reference = reference_traces["llama"]
    paths = shard_cases.save_ranks(shard_cases.rank_traces(reference), tmp_path)
    from_files = load_sharded([str(p) for p in reversed(paths)])          # in any order: each declares its rank
    manifest = tmp_path / "shards.json"
    manifest.write_text(json.dumps({"format": "parity-shards/1", "ranks": [p.name for p in paths],
                                    "layout": shard_cases.LAYOUT}))
    from_manifest = load_sharded([str(manifest)])
    for name in ("layers.0.q", "embed", "logits"):
        np.testing.assert_array_equal(from_files[name], from_manifest[name])
    np.testing.assert_array_equal(from_files.local["logits"], reference["logits"])


@pytest.mark.parametrize("ranks, says", [
    (["../rank0.safetensors"], "lies outside the manifest's folder"),
    ("rank0.safetensors", "'ranks' must list each rank's trace file"),
    (["absent.safetensors"], "rank trace 1 of 1: "),
])
def test_tensor_parallel_a_bad_manifest_is_refused_saying_how_to_fix_it(tmp_path, ranks, says):
    folder = tmp_path / "run"
    folder.mkdir()
    save_trace(make_trace({"embed": np.ones((2, 4))}), tmp_path / "rank0.safetensors")
    manifest = folder / "shards.json"
    manifest.write_text(json.dumps({"format": "parity-shards/1", "ranks": ranks}))
    with pytest.raises(TraceError, match=says):
        load_sharded([str(manifest)])
