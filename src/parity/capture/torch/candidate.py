"""The PyTorch candidate: a torch.nn.Module, built by `FILE.py:FACTORY` / `module:FACTORY` or given as is.

It is traced with forward hooks (where its checkpoints live: the user's --taps, its
`parity_taps` attribute, else its naming), run on token ids for logits, decoded through
its own cache where its forward takes one (found by trying), rerun op by op on the
reference's inputs (replay), differentiated (gradients), and measured on its device.
Its precision is its parameters' dtype, or the `parity_dtype` it declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, register_candidate
from parity.core.errors import OptionError
from parity.core.trace import Trace


def _is_module(spec: Any) -> bool:
    from parity.capture.torch.exported import is_exported

    return hasattr(spec, "named_modules") or is_exported(spec)   # an ExportedProgram is not an nn.Module


@register_candidate
class TorchCandidate(Candidate):
    backend = "torch"
    written = "FILE.py:FACTORY"
    claim_order = 50
    undeclared = ("it holds no floating-point parameters and declares no `parity_dtype`: set `parity_dtype` on it "
                  "(on the function, for a function) to the precision it computes in")
    capabilities = frozenset({"trace", "logits", "decode", "cache", "chunked_prefill", "padding", "replay",
                              "gradients", "on_device", "weights", "raw", "speed", "tokenizer", "module"})

    def __init__(self, spec: str, module) -> None:
        from parity.capture.torch.compiled import compiled_in_place, compiled_within, recompiles_allowed
        from parity.capture.torch.exported import exported_module, is_exported, is_exported_module

        super().__init__(spec)
        if is_exported(module) or is_exported_module(module):   # torch.export's, its module calls made again
            module = exported_module(module)
            self.nature = "a program made by torch.export (one graph: its modules cannot be run alone)"
            self.capabilities = TorchCandidate.capabilities - {"replay"}
        module = compiled_in_place(module)   # torch.compile's wrapper as its module, compiled in place
        if compiled_within(module):
            self._stack.enter_context(recompiles_allowed())
        self.module = module
        self.precision = module_dtype(module)
        if self.precision is None:   # a function or a compiled blob: the precision its logits are returned at
            from parity.capture.torch.opaque import returned_precision

            self.precision = returned_precision(module)
        self._decode_reasons: dict[tuple[int, ...], str | None] = {}
        self._named = None                 # its taps as its naming maps them (_map_naming), on first use
        self._hidden: str | None = None    # why its naming maps none: its layers cannot be seen
        self.config = getattr(module, "config", None)   # its head counts read per-head layouts; else the reference's
        from parity.capture.torch.incremental import cache_calls
        from parity.capture.torch.explicit_mask import explicit_masks
        from parity.capture.torch.positions import positions_filled

        self.calls = cache_calls(module)
        self._stack.enter_context(positions_filled(module))   # every plain call at 0..T-1
        self._stack.enter_context(explicit_masks(module))     # and its mask, where its caches demand one

    @classmethod
    def claims(cls, spec: Any) -> bool:
        if _is_module(spec):
            return True
        return isinstance(spec, str) and ":" in spec and not Path(spec).exists()

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        if isinstance(spec, str):
            from parity.capture.torch.factory import split_spec

            module, _ = split_spec(spec)
            if module.endswith(".py") and not Path(module).is_file():
                raise OptionError(f"{module}: no such file")

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "TorchCandidate":
        if _is_module(spec):   # the Python API (parity.testing) passes a module itself
            return cls(type(spec).__name__, spec)
        from parity.capture.torch.factory import build_module

        context.step(f"building the candidate from {spec}")
        return cls(spec, build_module(spec, context.model_path))

    @classmethod
    def open_tokenizer(cls, spec: str, vocabulary):
        """`FILE.py:FUNCTION` as a tokenizer: a function text -> ids."""
        from parity.capture.tokenizers import FunctionTokenizer

        return FunctionTokenizer(spec, vocabulary)

    @property
    def description(self) -> str:
        from parity.capture.torch.compiled import compiled_within

        if getattr(self.module, "exported_from", None):
            return f"torch.export program of {self.module.exported_from.rpartition('.')[2]} ({self.precision})"
        from parity.capture.torch.opaque import is_opaque

        if is_opaque(self.module):
            return f"function {self.module.name} ({self.precision or 'precision unknown'})"
        compiled = ", compiled by torch.compile" if compiled_within(self.module) else ""
        return f"torch module {type(self.module).__name__} ({self.precision}{compiled})"

    def supports(self, capability: str, *, prompt: list[int] | None = None, **context: Any) -> str | None:
        reason = super().supports(capability)
        if reason is None and capability in ("logits", "padding") and hasattr(self.module, "refuses"):
            reason = self.module.refuses(capability)   # a program exported without dynamic shapes
        if reason is not None:
            return reason
        from parity.capture.torch.opaque import function_cannot, is_opaque

        if is_opaque(self.module) and (reason := function_cannot(self.module, capability)):
            return reason
        if capability == "gradients" and not any(p.is_floating_point() for p in self.module.parameters()):
            return f"{type(self.module).__name__} holds no floating-point parameters: it has no gradients to compare"
        if capability in ("decode", "cache", "chunked_prefill"):
            reason = self._decode_reason(tuple(prompt) if prompt else (0, 1))
            if reason is None and capability == "cache" and self.calls.held:
                return (f"its modules hold its cache (it takes {self.calls.positions}), which is not read back; "
                        "decoding through it is checked")
            return reason
        if capability == "padding":
            from parity.capture.torch.incremental import attention_mask_support

            return attention_mask_support(self.module)
        if capability == "raw" and not self.raw_allowed():
            return "its modules are not a transformers model's: their raw.<module> outputs have no counterpart"
        return None

    def _decode_reason(self, prompt: tuple[int, ...]) -> str | None:
        """Whether the module decodes through a cache, found by trying it on the prompt's first tokens."""
        if prompt[:2] not in self._decode_reasons:
            from parity.capture.torch.incremental import decode_support

            self._decode_reasons[prompt[:2]] = decode_support(self.module, list(prompt))
        return self._decode_reasons[prompt[:2]]

    # --- operations ---------------------------------------------------------------------------

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        from parity.capture.torch.module import trace_module
        from parity.capture.torch.taps import rounded_inputs

        if progress is not None:
            progress.step(f"capturing the candidate over {len(tokens)} tokens")
        if self.config is None and request.reference_model is not None:
            self.config = request.reference_model.model.config
        forward = None
        if request.start_position:
            from parity.capture.torch.incremental import positioned_forward

            forward = positioned_forward(self.module, request.start_position)
        self.rounds_inputs = rounded_inputs(self.module, self.taps(request.taps))
        metadata = {"start_position": request.start_position} if request.start_position else {}
        if module_dtype(self.module) is None and self.precision:   # read off the logits it returns
            metadata["dtype"] = self.precision
        options = dict(taps=self.taps(request.taps), checkpoints=request.checkpoints, weights=request.weights,
                       raw=request.raw and self.raw_allowed(request.taps), forward=forward, stream=request.stream,
                       metadata=metadata or None)
        if request.spill_to:
            return self._trace_to_file(tokens, request.spill_to, options)
        return trace_module(self.module, tokens, config=self.config, **options)

    def _trace_to_file(self, tokens: list[int], path: str, options: dict) -> Trace:
        """The trace written to `path` as the forward makes it (a long input's: never held whole), read back
        lazily."""
        from parity.capture.torch.layout import config_heads
        from parity.capture.torch.streaming import stream_module
        from parity.core.trace import load_trace
        from parity.core.trace.writer import trace_file

        modules = sum(1 for _ in self.module.modules())
        with trace_file(path, expected_tensors=2 * modules + 16, metadata_bytes=16 * len(tokens) + 4096) as writer:
            stream_module(self.module, tokens, writer, heads=config_heads(self.config), **options)
        return load_trace(path)

    def logits(self, ids: list[int], first: int = 0) -> np.ndarray:
        from parity.capture.torch.incremental import full_logits

        return full_logits(self.module, ids, first)

    def incremental(self, prompt: list[int], continuation: list[int], *, record: bool = False, taps=None):
        from parity.capture.torch.incremental import incremental

        return incremental(self.module, prompt, continuation, taps=self.taps(taps) if record else None,
                           config=self.config)

    def prefill_cache(self, prompt: list[int]):
        """The cache after prefilling `prompt`: layer -> (keys, values), each (S, Hkv, hd)."""
        from parity.capture.torch.incremental import prefill_cache

        return prefill_cache(self.module, prompt)

    def chunked_prefill_logits(self, prompt: list[int]):
        from parity.capture.torch.incremental import chunked_prefill_logits

        return chunked_prefill_logits(self.module, prompt)

    def padded_batch_logits(self, prompt: list[int], other: list[int], pad: int, side: str):
        from parity.capture.torch.incremental import padded_batch_logits

        return padded_batch_logits(self.module, prompt, other, pad, side)

    def taps(self, taps=None):
        """Where the checkpoints live in the module: `taps` if given, else its `parity_taps` attribute, else
        its naming (transformers, nanoGPT); none where its layers are hidden (`hidden`): its logits alone."""
        if taps:
            return taps
        if getattr(self.module, "parity_taps", None):
            return self.module.parity_taps
        self._map_naming()
        return self._named

    def hidden(self, taps=None) -> str | None:
        """Why none of its layers can be seen, given `taps` (the user's --taps): a function of token ids, or a
        module (a compiled blob's wrapper, a structure of its own) that no taps map and whose naming names no
        decoder blocks. None where they can."""
        if taps or getattr(self.module, "parity_taps", None):
            return None
        self._map_naming()
        return self._hidden

    def _map_naming(self) -> None:
        """Map the module by its naming once: `_named` its taps (none where hidden), `_hidden` why there are none."""
        if self._named is not None:
            return
        from parity.capture.torch.opaque import why_hidden

        self._hidden, self._named = why_hidden(self.module, self.spec), ()
        if self._hidden is None and getattr(self.module, "parity_taps", None):   # a function showing its tensors
            self._named = self.module.parity_taps
        elif self._hidden is None:
            try:
                self._named = infer_taps(self.module, self.spec)
            except OptionError as error:     # its naming maps no decoder blocks
                self._hidden = str(error)

    def raw_allowed(self, taps=None) -> bool:
        """Can the module's raw.<module> outputs line up with the reference's: a transformers model traced by its
        own structure (no taps of the user's)."""
        return not taps and not getattr(self.module, "parity_taps", None) and is_transformers(self.module)

    def speed_runner(self, options):
        from parity.capture.torch.timing import ModuleTimer

        return ModuleTimer(self.module, options, described=self.description.rpartition(" (")[0])


