"""KV-cache and decode-path consistency: token-by-token decoding after a prefill against one full pass.

Row 0 is the last prompt position (from the prefill), row k the k-th token
decoded through the cache. Each row's logits must match the full pass's logits
at the same position to within a bound on rel_l2 (the dtype's table, or the
candidate's calibrated noise at that position).
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.core.metrics import rel_l2


@dataclass(frozen=True)
class DecodeConsistency:
    prompt_length: int
    rel_l2: tuple[float, ...]            # per row, incremental against full
    bounds: tuple[float, ...]
    basis: str
    first_step: int | None               # first row over its bound
    first_checkpoint: str | None = None  # where, inside that step, the decode path first parts (torch candidates)
    cache: "CacheComparison | None" = None        # the KV cache against the reference's, after the prefill
    chunked_rel_l2: float | None = None           # the prompt prefilled in two chunks, last position
    batch_rel_l2: tuple[tuple[str, float], ...] = ()  # ("left" / "right" padding, worst row) in a batch of two

    def __bool__(self) -> bool:
        bound = max(self.bounds, default=0.0)
        return (self.first_step is None and (self.cache is None or bool(self.cache))
                and (self.chunked_rel_l2 is None or self.chunked_rel_l2 <= bound)
                and all(error <= bound for _, error in self.batch_rel_l2))

    def __repr__(self) -> str:
        where = f", parts at step {self.first_step}" if self.first_step is not None else ""
        return f"<DecodeConsistency {len(self.rel_l2)} steps{where}>"

    @property
    def position(self) -> int | None:
        return None if self.first_step is None else self.prompt_length - 1 + self.first_step


def compare_decode(full_rows, incremental_rows, bounds, *, prompt_length: int, basis: str) -> DecodeConsistency:
    errors = tuple(rel_l2(full, incremental) for full, incremental in zip(full_rows, incremental_rows))
    first = next((step for step, (error, bound) in enumerate(zip(errors, bounds)) if not error <= bound), None)
    return DecodeConsistency(prompt_length, errors, tuple(bounds), basis, first)


@dataclass(frozen=True)
class CacheComparison:
    """The candidate's KV cache against the reference's after the same prefill, per layer and head."""

    keys: tuple[tuple[float, ...], ...]     # [layer][head] rel_l2
    values: tuple[tuple[float, ...], ...]
    bound: float
    first: tuple[str, int, int] | None      # ("keys" or "values", layer, head) of the first mismatch

    def __bool__(self) -> bool:
        return self.first is None

    def __repr__(self) -> str:
        return f"<CacheComparison {len(self.keys)} layers, first mismatch {self.first}>"


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
