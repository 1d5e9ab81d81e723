"""Probe: an identity module to expose a value that no module returns.

Hand-written models compute RoPE, softmax or a residual add inline; wrap the
value in a Probe and map the probe's path like any module:

    self.q_rope = Probe()          # in __init__
    q = self.q_rope(apply_rope(q)) # in forward: returns its input unchanged

A per-head value may be given in any common layout, [B, H, T, hd], [B, T, H, hd],
[H, T, hd], [T, H, hd] or [T, H*hd]: parity reads which from the token count and the
config's head counts. Where both readings fit (as many heads as tokens), declare it:
`Probe(layout="BHTD")` (B batch, H heads, T tokens, D head dim).
"""

from __future__ import annotations

import torch


class Probe(torch.nn.Module):
    def __init__(self, layout: str | None = None) -> None:
        super().__init__()
        self.parity_layout = layout   # the axes of the value, when declared: BHTD, BTHD, HTD, THD, TD

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value