def module_dtype(module) -> str | None:
    """The precision the module computes in, as a name ('bfloat16'): its `parity_dtype` where it declares one,
    else the dtype holding most of its floating-point parameters' elements; None without one."""
    from parity.capture.torch.module import dtype_of

    return dtype_of(module)


def is_transformers(model) -> bool:
    from parity.capture.hf.attention import is_hf_model

    return hasattr(model, "config") and is_hf_model(model)


def infer_taps(model, spec: str):
    """A transformers model (a modified one, another version) mapped from its structure; else the built-in
    mapping a module's naming implies (Llama-likes or nanoGPT); else its blocks, attention, MLP and norms found
    by their names (hf/structure.map_module)."""
    from parity.capture.hf.structure import map_module
    from parity.capture.torch.exported import is_exported_module
    from parity.core.errors import CaptureError

    if is_transformers(model):
        from parity.capture.hf.structure import map_model

        return map_model(model, where=str(spec)).taps
    names = {name for name, _ in model.named_modules()}
    exported = is_exported_module(model)
    if exported:    # a program made by torch.export: attention read off the graph's ops
        from parity.capture.torch.exported.tree import table_and_head_taps
        from parity.capture.torch.taps import resolve_taps

        if "transformer.h.0.attn.c_attn" in names:    # GPT-2's names (nanoGPT's too): its fused c_attn split
            return resolve_taps("gpt2") + table_and_head_taps(model)
        try:
            return map_module(model, where=str(spec), attention_ops=True) + table_and_head_taps(model)
        except CaptureError:
            pass
    if "model.layers.0.self_attn.q_proj" in names:
        return "hf"
    if "transformer.h.0.attn.c_attn" in names:
        return "nanogpt"        # LitGPT's transformer.h.{i} holds other names: mapped from its structure below
    try:
        return map_module(model, where=str(spec), attention_ops=exported)
    except CaptureError as error:
        raise OptionError(
            f"parity cannot tell where the checkpoints live in {spec} ({str(error).removeprefix(f'{spec}: ')}): "
            "set a `parity_taps` attribute on the model or pass --taps (see docs/capture.md)"
        ) from None
