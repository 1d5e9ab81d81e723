"""The experts a candidate's router chose, taken from its logits where it records the logits alone.

A port's MoE block often keeps its router as a plain linear to E logits and picks the
top k inside its forward (LLMs-from-scratch's Qwen3-MoE: `topk(self.gate(x), k)`), so
its trace has `moe_router_logits` but no `moe_experts`. Without the experts chosen, a
token its low precision sent to another expert at a near tie cannot be told apart from
a bug, nor followed (commands/check/routing.py): the MoE output after it fails with no
cause. Where the reference's own choice is the top k of its own logits at every token
(a plain top-k router: Mixtral's, Qwen's, OLMoE's; not DeepSeek-V3's biased,
group-limited one; a reference run again routed as the candidate is read at the
tokens it chose itself), the candidate's is taken the same way from its logits:

    candidate, derived = with_experts_from_logits(reference, candidate)     # derived: names made
"""

from __future__ import annotations

import numpy as np

from parity.core.names import parse
from parity.core.trace import Trace, with_arrays


def with_experts_from_logits(reference: Trace, candidate: Trace) -> tuple[Trace, tuple[str, ...]]:
    """The candidate with `layers.{i}.moe_experts` made from its `layers.{i}.moe_router_logits` where it has no
    experts of its own and the reference chooses the top k of its logits; the names made."""
    made = {}
    for name in reference.names:
        checkpoint = parse(name)
        if checkpoint is None or checkpoint.kind != "moe_experts" or name in candidate:
            continue
        logits = f"layers.{checkpoint.layer}.moe_router_logits"
        if logits not in candidate or logits not in reference:
            continue
        chosen = np.asarray(reference[name]).astype(np.int64)                       # (T, k)
        reference_logits = _rows(np.asarray(reference[logits], dtype=np.float64))   # (T, E)
        candidate_logits = _rows(np.asarray(candidate[logits], dtype=np.float64))
        chosen = chosen.reshape(-1, chosen.shape[-1]) if chosen.ndim else chosen
        if chosen.ndim != 2 or candidate_logits.shape != reference_logits.shape \
                or chosen.shape[0] != reference_logits.shape[0]:
            continue
        own = np.ones(len(chosen), dtype=bool)   # tokens a rerouted reference was sent elsewhere are not its choice
        forced = (reference.metadata.get("routed_as_candidate") or {}).get(name) or {}
        own[[int(token) for token in forced if 0 <= int(token) < len(own)]] = False
        if not np.array_equal(top_k(reference_logits, chosen.shape[1])[own], np.sort(chosen, axis=1)[own]):
            continue
        made[name] = top_k(candidate_logits, chosen.shape[1])
    if not made:
        return candidate, ()
    return with_arrays(candidate, made), tuple(made)


def derived_note(derived: tuple[str, ...]) -> str:
    """What the report says of the experts taken from the candidate's logits."""
    first = derived[0] + (f" and {len(derived) - 1} more" if len(derived) > 1 else "")
    return (f"{first}: the candidate records its router's logits but not the experts it chose; taken as the top "
            "k of its logits, as the reference's router chooses at every token")


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """(T, E) -> (T, k): the ids of each row's k largest logits, ascending."""
    return np.sort(np.argsort(-logits, axis=1, kind="stable")[:, :k], axis=1)


def _rows(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(-1, logits.shape[-1])
