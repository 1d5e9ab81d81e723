"""Probe: an identity module to expose a value that no module returns.

Hand-written models compute RoPE, softmax or a residual add inline; wrap the
value in a Probe and map the probe's path like any module:

    self.q_rope = Probe()          # in __init__
    q = self.q_rope(apply_rope(q)) # in forward: returns its input unchanged

A per-head value may be given in any common layout, [B, H, T, hd], [B, T, H, hd],
[H, T, hd], [T, H, hd] or [T, H*hd]: parity reads which from the token count and the
config's head counts. Where both readings fit (as many heads as tokens), declare it:
`Probe(layout="BHTD")` (B batch, H heads, T tokens, D head dim).

A port that computes a value a block of query rows at a time (attention at long context,
where [B, H, T, T] would not fit) calls the probe once per block with `start`, the
position of the block's first row:

    for start in range(0, T, 512):
        probs = softmax(q[:, :, start:start + 512] @ k.transpose(-1, -2) * scale + mask[start:start + 512])
        probs = self.probs(probs, start=start)   # [B, H, rows, S]: rows start.. of [B, H, T, S]

parity then measures each block against the reference's same rows as it comes (a long
check keeps the probabilities in no trace), or puts the blocks together in order; the
blocks must cover every row once.

Under torch.export a probe makes one view of its value, so that the exported graph keeps its call
(capture/torch/exported/); its declared layout stays with the module, not the program, and a row
block's `start` is worked out from the blocks' sizes there.
"""

from __future__ import annotations

import torch


class Probe(torch.nn.Module):
    parity_takes_rows = True   # forward's `start`: the value holds rows start.. of the token axis

    def __init__(self, layout: str | None = None) -> None:
        super().__init__()
        self.parity_layout = layout   # the axes of the value, when declared: BHTD, BTHD, HTD, THD, TD

    def forward(self, value: torch.Tensor, start: int | None = None) -> torch.Tensor:
        if torch.compiler.is_exporting():   # an op of its own, so that torch.export's graph shows the call
            return value.view_as(value)
        return value
