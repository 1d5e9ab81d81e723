"""Where a module's checkpoints live: taps, their patterns, and matching them against module paths.

A tap's module pattern is a path in which `{i}` matches the layer index and `*` any
one path segment, or a regular expression after `re:` with a group named `i`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

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
