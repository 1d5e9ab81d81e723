"""What decoding through the KV cache found: each step's logits against one full pass, and the cache itself
against the reference's (core/decode_consistency.py compares them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheComparison:
    """The candidate's KV cache against the reference's after the same prefill, per layer and head. Where the
    forward pass's own keys or values of a layer already part from the reference's (a quantized build, a bug
    before them), that layer's cache is held to what the candidate's own pass computed: a cache cannot hold
    the reference's keys when the pass that writes it does not compute them."""

    keys: tuple[tuple[float, ...], ...]     # [layer][head] rel_l2 against the reference's
    values: tuple[tuple[float, ...], ...]
    bound: float
    first: tuple[str, int, int] | None      # ("keys" or "values", layer, head) of the first mismatch
    inherited: tuple[tuple[str, int], ...] = ()   # (part, layer) apart from the reference's as its own pass is
    unjudged: tuple[tuple[str, int], ...] = ()    # (part, layer) apart where its own pass is apart too, and not
                                                  # recorded to hold the cache to: not checked

    def __bool__(self) -> bool:
        return self.first is None

    def __repr__(self) -> str:
        return f"<CacheComparison {len(self.keys)} layers, first mismatch {self.first}>"

    @property
    def verdict(self) -> str:
        """The finding in words, for the reports."""
        if self.first is not None:
            part, layer, head = self.first
            return f"the {part} of layer {layer}, head {head} differ from the reference's after the prefill"
        if not self.inherited and not self.unjudged:
            return "matches the reference's after the prefill, every layer and head"
        said = "holds what the candidate's own pass computes after the prefill, every layer and head" \
            if not self.unjudged else ("matches the reference's or the candidate's own pass's after the prefill wherever "
                                        "that can be told")
        if self.inherited:
            said += (f"; its {_parts(self.inherited)} differ from the reference's as that pass's do (the forward "
                     "pass parts there, not the cache)")
        if self.unjudged:
            said += (f"; its {_parts(self.unjudged)} differ from the reference's where the forward pass parts too, and "
                     "the candidate records no such tensor of its own pass to hold them to: not checked")
        return said

    @property
    def unjudged_reason(self) -> str | None:
        """Why part of the cache was not checked, for the report's "not checked"; None where all of it was."""
        if not self.unjudged:
            return None
        return (f"its {_parts(self.unjudged)} differ from the reference's as the forward pass's keys and values "
                "there do, and the candidate records no keys after RoPE or values of its own pass to hold them to")


def _parts(where: tuple[tuple[str, int], ...]) -> str:
    """(part, layer) pairs in words: 'keys of layers 0-2 and values of layer 1'."""
    return " and ".join(f"{part} of layer{'s' if len(layers) > 1 else ''} {_runs(layers)}"
                        for part in ("keys", "values")
                        for layers in [sorted(layer for held, layer in where if held == part)] if layers)


def _runs(numbers: list[int]) -> str:
    """Sorted numbers with each run of consecutive ones written first-last: [0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


@dataclass(frozen=True)
class DecodeConsistency:
    prompt_length: int
    rel_l2: tuple[float, ...]            # per row, incremental against full
    bounds: tuple[float, ...]
    basis: str
    first_step: int | None               # first row over its bound
    first_checkpoint: str | None = None  # where, inside that step, the decode path first parts (torch candidates)
    cache: CacheComparison | None = None            # the KV cache against the reference's, after the prefill
    chunked_rel_l2: float | None = None             # the prompt prefilled in two chunks, last position
    batch_rel_l2: tuple[tuple[str, float], ...] = ()  # ("left" / "right" padding, worst row) in a batch of two
    batch_tokens: int | None = None      # how many of the prompt's tokens the padded batches ran on (None: not run)

    def __bool__(self) -> bool:
        bound = max(self.bounds, default=0.0)
        return (self.first_step is None and (self.cache is None or bool(self.cache))
                and (self.chunked_rel_l2 is None or self.chunked_rel_l2 <= bound)
                and all(error <= bound for _, error in self.batch_rel_l2))

    def __repr__(self) -> str:
        where = f", parts at step {self.first_step}" if self.first_step is not None else ""
        return f"<DecodeConsistency {len(self.rel_l2)} steps{where}>"

    @property
    def batch_label(self) -> str:
        """What the padded batches ran on, for a report's label: '' for the whole prompt."""
        if self.batch_tokens is None or self.batch_tokens >= self.prompt_length:
            return ""
        return f" (the prompt's first {self.batch_tokens} tokens)"

    @property
    def position(self) -> int | None:
        return None if self.first_step is None else self.prompt_length - 1 + self.first_step
