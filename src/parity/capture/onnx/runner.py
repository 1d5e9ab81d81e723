"""One ONNX model run in onnxruntime over token ids, with chosen values of its graph fetched.

The graph is read without its weights and given the values wanted as extra outputs; the
session reads the weights from the model's own folder (onnxruntime's external-data
folder option), so nothing is written beside the user's model and a model's weights are
not copied through protobuf (which stops at 2 GB). A model with its weights inside its
.onnx file is held once more while the session is made.

Its inputs are filled as an exporter names them: `input_ids`, `attention_mask` (all
ones), `position_ids`, and an empty past for each KV-cache input (`past_key_values.N.key`,
length 0; a buffer the present is written into gets room for the pass). A graph that wants
any other input is refused in one line. `stepping` runs token ids through the graph's own
cache, each pass's present fed back as the next one's past.

Memory: the weights once (onnxruntime's), plus each fetched value, T x width floats (the
probabilities H x T x T), plus the cache while stepping; time: one forward pass per call,
one pass per step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np

from parity.capture.onnx.graph import OnnxGraph, first_line
from parity.core.errors import CaptureError, OptionError

PAST_INPUT = re.compile(r"past", re.IGNORECASE)
PAST_NAME = re.compile(r"past_key_values|past")


class OnnxRunner:
    def __init__(self, graph: OnnxGraph, *, head_dim: int | None = None, kv_heads: int | None = None,
                 shared_past: bool = False, window: int = 0) -> None:
        self.graph = graph
        self.head_dim = head_dim        # fills a KV-cache input's symbolic head size (onnxruntime-genai's)
        self.kv_heads = kv_heads
        self.shared_past = shared_past  # the past is a buffer the present is written into (onnxruntime-genai's
                                        # past_present_share_buffer): it is given room for the pass, and for the
        self.window = window            # sliding window, which its attention wants room for even when empty
        self._held: tuple[tuple[str, ...], object] | None = None   # (extra outputs, session): one at a time

    def __repr__(self) -> str:
        return f"<OnnxRunner {self.graph.path.name}>"

    def run(self, tokens: list[int], values: Iterable[str] = (), *, start_position: int = 0) -> dict[str, np.ndarray]:
        """{value: array} for the graph's logits output and each of `values`, over one pass of `tokens`."""
        extra = tuple(sorted(set(values) - set(self.graph.outputs)))
        session = self._session(extra)
        wanted = [self.logits_name, *sorted(set(values) - {self.logits_name})]
        try:
            arrays = session.run(wanted, self._feeds(tokens, start_position))
        except Exception as error:   # onnxruntime's own error, in one line
            raise CaptureError(f"{self.graph.path.name}: onnxruntime failed to run it over {len(tokens)} tokens: "
                               f"{first_line(error)}") from None
        return dict(zip(wanted, arrays))

    @property
    def past_inputs(self) -> tuple[str, ...]:
        return tuple(name for name in self.graph.inputs if PAST_INPUT.search(name))

    def presents(self) -> dict[str, str] | None:
        """Each KV-cache input's output (`past_key_values.0.key` -> `present.0.key`), or None where one has none."""
        found = {past: PAST_NAME.sub("present", past, count=1) for past in self.past_inputs}
        return found if found and all(present in self.graph.outputs for present in found.values()) else None

    @contextmanager
    def stepping(self, capacity: int, values: Iterable[str] = ()):
        """`step(ids)`: runs `ids` after everything given before, through the graph's own KV cache (each pass's
        present fed back as the next one's past), and returns the last one's logits (V,); `step.fetched` then
        holds each of `values` of that pass."""
        presents = self.presents()
        if presents is None:
            raise OptionError(f"{self.graph.path.name} has no KV-cache outputs named as its inputs "
                              f"(past_key_values.N.key -> present.N.key)")
        extra = tuple(sorted(set(values) - set(self.graph.outputs)))
        fetched = sorted(set(values) - {self.logits_name, *presents.values()})
        session = self._session(extra)
        state = {past: np.zeros(self._past_shape(past, capacity),
                                dtype=_numpy_dtype(self.graph.input_types.get(past, 1))) for past in presents}
        length = 0

        def step(ids: list[int]) -> np.ndarray:
            nonlocal length
            feeds = {**self._feeds(ids, length, total=length + len(ids)), **state}
            try:
                outputs = session.run([self.logits_name, *presents.values(), *fetched], feeds)
            except Exception as error:
                raise CaptureError(f"{self.graph.path.name}: onnxruntime failed to decode {len(ids)} token(s) after "
                                   f"{length} through its cache: {first_line(error)}") from None
            state.update(zip(presents, outputs[1:1 + len(presents)]))
            step.fetched = {self.logits_name: outputs[0], **dict(zip(presents.values(), outputs[1:])),
                            **dict(zip(fetched, outputs[1 + len(presents):]))}
            length += len(ids)
            logits = outputs[0]
            return logits.reshape(-1, logits.shape[-1])[-1].astype(np.float64)

        def cache() -> dict[int, tuple[np.ndarray, np.ndarray]]:
            """What the cache holds of the positions given so far: layer -> (keys, values), each (S, Hkv, hd)."""
            held: dict[int, dict[str, np.ndarray]] = {}
            for past, array in state.items():
                tail = PAST_NAME.sub("", past, count=1)           # past_key_values.0.value -> .0.value
                layer = re.search(r"\d+", tail)
                part = "values" if "value" in tail else "keys"
                if layer is None or array.ndim != 4:
                    return {}
                held.setdefault(int(layer.group()), {})[part] = array[0, :, :length].transpose(1, 0, 2)
            return {layer: (parts["keys"], parts["values"]) for layer, parts in held.items() if len(parts) == 2}

        step.cache = cache
        yield step

    @property
    def logits_name(self) -> str:
        return self.graph.logits

    def _session(self, extra: tuple[str, ...]):
        """The session fetching `extra` besides the graph's outputs; the one held before is let go (each holds the
        weights)."""
        if self._held is None or self._held[0] != extra:
            self._held = None
            self._held = (extra, self._open(extra))
        return self._held[1]

    def _open(self, extra: tuple[str, ...]):
        import onnx
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            if not extra:
                return onnxruntime.InferenceSession(str(self.graph.path), options, providers=["CPUExecutionProvider"])
            model = onnx.load(str(self.graph.path), load_external_data=False)
            model.graph.output.extend(onnx.ValueInfoProto(name=value) for value in extra)
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(self.graph.path.parent.resolve()))
            return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:
            raise CaptureError(f"{self.graph.path}: onnxruntime cannot load it ({first_line(error)})") from None

    def _feeds(self, tokens: list[int], start_position: int, *, total: int | None = None) -> dict[str, np.ndarray]:
        """The inputs of one pass over `tokens`, the first at `start_position`; with `total`, the pass follows
        total - len(tokens) positions held in the past (the caller gives the past inputs), and the attention mask
        covers them all."""
        count = len(tokens)
        feeds = {}
        for name in self.graph.inputs:
            dtype = _numpy_dtype(self.graph.input_types.get(name, 7))
            if name == "input_ids":
                feeds[name] = np.asarray([tokens], dtype=dtype)
            elif name == "attention_mask":
                feeds[name] = np.ones((1, total or count), dtype=dtype)
            elif name == "position_ids":
                feeds[name] = np.arange(start_position, start_position + count, dtype=dtype)[None]
            elif PAST_INPUT.search(name):
                if total is None:
                    feeds[name] = np.zeros(self._past_shape(name, count), dtype=dtype)
            else:
                raise OptionError(f"{self.graph.path.name} takes an input parity does not know how to fill: {name!r} "
                                  f"(it fills input_ids, attention_mask, position_ids and empty past_* KV-cache "
                                  f"inputs); export the model with those inputs only")
        if start_position and total is None and "position_ids" not in feeds:
            raise OptionError(f"--start-position: {self.graph.path.name} takes no position_ids, so its first token "
                              f"cannot be placed at {start_position}; leave out --start-position")
        return feeds

    def _past_shape(self, name: str, count: int) -> tuple[int, ...]:
        """An empty past: batch 1, length 0 (a shared buffer: room for the pass and the window, all of it empty as
        the attention mask says), its other dimensions as declared (or the reference's head size and KV head count
        where the graph leaves them symbolic)."""
        dims = self.graph.input_shapes.get(name, ())
        shape = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(1)
            elif "past" in str(dim) or "sequence" in str(dim) or "length" in str(dim):
                shape.append(max(count, self.window) if self.shared_past else 0)
            elif axis == len(dims) - 1 and self.head_dim:
                shape.append(self.head_dim)
            elif axis == 1 and len(dims) == 4 and self.kv_heads:
                shape.append(self.kv_heads)
            else:
                raise OptionError(f"{self.graph.path.name}: the KV-cache input {name!r} has a dimension {dim!r} "
                                  f"parity cannot size; export the model without a past, or with its sizes fixed")
        if len(shape) < 3:
            raise OptionError(f"{self.graph.path.name}: the KV-cache input {name!r} ({dims}) has no length axis "
                              f"parity can tell; export the model without a past")
        return tuple(shape)


def _numpy_dtype(elem_type: int):
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError):
        return np.int64

