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
