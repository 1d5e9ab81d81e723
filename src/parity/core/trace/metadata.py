"""Trace metadata, every field read checked for its type.

Metadata comes from a file parity did not write. Each field parity reads has one
accepted type; anything else is a TraceError naming the file and field and saying
what to write instead. Fields parity does not read are kept as they are (JSON values,
already bounded in size and depth by the reader).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parity.core.trace import bounded_json as boundedjson
from parity.core.errors import TraceError
from parity.core.printable import is_printable, printable

MAX_METADATA_BYTES = 16 * 1024 * 1024    # one metadata document (manifest.json, an .npz's __metadata__)
MAX_TOKENS = 10_000_000
MAX_TENSOR_NAME_CHARS = 255
MAX_LAYERS = 65_536                      # the deepest models have a few hundred; past this a name is damage
JSON_FIELDS = ("tokens", "config", "not_comparable", "architecture", "weight_rounding",   # JSON text in
               "shards", "tensor_parallel", "start_position", "routed_as_candidate",      # safetensors' string map
               "quantized_weights")
_STRING_FIELDS = ("format", "arch", "producer", "dtype", "prompt", "emulates")
# The configuration fields parity reads (diagnose/context.py), with the type each must have.
_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "num_attention_heads": (int,), "n_head": (int,), "num_key_value_heads": (int,), "hidden_size": (int,),
    "n_embd": (int,), "head_dim": (int,), "rope_theta": (int, float), "rms_norm_eps": (int, float),
    "layer_norm_epsilon": (int, float), "model_type": (str,), "hidden_act": (str,),
    "activation_function": (str,), "rope_parameters": (dict,), "rope_scaling": (dict,),
}
_ROPE_FIELDS: dict[str, tuple[type, ...]] = {"rope_type": (str,), "rope_theta": (int, float)}
_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                "uint64", "uint32", "uint16", "uint8", "bool")


def parse_metadata(raw: Any, path: Path | str, *, where: str = "metadata") -> dict[str, Any]:
    """The metadata as parity uses it; TraceError for a field of the wrong type."""
    if not isinstance(raw, Mapping):
        raise TraceError(f"{path}: {where} is {_kind(raw)}, not an object; write a JSON object of fields")
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise TraceError(f"{path}: {where} has a key that is not a string")
        if key in JSON_FIELDS and isinstance(value, str):
            try:
                value = boundedjson.loads(value, max_bytes=MAX_METADATA_BYTES, what=f"{where} '{key}'")
            except ValueError as error:
                raise TraceError(f"{path}: {error}; write it as JSON text") from None
        metadata[key] = value
    for key in _STRING_FIELDS:
        if key in metadata and not isinstance(metadata[key], str):
            raise TraceError(f"{path}: {where} '{key}' is {_kind(metadata[key])}; write it as a string")
    _check_tokens(metadata.get("tokens"), path, where)
    if metadata.get("config") is not None and not isinstance(metadata["config"], dict):
        raise TraceError(f"{path}: {where} 'config' is {_kind(metadata['config'])}; write the model "
                         "configuration as a JSON object")
    if metadata.get("config"):
        _check_config(metadata["config"], path, where)
    start = metadata.get("start_position")
    if start is not None and not (type(start) is int and 0 <= start <= MAX_TOKENS * 100):
        raise TraceError(f"{path}: {where} 'start_position' is {_kind(start)}; write the absolute position of the "
                         "first token as a non-negative integer")
    not_comparable = metadata.get("not_comparable")
    if not_comparable is not None and not (isinstance(not_comparable, dict)
                                           and all(isinstance(v, str) for v in not_comparable.values())):
        raise TraceError(f"{path}: {where} 'not_comparable' is {_kind(not_comparable)}; write a JSON object of "
                         "checkpoint name -> reason (text)")
    _check_quantized_weights(metadata.get("quantized_weights"), path, where)
    _check_weight_rounding(metadata.get("weight_rounding"), path, where)
    return metadata


def _check_weight_rounding(rounding: Any, path: Path | str, where: str) -> None:
    """`weight_rounding`: a list of {"name": text, "type": text, "rel_l2": number, "expected_rel_l2": number}."""
    if rounding is None:
        return

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (isinstance(rounding, list) and all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("type"), str)
            and number(entry.get("rel_l2")) and number(entry.get("expected_rel_l2")) for entry in rounding)):
        raise TraceError(f"{path}: {where} 'weight_rounding' is not a list of "
                         '{"name": text, "type": text, "rel_l2": a number, "expected_rel_l2": a number}; '
                         "write it so or leave it out")


def _check_quantized_weights(quantized: Any, path: Path | str, where: str) -> None:
    """`quantized_weights`: parameter name -> {"format": text, "rounding_l2": a non-negative number or null}."""
    if quantized is None:
        return

    def valid(entry: Any) -> bool:
        rounding = entry.get("rounding_l2") if isinstance(entry, dict) else None
        return (isinstance(entry, dict) and isinstance(entry.get("format"), str)
                and isinstance(entry.get("inputs", ""), str)
                and (rounding is None or (isinstance(rounding, (int, float)) and not isinstance(rounding, bool)
                                          and 0 <= rounding < float("inf"))))

    if not (isinstance(quantized, dict) and all(valid(entry) for entry in quantized.values())):
        raise TraceError(f"{path}: {where} 'quantized_weights' is not an object of parameter name -> "
                         '{"format": text, "rounding_l2": a non-negative number or null, "inputs": text (optional)}; '
                         "write it so or leave it out")


def _check_config(config: dict, path: Path | str, where: str) -> None:
    """The fields parity reads from a model configuration: numbers where it computes with them."""
    checks = [(key, config.get(key), types) for key, types in _CONFIG_FIELDS.items()]
    for rope in ("rope_parameters", "rope_scaling"):
        if isinstance(config.get(rope), dict):
            checks += [(f"{rope}.{key}", config[rope].get(key), types) for key, types in _ROPE_FIELDS.items()]
    for key, value, types in checks:
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)
                                  or (isinstance(value, (int, float)) and not 0 < value < 2**53)):
            raise TraceError(f"{path}: {where} 'config' field '{key}' is {_kind(value)}; write "
                             f"{'a positive number' if int in types else 'text' if str in types else 'an object'} "
                             "as the model's config.json has it")


def _check_tokens(tokens: Any, path: Path | str, where: str) -> None:
    if tokens is None:
        return
    if not (isinstance(tokens, list) and len(tokens) <= MAX_TOKENS
            and all(type(token) is int and 0 <= token < 2**63 for token in tokens)):
        raise TraceError(f"{path}: {where} 'tokens' is {_kind(tokens)}; write a JSON list of the input token ids "
                         "(non-negative integers)")


def check_dtypes(dtypes: Any, path: Path | str, names: set[str]) -> dict[str, str]:
    """A manifest's `dtypes`: tensor name -> one of parity's dtype names."""
    if dtypes is None:
        return {}
    if not isinstance(dtypes, dict):
        raise TraceError(f"{path}: 'dtypes' is {_kind(dtypes)}; write an object of tensor name -> dtype name")
    for name, dtype in dtypes.items():
        if dtype not in _DTYPE_NAMES:
            raise TraceError(f"{path}: 'dtypes' gives {name!r} the dtype {str(dtype)[:40]!r}; "
                             f"use one of {', '.join(_DTYPE_NAMES)}")
    return {name: dtype for name, dtype in dtypes.items() if name in names}


def check_tensor_name(name: Any, path: Path | str) -> str:
    """A tensor name that can be printed and used as a key."""
    if not isinstance(name, str) or not name or len(name) > MAX_TENSOR_NAME_CHARS:
        raise TraceError(f"{path}: a tensor name is {_kind(name)}; names are 1 to {MAX_TENSOR_NAME_CHARS} characters")
    if not is_printable(name):
        raise TraceError(f"{path}: tensor name {name.encode('unicode_escape', 'replace')[:60]!r} holds control "
                         "characters; use canonical names like 'layers.0.q'")
    layer = _LAYER_INDEX.match(name)
    if layer is not None and (len(layer.group(1)) > 6 or int(layer.group(1)) >= MAX_LAYERS):
        raise TraceError(f"{path}: tensor {name[:60]!r} names layer {layer.group(1)[:24]}, past the {MAX_LAYERS:,} "
                         "layers a trace may have; number the layers from 0 as the model does")
    return name


_LAYER_INDEX = re.compile(r"^layers\.([0-9]+)\.", re.ASCII)


def _kind(value: Any) -> str:
    """What a JSON value is, with its article, for messages: 'an integer', "a string 'x'"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string {value[:30]!r}" if is_printable(value[:30]) else "a string"
    if isinstance(value, list):
        return f"a list {printable(json.dumps(value[:4]))[:40]}" if len(value) <= 4 else "a list"
    return {int: "an integer", float: "a number", dict: "an object", type(None): "null"}.get(type(value), "a value")
