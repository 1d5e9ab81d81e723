"""An ONNX model's graph, read without its weights: each node's op, values and module scope.

A node's scope is the module that computed it, as a dotted path:
- torch.onnx's exporter (torch.export) records the module stack in each node's
  metadata `pkg.torch.onnx.name_scopes`: ['', 'model', 'model.layers.0', ...,
  'linear'], the last entry the op, the one before it the innermost module;
- TorchScript's exporter (optimum's), onnxruntime-genai's builder and most graph
  writers name nodes by their path: `/model/layers.0/attn/q_proj/MatMul`, the last
  part the op.
A node with neither has no scope and is never a checkpoint.

onnxruntime's quantizer (`quantize_dynamic`, `quantize_static`) inserts nodes that round
an activation for the next op (DynamicQuantizeLinear, QuantizeLinear and the
DequantizeLinear after it) and dequantize a weight (DequantizeLinear of an initializer),
naming each after the value it reads. Those nodes belong to no module: they are left
unscoped, a dequantized weight counts as a weight, and `unquantized` gives the float
value an activation was rounded from.

    graph = read_graph("model.onnx")
    graph.nodes[0]            # GraphNode(op, name, inputs, outputs, scope, call)
    graph.scopes              # every scope, with the nodes under it (sub-scopes included)
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from parity.core.errors import OptionError

# Ops whose outputs are not activations: a module's output or input is never one of theirs.
SHAPE_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "Range"})
# Ops that round an activation to integers as the graph runs (onnxruntime's quantizer inserts them).
QUANTIZE_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class GraphNode:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scope: str              # the innermost module's dotted path; "" when the node says none
    call: str = ""          # the function it is part of, where the exporter says (scaled_dot_product_attention)
    call_args: tuple[str, ...] = ()   # that function's arguments, as the exporter's values are named
    attributes: dict = field(default_factory=dict, compare=False)   # its ONNX attributes: name -> value

    def __repr__(self) -> str:
        return f"<GraphNode {self.op} {self.scope or self.name}>"


@dataclass(frozen=True)
class OnnxGraph:
    path: Path
    nodes: tuple[GraphNode, ...]
    inputs: tuple[str, ...]                 # the graph's inputs, by name
    outputs: tuple[str, ...]                # the graph's outputs, by name
    constants: frozenset[str]               # initializers and Constant outputs: weights, never activations
    output_types: dict[str, int] = field(default_factory=dict)   # an output's ONNX elem_type
    input_shapes: dict[str, tuple] = field(default_factory=dict) # an input's dims: int, or its symbol's name
    input_types: dict[str, int] = field(default_factory=dict)
    value_types: dict[str, int] = field(default_factory=dict)    # an inner value's elem_type, where the file says
    initializer_types: dict[str, int] = field(default_factory=dict)   # each initializer's data_type
    domains: frozenset[str] = frozenset()   # op sets besides the default (com.microsoft: onnxruntime's own ops)

    def __repr__(self) -> str:
        return f"<OnnxGraph {self.path.name}: {len(self.nodes)} nodes>"

    @property
    def logits(self) -> str:
        """The output that is the logits: the one named so, else the first."""
        return "logits" if "logits" in self.outputs else (self.outputs[0] if self.outputs else "")

    @cached_property
    def producer(self) -> dict[str, int]:
        """The index of the node that makes each value."""
        return {value: index for index, node in enumerate(self.nodes) for value in node.outputs if value}

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        """The indices of the nodes that read each value."""
        readers: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for value in node.inputs:
                if value:
                    readers.setdefault(value, []).append(index)
        return readers

    def readers(self, value: str) -> list[int]:
        """The indices of the nodes that read `value`, a quantizer's rounding of it looked through (the nodes that
        read its integers, scale and zero point, or their dequantized copy, in its place)."""
        found, pending, seen = [], [value], set()
        while pending:
            current = pending.pop()
            for index in self.consumers.get(current, ()):
                rounds = self.rounds(self.nodes[index])
                if rounds and index not in seen:
                    seen.add(index)
                    pending.extend(output for output in self.nodes[index].outputs if output)
                elif not rounds:
                    found.append(index)
        return found

    def unquantized(self, value: str) -> str:
        """The float activation `value` was rounded from where a quantizer made it (its integers, scale or zero
        point, or their dequantized copy); else `value`."""
        while value in self.producer and self.rounds(self.nodes[self.producer[value]]):
            value = self.nodes[self.producer[value]].inputs[0]
        return value

    def rounds(self, node: GraphNode) -> bool:
        """Whether `node` is a quantizer's rounding of an activation: a QuantizeLinear or DynamicQuantizeLinear of
        one, or the DequantizeLinear that undoes it (QDQ's pair), not a weight's or a quantized op's output."""
        if node.op in QUANTIZE_OPS:
            return True
        producer = self.producer.get(node.inputs[0]) if node.op == "DequantizeLinear" else None
        return producer is not None and self.nodes[producer].op in QUANTIZE_OPS

    @cached_property
    def scopes(self) -> dict[str, list[int]]:
        """Each scope (and every scope above it) with the indices of the nodes under it, in graph order."""
        under: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            parts = node.scope.split(".") if node.scope else []
            for end in range(1, len(parts) + 1):
                under.setdefault(".".join(parts[:end]), []).append(index)
        return under


def read_graph(path: str | Path) -> OnnxGraph:
    """The graph of the ONNX file at `path`, its weights left on disk."""
    try:
        import onnx
    except ImportError:
        raise OptionError("an ONNX candidate needs the onnx and onnxruntime packages: "
                          "pip install onnx onnxruntime") from None
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:   # a damaged or foreign file: protobuf's own words, in one line
        raise OptionError(f"{path}: not a readable ONNX model ({first_line(error)}); give the .onnx file an "
                          f"exporter wrote") from None
    graph = model.graph
    constants = {*(initializer.name for initializer in graph.initializer),
                 *(initializer.values.name for initializer in graph.sparse_initializer),
                 *(value for node in graph.node if node.op_type == "Constant" for value in node.output)}
    nodes = _round_trips_unscoped(tuple(_node(node, constants) for node in graph.node))
    constants = frozenset(constants)
    return OnnxGraph(
        path=path, nodes=nodes, constants=constants,
        inputs=tuple(value.name for value in graph.input if value.name not in constants),
        outputs=tuple(value.name for value in graph.output),
        output_types={value.name: value.type.tensor_type.elem_type for value in graph.output},
        input_shapes={value.name: tuple(dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim)
                      for value in graph.input},
        input_types={value.name: value.type.tensor_type.elem_type for value in graph.input},
        value_types={value.name: value.type.tensor_type.elem_type for value in graph.value_info
                     if value.type.tensor_type.elem_type},
        initializer_types={initializer.name: initializer.data_type for initializer in graph.initializer},
        domains=frozenset(opset.domain for opset in model.opset_import if opset.domain not in ("", "ai.onnx")),
    )


def _node(node, constants: set[str]) -> GraphNode:
    """The node, its scope read; a quantizer's node unscoped, and a dequantized weight added to `constants`."""
    from onnx import helper

    metadata = {prop.key: prop.value for prop in node.metadata_props}
    scope, call, args = _exported_scope(metadata)
    if scope is None:
        scope, call, args = _named_scope(node.name), "", ()
    if node.op_type in QUANTIZE_OPS and node.input[0] not in constants:
        scope = ""
    elif node.op_type == "DequantizeLinear" and all(value in constants for value in node.input if value):
        constants.update(node.output)       # a weight stored as integers, dequantized
        scope = ""
    return GraphNode(op=node.op_type, name=node.name, inputs=tuple(node.input), outputs=tuple(node.output),
                     scope=scope, call=call, call_args=args,
                     attributes={attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute})


def _round_trips_unscoped(nodes: tuple[GraphNode, ...]) -> tuple[GraphNode, ...]:
    """The nodes, each DequantizeLinear that undoes a quantizer's rounding of an activation unscoped as the
    quantizer is."""
    quantized = {value for node in nodes if node.op in QUANTIZE_OPS for value in node.outputs}
    return tuple(dataclasses.replace(node, scope="") if node.op == "DequantizeLinear" and node.inputs[0] in quantized
                 else node for node in nodes)


def _exported_scope(metadata: dict[str, str]) -> tuple[str | None, str, tuple[str, ...]]:
    """(module path, function, its arguments) from torch.onnx's metadata; (None, "", ()) when it has none."""
    recorded = metadata.get("pkg.torch.onnx.name_scopes")
    if recorded is None:
        return None, "", ()
    try:
        scopes = ast.literal_eval(recorded)
    except (ValueError, SyntaxError):
        return None, "", ()
    if not isinstance(scopes, list) or not scopes or not all(isinstance(scope, str) for scope in scopes):
        return None, "", ()
    module = next((scope for scope in reversed(scopes[:-1]) if scope), "")
    return module, scopes[-1], _call_args(metadata.get("pkg.torch.onnx.fx_node", ""))


def _call_args(fx_node: str) -> tuple[str, ...]:
    """The value names a torch.fx call's positional arguments: `... (args = (%a, %b, None), ...)` -> (a, b, "")."""
    opening = fx_node.find("args = (")
    if opening < 0:
        return ()
    args, depth, current = [], 0, ""
    for character in fx_node[opening + len("args = ("):]:
        if character in "([{":
            depth += 1
        elif character in ")]}":
            if depth == 0:
                break
            depth -= 1
        if character == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += character
    if current.strip():
        args.append(current.strip())
    return tuple(arg[1:] if arg.startswith("%") else "" for arg in args)


def _named_scope(name: str) -> str:
    """`/model/layers.0/attn/q_proj/MatMul` -> `model.layers.0.attn.q_proj`; "" for a name that is not a path."""
    if not name.startswith("/"):
        return ""
    parts = [part for part in name.split("/")[1:-1] if part]
    return ".".join(parts)


def first_line(error: BaseException) -> str:
    """An error's message (protobuf's, onnxruntime's) on one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
