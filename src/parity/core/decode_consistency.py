"""KV-cache and decode-path consistency: token-by-token decoding after a prefill against one full pass.

Row 0 is the last prompt position (from the prefill), row k the k-th token
decoded through the cache. Each row's logits must match the full pass's logits
at the same position to within a bound on rel_l2 (the dtype's table, or the
candidate's calibrated noise at that position).
"""

from __future__ import annotations

from parity.core.metrics import rel_l2
from parity.core.names import parse
from parity.core.results import CacheComparison, DecodeConsistency


def compare_decode(full_rows, incremental_rows, bounds, *, prompt_length: int, basis: str) -> DecodeConsistency:
    errors = tuple(rel_l2(full, incremental) for full, incremental in zip(full_rows, incremental_rows))
    first = next((step for step, (error, bound) in enumerate(zip(errors, bounds)) if not error <= bound), None)
    return DecodeConsistency(prompt_length, errors, tuple(bounds), basis, first)


CACHE_PARTS = ("keys", "values")


def compare_caches(reference: dict, candidate: dict, bound: float, own: dict | None = None) -> CacheComparison | None:
    """Both caches as {layer: (keys, values)} of (S, Hkv, hd); None when they cannot be lined up. `own`:
    {(part, layer): (S, Hkv, hd) or None}, what the candidate's own pass computed where its forward pass already
    parts from the reference's there (None: it records no such tensor). A head apart from the reference's but
    within `bound` of its own pass's is that pass's difference (inherited), not the cache's; one apart where the
    own pass is not recorded cannot be told either way (unjudged)."""
    layers = sorted(set(reference) & set(candidate))
    if not layers or any(reference[i][0].shape != candidate[i][0].shape for i in layers):
        return None
    own = own or {}
    per = {part: tuple(tuple(rel_l2(reference[i][index][:, h], candidate[i][index][:, h])
                             for h in range(reference[i][index].shape[1])) for i in layers)
           for index, part in enumerate(CACHE_PARTS)}

    def held_to_own(part: str, layer: int, head: int) -> bool | None:
        """Whether the head is its own pass's; None where that pass is not recorded; False where the forward
        pass does not part there (the cache is the reference's to hold)."""
        if (part, layer) not in own:
            return False
        computed, cached = own[part, layer], candidate[layer][CACHE_PARTS.index(part)]
        if computed is None or computed.shape != cached.shape:
            return None
        return rel_l2(computed[:, head], cached[:, head]) <= bound

    apart = [(part, layers[row], head) for row in range(len(layers)) for part in CACHE_PARTS
             for head, error in enumerate(per[part][row]) if not error <= bound]
    judged = {where: held_to_own(*where) for where in apart}
    mismatched = [where for where in apart if judged[where] is False]
    unjudged = tuple(dict.fromkeys(where[:2] for where in apart if judged[where] is None))
    held = tuple(dict.fromkeys(where[:2] for where in apart if judged[where]
                               and not any(m[:2] == where[:2] for m in mismatched) and where[:2] not in unjudged))
    first = mismatched[0] if mismatched else None
    return CacheComparison(per["keys"], per["values"], bound, first, held, unjudged)


def parted_in_forward(failed: set[str]) -> set[tuple[str, int]]:
    """(part, layer) of the cache whose tensor the forward pass already computes apart from the reference's,
    given the names of the checkpoints that failed: keys at a layer's k, k_norm or k_rope, values at its v."""
    parted = set()
    for name in failed:
        parsed = parse(name)
        if parsed is None or parsed.layer is None:
            continue
        if parsed.kind in ("k", "k_norm", "k_rope"):
            parted.add(("keys", parsed.layer))
        elif parsed.kind == "v":
            parted.add(("values", parsed.layer))
    return parted
