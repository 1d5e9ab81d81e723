"""Gradients of a next-token loss, recorded at every checkpoint and for every tapped parameter.

    record = record_gradients(model, ids, taps="hf")
    record.checkpoints["layers.3.mlp_out"]   # the gradient reaching that tensor, canonical layout
    record.parameters["layers.3.q.weight"]   # a tapped module's own parameter's gradient
    record.without_gradient                  # trainable parameters that got none (model's own names)

The loss is the mean cross-entropy of the logits at t against the token at t + 1,
computed the same way for every model from its logits, so that only the model differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parity.capture.torch.layout import canonical_layout, first_tensor
from parity.capture.torch.taps import compile_pattern, fill_layer, resolve_taps, TapsLike


@dataclass
class GradientRecord:
    loss: float
    checkpoints: dict[str, Any] = field(default_factory=dict)   # name -> gradient (numpy, float64)
    parameters: dict[str, Any] = field(default_factory=dict)    # canonical parameter name -> gradient
    without_gradient: list[str] = field(default_factory=list)   # the model's own parameter names
    trainable: int = 0                                          # how many parameters require a gradient

    def __repr__(self) -> str:
        return (f"<GradientRecord loss {self.loss:.4g}, {len(self.checkpoints)} checkpoints, "
                f"{len(self.parameters)} parameters, {len(self.without_gradient)} without gradient>")


def record_gradients(model, tokens: list[int], taps: TapsLike) -> GradientRecord:
    """Forward over `tokens`, backward from the next-token loss; gradients at every tap."""
    import torch

    grads: dict[str, Any] = {}
    handles, owners = [], {}

    def keep(names: tuple[str, ...], tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
            return
        def on_grad(grad):
            parts = grad.chunk(len(names), dim=-1) if len(names) > 1 else (grad,)
            for name, part in zip(names, parts):
                grads.setdefault(name, canonical_layout(name, part.detach().to("cpu", torch.float64)).numpy())
        tensor.register_hook(on_grad)

    resolved = resolve_taps(taps)
    for path, module in model.named_modules():
        for tap in resolved:
            match = compile_pattern(tap.module).match(path)
            if match is None or tap.io in ("attention", "weights"):
                continue
            names = tuple(fill_layer(name, match) for name in tap.names)
            if tap.io == "input":
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, names=names: keep(names, args[0]) if args else None))
            else:
                handles.append(module.register_forward_hook(
                    lambda _m, _a, output, names=names: keep(names, first_tensor(output))))
                if len(names) == 1:
                    for parameter, value in module.named_parameters(recurse=False):
                        owners[f"{names[0]}.{parameter}"] = value
    try:
        model.zero_grad(set_to_none=True)
        ids = torch.tensor([tokens], device=next(model.parameters()).device)
        with torch.enable_grad():
            logits = first_tensor(model(ids))
            logits = logits.reshape(-1, logits.shape[-1])[-len(tokens):].float()            # (T, V)
            loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    record = GradientRecord(loss=float(loss.detach()))
    record.checkpoints = grads
    record.parameters = {name: value.grad.detach().to("cpu", torch.float64).numpy()
                         for name, value in owners.items() if value.grad is not None}
    record.without_gradient = [name for name, value in model.named_parameters()
                               if value.requires_grad and value.grad is None]
    record.trainable = sum(value.requires_grad for value in model.parameters())
    model.zero_grad(set_to_none=True)
    return record
