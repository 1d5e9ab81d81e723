"""Probe: an identity module to expose a value that no module returns.

Hand-written models compute RoPE, softmax or a residual add inline; wrap the
value in a Probe and map the probe's path like any module:

    self.q_rope = Probe()          # in __init__
    q = self.q_rope(apply_rope(q)) # in forward: returns its input unchanged
"""

from __future__ import annotations

import torch


class Probe(torch.nn.Module):
    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value
