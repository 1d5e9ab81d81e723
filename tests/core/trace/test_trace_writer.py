import numpy as np
import pytest

from parity.core.errors import OutputError
from parity.core.trace.trace import FORMAT, load_trace, metadata_strings, storage
from parity.core.trace.writer import trace_file


def _tensors(count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"layers.{i}.{'out' if i % 2 else 'mlp_out'}": rng.standard_normal((3, 5 + i)).astype(np.float32)
            for i in range(count)}


@pytest.mark.parametrize("expected", [200, 0])  # room enough for the header, and far too little (the body moves)
def test_tensors_written_as_they_arrive_read_back_exactly(tmp_path, expected):
    tensors = _tensors(120)
    path = tmp_path / "t.safetensors"
    with trace_file(path, expected_tensors=expected) as writer:
        for name, array in tensors.items():
            writer.add(name, *storage(array, None))
        writer.finish(metadata_strings({"tokens": [1, 2, 3]}))
    trace = load_trace(path)
    assert trace.metadata["format"] == FORMAT and trace.tokens == [1, 2, 3]
    assert sorted(trace.names) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(trace[name], array)


def test_a_restart_forgets_what_was_written(tmp_path):
    path = tmp_path / "t.safetensors"
    with trace_file(path) as writer:
        writer.add("embed", *storage(np.ones((2, 4), np.float32), None))
        writer.restart()
        writer.add("embed", *storage(np.full((2, 4), 2.0, np.float32), None))
        writer.finish(metadata_strings({}))
    np.testing.assert_array_equal(load_trace(path)["embed"], np.full((2, 4), 2.0))


def test_nothing_appears_when_the_writing_fails_and_nothing_is_replaced_unasked(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(RuntimeError):
        with trace_file(path) as writer:
            writer.add("embed", *storage(np.ones((2, 4), np.float32), None))
            raise RuntimeError("the forward failed")
    assert list(tmp_path.iterdir()) == []
    path.write_text("mine")
    with pytest.raises(OutputError, match="exists"):
        with trace_file(path):
            pass
    assert path.read_text() == "mine"


def test_tensors_reserved_whole_are_written_a_block_of_rows_at_a_time_in_any_order(tmp_path):
    """reserve + write_rows: (T, D) blocks along axis 0, (H, T, S) blocks along axis 1, between whole tensors;
    a discarded tensor is not listed."""
    from safetensors.numpy import load_file

    from parity.core.trace.writer import trace_file

    rows = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    heads = np.arange(2 * 7 * 5, dtype=np.float32).reshape(2, 7, 5)
    path = tmp_path / "blocks.safetensors"
    with trace_file(path) as writer:
        writer.reserve("rows", rows.shape, rows.dtype, "F32")
        writer.add("whole", np.ones(4, np.float32), "F32")
        writer.reserve("heads", heads.shape, heads.dtype, "F32")
        writer.reserve("gone", (3,), np.dtype(np.float32), "F32")
        for start, stop in ((4, 7), (0, 4)):
            writer.write_rows("rows", rows[start:stop], start)
            writer.write_rows("heads", heads[:, start:stop], start, axis=1)
        writer.discard("gone")
        writer.add("after", np.full(2, 5.0, np.float32), "F32")
        writer.finish({"format": "parity-trace/2"})
    stored = load_file(path)
    assert sorted(stored) == ["after", "heads", "rows", "whole"]
    np.testing.assert_array_equal(stored["rows"], rows)
    np.testing.assert_array_equal(stored["heads"], heads)
    np.testing.assert_array_equal(stored["whole"], np.ones(4, np.float32))
    np.testing.assert_array_equal(stored["after"], np.full(2, 5.0, np.float32))


@pytest.mark.parametrize("shape", [(1, 5, 7), (4, 3)])
def test_a_bfloat16_tensor_is_stored_as_its_own_bits_without_a_copy(shape):
    """stored() gives the bits storage(*as_array()) gives (through float32), read in place from the tensor."""
    torch = pytest.importorskip("torch")
    from parity.core.trace.trace import as_array, storage, stored

    tensor = torch.randn(shape).to(torch.bfloat16)
    bits, tag = stored(tensor)
    through_float32, expected_tag = storage(*as_array(tensor))
    assert tag == expected_tag == "BF16"
    np.testing.assert_array_equal(bits, through_float32)
    assert bits.dtype == np.dtype("<u2") and np.shares_memory(bits, tensor.view(torch.int16).numpy())
    other = torch.randn(3, 2)
    np.testing.assert_array_equal(stored(other)[0], storage(*as_array(other))[0])
