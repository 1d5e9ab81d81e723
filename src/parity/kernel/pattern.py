"""The pattern in a kernel's failures, in words: tile sizes, conditions, dtypes, lengths, the backward."""

from __future__ import annotations

from parity.core.results.kernel import CaseResult

TILES = (256, 128, 64, 32, 16, 8)


def describe(cases: tuple[CaseResult, ...]) -> str | None:
    """'fails at T = 13, 127, 257: lengths that are not a multiple of 64', or None when every case passes."""
    failing = [case for case in cases if not case]
    if not failing:
        return None
    if any(case.broken_autograd for case in cases):
        return "broken autograd: " + next(case.backward["reason"] for case in cases if case.broken_autograd)
    phrases = [_lengths(cases, failing), _positions(failing)]
    phrases.append(_subset("only on {} inputs", "condition", cases, failing))
    phrases.append(_subset("only at {}", "dtype", cases, failing))
    if all(case.forward.get("passed") for case in failing):
        phrases.append("the forward pass matches, the backward does not")
    phrases = [phrase for phrase in phrases if phrase]
    return "; ".join(phrases) if phrases else f"fails in {len(failing)}/{len(cases)} cases with no common pattern"


def _lengths(cases, failing) -> str | None:
    lengths = sorted({case.length for case in cases})
    bad = sorted({case.length for case in failing})
    listed = ", ".join(map(str, bad))
    if len(bad) == len(lengths):
        return None
    for tile in TILES:
        if bad == [length for length in lengths if length % tile] and any(length % tile == 0 for length in lengths):
            return f"fails at T = {listed}: lengths that are not a multiple of {tile}"
    first = bad[0]
    if bad == [length for length in lengths if length >= first]:
        return f"fails at T = {listed}: lengths of {first} and more"
    return f"fails at T = {listed}"


def _positions(failing) -> str | None:
    """Where along T the wrong rows lie, when every failing case says and they agree: the last row, the first
    rows, or the rows past a tile."""
    wrong = [(case.length, case.forward.get("positions_over")) for case in failing]
    if not wrong or any(not positions for _, positions in wrong):
        return None
    if all(positions == [length - 1] for length, positions in wrong):
        return "only the last position (row T - 1) is wrong: a final row or tile never written or masked off"
    if all(positions == [0] for _, positions in wrong):
        return "only the first position (row 0) is wrong"
    for tile in TILES:
        if all(positions == list(range(length - length % tile, length)) for length, positions in wrong):
            return f"the rows past the last full tile of {tile} are wrong"
    return None


def _subset(template: str, attribute: str, cases, failing) -> str | None:
    every = sorted({getattr(case, attribute) for case in cases})
    bad = sorted({getattr(case, attribute) for case in failing})
    if len(bad) == len(every):
        return None
    return template.format(" and ".join(bad))
