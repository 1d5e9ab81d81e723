"""What a GGUF header says, checked before transformers or llama.cpp reads the file.

Both libraries trust the header: transformers builds a randomly initialised model
from a file that declares no tensors (and compares against it), and llama.cpp
aborts the process on a NaN epsilon or a block count of 0, or allocates for
minutes for a block count of 2^31. Each rule below is one line of refusal naming
the field or tensor and what it holds:

  tensors    at least one; each with 1 to 4 dimensions of at least 1, a type ggml
             defines, a first dimension that is a whole number of the type's
             blocks; its data aligned, inside the file, overlapping no other's, and
             filling the room up to the next (writers pack them: room for more or
             for less is a type that does not match the size)
  counts     {arch}.block_count from 1 to MAX_BLOCKS and equal to the blocks the
             tensors number (blk.N.*); head counts, widths and lengths positive and
             bounded; experts used at most the experts there are
  numbers    epsilons finite and in [0, 1); the RoPE base finite and in (0, 1e12]
  tokens     the vocabulary's scores and types as long as its tokens; the BOS, EOS,
             unknown, padding and separator ids inside the vocabulary
  names      the architecture a plain name ([a-z0-9_]), so nothing it holds can
             reach the terminal
"""

from __future__ import annotations

import math
import re

from parity.capture.gguf.types import GGML_TYPES, GGUFHeader
from parity.core.errors import CaptureError
from parity.core.printable import printable

MAX_BLOCKS = 4096                  # the deepest models have a few hundred layers
MAX_DIMS = 4                       # GGML_MAX_DIMS
MAX_TENSOR_NAME_BYTES = 63         # GGML_MAX_NAME, less its terminating zero
MAX_WIDTH = 1 << 20                # embedding, feed-forward and head widths
MAX_HEADS = 1 << 14
MAX_CONTEXT = 1 << 32
MAX_ROPE_BASE = 1e12
_ARCHITECTURE = re.compile(r"^[a-z0-9_]{1,40}$")
_BLOCK = re.compile(r"^blk\.(\d{1,9})\.")
_STRING_TYPE, _FLOAT32_TYPE, _INT32_TYPE = 8, 6, 5
_POSITIVE_FIELDS = ("embedding_length", "feed_forward_length", "context_length", "attention.head_count",
                    "attention.head_count_kv", "attention.key_length", "attention.value_length", "expert_count",
                    "vocab_size", "rope.dimension_count")   # a head of width 0: transformers divides by it
_BOUNDS = {"context_length": MAX_CONTEXT, "attention.head_count": MAX_HEADS, "attention.head_count_kv": MAX_HEADS,
           "expert_count": 1 << 12, "vocab_size": 1 << 24}
# The special tokens transformers' tokenizer reads from a GGUF. llama.cpp ignores any other id outside the
# vocabulary (its converter writes Gemma's end-of-turn id 107 into tiny vocabularies), and so does parity.
_SPECIAL_TOKENS = ("bos", "eos", "unknown", "padding", "seperator", "separator")
_EPSILONS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")
_FIX = "the file is damaged or was written wrong: convert the model again"


def check_header(header: GGUFHeader, shown: str) -> None:
    """Raise CaptureError, in one line, for the first thing in `header` that no sound GGUF says."""
    def refuse(why: str) -> CaptureError:
        return CaptureError(f"{shown}: not a usable GGUF ({why}); {_FIX}")

    arch = _architecture(header, refuse)
    _check_tensors(header, refuse)
    _check_counts(header, arch, refuse)
    _check_numbers(header, arch, refuse)
    _check_vocabulary(header, refuse)


def _architecture(header: GGUFHeader, refuse) -> str:
    arch = header.fields.get("general.architecture")
    if not isinstance(arch, str):
        raise refuse("general.architecture is missing or not a string")
    if not _ARCHITECTURE.match(arch):
        raise refuse(f"general.architecture is {printable(repr(arch))[:50]}, not an architecture name")
    return arch


