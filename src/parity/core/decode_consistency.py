"""KV-cache and decode-path consistency: token-by-token decoding after a prefill against one full pass.

Row 0 is the last prompt position (from the prefill), row k the k-th token
decoded through the cache. Each row's logits must match the full pass's logits
at the same position to within a bound on rel_l2 (the dtype's table, or the
candidate's calibrated noise at that position).
"""

from __future__ import annotations

from parity.core.metrics import rel_l2
from parity.core.results import CacheComparison, DecodeConsistency


def compare_decode(full_rows, incremental_rows, bounds, *, prompt_length: int, basis: str) -> DecodeConsistency:
    errors = tuple(rel_l2(full, incremental) for full, incremental in zip(full_rows, incremental_rows))
    first = next((step for step, (error, bound) in enumerate(zip(errors, bounds)) if not error <= bound), None)
    return DecodeConsistency(prompt_length, errors, tuple(bounds), basis, first)


def compare_caches(reference: dict, candidate: dict, bound: float) -> CacheComparison | None:
    """Both caches as {layer: (keys, values)} of (S, Hkv, hd); None when they cannot be lined up."""
    layers = sorted(set(reference) & set(candidate))
    if not layers or any(reference[i][0].shape != candidate[i][0].shape for i in layers):
        return None
    per = {part: tuple(tuple(rel_l2(reference[i][index][:, h], candidate[i][index][:, h])
                             for h in range(reference[i][index].shape[1])) for i in layers)
           for index, part in enumerate(("keys", "values"))}
    first = next(((part, layers[row], head) for row in range(len(layers)) for part in ("keys", "values")
                  for head, error in enumerate(per[part][row]) if not error <= bound), None)
    return CacheComparison(per["keys"], per["values"], bound, first)
