"""An ONNX model as the candidate: `FILE.onnx`, or an onnxruntime-genai model folder, run in onnxruntime.

What an exporter or converter made of the reference: torch.onnx's export, onnxruntime-genai's
builder (its fused q|k|v, GroupQueryAttention and residual-adding
norms). Its checkpoints are the graph's values at the reference's modules (names.py),
fetched from one onnxruntime pass (runner.py); those the graph does not hold are
reported not comparable, each with its reason. Its precision is its logits' type.

    parity check MODEL_DIR model.onnx --prompt "..."
    parity check MODEL_DIR genai_folder/ --prompt "..."
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parity.capture.candidate import Candidate, CandidateContext, TraceRequest, register_candidate
from parity.core.errors import OptionError
from parity.core.trace import Trace

GENAI_CONFIG = "genai_config.json"
# ONNX elem_type -> the precision parity calibrates at.
PRECISIONS = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
# Ops that compute with quantized weights or activations.
QUANTIZED_OPS = frozenset({"MatMulNBits", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear",
                           "DequantizeLinear", "QuantizeLinear", "GatherBlockQuantized", "MatMulIntegerToFloat",
                           "DynamicQuantizeMatMul", "QMoE"})


def onnx_file(spec: Any) -> Path | None:
    """The .onnx file a spec names: the file, the one a folder's genai_config.json names, or a folder's one .onnx
    where it holds no transformers weights (an export folder, optimum's)."""
    path = Path(spec)
    if path.suffix == ".onnx":
        return path
    if not path.is_dir():
        return None
    config = path / GENAI_CONFIG
    if config.is_file():
        import json

        try:
            name = json.loads(config.read_text())["model"]["decoder"]["filename"]
        except (ValueError, KeyError, TypeError, OSError):
            raise OptionError(f"{config}: not an onnxruntime-genai config with model.decoder.filename; "
                              f"give the .onnx file itself") from None
        return path / str(name)
    found = sorted(path.glob("*.onnx"))
    holds_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or any(path.glob("*.gguf"))
    # an export folder (optimum's: config.json and model.onnx, no transformers weights); a model directory
    # that also holds an ONNX file is the model
    return found[0] if len(found) == 1 and not holds_weights else None


@register_candidate
class OnnxCandidate(Candidate):
    backend = "onnx"
    written = "FILE.onnx"
    nature = "an ONNX model run in onnxruntime"
    claim_order = 30
    capabilities = frozenset({"trace", "logits", "decode", "cache", "chunked_prefill", "weights"})

    def __init__(self, spec: str, graph, context: CandidateContext) -> None:
        super().__init__(spec)
        self.graph = graph
        self.precision = PRECISIONS.get(graph.output_types.get(graph.logits), "float32")
        self.quantized = sorted({node.op for node in graph.nodes} & QUANTIZED_OPS)
        self.model_path = context.model_path
        self.shared_past = _shares_past(graph.path.parent)
        self._runner = None
        self._traced: _Layout | None = None   # the checkpoints located when it was last traced

    @classmethod
    def claims(cls, spec: Any) -> bool:
        if not isinstance(spec, (str, Path)) or str(spec).endswith(".py"):
            return False
        try:
            return onnx_file(spec) is not None
        except OptionError:
            return True           # a genai folder whose config is damaged: said by check_spec

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        path = onnx_file(spec)
        if path is None or not path.exists():
            raise OptionError(f"{path or spec}: no such ONNX model file for the candidate")
        if not path.is_file():
            raise OptionError(f"{path}: not a regular file; give the .onnx file an exporter wrote")

    @classmethod
    def open(cls, spec: Any, context: CandidateContext) -> "OnnxCandidate":
        from parity.capture.onnx.graph import read_graph

        cls.check_spec(spec)
        context.step(f"reading the ONNX graph {onnx_file(spec)}")
        return cls(str(spec), read_graph(onnx_file(spec)), context)

    @property
    def description(self) -> str:
        quantized = f", quantized ops {', '.join(self.quantized)}" if self.quantized else ""
        return f"ONNX {self.graph.path.name} in onnxruntime ({self.precision}{quantized})"

    def runner(self, config=None):
        from parity.capture.onnx.runner import OnnxRunner

        if self._runner is None:
            head_dim, kv_heads = _kv_sizes(config)
            window = getattr(_text_config(config), "sliding_window", None)
            self._runner = OnnxRunner(self.graph, head_dim=head_dim, kv_heads=kv_heads, shared_past=self.shared_past,
                                      window=window if isinstance(window, int) else 0)
        return self._runner

    def supports(self, capability: str, **context: Any) -> str | None:
        if capability in ("decode", "cache", "chunked_prefill") and self.runner(self._config()).presents() is None:
            return ("the ONNX graph has no KV cache of its own (past_key_values.N inputs with present.N outputs): "
                    "export it with its cache to check decoding")
        return super().supports(capability)

    def incremental(self, prompt: list[int], continuation: list[int], *, record: bool = False, taps=None):
        """(rows (1 + N, V), steps): the prompt prefilled and each token decoded through the graph's cache; a step
        onnxruntime could not run, and every one after it, is NaN (a failing step: `decode_failure` says why).
        With `record`, each step's checkpoints (step 0 the prefill), those located when it was last traced."""
        recorded: list[dict] = []
        rows = self._stepped([prompt] + [[token] for token in continuation], recorded if record else None)
        return np.stack(rows), recorded

    def _stepped(self, chunks: list[list[int]], recorded: list[dict] | None = None) -> list[np.ndarray]:
        """The last logits (V,) of each chunk run in turn through the graph's cache; NaN from the first that
        onnxruntime could not run (a model that cannot decode fails the check, it is not left unchecked). Where
        `recorded` is a list (and the graph was traced), each step's checkpoints are appended to it."""
        from parity.core.errors import CaptureError

        layout = self._traced if recorded is not None else None
        values = {found.value for found in layout.located.values()} if layout is not None else set()
        rows: list[np.ndarray] = []
        with self.runner(self._config()).stepping(sum(len(chunk) for chunk in chunks), values) as step:
            for chunk in chunks:
                try:
                    rows.append(step(chunk))
                except CaptureError as error:
                    if not rows:
                        raise            # the prefill is the forward pass: its failure is the candidate's error
                    self.decode_failure = self.decode_failure or str(error)
                    break
                if layout is not None:
                    recorded.append(_recorded(layout.tensors(step.fetched, len(chunk))[0], len(chunk)))
        width = rows[0].shape[-1]
        return rows + [np.full(width, np.nan)] * (len(chunks) - len(rows))

    def prefill_cache(self, prompt: list[int]):
        """The graph's KV cache after prefilling `prompt`: layer -> (keys, values), each (S, Hkv, hd)."""
        with self.runner(self._config()).stepping(len(prompt)) as step:
            step(prompt)
            return step.cache()

    def chunked_prefill_logits(self, prompt: list[int]) -> np.ndarray:
        """The last prompt position's logits, the prompt prefilled in two chunks through the graph's cache."""
        half = max(1, len(prompt) // 2)
        return self._stepped([prompt[:half], prompt[half:]])[-1]

    def greedy(self, prompt: list[int], count: int):
        """The greedy continuation decoded through the graph's own KV cache, where it has one."""
        from parity.core.errors import CaptureError
        from parity.core.generation import greedy_stepped

        runner = self.runner(self._config())
        if runner.presents() is None:
            return super().greedy(prompt, count)
        try:
            with runner.stepping(len(prompt) + count) as step:
                return greedy_stepped(step, prompt, count)
        except CaptureError as error:     # its cache fails to decode: generated by full passes, the cache's
            self.decode_failure = self.decode_failure or str(error)   # failure said where decoding is checked
            return super().greedy(prompt, count)

    def _config(self):
        """The reference's config (sizes a symbolic KV-cache input), read once where the runner is not made yet."""
        if self._runner is not None or self.model_path is None:
            return None
        return _reference_config(self.model_path)

    def trace(self, tokens: list[int], request: TraceRequest = TraceRequest(), progress=None) -> Trace:
        from parity.core.names import select
        from parity.core.trace import make_trace

        reference = request.reference_model
        if reference is not None and reference.mapping is not None:
            layout, missing = self._located(reference)
        elif self._traced is not None:          # traced again (a decode step located): where it was found before
            layout, missing = self._traced, {}
        else:
            raise OptionError("an ONNX model's checkpoints are found at its reference's modules, so it is traced "
                              "beside the reference: `parity check MODEL FILE.onnx --save-traces DIR` writes its "
                              "trace (DIR/candidate.safetensors)")
        layout = layout.selected(request.checkpoints)
        if progress is not None:
            progress.step(f"running {self.graph.path.name} in onnxruntime over {len(tokens)} tokens "
                          f"({len(layout.located)} checkpoints)")
        arrays = self.runner(None if reference is None else reference.model.config).run(
            tokens, {found.value for found in layout.located.values()}, start_position=request.start_position)
        tensors, not_comparable = layout.tensors(arrays, len(tokens))
        not_comparable.update({name: missing[name] for name in select(list(missing), request.checkpoints)})
        if "logits" not in tensors and "logits" not in not_comparable and select(["logits"], request.checkpoints):
            logits, why = _laid_out("logits", arrays[self.runner().logits_name], None, len(tokens))
            if why is None:
                tensors["logits"] = logits
        del arrays
        if request.stream is not None:        # what the stream judges as it comes is put there, not held here
            for name in [name for name in tensors if request.stream.wants(name)]:
                request.stream.put(name, tensors.pop(name))
        quantized = None
        if request.weights and reference is not None:
            tensors, quantized = self._with_weights(tensors, reference, request.checkpoints)
        metadata = {"producer": f"onnxruntime {_version()}", "dtype": self.precision, "tokens": list(tokens),
                    "quantized_weights": quantized or None,
                    "prompt": request.prompt, "weights": self.graph.path.name,
                    "not_comparable": not_comparable or None,
                    **({"start_position": request.start_position} if request.start_position else {})}
        return make_trace(tensors, metadata, source=str(self.graph.path))

    def _located(self, reference) -> tuple["_Layout", dict[str, str]]:
        """(every checkpoint of the reference's found in the graph, {checkpoint: why it is not}); what is found is
        kept for the passes traced without the reference (a decode step's location) and for decoding recorded."""
        from parity.capture.onnx.names import locate
        from parity.capture.onnx.weights import rounded_input

        widths = _widths(reference)
        located, missing = locate(self.graph, reference.mapping.taps, widths, _linears(reference))
        self._traced = _Layout(located, widths, *_kv_sizes(reference.model.config))
        self.rounds_inputs = {name: how for name, found in located.items()
                              if (how := rounded_input(self.graph, found.value))}
        return self._traced, missing

    def _with_weights(self, tensors: dict, reference, checkpoints: str | None) -> tuple[dict, dict]:
        """The tensors with each linear layer's weight the graph holds beside its checkpoint, and the grids of those
        that are quantized."""
        from parity.capture.onnx.names import locate_weights
        from parity.capture.onnx.weights import read_weights
        from parity.core.names import select

        found = locate_weights(self.graph, reference.mapping.taps, _widths(reference), _linears(reference))
        wanted = {name: found[name] for name in select(list(found), checkpoints)}
        weights, quantized = read_weights(self.graph, wanted)
        return {**tensors, **weights}, quantized

    def logits(self, ids: list[int], first: int = 0) -> np.ndarray:
        runner = self.runner(self._config())
        logits = runner.run(ids)[runner.logits_name]
        rows = logits.reshape(-1, logits.shape[-1])
        if rows.shape[0] != len(ids):
            raise OptionError(f"{self.graph.path.name} gives logits for {rows.shape[0]} of {len(ids)} positions; "
                              f"export it with logits at every position")
        return rows[first:].astype(np.float64)

    def close(self) -> None:
        self._runner = None
        super().close()


def _recorded(tensors: dict[str, np.ndarray], count: int):
    """A step's checkpoints as decoding keeps them: a prompt over RECORDED_PREFILL_TOKENS as their sketches (a
    PassSketch, core/pass_sketch.py), as a PyTorch candidate's long prefill is, not its tensors."""
    from parity.core.pass_sketch import RECORDED_PREFILL_TOKENS, PassSketch

    if count <= RECORDED_PREFILL_TOKENS:
        return tensors
    sketch = PassSketch(count)
    for name in list(tensors):
        sketch.put(name, tensors.pop(name))
    return sketch


class _Layout:
    """The checkpoints located in the graph, and how each fetched value becomes one (the reference's widths and
    KV sizes, for a key its attention call repeated per query head)."""

    def __init__(self, located: dict, widths: dict[str, int], head_dim: int | None, kv_heads: int | None) -> None:
        self.located, self.widths, self.head_dim, self.kv_heads = located, widths, head_dim, kv_heads

    def __repr__(self) -> str:
        return f"<_Layout {len(self.located)} checkpoints>"

    def selected(self, checkpoints: str | None) -> "_Layout":
        """The layout of the checkpoints the globs select (all for None)."""
        from parity.core.names import select

        chosen = select(list(self.located), checkpoints)
        return _Layout({name: self.located[name] for name in chosen}, self.widths, self.head_dim, self.kv_heads)

    def tensors(self, arrays: dict[str, np.ndarray], count: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """({checkpoint: array in the trace's layout}, {checkpoint: why its value is not one}) from one pass of
        `count` tokens."""
        tensors, not_comparable = {}, {}
        for name in sorted(self.located):
            array, why = _laid_out(name, arrays[self.located[name].value], self.located[name].columns, count)
            if why is None and name.endswith(".k_rope"):
                kv_width = self.widths.get(name.replace(".k_rope", ".k")) or (self.kv_heads or 0) * (self.head_dim or 0)
                array = _one_per_group(array, kv_width, self.head_dim)
            if why:
                not_comparable[name] = why
            else:
                tensors[name] = array
        return tensors, not_comparable


def _laid_out(name: str, array: np.ndarray, columns, count: int) -> tuple[np.ndarray | None, str | None]:
    """A fetched value in the trace's layout ((T, width); attn_probs (H, T, S)), or the reason it cannot be."""
    from parity.core.names import parse

    checkpoint = parse(name)
    kind = checkpoint.kind if checkpoint else name
    if array.dtype.kind != "f":
        return None, f"its ONNX value is {array.dtype}, not an activation"
    if array.ndim < 2 or array.shape[0] != 1:
        return None, f"its ONNX value has shape {tuple(array.shape)}, not one sequence's (batch 1)"
    array = array[0]
    if kind == "attn_probs":
        ok = array.ndim == 3 and array.shape[1] == count
        return (array, None) if ok else (None, f"its ONNX value has shape {tuple(array.shape)}, not (H, T, S)")
    if array.ndim == 3 and array.shape[1] == count and array.shape[0] != count:
        array = array.transpose(1, 0, 2)                                # (H, T, hd) -> (T, H, hd)
    elif array.ndim == 3 and array.shape[0] == array.shape[1] == count:
        return None, (f"its ONNX value has shape {tuple(array.shape)}: as many heads as tokens, so which axis is "
                      f"the tokens' cannot be told; give a prompt of another length")
    if array.shape[0] != count:
        return None, f"its ONNX value has shape {tuple(array.shape)}: not one row per token ({count})"
    array = array.reshape(count, -1)                                    # (T, ...) -> (T, width)
    if columns is not None:
        array = array[:, columns[0]:columns[1]]
    return np.ascontiguousarray(array), None


def _one_per_group(key: np.ndarray, kv_width: int | None, head_dim: int | None) -> np.ndarray:
    """k after RoPE as the attention call took it, each KV head repeated for its query heads (an export of
    transformers' sdpa path): one copy of each, where the copies are the same to the bit; else as it is."""
    if not kv_width or not head_dim or key.shape[1] == kv_width or key.shape[1] % kv_width:
        return key
    count, group = key.shape[0], key.shape[1] // kv_width
    heads = key.reshape(count, kv_width // head_dim, group, head_dim)   # (T, Hkv * group * hd) -> (T, Hkv, group, hd)
    if not all(np.array_equal(heads[:, :, 0], heads[:, :, copy]) for copy in range(1, group)):
        return key
    return np.ascontiguousarray(heads[:, :, 0].reshape(count, kv_width))


def _widths(reference) -> dict[str, int]:
    """The reference's width of each projection checkpoint (a fused projection of the graph's is split so)."""
    from parity.capture.hf.structure import output_width
    from parity.core.names import parse

    widths = {}
    for tap in reference.mapping.taps:
        checkpoint = parse(tap.names[0]) if tap.names and tap.names[0] else None
        fused = tap.io == "split"           # a fused projection's whole width, its parts split equally unless sized
        if not fused and (tap.io != "output" or checkpoint is None
                          or checkpoint.kind not in ("q", "k", "v", "mlp_gate", "mlp_up")):
            continue
        try:
            width = output_width(reference.model.get_submodule(tap.module))
        except AttributeError:
            width = None
        if width:
            widths[tap.names[0]] = width
    return widths


def _shares_past(folder: Path) -> bool:
    """Whether the model's onnxruntime-genai config says its past and present KV are one buffer."""
    import json

    try:
        return json.loads((folder / GENAI_CONFIG).read_text())["search"]["past_present_share_buffer"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _linears(reference) -> frozenset[str]:
    """The reference's modules that are one linear layer."""
    from parity.capture.hf.structure import output_width

    return frozenset(name for name, module in reference.model.named_modules() if output_width(module))


def _text_config(config):
    """A model's language-model config (a multimodal config's text part); None for None."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _kv_sizes(config) -> tuple[int | None, int | None]:
    """(head size, KV head count) from the reference's config; (None, None) without one."""
    text = _text_config(config)
    if text is None:
        return None, None
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    return head_dim, kv_heads


def _reference_config(model_path: str):
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path)
    except Exception:      # a .gguf reference, or none readable: the graph's own sizes are used
        return None


def _version() -> str:
    import onnxruntime

    return onnxruntime.__version__
