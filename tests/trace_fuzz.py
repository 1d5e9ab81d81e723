"""Fuzz inputs for the trace readers: valid seeds of the three forms, mutated.

Shared by tests/core/test_trace_fuzz.py (hypothesis, a few hundred examples) and
scripts/fuzz_traces.py (10,000+ inputs, atheris where it is installed). An input is
bytes: the first byte picks the form, the rest is the file (safetensors, npz) or, for a
directory, the manifest and the .npy files separated by SEPARATOR.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import trace_corpus

SEPARATOR = b"\n--8<--\n"
FORMS = ("safetensors", "npz", "directory")
INTERESTING = (0, 1, 7, 8, 255, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1)


def seeds() -> list[bytes]:
    """A valid trace of each form, and of each form a variant (compressed npz, bf16, no metadata)."""
    tensors = {name: trace_corpus.REFERENCE_TENSORS[name] for name in ("embed", "layers.0.q", "logits")}
    metadata = {"format": trace_corpus.FORMAT, "tokens": "[1, 2, 3, 4]", "config": '{"hidden_size": 8}'}
    safetensors = trace_corpus.safetensors_of(tensors, metadata)
    bf16 = trace_corpus.safetensors_bytes({"embed": {"dtype": "BF16", "shape": [1, 4, 8], "data_offsets": [0, 64]}},
                                          bytes(range(64)))
    members = {f"{name}.npy": trace_corpus.npy_bytes(array) for name, array in tensors.items()}
    members["__metadata__.npy"] = trace_corpus.metadata_member({"format": trace_corpus.FORMAT, "tokens": [1, 2, 3, 4]})
    manifest = json.dumps({"format": trace_corpus.FORMAT, "metadata": {"tokens": [1, 2, 3, 4], "producer": "p"},
                           "tensors": {"embed": "embed.npy", "logits": "logits.npy"},
                           "dtypes": {"embed": "float32"}}).encode()
    directory = SEPARATOR.join([manifest, trace_corpus.npy_bytes(tensors["embed"]),
                                trace_corpus.npy_bytes(tensors["logits"])])
    return [b"\0" + safetensors, b"\0" + bf16, b"\1" + trace_corpus.npz_bytes(members),
            b"\1" + trace_corpus.npz_bytes(members, compress=True), b"\2" + directory]


def materialize(data: bytes, directory: Path) -> Path:
    """Write a fuzz input as a trace under `directory` and return its path."""
    form = FORMS[data[0] % 3] if data else "safetensors"
    body = data[1:]
    if form == "safetensors":
        path = directory / "candidate.safetensors"
        path.write_bytes(body)
    elif form == "npz":
        path = directory / "candidate.npz"
        path.write_bytes(body)
    else:
        path = directory / "candidate"
        path.mkdir()
        parts = body.split(SEPARATOR)
        (path / "manifest.json").write_bytes(parts[0])
        for name, part in zip(("embed.npy", "logits.npy", "layers.0.q.npy"), parts[1:]):
            (path / name).write_bytes(part)
    return path


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits: flip, overwrite with an interesting integer, insert, delete, truncate,
    or, in a JSON region, swap a value for another JSON type."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(data) < 2:
            break
        position = rng.randrange(1, len(data))
        choice = rng.randrange(7)
        if choice == 0:
            data[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            value = rng.choice(INTERESTING)
            packed = struct.pack("<Q", value % 2**64)[:rng.choice((1, 2, 4, 8))]
            data[position:position + len(packed)] = packed
        elif choice == 2:
            data[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3:
            del data[position:position + rng.randint(1, 32)]
        elif choice == 4:
            del data[rng.randrange(1, len(data)):]
        elif choice == 5:
            data = bytearray(_swap_json_token(bytes(data), rng))
        else:
            token = rng.choice([b"[", b"{", b'"\\ud800"', b"-1", b"1e999", b"true", b"null", b'"\x1b[2J"',
                                b"18446744073709551616", b"[[[[[[[[", b"\xff\xfe"])
            data[position:position] = token
    return bytes(data)


def _swap_json_token(data: bytes, rng: random.Random) -> bytes:
    """Replace a JSON number, string or list in the data by a value of another type."""
    import re

    matches = list(re.finditer(rb'\d+|"[^"\\]{0,40}"|\[[^\[\]]{0,80}\]', data))
    if not matches:
        return data
    match = rng.choice(matches)
    replacement = rng.choice([b'"4"', b"true", b"[]", b"{}", b"null", b"-5", b"2.5", b"[1,[2,[3]]]", b'"F32"',
                              b"99999999999999999999", b'["x"]', b'{"a":"\\u001b[31m"}'])
    return data[:match.start()] + replacement + data[match.end():]


def random_input(rng: random.Random, seed_inputs: list[bytes]) -> bytes:
    """A fuzz input: a mutated seed, usually; sometimes random bytes in a random form."""
    if rng.random() < 0.05:
        return bytes([rng.randrange(3)]) + rng.randbytes(rng.randint(0, 256))
    return mutate(rng.choice(seed_inputs), rng)
