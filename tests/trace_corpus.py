"""Crafted damaged and hostile traces: one per class of fault a reader must refuse.

`write_small(directory)` writes the committed corpus (tests/corpus/, a few KB: run
`python tests/trace_corpus.py tests/corpus` to rewrite it). `write_special(directory)`
makes, at test time, what cannot or should not be committed: a sparse 3 GB file,
a 1 GB zip bomb, FIFOs, symlinks to /dev/zero, to /etc/passwd and to /proc.
File names say what is expected: `bad-*` must give exit 2 with one line on stderr,
`odd-*` is a valid trace of an unusual kind that must compare (exit 0 or 1).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

FORMAT = "parity-trace/1"
T, D, H, V = 4, 8, 2, 16
_RNG = np.random.default_rng(7)
REFERENCE_TENSORS = {
    "embed": _RNG.standard_normal((T, D)).astype(np.float32),
    "layers.0.q": _RNG.standard_normal((T, D)).astype(np.float32),
    "layers.0.attn_probs": _RNG.random((H, T, T)).astype(np.float32),
    "layers.0.out": _RNG.standard_normal((T, D)).astype(np.float32),
    "logits": _RNG.standard_normal((T, V)).astype(np.float32),
}
REFERENCE_METADATA = {"format": FORMAT, "producer": "reference", "tokens": [1, 2, 3, 4]}


# --- writers of the three forms, with nothing checked -----------------------------


def safetensors_bytes(header: object, body: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    encoded = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


def safetensors_of(tensors: dict, metadata: dict | None = None) -> bytes:
    header, body = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        tag = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64"}[str(array.dtype)]
        header[name] = {"dtype": tag, "shape": list(array.shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    return safetensors_bytes(header, body)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    raw = header.encode("latin1")
    length = struct.pack("<H", len(raw)) if version[0] == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + length + raw + data


def npz_bytes(members: dict[str, bytes], *, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, data in members.items():  # a fixed date: the corpus is byte-for-byte reproducible
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            archive.writestr(info, data, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
    return buffer.getvalue()


def metadata_member(metadata: object) -> bytes:
    return npy_bytes(np.array(json.dumps(metadata)))


def good_members(**extra: bytes) -> dict[str, bytes]:
    return {"embed.npy": npy_bytes(REFERENCE_TENSORS["embed"]), "__metadata__.npy": metadata_member({"format": FORMAT}),
            **extra}


def write_directory(path: Path, manifest: object | bytes | None, files: dict[str, bytes] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        (path / "manifest.json").write_bytes(raw)
    for name, data in (files or {}).items():
        (path / name).write_bytes(data)
    return path


def patch(data: bytes, offset: int, replacement: bytes) -> bytes:
    return data[:offset] + replacement + data[offset + len(replacement):]


# --- the committed corpus -----------------------------------------------------------


def write_reference(directory: Path) -> Path:
    path = directory / "reference.safetensors"
    metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in REFERENCE_METADATA.items()}
    path.write_bytes(safetensors_of(REFERENCE_TENSORS, metadata))
    return path


def _safetensors_cases() -> dict[str, bytes]:
    embed = REFERENCE_TENSORS["embed"]
    raw = embed.tobytes()
    meta = {"format": FORMAT}

    def entry(**fields) -> bytes:
        base = {"dtype": "F32", "shape": [T, D], "data_offsets": [0, len(raw)]}
        return safetensors_bytes({"__metadata__": meta, "embed": {**base, **fields}}, raw)

    deep = "[" * 20_000 + "]" * 20_000
    return {
        "bad-st-empty.safetensors": b"",
        "bad-st-short.safetensors": b"\x01\x02",
        "bad-st-header-length-huge.safetensors": struct.pack("<Q", 2**64 - 1) + b"{}",
        "bad-st-header-length-past-end.safetensors": struct.pack("<Q", 4096) + b"{}",
        "bad-st-header-not-json.safetensors": safetensors_bytes(None, raw_header=b"{nope"),
        "bad-st-header-not-utf8.safetensors": safetensors_bytes(None, raw_header=b'{"\xff\xfe": 1}'),
        "bad-st-header-list.safetensors": safetensors_bytes([1, 2]),
        "bad-st-header-deep.safetensors": safetensors_bytes(None, raw_header=deep.encode()),
        "bad-st-header-nan.safetensors": safetensors_bytes(None, raw_header=b'{"embed": NaN}'),
        "bad-st-shape-string.safetensors": entry(shape="4,8"),
        "bad-st-shape-bool.safetensors": entry(shape=[True, 8]),
        "bad-st-shape-float.safetensors": entry(shape=[4.0, 8]),
        "bad-st-shape-negative.safetensors": entry(shape=[-4, -8]),
        "bad-st-shape-65-dims.safetensors": entry(shape=[1] * 65),
        "bad-st-shape-2pow64.safetensors": entry(shape=[2**64, 1]),
        "bad-st-shape-4tib.safetensors": entry(shape=[2**20, 2**20], data_offsets=[0, 4 * 2**40]),
        "bad-st-shape-overflow-int64.safetensors": entry(shape=[2**40, 2**40], data_offsets=[0, 0]),
        "bad-st-dtype-list.safetensors": entry(dtype=["F32"]),
        "bad-st-dtype-complex.safetensors": entry(dtype="C64"),
        "bad-st-dtype-missing.safetensors": safetensors_bytes({"embed": {"shape": [T, D], "data_offsets": [0, 128]}}, raw),
        "bad-st-offsets-past-end.safetensors": entry(data_offsets=[64, 64 + len(raw)]),
        "bad-st-offsets-reversed.safetensors": entry(data_offsets=[len(raw), 0]),
        "bad-st-offsets-string.safetensors": entry(data_offsets="0-128"),
        "bad-st-offsets-three.safetensors": entry(data_offsets=[0, 64, 128]),
        "bad-st-offsets-mismatch.safetensors": entry(data_offsets=[0, 8]),
        "bad-st-entry-int.safetensors": safetensors_bytes({"embed": 5}),
        "bad-st-no-tensors.safetensors": safetensors_bytes({}),
        "bad-st-only-metadata.safetensors": safetensors_bytes({"__metadata__": meta}),
        "bad-st-non-canonical.safetensors": safetensors_of({"model.embed_tokens.weight": embed}, meta),
        "bad-st-no-common.safetensors": safetensors_of({"layers.7.mlp_up": embed}, meta),
        "bad-st-format-other.safetensors": safetensors_of({"embed": embed}, {"format": "pt"}),
        "bad-st-format-int.safetensors": safetensors_bytes({"__metadata__": {"format": 1}}),
        "bad-st-metadata-list.safetensors": safetensors_bytes({"__metadata__": [1], "embed": {
            "dtype": "F32", "shape": [T, D], "data_offsets": [0, len(raw)]}}, raw),
        "bad-st-metadata-string.safetensors": safetensors_bytes({"__metadata__": "x", "embed": {
            "dtype": "F32", "shape": [T, D], "data_offsets": [0, len(raw)]}}, raw),
        "bad-st-config-int.safetensors": safetensors_of({"embed": embed}, {**meta, "config": "5"}),
        "bad-st-config-list.safetensors": safetensors_of({"embed": embed}, {**meta, "config": "[1, 2]"}),
        "bad-st-config-not-json.safetensors": safetensors_of({"embed": embed}, {**meta, "config": "{oops"}),
        "bad-st-config-heads-string.safetensors": safetensors_of(
            {"embed": embed}, {**meta, "config": '{"hidden_size": 8, "num_attention_heads": "2"}'}),
        "bad-st-config-deep.safetensors": safetensors_of({"embed": embed}, {**meta, "config": deep}),
        "bad-st-not-comparable-list.safetensors": safetensors_of({"embed": embed}, {**meta, "not_comparable": "[1]"}),
        "bad-st-not-comparable-string.safetensors": safetensors_of({"embed": embed}, {**meta, "not_comparable": '"x"'}),
        "bad-st-tokens-string.safetensors": safetensors_of({"embed": embed}, {**meta, "tokens": '"1,2"'}),
        "bad-st-tokens-bools.safetensors": safetensors_of({"embed": embed}, {**meta, "tokens": "[true, false]"}),
        "bad-st-tokens-negative.safetensors": safetensors_of({"embed": embed}, {**meta, "tokens": "[-1, 2]"}),
        "bad-st-producer-int.safetensors": safetensors_bytes({"__metadata__": {**meta, "producer": 5}, "embed": {
            "dtype": "F32", "shape": [T, D], "data_offsets": [0, len(raw)]}}, raw),
        "bad-st-name-escape.safetensors": safetensors_of({"embed\x1b[2J": embed}, meta),
        "bad-st-layer-index-huge.safetensors": safetensors_of(
            {"embed": embed, "layers.99999999999999999999.out": embed}, meta),
        "bad-st-layer-index-65536.safetensors": safetensors_of({"embed": embed, "layers.65536.out": embed}, meta),
        "bad-st-truncated.safetensors": safetensors_of({"embed": embed}, meta)[:-10],
        "odd-st-escapes-in-metadata.safetensors": safetensors_of(
            {"embed": embed}, {**meta, "producer": "evil\x1b[2J\x1b]0;title\x07\u202e\ud800", "prompt": "a\nb\rc"}),
        "odd-st-1d-probs.safetensors": safetensors_of({"layers.0.attn_probs": np.ones(T * T * H, np.float32)}, meta),
        "odd-st-huge-values.safetensors": safetensors_of({"embed": np.full((T, D), 3e38, np.float32),
                                                          "logits": np.full((T, V), np.inf, np.float32)}, meta),
        "odd-st-scalar-and-empty.safetensors": safetensors_of({"embed": np.float32(1.0).reshape(()),
                                                               "logits": np.zeros((0, V), np.float32)}, meta),
    }


def _npz_cases() -> dict[str, bytes]:
    good = npz_bytes(good_members())
    compressed = npz_bytes(good_members(), compress=True)
    central = good.index(b"PK\x01\x02")
    encrypted = patch(good, central + 8, b"\x01\x00")
    bzip2 = patch(patch(good, central + 10, b"\x0c\x00"), 8, b"\x0c\x00")
    many = patch(good, good.index(b"PK\x05\x06") + 8, struct.pack("<HH", 60000, 60000))
    huge_directory = patch(good, good.index(b"PK\x05\x06") + 12, struct.pack("<I", 2**31))
    lying_size = patch(compressed, compressed.index(b"PK\x01\x02") + 24, struct.pack("<I", 200))
    bad_crc = patch(good, central + 16, b"\x00\x00\x00\x00")
    return {
        "bad-npz-not-zip.npz": b"this is not a zip archive" * 10,
        "bad-npz-empty.npz": b"",
        "bad-npz-truncated.npz": good[: len(good) // 2],
        "bad-npz-encrypted.npz": encrypted,
        "bad-npz-bzip2.npz": bzip2,
        "bad-npz-member-count.npz": many,
        "bad-npz-directory-huge.npz": huge_directory,
        "bad-npz-deflate-lies-small.npz": lying_size,
        "bad-npz-crc.npz": bad_crc,
        "bad-npz-garbage-deflate.npz": patch(compressed, compressed.index(b"embed.npy") + 9, b"\xff" * 40),
        "bad-npz-not-npy-member.npz": npz_bytes({"embed.txt": b"hello"}),
        "bad-npz-npy-no-magic.npz": npz_bytes(good_members(**{"logits.npy": b"NOTNUMPY" * 8})),
        "bad-npz-npy-tokenize.npz": npz_bytes({"embed.npy": npy_with_header("{'descr': '<f4, 'shape': (\n")}),
        "bad-npz-npy-call.npz": npz_bytes({"embed.npy": npy_with_header(
            "{'descr': __import__('os').system('true'), 'fortran_order': False, 'shape': (1,)}\n", b"\0" * 4)}),
        "bad-npz-object.npz": npz_bytes({"embed.npy": npy_bytes(np.array([{"a": 1}, None], dtype=object))}),
        "bad-npz-structured.npz": npz_bytes({"embed.npy": npy_bytes(np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))}),
        "bad-npz-unicode.npz": npz_bytes({"embed.npy": npy_bytes(np.array(["a", "bc"]))}),
        "bad-npz-complex.npz": npz_bytes({"embed.npy": npy_bytes(np.ones((T, D), np.complex64))}),
        "bad-npz-float128.npz": npz_bytes({"embed.npy": npy_with_header(
            "{'descr': '<f16', 'fortran_order': False, 'shape': (4, 8), }\n", bytes(16 * T * D))}),
        "bad-npz-shape-past-data.npz": npz_bytes({"embed.npy": npy_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }\n", b"\0" * 16)}),
        "bad-npz-metadata-not-json.npz": npz_bytes(good_members(**{"__metadata__.npy": npy_bytes(np.array("{x"))})),
        "bad-npz-metadata-int.npz": npz_bytes(good_members(**{"__metadata__.npy": metadata_member(5)})),
        "bad-npz-metadata-array.npz": npz_bytes(good_members(**{"__metadata__.npy": npy_bytes(np.zeros(3))})),
        "bad-npz-metadata-deep.npz": npz_bytes(good_members(**{"__metadata__.npy": npy_bytes(
            np.array("[" * 5000 + "]" * 5000))})),
        "bad-npz-config-string.npz": npz_bytes(good_members(**{"__metadata__.npy": metadata_member(
            {"format": FORMAT, "config": "hello"})})),
        "bad-npz-dtypes-type.npz": npz_bytes(good_members(**{"__metadata__.npy": metadata_member(
            {"format": FORMAT, "not_comparable": ["embed"]})})),
        "bad-npz-no-tensors.npz": npz_bytes({"__metadata__.npy": metadata_member({"format": FORMAT})}),
        "bad-npz-zero-members.npz": npz_bytes({}),
        "odd-npz-compressed.npz": compressed,
        "odd-npz-fortran-bigendian.npz": npz_bytes({"embed.npy": npy_bytes(
            np.asfortranarray(REFERENCE_TENSORS["embed"]).astype(">f4"))}),
    }


def _directory_cases(directory: Path) -> None:
    embed = npy_bytes(REFERENCE_TENSORS["embed"])
    ok = {"format": FORMAT, "tensors": ["embed"]}
    write_directory(directory / "bad-dir-no-manifest", None, {"embed.npy": embed})
    write_directory(directory / "bad-dir-manifest-utf16", json.dumps(ok).encode("utf-16"), {"embed.npy": embed})
    write_directory(directory / "bad-dir-manifest-latin1", '{"format": "parity-trace/1", "metadata": {"producer": "caf\xe9"}, '
                    '"tensors": ["embed"]}'.encode("latin1"), {"embed.npy": embed})
    write_directory(directory / "bad-dir-manifest-not-json", b"{tensors: [embed]}", {"embed.npy": embed})
    write_directory(directory / "bad-dir-manifest-list", [1, 2], {"embed.npy": embed})
    write_directory(directory / "bad-dir-manifest-deep", ("[" * 20_000).encode(), {"embed.npy": embed})
    write_directory(directory / "bad-dir-format-other", {**ok, "format": "other"}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-format-list", {**ok, "format": [FORMAT]}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-format-differs", {**ok, "format": "other", "metadata": {"format": FORMAT}},
                    {"embed.npy": embed})
    write_directory(directory / "bad-dir-tensors-empty", {"format": FORMAT, "tensors": []}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-tensors-int", {"format": FORMAT, "tensors": 5}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-tensors-list-of-ints", {"format": FORMAT, "tensors": [1]}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-file-int", {"format": FORMAT, "tensors": {"embed": 5}}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-dotdot", {"format": FORMAT, "tensors": {"embed": "../../../../etc/passwd"}})
    write_directory(directory / "bad-dir-absolute", {"format": FORMAT, "tensors": {"embed": "/etc/passwd"}})
    write_directory(directory / "bad-dir-proc", {"format": FORMAT, "tensors": {"embed": "/proc/self/environ"}})
    write_directory(directory / "bad-dir-missing-file", ok)
    write_directory(directory / "bad-dir-metadata-int", {**ok, "metadata": 5}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-metadata-list", {**ok, "metadata": [1]}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-metadata-tokens", {**ok, "metadata": {"tokens": "1,2"}}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-dtypes-string", {**ok, "dtypes": "bfloat16"}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-dtypes-list-value", {**ok, "dtypes": {"embed": ["bf16"]}}, {"embed.npy": embed})
    write_directory(directory / "bad-dir-npy-pickle", ok, {"embed.npy": npy_bytes(np.array([None, {}], dtype=object))})
    write_directory(directory / "bad-dir-npy-garbage", ok, {"embed.npy": b"\x00" * 200})
    write_directory(directory / "bad-dir-npy-v2-header-huge", ok, {"embed.npy": b"\x93NUMPY\x02\x00" +
                                                                   struct.pack("<I", 2**31) + b"{"})
    write_directory(directory / "bad-dir-npy-tokenize", ok, {"embed.npy": npy_with_header("{'descr': '''<f4")})
    write_directory(directory / "bad-dir-npy-deep-header", ok, {"embed.npy": npy_with_header("(" * 5000)})
    write_directory(directory / "bad-dir-npy-shape-string", ok, {"embed.npy": npy_with_header(
        "{'descr': '<f4', 'fortran_order': False, 'shape': '4,8'}")})
    write_directory(directory / "bad-dir-npy-65-dims", ok, {"embed.npy": npy_with_header(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 65 + ")}", b"\0" * 4)})
    write_directory(directory / "bad-dir-npy-extra-key", ok, {"embed.npy": npy_with_header(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", b"\0" * 4)})
    write_directory(directory / "bad-dir-npy-truncated", ok, {"embed.npy": embed[:-7]})
    write_directory(directory / "bad-dir-npy-trailing", ok, {"embed.npy": embed + b"\0" * 3})
    write_directory(directory / "bad-dir-npy-version-9", ok, {"embed.npy": patch(embed, 6, b"\x09")})
    write_directory(directory / "bad-dir-npy-structured", ok, {"embed.npy": npy_bytes(np.zeros(2, "i4,f4"))})
    write_directory(directory / "bad-dir-npy-is-directory", {"format": FORMAT, "tensors": {"embed": "sub"}})
    (directory / "bad-dir-npy-is-directory" / "sub").mkdir(exist_ok=True)
    (directory / "bad-dir-npy-is-directory" / "sub" / "keep").write_text("a directory where a tensor file is named\n")
    write_directory(directory / "odd-dir-bom-manifest", b"\xef\xbb\xbf" + json.dumps(ok).encode(), {"embed.npy": embed})
    write_directory(directory / "odd-dir-listed-by-glob", {"format": FORMAT}, {"embed.npy": embed})


def write_small(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    write_reference(directory)
    for name, data in {**_safetensors_cases(), **_npz_cases()}.items():
        (directory / name).write_bytes(data)
    _directory_cases(directory)
    return cases(directory)


# --- made at test time ---------------------------------------------------------------


def write_special(directory: Path) -> list[Path]:
    """Cases that are large (sparse), or that git cannot hold: FIFOs, links to devices and /proc."""
    directory.mkdir(parents=True, exist_ok=True)
    embed = npy_bytes(REFERENCE_TENSORS["embed"])
    ok = {"format": FORMAT, "tensors": ["embed"]}

    sparse = directory / "odd-sparse-3gb.safetensors"  # a valid header over 3 GB of holes
    count = 3 * 2**30 // 4
    header = json.dumps({"__metadata__": {"format": FORMAT},
                         "embed": {"dtype": "F32", "shape": [count // D, D], "data_offsets": [0, count * 4]}}).encode()
    with open(sparse, "wb") as file:
        file.write(struct.pack("<Q", len(header)) + header)
        file.truncate(8 + len(header) + count * 4)

    sparse_lie = directory / "bad-sparse-3gb-short.safetensors"  # declares more than the 3 GB it has
    header = json.dumps({"embed": {"dtype": "F32", "shape": [2**31, D], "data_offsets": [0, 2**31 * D * 4]}}).encode()
    with open(sparse_lie, "wb") as file:
        file.write(struct.pack("<Q", len(header)) + header)
        file.truncate(3 * 2**30)

    write_bomb(directory / "odd-npz-bomb-1gb.npz", 2**30)  # 1 GiB of zeros, declared honestly, ~1 MB compressed
    write_bomb(directory / "bad-npz-bomb-1gb-declared-1kb.npz", 2**30, declared=1024)  # lies about its size
    write_bomb(directory / "bad-npz-bomb-1gb-as-embed.npz", 2**30, declared=256,  # lies, and matches the reference
               header_says="{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (T, D))

    os.mkfifo(directory / "bad-fifo.safetensors")
    fifo_dir = write_directory(directory / "bad-dir-npy-fifo", ok)
    os.mkfifo(fifo_dir / "embed.npy")
    fifo_manifest = write_directory(directory / "bad-dir-manifest-fifo", None, {"embed.npy": embed})
    os.mkfifo(fifo_manifest / "manifest.json")

    zero_manifest = write_directory(directory / "bad-dir-manifest-devzero", None, {"embed.npy": embed})
    os.symlink("/dev/zero", zero_manifest / "manifest.json")
    zero_npy = write_directory(directory / "bad-dir-npy-devzero", ok)
    os.symlink("/dev/zero", zero_npy / "embed.npy")
    passwd = write_directory(directory / "bad-dir-symlink-out", ok)
    os.symlink("/etc/passwd", passwd / "embed.npy")
    relative = write_directory(directory / "bad-dir-symlink-relative-out", ok)
    (directory / "outside.npy").write_bytes(embed)
    os.symlink("../outside.npy", relative / "embed.npy")
    proc = write_directory(directory / "bad-dir-symlink-proc", ok)
    os.symlink("/proc/self/environ", proc / "embed.npy")
    inside = write_directory(directory / "odd-dir-symlink-inside", ok, {"real.npy": embed})
    os.symlink("real.npy", inside / "embed.npy")
    os.symlink("/dev/zero", directory / "bad-devzero.safetensors")
    return cases(directory)


def write_bomb(path: Path, size: int, *, declared: int | None = None, header_says: str | None = None) -> None:
    """An .npz whose one member inflates to `size` bytes of zeros (after a 128-byte .npy header)
    from about size/1000 compressed, declaring `declared` (default: honestly). Each 16 MiB block is
    compressed once and repeated: after a full flush deflate restarts, so the blocks are identical."""
    header = npy_with_header((header_says or "{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % size)
                             .ljust(117) + "\n")
    block = bytes(2**24)
    assert len(header) == 128 and size % len(block) == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = first + repeated * (size // len(block)) + compressor.flush()
    crc = zlib.crc32(header)
    for _ in range(size // len(block)):
        crc = zlib.crc32(block, crc)
    total = 128 + size if declared is None else declared
    name = b"embed.npy"
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, crc, len(data), total)
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0)
               + name)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)


def cases(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.name.startswith(("bad-", "odd-")))


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus")
    shutil.rmtree(target, ignore_errors=True)
    written = write_small(target)
    print(f"wrote {len(written)} cases to {target}")
