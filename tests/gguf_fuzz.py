"""Fuzzing GGUF headers: mutations of the seed's header, and the oracle that judges what parity accepts.

`mutate_header` edits the header region only (the bytes before the tensor data): flips, interesting
integers, NaN and infinities in float fields, structured edits of one field or tensor. `unsound` is
the oracle: gguf-py's own reader and the rules of issue 24, written without parity's reader, so that
a pass of a file it rejects is a silent pass. Used by tests/capture/gguf/test_gguf_fuzz.py (a few
hundred) and scripts/fuzz_surfaces.py (10,000).
"""

from __future__ import annotations

import math
import os
import random
import struct
from dataclasses import replace
from pathlib import Path

from gguf_corpus import ARRAY, FLOATS, GGUF, INTERESTING, SCALARS, STRING, Field, build, parse


def header_length(data: bytes) -> int:
    return len(build(replace(parse(data), data=b"")))


def mutate_header(data: bytes, rng: random.Random, base: GGUF | None = None) -> bytes:
    """One to three edits, all before the tensor data: structured (a field's value, a tensor's type,
    shape or offset, a count) or raw (flip, interesting integer, insert, delete, truncate)."""
    if base is not None and rng.random() < 0.6:
        return build(_structured(base, rng))
    end = header_length(data) if base is None else len(build(replace(base, data=b"")))
    body = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if len(body) < 6:
            break
        position = rng.randrange(4, max(min(end, len(body) - 1), 5))
        choice = rng.randrange(6)
        if choice == 0:
            body[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            packed = struct.pack("<Q", rng.choice(INTERESTING) % 2**64)[:rng.choice((1, 2, 4, 8))]
            body[position:position + len(packed)] = packed
        elif choice == 2:
            body[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice == 3:
            del body[position:position + rng.randint(1, 16)]
        elif choice == 4:
            del body[rng.randrange(4, len(body)):]
        else:
            body[position:position + 4] = struct.pack("<f", rng.choice(FLOATS))
    return bytes(body)


def _structured(base: GGUF, rng: random.Random) -> GGUF:
    gguf = replace(base, fields=list(base.fields), tensors=list(base.tensors))
    for _ in range(rng.randint(1, 2)):
        choice = rng.randrange(5)
        if choice == 0:   # a field's value
            index = rng.randrange(len(gguf.fields))
            old = gguf.fields[index]
            gguf.fields[index] = Field(old.key, old.type, _other_value(old, rng))
        elif choice == 1:   # a tensor's type, shape or offset
            index = rng.randrange(len(gguf.tensors))
            tensor = gguf.tensors[index]
            what = rng.randrange(3)
            if what == 0:
                tensor = replace(tensor, type_id=rng.choice((0, 1, 2, 8, 12, 30, 31, 77, 2**31)))
            elif what == 1:
                dims = list(tensor.shape)
                dims[rng.randrange(len(dims))] = rng.choice(INTERESTING)
                tensor = replace(tensor, shape=tuple(dims[:rng.choice((len(dims), 1, 5))] or [1]))
            else:
                tensor = replace(tensor, offset=rng.choice((*INTERESTING, tensor.offset + 1, max(tensor.offset - 32, 0))))
            gguf.tensors[index] = tensor
        elif choice == 2:   # a count
            if rng.random() < 0.5:
                gguf = replace(gguf, tensor_count=rng.choice((0, len(gguf.tensors) - 1, len(gguf.tensors) + 1, 2**31)))
            else:
                gguf = replace(gguf, field_count=rng.choice((0, len(gguf.fields) - 1, len(gguf.fields) + 1)))
        elif choice == 3:   # a tensor or field removed
            if rng.random() < 0.5 and gguf.tensors:
                del gguf.tensors[rng.randrange(len(gguf.tensors))]
            else:
                del gguf.fields[rng.randrange(len(gguf.fields))]
        else:   # a hostile string where a name is
            text = rng.choice(("\x1b[2J", "\u202e", "../../etc/passwd", "a" * 70, "", "blk.999999999.x"))
            if rng.random() < 0.5:
                index = rng.randrange(len(gguf.tensors))
                gguf.tensors[index] = replace(gguf.tensors[index], name=text)
            else:
                gguf = gguf.set("general.architecture", text, STRING)
    return gguf


def _other_value(old: Field, rng: random.Random):
    if old.type == ARRAY:
        element, values = old.value
        if rng.random() < 0.5:
            return element, values[: rng.randrange(len(values) + 1)]
        return element, values + values[: rng.randint(1, 5)]
    if old.type == STRING:
        return rng.choice(("", "\x1b[31mred", "llama", "gpt2", "\udcff", "x" * 1000))
    if old.type in (6, 12):
        return rng.choice(FLOATS)
    if old.type == 7:
        return rng.random() < 0.5
    layout = SCALARS[old.type]
    size = struct.calcsize(layout)
    low, high = (-(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1) if layout[-1].islower() and layout[-1] != "?" \
        else (0, 2 ** (8 * size) - 1)
    return min(max(rng.choice((*INTERESTING, -1, old.value + 1, old.value - 1)), low), high)


def unsound(path: Path) -> str | None:
    """Why gguf-py's own reader, and the rules of issue 24 checked on what it read, find the file unsound;
    None when sound. Written without parity's reader, to judge it: a pass of an unsound file is silent."""
    import gguf as gguf_py
    import numpy as np

    try:
        reader = gguf_py.GGUFReader(str(path))
    except Exception as error:  # noqa: BLE001 - any failure of the reference reader is unsoundness
        return f"gguf-py cannot read it: {type(error).__name__}"
    size = os.path.getsize(path)
    if not reader.tensors:
        return "no tensors"
    spans = sorted((int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors)
    if spans[-1][1] > size or any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        return "tensor data out of bounds or overlapping"

    def scalar(key):
        field_ = reader.fields.get(key)
        if field_ is None or not field_.data:
            return None
        value = field_.parts[field_.data[0]]
        return value.tobytes().decode("utf-8", "replace") if field_.types[0] == gguf_py.GGUFValueType.STRING \
            else value.item() if np.size(value) == 1 else None

    arch = scalar("general.architecture")
    if not isinstance(arch, str) or not arch.isascii() or not arch.replace("_", "").isalnum():
        return "architecture"
    blocks = scalar(f"{arch}.block_count")
    if blocks is not None and not 1 <= blocks <= 4096:
        return "block count"
    for key in (f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.attention.layer_norm_epsilon"):
        eps = scalar(key)
        if eps is not None and not (math.isfinite(eps) and 0 <= eps < 1):
            return "epsilon"
    base = scalar(f"{arch}.rope.freq_base")
    if base is not None and not (math.isfinite(base) and 0 < base <= 1e12):
        return "rope base"
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else None
    for which in ("bos", "eos", "unknown", "padding"):
        token = scalar(f"tokenizer.ggml.{which}_token_id")
        if token is not None and vocab is not None and not 0 <= token < vocab:
            return f"{which} id"
    return None
