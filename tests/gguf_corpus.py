"""Damaged and hostile GGUF files, made from one tiny valid seed; and the fuzzing of GGUF headers.

The seed (tests/corpus_gguf/seed-llama-f16.gguf, 29 KB) is tiny_models' llama at hidden 32, one
layer, converted by llama.cpp's own converter to F16: both transformers and llama.cpp load it.
`parse` and `build` read and write a GGUF with nothing checked, so that any field, count, type or
offset can be set to what a damaged or hostile file holds. The committed corpus
(tests/corpus_gguf/cases.json, a few KB: `python tests/gguf_corpus.py` rewrites it) holds one case
per fault (`bad-*`: exit 2 and one line) and the inputs fuzzing found (`found-*`), each as its
compressed start and the length of the tail it shares with the seed; `write_small(directory)`
writes them as files. `write_special(directory)` makes what git cannot hold (a FIFO, links to
/dev/zero and /proc, a directory named x.gguf).

Fuzzing them is tests/gguf_fuzz.py's.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus_gguf"
SEED = CORPUS / "seed-llama-f16.gguf"
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
INTERESTING = (0, 1, 7, 31, 32, 255, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**50, 2**63 - 1, 2**64 - 1)
FLOATS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-45, 1e38, -5.0, 1e30)


@dataclass
class Field:
    key: str
    type: int
    value: object                  # a scalar, a str, or for an array (element type, [values])


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int


@dataclass
class GGUF:
    version: int
    fields: list[Field]
    tensors: list[Tensor]
    data: bytes                    # the data section
    alignment: int = 32
    tensor_count: int | None = None   # None: len(tensors)
    field_count: int | None = None

    def field(self, key: str) -> Field:
        return next(f for f in self.fields if f.key == key)

    def set(self, key: str, value, value_type: int | None = None) -> "GGUF":
        fields = [f for f in self.fields if f.key != key]
        old = next((f for f in self.fields if f.key == key), None)
        fields.append(Field(key, value_type if value_type is not None else old.type, value))
        return replace(self, fields=fields)


# --- reading and writing, nothing checked ---------------------------------------------------


def parse(data: bytes) -> GGUF:
    position = 0

    def take(layout: str):
        nonlocal position
        (value,) = struct.unpack_from(layout, data, position)
        position += struct.calcsize(layout)
        return value

    def string() -> str:
        nonlocal position
        length = take("<Q")
        text = data[position:position + length].decode("utf-8", errors="surrogateescape")
        position += length
        return text

    def value(kind: int):
        if kind in SCALARS:
            return take(SCALARS[kind])
        if kind == STRING:
            return string()
        element, count = take("<I"), take("<Q")
        return element, [value(element) for _ in range(count)]

    assert data[:4] == b"GGUF"
    position = 4
    version, tensor_count, field_count = take("<I"), take("<Q"), take("<Q")
    fields = []
    for _ in range(field_count):
        key = string()
        kind = take("<I")
        fields.append(Field(key, kind, value(kind)))
    tensors = []
    for _ in range(tensor_count):
        name = string()
        dims = take("<I")
        shape = tuple(take("<Q") for _ in range(dims))
        tensors.append(Tensor(name, shape, take("<I"), take("<Q")))
    alignment = next((f.value for f in fields if f.key == "general.alignment"), 32)
    start = position + (-position % alignment)
    return GGUF(version, fields, tensors, data[start:], alignment)


def build(gguf: GGUF) -> bytes:
    out = bytearray(b"GGUF")

    def put(layout: str, value) -> None:
        out.extend(struct.pack(layout, value))

    def put_string(text: str) -> None:
        raw = text.encode("utf-8", errors="surrogateescape")
        put("<Q", len(raw))
        out.extend(raw)

    def put_value(kind: int, value) -> None:
        if kind in SCALARS:
            put(SCALARS[kind], value)
        elif kind == STRING:
            put_string(value)
        else:
            element, values = value
            put("<I", element)
            put("<Q", len(values))
            for item in values:
                put_value(element, item)

    put("<I", gguf.version)
    put("<Q", len(gguf.tensors) if gguf.tensor_count is None else gguf.tensor_count)
    put("<Q", len(gguf.fields) if gguf.field_count is None else gguf.field_count)
    for item in gguf.fields:
        put_string(item.key)
        put("<I", item.type)
        put_value(item.type, item.value)
    for tensor in gguf.tensors:
        put_string(tensor.name)
        put("<I", len(tensor.shape))
        for dim in tensor.shape:
            put("<Q", dim)
        put("<I", tensor.type_id)
        put("<Q", tensor.offset)
    out.extend(bytes(-len(out) % gguf.alignment))
    return bytes(out + gguf.data)


def seed() -> GGUF:
    return parse(SEED.read_bytes())


# --- one file per fault ----------------------------------------------------------------------


def _tensor(gguf: GGUF, name: str) -> Tensor:
    return next(t for t in gguf.tensors if t.name == name)


def _with_tensor(gguf: GGUF, which: str, **changes) -> GGUF:
    return replace(gguf, tensors=[replace(t, **changes) if t.name == which else t for t in gguf.tensors])


def bad_cases() -> dict[str, tuple[bytes, str]]:
    """file name -> (its bytes, what the one-line error must say)."""
    base = seed()
    data = SEED.read_bytes()
    first, second = base.tensors[0], base.tensors[1]
    tokens = len(base.field("tokenizer.ggml.tokens").value[1])
    header_end = len(build(replace(base, data=b"")))
    tokens_field = next(i for i, f in enumerate(base.fields) if f.key == "tokenizer.ggml.tokens")
    huge_string = build(replace(base, data=b""))
    # the first vocabulary string's length, set to 2^50: find it after the array's element type and count
    key = b"tokenizer.ggml.tokens"
    at = huge_string.index(key) + len(key) + 4 + 4 + 8
    huge_string = huge_string[:at] + struct.pack("<Q", 2**50) + huge_string[at + 8:] + base.data
    assert tokens_field >= 0
    return {
        "bad-zero-tensors.gguf": (build(replace(base, tensors=[], data=b"")), "declares no tensors"),
        "bad-type-size.gguf": (build(_with_tensor(base, first.name, type_id=2)), "its type does not match its size"),
        "bad-type-unknown.gguf": (build(_with_tensor(base, first.name, type_id=77)), "type 77, which ggml does not"),
        "bad-past-end.gguf": (build(_with_tensor(base, first.name, offset=len(base.data))), "runs past the end"),
        "bad-misaligned.gguf": (build(_with_tensor(base, second.name, offset=second.offset + 2)),
                                "not a multiple of the alignment"),
        "bad-overlap.gguf": (build(_with_tensor(base, second.name, offset=first.offset)), "overlap"),
        "bad-eps-nan.gguf": (build(base.set("llama.attention.layer_norm_rms_epsilon", math.nan)),
                             "layer_norm_rms_epsilon is nan"),
        "bad-eps-negative.gguf": (build(base.set("llama.attention.layer_norm_rms_epsilon", -1e-5)), "epsilon"),
        "bad-rope-negative.gguf": (build(base.set("llama.rope.freq_base", -10000.0)), "llama.rope.freq_base is -10000"),
        "bad-rope-inf.gguf": (build(base.set("llama.rope.freq_base", math.inf)), "not a RoPE base"),
        "bad-bos-outside.gguf": (build(base.set("tokenizer.ggml.bos_token_id", tokens + 5)),
                                 f"bos_token_id is {tokens + 5}, outside the vocabulary"),
        "bad-blocks-zero.gguf": (build(base.set("llama.block_count", 0)), "llama.block_count is 0"),
        "bad-blocks-2pow31.gguf": (build(base.set("llama.block_count", 2**31)), "llama.block_count is 2147483648"),
        "bad-blocks-more.gguf": (build(base.set("llama.block_count", 2)), "the tensors number 1 block (blk.0 to blk.0)"),
        "bad-heads-zero.gguf": (build(base.set("llama.attention.head_count", 0)), "head_count is 0"),
        "bad-vocab-string-2pow50.gguf": (huge_string, "runs past the end"),
        "bad-scores-short.gguf": (build(base.set("tokenizer.ggml.scores", (6, [0.0] * (tokens - 1)))),
                                  f"holds {tokens - 1} entries for {tokens} tokens"),
        "bad-arch-escape.gguf": (build(_rename_arch(base, "llama\x1b[2J\x1b]0;pwned\x07")),
                                 "not an architecture name"),
        "bad-truncated.gguf": (data[: header_end - 10], "past the end"),
        "bad-magic.gguf": (b"GGUX" + data[4:], "magic"),
        "bad-version.gguf": (data[:4] + struct.pack("<I", 9) + data[8:], "version 9"),
        "bad-tensor-count.gguf": (data[:8] + struct.pack("<Q", 2**40) + data[16:], "more than"),
        "bad-duplicate-tensor.gguf": (build(_with_tensor(base, second.name, name=first.name)), "twice"),
        "bad-dims-zero.gguf": (build(_with_tensor(base, first.name, shape=(0, 96))), "dimensions of at least 1"),
    }


def _rename_arch(gguf: GGUF, arch: str) -> GGUF:
    fields = [Field(f.key.replace("llama.", f"{arch}.", 1) if f.key.startswith("llama.") else f.key, f.type, f.value)
              for f in gguf.fields]
    return replace(gguf, fields=fields).set("general.architecture", arch)


# --- the committed corpus: each case as the seed with a different start ---------------------------------

CASES = CORPUS / "cases.json"


def encode(data: bytes, seed_bytes: bytes) -> dict:
    """A case as (its bytes before the tail it shares with the seed, compressed; that tail's length)."""
    import base64
    import zlib

    shared = 0
    while shared < min(len(data), len(seed_bytes)) and data[-1 - shared] == seed_bytes[-1 - shared]:
        shared += 1
    head = data[:len(data) - shared]
    return {"head": base64.b64encode(zlib.compress(head, 9)).decode(), "seed_tail": shared}


def decode(entry: dict, seed_bytes: bytes) -> bytes:
    import base64
    import zlib

    tail = seed_bytes[len(seed_bytes) - entry["seed_tail"]:] if entry["seed_tail"] else b""
    return zlib.decompress(base64.b64decode(entry["head"])) + tail


def corpus_document() -> dict:
    """The crafted cases, and the inputs fuzzing once found (kept as they were committed)."""
    seed_bytes = SEED.read_bytes()
    document = {name: {**encode(data, seed_bytes), "says": says} for name, (data, says) in bad_cases().items()}
    if CASES.is_file():
        document.update({name: entry for name, entry in json.loads(CASES.read_text()).items()
                         if name.startswith("found-")})
    return dict(sorted(document.items()))


def write_small(directory: Path) -> dict[str, str]:
    """Each committed case as a file in `directory`: name -> what its error must say."""
    directory.mkdir(parents=True, exist_ok=True)
    seed_bytes = SEED.read_bytes()
    expected = {}
    for name, entry in json.loads(CASES.read_text()).items():
        (directory / name).write_bytes(decode(entry, seed_bytes))
        expected[name] = entry["says"]
    return expected


def write_special(directory: Path) -> dict[str, str]:
    """What git cannot hold: name -> what its error must say."""
    directory.mkdir(parents=True, exist_ok=True)
    os.mkfifo(directory / "bad-fifo.gguf")
    (directory / "bad-directory.gguf").mkdir()
    (directory / "bad-dev-zero.gguf").symlink_to("/dev/zero")
    (directory / "bad-proc-environ.gguf").symlink_to(f"/proc/{os.getpid()}/environ")
    return {"bad-fifo.gguf": "is a FIFO", "bad-directory.gguf": "is a directory",
            "bad-dev-zero.gguf": "is a device", "bad-proc-environ.gguf": "a system file"}


if __name__ == "__main__":
    CASES.write_text(json.dumps(corpus_document(), indent=1) + "\n")
    print(f"wrote {len(json.loads(CASES.read_text()))} cases to {CASES}")
