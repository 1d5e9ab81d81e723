"""Which keys each query sees, fitted from attention probabilities: a band of visible keys (the causal
mask and a sliding window), read from the rows that are finite and normalized (masks.py names the causes;
attention_math.py recomputes attention under a band)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAID = 1e-30            # a probability above this counts as attention paid (masked ones are exactly 0)
NORMALIZED = {"float64": 1e-4, "float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}  # |row sum - 1| of a softmax
# (float64: transformers takes the softmax in float32 whatever the model's dtype)
HOLES = 0.02            # at most this share of zeros inside a band (underflow) for it to be a mask
USABLE_ROWS = 0.9       # at least this share of rows finite and normalized to fit a band


@dataclass(frozen=True)
class Band:
    """Query t (key position t + S - T) sees keys [t - window + 1, t + ahead] within [0, S)."""

    ahead: int       # keys visible past the query's own position (0 for a causal mask)
    window: int      # keys visible up to and including the query's own position
    keys: int
    queries: int

    def __repr__(self) -> str:
        return f"<Band ahead={self.ahead} window={self.window}>"

    def visible(self) -> np.ndarray:
        """(T, S) True where query t sees key s."""
        own = np.arange(self.queries)[:, None] + self.keys - self.queries
        distance = own - np.arange(self.keys)[None, :]                        # t - s
        return (distance >= -self.ahead) & (distance < self.window)

    def describe(self) -> str:
        causal = ("keys up to its own position" if self.ahead == 0 else
                  f"{self.ahead} key(s) past its own position" if self.ahead > 0 else
                  f"keys up to {-self.ahead} before its own position")
        full = self.window >= self.keys
        return f"each query sees {causal}" + ("" if full else f", within a window of {self.window} keys")


def normalized_rows(probs: np.ndarray, dtype: str | None) -> np.ndarray:
    """(H, T) True where a row is finite and sums to 1 along the keys."""
    with np.errstate(invalid="ignore"):
        sums = probs.sum(-1)
    return np.isfinite(sums) & (np.abs(sums - 1) <= NORMALIZED.get(dtype or "float32", 1e-4)) & \
        np.all(np.isfinite(probs), axis=-1)


def fit_band(probs: np.ndarray, dtype: str | None = None) -> Band | None:
    """The band of keys each query sees, from the rows that are a softmax's; None when it is no band."""
    if probs.ndim != 3 or probs.shape[-1] < probs.shape[-2]:
        return None
    heads, queries, keys = probs.shape
    usable = normalized_rows(probs, dtype)
    if usable.mean() < USABLE_ROWS:
        return None
    paid = np.zeros((queries, keys), dtype=bool)
    for t in range(queries):
        rows = probs[usable[:, t], t]                                          # (heads usable, S)
        if len(rows):
            paid[t] = np.any(np.abs(rows) > PAID, axis=0)
    own = np.arange(queries) + keys - queries
    seen = [np.flatnonzero(paid[t]) for t in range(queries)]
    if any(len(s) == 0 for s in seen):
        return None
    ahead = max(int(s[-1]) - int(o) for s, o in zip(seen, own))
    window = max(int(o) - int(s[0]) + 1 for s, o in zip(seen, own))
    band = Band(ahead, min(window, keys + max(ahead, 0)), keys, queries)
    inside = band.visible()
    if np.sum(inside & ~paid) > HOLES * np.sum(inside):
        return None   # zeros inside its own band: not a mask's pattern
    return band


def reach(probs: np.ndarray) -> int:
    """The most keys any query spans, itself included: (H, T, S) -> t - min(s with weight) + 1."""
    heads, tokens, keys = probs.shape
    paid = np.abs(probs).max(axis=0) > PAID                                    # (T, S)
    own = np.arange(tokens) + keys - tokens
    return max((int(o) - int(np.flatnonzero(paid[t, : o + 1])[0]) + 1 for t, o in enumerate(own)
                if paid[t, : o + 1].any()), default=0)


def renormalized(probs: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The probabilities with the keys outside `visible` dropped, each row scaled back to sum 1."""
    kept = np.where(visible[None], probs, 0.0)
    sums = kept.sum(-1, keepdims=True)
    return np.divide(kept, sums, out=np.zeros_like(kept), where=sums > 0)
