import json
import struct

import numpy as np
import pytest

from parity.core.errors import OptionError, TraceError
from parity.core.trace import FORMAT, layer_count, load_trace, make_trace, save_trace

RNG = np.random.default_rng(0)


def sample_trace(**metadata):
    tensors = {
        "embed": RNG.standard_normal((4, 8)).astype(np.float32),
        "layers.0.q": RNG.standard_normal((4, 8)).astype(np.float32),
        "layers.0.attn_probs": RNG.random((2, 4, 4)).astype(np.float32),
        "logits": RNG.standard_normal((4, 16)).astype(np.float64),
    }
    return make_trace(tensors, {"arch": "llama", "tokens": [1, 2, 3, 4], "config": {"hidden_size": 8}, **metadata})


def test_safetensors_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    trace = sample_trace(prompt="hi")
    path = save_trace(trace, tmp_path / "t.safetensors")
    loaded = load_trace(path)
    assert loaded.names == trace.names
    for name in trace.names:
        np.testing.assert_array_equal(loaded[name], trace[name])
        assert loaded[name].dtype == trace[name].dtype
    assert loaded.metadata["format"] == FORMAT
    assert loaded.tokens == [1, 2, 3, 4]
    assert loaded.metadata["config"] == {"hidden_size": 8}
    assert loaded.metadata["prompt"] == "hi"


def test_written_file_is_read_by_the_safetensors_library_and_the_reverse(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = save_trace(sample_trace(), tmp_path / "t.safetensors")
    theirs = safetensors_numpy.load_file(str(path))
    np.testing.assert_array_equal(theirs["layers.0.q"], load_trace(path)["layers.0.q"])

    written_by_library = tmp_path / "lib.safetensors"
    safetensors_numpy.save_file({"embed": np.ones((1, 3, 4), np.float16)}, str(written_by_library),
                                metadata={"format": FORMAT, "tokens": "[5, 6, 7]"})
    loaded = load_trace(written_by_library)
    assert loaded["embed"].shape == (3, 4)  # batch axis of size 1 dropped
    assert loaded.dtype_of("embed") == "float16"
    assert loaded.tokens == [5, 6, 7]


def test_bfloat16_from_torch_round_trips_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    values = torch.randn(3, 5).to(torch.bfloat16)
    path = save_trace(make_trace({"embed": values}), tmp_path / "bf16.safetensors")
    loaded = load_trace(path)
    assert loaded.dtype_of("embed") == "bfloat16"
    np.testing.assert_array_equal(loaded["embed"], values.float().numpy())
    safetensors_torch = pytest.importorskip("safetensors.torch")
    assert torch.equal(safetensors_torch.load_file(str(path))["embed"], values)


def test_npz_with_json_metadata(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, embed=np.zeros((1, 2, 3), np.float32), logits=np.ones((2, 5)),
             __metadata__=np.array(json.dumps({"format": FORMAT, "tokens": [9, 8], "producer": "my-port"})))
    trace = load_trace(path)
    assert trace["embed"].shape == (2, 3)
    assert trace.tokens == [9, 8] and trace.metadata["producer"] == "my-port"


def test_npz_holding_python_objects_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, embed=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TraceError, match="never unpickles"):
        load_trace(path)


@pytest.mark.parametrize("name", ["program.pt2", "model.pt", "weights.pth", "last.ckpt"])
def test_a_pytorch_archive_is_named_and_never_opened(tmp_path, name):
    """torch.export.save's and torch.save's files may hold pickled objects: said in one line, with how to
    check the program or model in them (a factory that loads it); before, "not a safetensors file"."""
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 not opened")
    with pytest.raises(TraceError, match="PyTorch archive .*never loads; load it in a factory"):
        load_trace(path)


def test_directory_with_manifest_in_all_three_listing_styles(tmp_path):
    for style, listing in [("list", ["embed", "logits"]), ("map", {"embed": "e.npy", "logits": "l.npy"}), ("none", None)]:
        directory = tmp_path / style
        directory.mkdir()
        files = listing if isinstance(listing, dict) else {"embed": "embed.npy", "logits": "logits.npy"}
        np.save(directory / files["embed"], np.full((2, 4), 3.0, np.float32))
        np.save(directory / files["logits"], np.full((2, 7), 1.0, np.float32))
        manifest = {"format": FORMAT, "metadata": {"tokens": [1, 2], "producer": "cpp-port"}}
        if listing is not None:
            manifest["tensors"] = listing
        (directory / "manifest.json").write_text(json.dumps(manifest))
        trace = load_trace(directory)
        assert trace.names == ["embed", "logits"], style
        assert trace["embed"][0, 0] == 3.0 and trace.tokens == [1, 2] and trace.metadata["producer"] == "cpp-port"


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"abc"), "too short"),
    (lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"), "bad header length"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"nope"), "not JSON"),
])
def test_unreadable_safetensors_files_raise_trace_errors(tmp_path, setup, message):
    path = tmp_path / "bad.safetensors"
    setup(path)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


