"""The crafted corpus (tests/corpus/, see tests/trace_corpus.py) through `parity compare REF CASE`.

Every `bad-*` case: exit 2 and exactly one line on stderr, naming the file and saying how
to fix it. Every `odd-*` case: a result (exit 0 or 1) with nothing on stderr. Never a
traceback. The special cases (sparse, bombs, FIFOs, links out) run in
tests/integration/test_hostile_traces.py, in a subprocess under memory limits.
"""

import json
import mmap
from pathlib import Path

import numpy as np
import pytest

import trace_corpus
from parity.cli import main
from parity.core.errors import TraceError
from parity.core.trace.lazy import LazyTensors
from parity.core.trace import FORMAT, load_trace, make_trace, save_trace

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
REFERENCE = CORPUS / "reference.safetensors"
CASES = trace_corpus.cases(CORPUS)


def run_compare(capsys, *paths) -> tuple[int, str, str]:
    code = main(["compare", *map(str, paths)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_corpus_covers_every_form_and_both_outcomes():
    names = [case.name for case in CASES]
    for prefix in ("bad-st-", "bad-npz-", "bad-dir-", "odd-st-", "odd-npz-", "odd-dir-"):
        assert any(name.startswith(prefix) for name in names), prefix
    assert len(CASES) >= 100


def test_the_committed_corpus_is_what_the_generator_writes(tmp_path):
    written = trace_corpus.write_small(tmp_path)
    assert [case.name for case in written] == [case.name for case in CASES]
    for generated in tmp_path.rglob("*"):
        committed = CORPUS / generated.relative_to(tmp_path)
        assert committed.exists(), committed
        if generated.is_file():
            assert committed.read_bytes() == generated.read_bytes(), committed


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_gives_one_line_and_exit_2_or_a_result(capsys, case):
    code, out, err = run_compare(capsys, REFERENCE, case)
    if case.name.startswith("bad-"):
        assert code == 2, out
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("parity: error: "), err
        assert str(case) in lines[0] or case.name in lines[0]  # names the file
        assert "; " in lines[0].removeprefix("parity: error: ")  # what; how to fix
        assert "Traceback" not in err and "allow_pickle" not in err
    else:
        assert code in (0, 1), err
        assert err == ""  # no numpy RuntimeWarning, no error


@pytest.mark.parametrize("case", [case for case in CASES if case.name.startswith("odd-")],
                         ids=lambda case: case.name)
def test_odd_cases_compared_with_themselves_pass(capsys, case):
    code, out, err = run_compare(capsys, case, case)
    assert (code, err) == (0, ""), out


def test_escape_sequences_and_surrogates_in_metadata_never_reach_the_console(capsys):
    code, out, err = run_compare(capsys, REFERENCE, CORPUS / "odd-st-escapes-in-metadata.safetensors")
    assert code in (0, 1) and err == ""
    assert "evil" in out  # the producer is shown ...
    assert not any(char in out for char in "\x1b\x07\r\u202e\ud800")  # ... with its controls replaced


def test_a_json_report_of_hostile_metadata_is_valid_json(capsys):
    main(["compare", str(REFERENCE), str(CORPUS / "odd-st-escapes-in-metadata.safetensors"), "--json", "-"])
    report = json.loads(capsys.readouterr().out)
    assert report  # the surrogate and the escapes are JSON-escaped, not written raw


def test_a_1d_tensor_where_positions_are_expected_is_compared_without_crashing(capsys):
    case = CORPUS / "odd-st-1d-probs.safetensors"
    assert run_compare(capsys, case, case)[0] == 0


def test_loading_reads_headers_only_and_tensors_on_demand(tmp_path):
    big = np.arange(6 * 2**16, dtype=np.float32).reshape(1, 6, 2**16)  # 1.5 MiB: mapped, not read
    path = save_trace(make_trace({"embed": big, "logits": np.ones((6, 5), np.float32)}, {"tokens": [1] * 6}),
                      tmp_path / "t.safetensors")
    trace = load_trace(path)
    assert isinstance(trace.tensors, LazyTensors)
    assert trace.shape_of("embed") == (6, 2**16)  # from the header, batch axis dropped
    assert "read" in repr(trace.tensors) and "0 read" in repr(trace.tensors)
    embed = trace["embed"]
    assert isinstance(_mapped_object(embed), mmap.mmap)
    np.testing.assert_array_equal(embed, big[0])
    assert not embed.flags.writeable  # a read-only map of the file, not a copy


def _mapped_object(array: np.ndarray):
    """What an array's memory belongs to, following views down to the buffer's owner."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_tensors_of_one_file_share_one_map_and_stay_readable_after_their_pages_are_released(tmp_path):
    tensors = {f"layers.{i}.out": np.full((4, 1024), i, np.float32) for i in range(12)}
    trace = load_trace(save_trace(make_trace(tensors), tmp_path / "t.safetensors"))
    first = trace["layers.0.out"]
    maps = {id(_mapped_object(trace[name])) for name in tensors}
    assert len(maps) == 1  # one map (and one descriptor) for the whole file
    # layers.0.out has left the kept few: its pages were handed back, and reading it pages them in again
    assert "layers.0.out" not in repr(trace.tensors._kept)
    np.testing.assert_array_equal(first, tensors["layers.0.out"])
    np.testing.assert_array_equal(trace["layers.0.out"], tensors["layers.0.out"])


def test_a_comparison_keeps_nothing_mapped_once_done_and_its_tensors_stay_readable(tmp_path):
    from parity.core.compare import compare

    tensors = {f"layers.{i}.out": np.full((4, 1024), i, np.float32) for i in range(3)}
    reference = load_trace(save_trace(make_trace(tensors), tmp_path / "r.safetensors"))
    candidate = load_trace(save_trace(make_trace(tensors), tmp_path / "c.safetensors"))
    assert compare(reference, candidate).passed
    assert "0 read" in repr(reference.tensors) and "0 read" in repr(candidate.tensors)
    np.testing.assert_array_equal(reference["layers.2.out"], tensors["layers.2.out"])


def test_npz_stored_members_are_mapped_and_deflated_ones_inflated_exactly(tmp_path):
    values = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, embed=values, __metadata__=np.array(json.dumps({"format": FORMAT, "tokens": [1, 2, 3]})))
        trace = load_trace(path)
        np.testing.assert_array_equal(trace["embed"], values)
        assert trace.tokens == [1, 2, 3] and trace.dtype_of("embed") == "float32"


def test_a_file_changed_after_loading_is_refused_not_misread(tmp_path):
    path = save_trace(make_trace({"embed": np.ones((2, 3), np.float32)}), tmp_path / "t.safetensors")
    trace = load_trace(path)
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(TraceError, match="changed while parity was reading it"):
        trace["embed"]


def test_a_symlink_inside_the_trace_directory_is_followed(tmp_path):
    np.save(tmp_path / "real.npy", np.ones((2, 3), np.float32))
    (tmp_path / "embed.npy").symlink_to("real.npy")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "tensors": ["embed"]}))
    assert load_trace(tmp_path)["embed"].shape == (2, 3)


def test_checkpoints_glob_matching_nothing_is_an_option_error(capsys):
    code, _, err = run_compare(capsys, REFERENCE, REFERENCE, "--checkpoints", "nothing.*")
    assert code == 2 and "'nothing.*' matches no checkpoint name" in err and len(err.splitlines()) == 1


def test_the_first_rows_of_a_tensor_are_read_alone(tmp_path):
    values = np.arange(1 * 50 * 2**14, dtype=np.float32).reshape(1, 50, 2**14)  # a batch axis, dropped on read
    trace = load_trace(save_trace(make_trace({"embed": values}), tmp_path / "t.safetensors"))
    head = trace.head("embed", 3)
    np.testing.assert_array_equal(head, values[0, :3])
    root = _mapped_object(head)
    assert len(memoryview(root).cast("B")) == 3 * 2**14 * 4  # only 3 rows read, not 50 (nor the file mapped)
    np.save(tmp_path / "embed.npy", values[0])
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "tensors": ["embed"]}))
    np.testing.assert_array_equal(load_trace(tmp_path).head("embed", 60), values[0])  # clipped to the rows there are


@pytest.mark.parametrize("config", [{"num_attention_heads": "8"}, {"hidden_size": True}, {"head_dim": -4},
                                    {"rope_parameters": 5}, {"rope_scaling": {"rope_type": 3}},
                                    {"rms_norm_eps": [1e-5]}])
def test_config_fields_parity_computes_with_are_type_checked(tmp_path, config):
    path = tmp_path / "t.npz"
    np.savez(path, embed=np.zeros((2, 2), np.float32),
             __metadata__=np.array(json.dumps({"format": FORMAT, "config": {"hidden_size": 8, **config}})))
    with pytest.raises(TraceError, match="'config' field"):
        load_trace(path)


@pytest.mark.parametrize("name", ["bad-st-layer-index-huge.safetensors", "bad-dir-format-other"])
def test_a_hostile_reference_is_refused_as_a_candidate_is(capsys, name):
    """`compare` reads both sides alike: a reference naming layer 10^20 once ran for minutes building a
    layer x position matrix, and a manifest's own `format` was ignored."""
    code, _, err = run_compare(capsys, CORPUS / name, REFERENCE)
    assert code == 2 and len(err.splitlines()) == 1 and name in err, err


def test_the_deepest_layer_a_trace_may_name_is_compared_at_once(tmp_path, capsys):
    import time

    embed = trace_corpus.REFERENCE_TENSORS["embed"]
    path = tmp_path / "deep.safetensors"
    path.write_bytes(trace_corpus.safetensors_of({"embed": embed, "layers.65535.out": embed}, {"format": FORMAT}))
    started = time.monotonic()
    code, out, _ = run_compare(capsys, path, path)
    assert code == 0 and time.monotonic() - started < 5, out


def test_every_bfloat16_bit_pattern_is_widened_to_the_float32_it_is():
    from parity.core.trace.readers import bfloat16_widened

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)   # every pattern, NaNs included
    widened = bfloat16_widened(bits)
    assert widened.dtype == np.float32 and widened.shape == bits.shape
    np.testing.assert_array_equal(widened.view(np.uint32), bits.astype(np.uint32) << 16)
    np.testing.assert_array_equal(bfloat16_widened(bits[:, ::3]).view(np.uint32), bits[:, ::3].astype(np.uint32) << 16)


def test_a_bfloat16_tensor_read_from_a_file_is_its_own_buffer_and_exact_after_the_map_hands_pages_back(tmp_path):
    import torch

    values = torch.randn(64, 4096).to(torch.bfloat16)
    values[0, :3] = torch.tensor([float("inf"), float("nan"), -0.0])
    path = save_trace(make_trace({"logits": values, "embed": torch.zeros(2, 8)}), tmp_path / "t.safetensors")
    trace = load_trace(path)
    logits = trace["logits"]
    assert logits.dtype == np.float32 and not isinstance(_mapped_object(logits), mmap.mmap)   # widened: its own
    trace.tensors.forget()                                                   # every page handed back
    np.testing.assert_array_equal(logits.view(np.uint32), values.float().numpy().view(np.uint32))
    np.testing.assert_array_equal(trace["logits"].view(np.uint32), values.float().numpy().view(np.uint32))


def _bfloat16_trace(tmp_path, shape):
    import torch

    values = torch.randn(*shape).to(torch.bfloat16)
    values.view(-1)[:3] = torch.tensor([float("inf"), float("nan"), -0.0])
    path = save_trace(make_trace({"logits": values, "embed": torch.zeros(2, 8)}), tmp_path / "t.safetensors")
    return path, values.float().numpy().reshape(shape[1:] if shape[0] == 1 else shape)


def test_a_large_bfloat16_tensor_is_widened_into_a_file_a_block_at_a_time_and_mapped(tmp_path, monkeypatch):
    from parity.core.trace import pages, readers

    monkeypatch.setattr(readers, "WIDEN_HELD_BYTES", 1 << 16)
    monkeypatch.setattr(pages, "HAND_BACK_BYTES", 1 << 12)
    monkeypatch.setattr(readers, "_WIDEN_BLOCK", 1000)              # blocks that do not divide the tensor
    monkeypatch.setenv("PARITY_SPILL_DIR", str(tmp_path))
    path, expected = _bfloat16_trace(tmp_path, (1, 96, 4099))      # a batch axis of 1, dropped on read
    trace = load_trace(path)
    logits = trace["logits"]
    assert logits.dtype == np.float32 and logits.shape == (96, 4099) and not logits.flags.writeable
    assert isinstance(_mapped_object(logits), mmap.mmap)            # a view of the widened file's map
    assert pages.PagesBehind(logits)._mapped                                # so a pass hands its pages back as it goes
    np.testing.assert_array_equal(logits.view(np.uint32), expected.view(np.uint32))
    assert [entry.name for entry in tmp_path.iterdir()] == ["t.safetensors"]   # the file is unlinked: it goes with the array
    trace.tensors.forget()
    np.testing.assert_array_equal(trace["logits"].view(np.uint32), expected.view(np.uint32))


def test_a_large_bfloat16_tensor_is_widened_in_memory_where_no_file_can_be_written(tmp_path, monkeypatch):
    from parity.core.trace import readers

    monkeypatch.setattr(readers, "WIDEN_HELD_BYTES", 1 << 16)
    monkeypatch.setenv("PARITY_SPILL_DIR", str(tmp_path / "no such directory"))
    path, expected = _bfloat16_trace(tmp_path, (64, 4096))
    logits = load_trace(path)["logits"]
    assert not isinstance(_mapped_object(logits), mmap.mmap)
    np.testing.assert_array_equal(logits.view(np.uint32), expected.view(np.uint32))


def test_a_comparison_of_large_bfloat16_traces_gives_the_report_held_ones_give(tmp_path, monkeypatch, capsys):
    import torch

    from parity.core.trace import readers

    reference = {"embed": torch.randn(64, 4096), "logits": torch.randn(64, 4096)}
    candidate = {name: (value * (1 + 1e-3 * torch.randn_like(value))).to(torch.bfloat16)
                 for name, value in reference.items()}
    reference_path = save_trace(make_trace(reference), tmp_path / "reference.safetensors")
    candidate_path = save_trace(make_trace(candidate), tmp_path / "candidate.safetensors")
    reports = []
    for held_bytes in (1 << 40, 1 << 16):
        monkeypatch.setattr(readers, "WIDEN_HELD_BYTES", held_bytes)
        code, out, _ = run_compare(capsys, reference_path, candidate_path, "--json", "-")
        reports.append((code, json.loads(out)["checkpoints"]))
    assert reports[0] == reports[1] and reports[0][1]