def _check_tensors(header: GGUFHeader, refuse) -> None:
    if not header.tensors:
        raise refuse("it declares no tensors: transformers would build a randomly initialised model from it")
    alignment = header.fields.get("general.alignment", 32)
    spans = []
    for info in header.tensors.values():
        name = printable(info.name)[:60]
        if not info.name or len(info.name.encode("utf-8", "surrogateescape")) > MAX_TENSOR_NAME_BYTES:
            raise refuse(f"tensor name '{name}' is empty or over {MAX_TENSOR_NAME_BYTES} bytes")
        if not 1 <= len(info.shape) <= MAX_DIMS or min(info.shape) < 1:
            raise refuse(f"tensor '{name}' has shape {list(info.shape)[:8]}: 1 to {MAX_DIMS} dimensions of at least 1")
        if info.type_id not in GGML_TYPES:
            raise refuse(f"tensor '{name}' has type {info.type_id}, which ggml does not define")
        type_name, block, block_bytes = GGML_TYPES[info.type_id]
        if info.shape[0] % block:
            raise refuse(f"tensor '{name}' is {type_name}, in blocks of {block}, but its rows hold {info.shape[0]} "
                         "elements: its type does not match its size")
        elements = math.prod(info.shape)
        size = elements // block * block_bytes
        start = header.data_start + info.offset
        if info.offset % alignment:
            raise refuse(f"tensor '{name}' starts at data offset {info.offset:,}, not a multiple of the alignment "
                         f"{alignment}")
        if elements >= 1 << 62 or start + size > header.size:
            raise refuse(f"tensor '{name}' ({type_name} {list(info.shape)}, {size:,} bytes at data offset "
                         f"{info.offset:,}) runs past the end of the {header.size:,}-byte file")
        spans.append((info.offset, info.offset + size, name, f"{type_name} {list(info.shape)}"))
    spans.sort()
    ends = [start for start, *_ in spans[1:]] + [header.size - header.data_start]
    for (start, end, name, kind), following in zip(spans, ends):
        if following < end:
            raise refuse(f"tensors '{name}' and the one after it overlap in the data section")
        if following - end >= alignment:   # writers pack tensors: room for more is a type that does not match
            raise refuse(f"tensor '{name}' is {kind}, {end - start:,} bytes, but {following - start:,} bytes lie "
                         "before the next tensor or the end: its type does not match its size")


def _check_counts(header: GGUFHeader, arch: str, refuse) -> None:
    blocks = header.fields.get(f"{arch}.block_count")
    numbered = [int(match.group(1)) for match in map(_BLOCK.match, header.tensors) if match]
    if blocks is not None:
        if not _is_int(blocks) or not 1 <= blocks <= MAX_BLOCKS:
            raise refuse(f"{arch}.block_count is {printable(blocks)[:24]}, not a number of layers from 1 to "
                         f"{MAX_BLOCKS:,}")
        if numbered and max(numbered) + 1 != blocks:
            count = max(numbered) + 1
            raise refuse(f"{arch}.block_count is {blocks} but the tensors number {count} block{'s' * (count > 1)} "
                         f"(blk.0 to blk.{max(numbered)})")
    elif numbered and max(numbered) >= MAX_BLOCKS:
        raise refuse(f"a tensor names block {max(numbered)}, past {MAX_BLOCKS:,}")
    for field in _POSITIVE_FIELDS:
        value = header.fields.get(f"{arch}.{field}")
        if isinstance(value, tuple):   # an array: per-layer values
            continue
        limit = _BOUNDS.get(field, MAX_WIDTH)
        if value is not None and (not _is_int(value) or not 1 <= value <= limit):
            raise refuse(f"{arch}.{field} is {printable(value)[:24]}, not a count from 1 to {limit:,}")
    experts, used = header.fields.get(f"{arch}.expert_count"), header.fields.get(f"{arch}.expert_used_count")
    if used is not None and (not _is_int(used) or used < 0 or (_is_int(experts) and used > experts)):
        raise refuse(f"{arch}.expert_used_count is {printable(used)[:24]}, more than the {experts} experts or not a count")


def _check_numbers(header: GGUFHeader, arch: str, refuse) -> None:
    for field in _EPSILONS:
        value = header.fields.get(f"{arch}.{field}")
        if value is not None and not (_is_number(value) and 0 <= value < 1):
            raise refuse(f"{arch}.{field} is {printable(value)[:24]}, not a norm epsilon (finite, from 0 to 1)")
    for field in ("rope.freq_base", "rope.freq_base_swa"):
        base = header.fields.get(f"{arch}.{field}")
        if base is not None and not (_is_number(base) and 0 < base <= MAX_ROPE_BASE):
            raise refuse(f"{arch}.{field} is {printable(base)[:24]}, not a RoPE base (finite, above 0, at most 1e12)")
    scale = header.fields.get(f"{arch}.rope.scaling.factor")
    if scale is not None and not (_is_number(scale) and 0 <= scale <= 1e6):
        raise refuse(f"{arch}.rope.scaling.factor is {printable(scale)[:24]}, not a scaling factor")


def _check_vocabulary(header: GGUFHeader, refuse) -> None:
    tokens = header.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        size = None
    elif not isinstance(tokens, tuple) or tokens[1] != _STRING_TYPE or not 1 <= tokens[2] <= 1 << 24:
        raise refuse("tokenizer.ggml.tokens is not a list of 1 to 16,777,216 strings")
    else:
        size = tokens[2]
        for key, element in (("tokenizer.ggml.scores", _FLOAT32_TYPE), ("tokenizer.ggml.token_type", _INT32_TYPE)):
            array = header.fields.get(key)
            if array is not None and (not isinstance(array, tuple) or array[1] != element or array[2] != size):
                count = array[2] if isinstance(array, tuple) else "not a list"
                raise refuse(f"{key} holds {count} entries for {size} tokens")
    for which in _SPECIAL_TOKENS:
        key = f"tokenizer.ggml.{which}_token_id"
        value = header.fields.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 0 or (size is not None and value >= size):
            within = f"ids 0 to {size - 1}" if size is not None else "a token id"
            raise refuse(f"{key} is {printable(value)[:24]}, outside the vocabulary ({within})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
