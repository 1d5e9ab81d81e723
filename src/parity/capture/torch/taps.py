"""Where a module's checkpoints live: taps, their patterns, and matching them against module paths.

A tap's module pattern is a path in which `{i}` matches the layer index and `*` any
one path segment, or a regular expression after `re:` with a group named `i`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from parity.core.errors import OptionError
from parity.core.names import FAMILY_TAPS, TAP_IOS, Tap

TapsLike = str | Mapping[str, str | Sequence[str]] | Sequence[Tap]
_IO_SUFFIXES = tuple(TAP_IOS)


def resolve_taps(taps: TapsLike) -> tuple[Tap, ...]:
    """Turn a family name, a {pattern: name(s)} mapping, Tap objects, or a list
    mixing them (`["nanogpt", {"h.{i}.attn.probs": "layers.{i}.attn_probs"}]`) into Taps.
    In a list, a later entry for the same module and io replaces an earlier one,
    and an entry with no names (`"h.{i}.attn.c_attn": ()`) removes it."""
    if isinstance(taps, (list, tuple)) and not all(isinstance(tap, Tap) for tap in taps):
        # later entries for the same module and io replace earlier ones; no names removes a tap
        merged = {(tap.module, tap.io): tap for part in taps for tap in resolve_taps(part)}
        return tuple(tap for tap in merged.values() if tap.names)
    if isinstance(taps, Tap):
        return (taps,)
    if isinstance(taps, str):
        if taps not in FAMILY_TAPS:
            raise OptionError(f"no built-in mapping named '{taps}'; choose one of {', '.join(FAMILY_TAPS)}")
        return FAMILY_TAPS[taps]
    if isinstance(taps, Mapping):
        resolved = []
        for pattern, names in taps.items():
            module, io = pattern, "output"
            head, colon, suffix = pattern.rpartition(":")
            if colon and suffix in _IO_SUFFIXES:
                module, io = head, suffix   # `output` alone is a module's name (gpt-fast's and Meta's head)
            names = (names,) if isinstance(names, str) else tuple(names)
            resolved.append(Tap(module=module, names=names, io=io))
        return tuple(resolved)
    return tuple(taps)


def compile_pattern(pattern: str) -> re.Pattern:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:] + r"\Z")
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\*", r"[^.]+")
    return re.compile(regex + r"\Z")


def fill_layer(name: str, match: re.Match | None) -> str:
    return name.replace("{i}", match.group("i")) if match is not None and "{i}" in name else name


def index_taps(taps: tuple[Tap, ...]):
    """Taps by literal module path, and the compiled patterns of the others
    (a transformers model mapped from its structure has hundreds of literal taps)."""
    exact: dict[str, list[Tap]] = {}
    patterns = []
    for tap in taps:
        if tap.module.startswith("re:") or "{i}" in tap.module or "*" in tap.module:
            patterns.append((tap, compile_pattern(tap.module)))
        else:
            exact.setdefault(tap.module, []).append(tap)
    return exact, patterns


def matching_taps(path: str, exact, patterns):
    for tap in exact.get(path, ()):
        yield tap, None
    for tap, pattern in patterns:
        match = pattern.match(path)
        if match is not None:
            yield tap, match


def holds_weights(tap: Tap, names: tuple[str, ...]) -> bool:
    """Whether the module a tap names gives its parameters to a checkpoint (`names[0]`.weight, ...): one whose
    single output is that checkpoint, a per-head one, or a `weights` tap."""
    return bool(names) and bool(names[0]) and (tap.io in ("heads", "weights")
                                               or (tap.io == "output" and len(names) == 1))


def parameter_owners(model, taps: TapsLike) -> dict[str, Any]:
    """The module that holds each checkpoint's parameter as its own (`layers.0.q.weight` -> module), as a trace's
    weights are named; the first by path."""
    exact, patterns = index_taps(resolve_taps(taps))
    owners: dict[str, Any] = {}
    for path, module in model.named_modules():
        for tap, match in matching_taps(path, exact, patterns):
            names = tuple(fill_layer(name, match) for name in tap.names)
            if holds_weights(tap, names):
                for parameter, _ in module.named_parameters(recurse=False):
                    owners.setdefault(f"{names[0]}.{parameter}", module)
    return owners


def rounded_inputs(model, taps: TapsLike) -> dict[str, str]:
    """{checkpoint: how} for each checkpoint made by a module that quantizes its input as it runs
    (quantized.input_rounding), as its weights are filed (a down projection's under its MLP's output)."""
    from parity.capture.torch.quantized import input_rounding

    exact, patterns = index_taps(resolve_taps(taps))
    found: dict[str, str] = {}
    for path, module in model.named_modules():
        how = input_rounding(module)
        for tap, match in matching_taps(path, exact, patterns) if how else ():
            names = tuple(fill_layer(name, match) for name in tap.names)
            if holds_weights(tap, names):       # the checkpoint its weight is filed under: its op's output
                found.setdefault(names[0], how)
    return found