def test_a_weights_file_is_not_mistaken_for_a_trace(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file({"model.embed_tokens.weight": np.zeros((4, 4), np.float32)}, str(path))
    with pytest.raises(TraceError, match="weights file"):
        load_trace(path)


def test_another_format_tag_is_refused(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "t.safetensors"
    safetensors_numpy.save_file({"embed": np.zeros((2, 2), np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(TraceError, match="expected 'parity-trace/2'"):
        load_trace(path)


def test_offsets_that_disagree_with_the_shape_are_refused(tmp_path):
    header = json.dumps({"embed": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(TraceError, match="do not match its shape"):
        load_trace(path)


def test_directory_without_manifest_and_missing_npy_are_explained(tmp_path):
    with pytest.raises(TraceError, match="no manifest.json"):
        load_trace(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"tensors": ["embed"]}))
    with pytest.raises(TraceError, match="embed.npy, which does not exist"):
        load_trace(tmp_path)


def test_tokens_metadata_must_be_a_list_of_ints(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, embed=np.zeros((2, 2)), __metadata__=np.array(json.dumps({"tokens": [1, "two"]})))
    with pytest.raises(TraceError, match="write a JSON list of the input token ids"):
        load_trace(path)


def test_saving_never_replaces_an_existing_file_unless_told(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_text("user data")
    with pytest.raises(OptionError, match="exists"):
        save_trace(sample_trace(), path)
    assert path.read_text() == "user data"
    save_trace(sample_trace(), path, overwrite=True)
    assert load_trace(path).names


def test_layer_count():
    assert layer_count(make_trace({"layers.0.q": np.zeros((2, 2)), "layers.6.out": np.zeros((2, 2))})) == 7
    assert layer_count(make_trace({"logits": np.zeros((2, 2))})) == 0


def test_version_1_traces_are_still_read(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "t.safetensors"
    safetensors_numpy.save_file({"embed": np.ones((2, 2), np.float32)}, str(path), metadata={"format": "parity-trace/1"})
    assert load_trace(path).names == ["embed"]


def test_the_architecture_metadata_survives_a_round_trip(tmp_path):
    architecture = {"embed_scale": 8.0, "layers": [{"sliding_window": 4}, {"sliding_window": None}]}
    trace = make_trace({"embed": np.ones((2, 2), np.float32)}, {"architecture": architecture})
    path = save_trace(trace, tmp_path / "t.safetensors")
    assert load_trace(path).metadata["architecture"] == architecture


@pytest.mark.parametrize("quantized", [[1, 2], {"layers.0.q.weight": "int8"},
                                       {"layers.0.q.weight": {"format": "int8", "rounding_l2": -1.0}},
                                       {"layers.0.q.weight": {"format": "int8", "rounding_l2": "small"}},
                                       {"layers.0.q.weight": {"format": "int8", "rounding_l2": 0.1, "inputs": 3}}])
def test_quantized_weights_metadata_of_the_wrong_shape_is_refused(tmp_path, quantized):
    path = tmp_path / "t.npz"
    np.savez(path, embed=np.zeros((2, 2)), __metadata__=np.array(json.dumps({"quantized_weights": quantized})))
    with pytest.raises(TraceError, match="'quantized_weights' is not an object of parameter name"):
        load_trace(path)


def test_quantized_weights_metadata_survives_a_round_trip(tmp_path):
    quantized = {"layers.0.q.weight": {"format": "int8 in blocks of 1x8", "rounding_l2": 0.01},
                 "layers.0.k.weight": {"format": "qint8", "rounding_l2": None, "inputs": "a scale per call"}}
    save_trace(sample_trace(quantized_weights=quantized), tmp_path / "t.safetensors")
    assert load_trace(tmp_path / "t.safetensors").metadata["quantized_weights"] == quantized


@pytest.mark.parametrize("rounding", [[1, 2], {"name": "x"}, [{"name": "blk.0.attn_q.weight", "type": "Q8_0"}],
                                      [{"name": "a", "type": "F16", "rel_l2": "big", "expected_rel_l2": 0.1}]])
def test_weight_rounding_metadata_of_the_wrong_shape_is_refused(tmp_path, rounding):
    path = tmp_path / "t.npz"
    np.savez(path, embed=np.zeros((2, 2)), __metadata__=np.array(json.dumps({"weight_rounding": rounding})))
    with pytest.raises(TraceError, match="'weight_rounding' is not a list of"):
        load_trace(path)
