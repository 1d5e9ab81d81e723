"""The output head over a long input, a block of rows at a time, written where its rows go.

A causal LM's forward returns logits for every position: (T, vocabulary), 3.2 GB in
float64 at T=8,192 for a 49k vocabulary, and more again when a softcap makes copies.
When a trace is written to a file and its logits would pass LOGITS_BLOCK_BYTES, the
forward is asked for its last position's logits only (transformers' `logits_to_keep`),
the hidden state the head reads is kept as the base model returns it (T x hidden),
and the head runs after the forward on blocks of rows, each block written into the
trace file at its rows (reserved at the whole size) and let go. What the model does
after its head (a final softcap, a logits scale) is done to each block as the model
does it, and the block holding the last position must equal the logits the model
returned for it: otherwise the capture runs again whole (`HeadMismatch`).
"""

from __future__ import annotations

import inspect

from parity.core.errors import CaptureError

LOGITS_BLOCK_BYTES = 256 << 20


class HeadMismatch(CaptureError):
    """The head rebuilt outside the forward does not give the model's own last row (caught: the capture then
    runs whole)."""


class BlockedHead:
    """The head of `model` run over its base model's hidden state in blocks of rows after the forward."""

    def __init__(self, model, head, names: tuple[str, ...], tokens: int) -> None:
        self.model, self.head, self.names, self.tokens = model, head, names, tokens
        self.hidden = None     # (B, T, D): what the base model returned, the head's input
        self.last = None       # (B, 1, V): the logits the model returned for the last position

    def __repr__(self) -> str:
        return f"<BlockedHead {'/'.join(self.names)} over {self.tokens} tokens>"

    def excluded(self, checkpoints: str | None) -> str:
        """`checkpoints` without what the tracer would record from a forward that keeps one row."""
        return ",".join([checkpoints or "*", "!logits", "!lm_head_out"])

    def forward(self, forward):
        """`forward(model, input_ids)` keeping the last position's logits and the base model's hidden state."""
        base = self.model.base_model

        def keep_hidden(_module, _args, output):
            self.hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

        def run(model, input_ids):
            handle = base.register_forward_hook(keep_hidden)
            try:
                output = forward(model, input_ids, logits_to_keep=1) if forward else model(input_ids, logits_to_keep=1)
            finally:
                handle.remove()
            self.last = output.logits if hasattr(output, "logits") else output[0]
            return output

        return run

    def write(self, writer) -> None:
        """Run the head over the kept hidden state a block of rows at a time, each written into `writer` at
        its rows: (T, V) under each of `names`. Raises HeadMismatch when the last row is not the model's."""
        import torch

        from parity.core.trace.trace import as_array, storage

        hidden, self.hidden = self.hidden, None
        if hidden is None or hidden.ndim != 3 or hidden.shape[1] != self.tokens or self.last is None:
            raise HeadMismatch("the base model's hidden state was not seen")
        rows = max(1, LOGITS_BLOCK_BYTES // (4 * self.last.shape[-1] * hidden.element_size()))
        with torch.no_grad():
            for start in range(0, self.tokens, rows):
                outputs = self._block(hidden[:, start:start + rows])                 # name -> (B, rows, V)
                if start + rows >= self.tokens:
                    self._require_last_row(outputs["logits"])
                for name in self.names:
                    array, dtype = as_array(outputs[name][0])                          # (rows, V)
                    stored, tag = storage(array, dtype)
                    if start == 0:
                        writer.reserve(name, (self.tokens, *stored.shape[1:]), stored.dtype, tag)
                    writer.write_rows(name, stored, start)
                del outputs

    def _block(self, hidden) -> dict:
        """The head's output for these rows (lm_head_out), and the logits after the model's own softcap or
        scale, as transformers' causal LMs apply them."""
        import torch

        out = self.head(hidden)
        logits = out
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        scaling = getattr(self.model.config, "logits_scaling", None)
        if scaling not in (None, 1, 1.0):
            logits = logits / scaling
        return {"lm_head_out": out, "logits": logits}

    def _require_last_row(self, block) -> None:
        import torch

        mine, theirs = block[:, -1:].to(torch.float64), self.last[:, -1:].to(torch.float64)
        scale = float(theirs.abs().max()) if theirs.numel() else 0.0
        if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-6, atol=1e-6 * scale):
            raise HeadMismatch("the head run over the base model's hidden state does not give the model's logits")


def blocked_head(model, taps, tokens: int, checkpoints: str | None) -> BlockedHead | None:
    """A BlockedHead for `model` over `tokens` positions when its logits would pass LOGITS_BLOCK_BYTES and it can
    keep one row (`logits_to_keep`); None to run it as it is."""
    from parity.core.names import select

    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocabulary = getattr(config, "vocab_size", None) if config is not None else None
    if head is None or not vocabulary or getattr(model, "base_model", model) is model:
        return None
    itemsize = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    if tokens * vocabulary * itemsize <= LOGITS_BLOCK_BYTES:
        return None
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    paths = {id(module): path for path, module in model.named_modules()}
    head_names = next((tap.names for tap in taps if tap.module == paths.get(id(head)) and tap.io == "output"), None)
    if head_names is None:
        return None
    names = tuple(name for name in dict.fromkeys((*head_names, "logits")) if select([name], checkpoints))
    return BlockedHead(model, head, names, tokens) if names else None
