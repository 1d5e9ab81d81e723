"""Which value of an ONNX graph is which checkpoint, read off the reference's taps.

The reference's taps name modules (`model.layers.0.self_attn.q_proj`, output). A graph
node's scope names the module that made it (graph.py), so a tap is found at the scope
whose path ends as the tap's does, a name matching a name of the same role in parity's
vocabulary (`attn` for `self_attn`, `qkv_proj` split for q, k and v), under whatever
wrapper the export added (`m.model.layers.0...`). Then:

- a module's output is the one activation its nodes make that a node outside reads; a
  decoder layer that hands on two (a fused graph's residual and branch) is read where
  the next layer, or the final norm, takes its input;
- a module's input is the first activation its first node reads from outside; a fused
  residual-add-and-norm (onnxruntime's Skip*LayerNormalization) takes two and makes
  their sum as its fourth output, which is the norm's input;
- q and k after RoPE and the attention probabilities are the query, key and softmax of
  the scaled_dot_product_attention call torch.onnx records; a fused attention op
  (GroupQueryAttention rotating inside) has none, and they are not comparable.

Nothing is matched by value: a checkpoint is the graph's value of that name or is
reported not comparable with the reason.

    located, missing = locate(graph, taps, widths)   # {name: Located}, {name: why not}
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from parity.capture.onnx.graph import QUANTIZE_OPS, SHAPE_OPS, GraphNode, OnnxGraph
from parity.core.names import Tap

MATMUL_OPS = frozenset({"MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat",
                        "DynamicQuantizeMatMul", "FusedMatMul"})
LOOKUP_OPS = frozenset({"Gather", "GatherBlockQuantized"})
FUSED_NORM_OPS = frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"})
# ONNX elem_types of activations.
FLOAT_TYPES = frozenset({1, 10, 11, 16})
# Ops that make integers (positions, masks, shapes): their values are never a module's activation.
INTEGER_OPS = SHAPE_OPS | frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
                                     "Or", "ArgMax", "NonZero", "CumSum"})


@dataclass(frozen=True)
class Located:
    """A checkpoint's value in the graph, and the columns of it that are the checkpoint (a fused projection's part)."""

    value: str
    columns: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<Located {self.value}{'' if self.columns is None else f'[{self.columns[0]}:{self.columns[1]}]'}>"


def locate(graph: OnnxGraph, taps: tuple[Tap, ...], widths: dict[str, int],
           linears: frozenset[str] = frozenset()) -> tuple[dict[str, Located], dict[str, str]]:
    """({checkpoint: Located}, {checkpoint: why it is not in the graph}) for each checkpoint the taps name.
    `widths` gives the reference's width of each projection's checkpoint (`layers.0.k`: 128): a fused projection's
    parts are split so. `linears` are the reference's modules that are one linear layer: their output is the
    graph's matrix product (and bias), whatever else the graph files under the same name (a soft-cap after the
    LM head, the split of a fused projection)."""
    finder = _Finder(graph, taps, widths, linears)
    located: dict[str, Located] = {}
    missing: dict[str, str] = {}
    for tap in taps:
        if tap.io in ("weights", "router"):
            continue
        for name, found in finder.find(tap).items():
            if not name:
                continue
            if isinstance(found, Located):
                located[name] = found
            elif name not in located:
                missing[name] = found
    return located, {name: why for name, why in missing.items() if name not in located}


def locate_weights(graph: OnnxGraph, taps: tuple[Tap, ...], widths: dict[str, int],
                   linears: frozenset[str]) -> dict[str, tuple[int, tuple[int, int] | None]]:
    """{checkpoint: (the index of the matrix product whose weight is its op's, the rows of that weight that are
    its, or None for all)} for each of the reference's linear layers the graph holds: a checkpoint's weight is
    `<checkpoint>.weight`, as the reference records it (a down projection's under its MLP's output)."""
    finder = _Finder(graph, taps, widths, linears)
    found: dict[str, tuple[int, tuple[int, int] | None]] = {}
    for tap in taps:
        if tap.io == "weights" and tap.module not in linears and any(tap.names):    # an embedding's table
            scope = finder.scope(tap.module)
            lookup = finder.lookup_node(scope) if scope is not None else None
            if lookup is not None:
                found[tap.names[0]] = (lookup, None)
            continue
        if not any(tap.names) or tap.module not in linears or tap.io not in ("output", "weights", "split"):
            continue
        scope, rows = finder.scope(tap.module), None
        if scope is None:                     # a part of a fused projection: its rows of the fused weight
            part = finder.fused_scope(tap)
            if part is None:
                continue
            scope, rows = part
        product = finder.product(scope)
        if product is not None:
            found[tap.names[0]] = (product, rows)
    return found


class _Finder:
    def __init__(self, graph: OnnxGraph, taps: tuple[Tap, ...], widths: dict[str, int],
                 linears: frozenset[str]) -> None:
        self.graph = graph
        self.widths = widths
        self.linears = linears
        self.layer_paths = sorted({tap.module for tap in taps if _is_layer_tap(tap)}, key=_layer_index)
        self.final_norm = next((tap.module for tap in taps if tap.names == ("final_norm",)), None)
        self.scope_parts = {scope: scope.split(".") for scope in graph.scopes}

    def find(self, tap: Tap) -> dict[str, Located | str]:
        if not any(tap.names):
            return {}
        scope = self.scope(tap.module, final_norm=tap.names == ("final_norm",))
        if tap.io == "attention":
            return self._attention(tap, scope)
        if scope is None:
            fused = self._fused_part(tap)
            if fused is not None:
                return {tap.names[0]: fused}
            return {name: f"no node of the ONNX graph is scoped to the module {tap.module} (nor to one named as it "
                          f"is){self._unscoped_quantized}" for name in tap.names}
        if tap.io == "input":
            found = self._input(scope)
        elif tap.io == "lookup":
            found = self._lookup(scope)
        elif tap.module in self.linears:
            found = self._linear_output(scope)
        elif _is_layer_tap(tap):
            found = self._layer_output(tap.module, scope)
        else:
            found = self._output(scope)
        if isinstance(found, str):
            return {name: found for name in tap.names}
        if tap.io == "split":
            return self._split(tap, found.value)
        return {tap.names[0]: found}

    # --- scopes -------------------------------------------------------------------------------

    def scope(self, module: str, *, final_norm: bool = False) -> str | None:
        """The graph's scope for the reference's module path: the shortest whose path ends as it does."""
        wanted = module.split(".")
        matches = [scope for scope, parts in self.scope_parts.items()
                   if len(parts) >= len(wanted) and all(_same_role(mine, theirs)
                                                        for mine, theirs in zip(parts[-len(wanted):], wanted))]
        if not matches and final_norm:   # a final norm filed under a layer of its own (onnxruntime-genai's)
            matches = [scope for scope, parts in self.scope_parts.items() if _same_role(parts[-1], wanted[-1], final=True)]
        return min(matches, key=len) if matches else None

    def _nodes(self, scope: str) -> list[int]:
        return [index for index in self.graph.scopes[scope] if self.graph.nodes[index].op not in SHAPE_OPS]

    def _inside(self, index: int, scope: str) -> bool:
        node_scope = self.graph.nodes[index].scope
        return node_scope == scope or node_scope.startswith(scope + ".")

    @functools.cached_property
    def _unscoped_quantized(self) -> str:
        """Why a module may have lost its nodes: its matrix products replaced by a quantizer's, which carry none."""
        lost = sum(1 for node in self.graph.nodes if node.op in MATMUL_OPS and not node.scope)
        if not lost or not any(node.op in QUANTIZE_OPS or node.op == "DequantizeLinear" for node in self.graph.nodes):
            return ""
        return (f"; {lost} of the graph's matrix products carry no module scope: a quantizer (onnxruntime's) replaced "
                "the exporter's nodes without the metadata that names their module. Quantize a graph whose nodes are "
                "named by path (onnxruntime-genai's builder writes one), or check the float export")

    # --- outputs and inputs ------------------------------------------------------------------

    def _outward(self, scope: str) -> list[str]:
        """The activations the scope's nodes make that a node outside it (or the graph's output) reads. A node the
        exporter left unscoped (one its optimizer inserted: a Split of a fused projection) counts as outside only
        where, without it, the scope would hand on more or less than one value."""
        scoped = self._handed_on(scope, unscoped_outside=False)
        return scoped if len(scoped) == 1 else self._handed_on(scope, unscoped_outside=True)

    def _handed_on(self, scope: str, *, unscoped_outside: bool) -> list[str]:
        graph, found = self.graph, []
        for index in self._nodes(scope):
            node = graph.nodes[index]
            if node.op in INTEGER_OPS:
                continue
            for value in node.outputs:
                if not value:
                    continue
                read_outside = any(not self._inside(reader, scope) and (unscoped_outside or graph.nodes[reader].scope)
                                   for reader in graph.readers(value))
                if read_outside or value in graph.outputs:
                    found.append(value)
        return found

    def _output(self, scope: str) -> Located | str:
        nodes = self._nodes(scope)
        if not nodes:
            return f"the ONNX graph's scope {scope} computes nothing"
        last = self.graph.nodes[nodes[-1]]
        if last.op in FUSED_NORM_OPS:
            return Located(last.outputs[0])
        if last.op == "Split" and self._made_inside(last.inputs[0], scope):
            return Located(last.inputs[0])        # a fused projection split into its parts: the whole
        outward = self._outward(scope)
        if len(outward) == 1:
            return Located(self._dequantized(outward[0]))
        return (f"the ONNX graph's scope {scope} hands on {len(outward)} values ({', '.join(outward[:3])}"
                f"{', ...' if len(outward) > 3 else ''}); parity cannot tell which is its output")

    def _linear_output(self, scope: str) -> Located | str:
        """A linear layer's output: its matrix product, plus the bias a constant adds to it."""
        graph = self.graph
        product = self.product(scope)
        if product is None:
            return self._output(scope)
        value = self._as_float(graph.nodes[product])
        readers = [graph.nodes[index] for index in graph.consumers.get(value, ()) if self._inside(index, scope)]
        if len(readers) == 1 and readers[0].op == "Add" and any(name in graph.constants for name in readers[0].inputs):
            return Located(readers[0].outputs[0])
        return Located(value)

    def _as_float(self, product: GraphNode) -> str:
        """A matrix product's output as floats: an integer product's (onnxruntime's MatMulInteger) cast and scaled
        by its input's and weight's scales, a quantized one's (QLinearMatMul) dequantized."""
        steps = {"MatMulInteger": ("Cast", "Mul"), "QLinearMatMul": ("DequantizeLinear",)}.get(product.op, ())
        value = product.outputs[0]
        for step in steps:        # the quantizer's own nodes, scoped or not (it names some after the value)
            readers = self.graph.consumers.get(value, ())
            if len(readers) != 1 or self.graph.nodes[readers[0]].op != step:
                return value
            value = self.graph.nodes[readers[0]].outputs[0]
        return value

    def _lookup(self, scope: str) -> Located | str:
        """An embedding's table lookup, before whatever scaling its module applies: its Gather of the table (of a
        table stored as integers, the rows dequantized)."""
        gather = self.lookup_node(scope)
        if gather is None:
            return f"the ONNX graph's embedding {scope} looks nothing up (no Gather)"
        return Located(self._dequantized(self.graph.nodes[gather].outputs[0]))

    def _dequantized(self, value: str) -> str:
        """A value stored as integers (a quantized table's rows), as the one DequantizeLinear that reads it gives
        it; else the value."""
        readers = [self.graph.nodes[index] for index in self.graph.consumers.get(value, ())]
        if len(readers) == 1 and readers[0].op == "DequantizeLinear" and readers[0].inputs[0] == value:
            return readers[0].outputs[0]
        return value

    def lookup_node(self, scope: str) -> int | None:
        """The index of the scope's table lookup (a Gather, or a quantized table's GatherBlockQuantized), or None."""
        return next((index for index in self._nodes(scope) if self.graph.nodes[index].op in LOOKUP_OPS), None)

    def _input(self, scope: str) -> Located | str:
        nodes = self._nodes(scope)
        if not nodes:
            return f"the ONNX graph's scope {scope} computes nothing"
        first = self.graph.nodes[nodes[0]]
        if first.op in FUSED_NORM_OPS:
            if len(first.outputs) > 3 and first.outputs[3]:
                return Located(first.outputs[3])
            return (f"the ONNX graph's {first.op} at {scope} adds the residual inside and does not hand the sum on "
                    f"(its fourth output), so the norm's input cannot be read")
        for index in nodes:            # the first activation read from outside (a graph reordered by a quantizer
            for value in self.graph.nodes[index].inputs:      # may put a shape's Concat first)
                value = self.graph.unquantized(value) if value else value
                if value and self._activation(value) and not self._made_inside(value, scope):
                    return Located(value)
        return f"the ONNX graph's scope {scope} reads no activation from outside it"

    def _activation(self, value: str) -> bool:
        """Whether a value can be an activation: not a weight, not made by an integer op, not of a type the file
        says is not a float."""
        graph = self.graph
        producer = graph.producer.get(value)
        if value in graph.constants or (producer is not None and graph.nodes[producer].op in INTEGER_OPS):
            return False
        elem_type = graph.value_types.get(value) or graph.input_types.get(value)
        return elem_type is None or elem_type in FLOAT_TYPES

    def _made_inside(self, value: str, scope: str) -> bool:
        producer = self.graph.producer.get(value)
        return producer is not None and self._inside(producer, scope)

    def _layer_output(self, module: str, scope: str) -> Located | str:
        """A decoder layer's output: the one activation it hands on; where it hands on two (a fused graph adds the
        residual in the next layer's norm), the next layer's input, or the final norm's."""
        outward = self._outward(scope)
        if len(outward) == 1:
            return Located(outward[0])
        position = self.layer_paths.index(module)
        after = self.layer_paths[position + 1] if position + 1 < len(self.layer_paths) else None
        if after is not None:
            next_scope = self.scope(after)
        else:
            next_scope = self.scope(self.final_norm, final_norm=True) if self.final_norm else None
        if next_scope is None:
            return (f"the ONNX graph's layer {scope} hands on {len(outward)} values and nothing after it is scoped, "
                    f"so its output cannot be told")
        return self._input(next_scope)

    # --- fused projections ----------------------------------------------------------------------

    def _fused_part(self, tap: Tap) -> Located | None:
        """q, k or v of a fused q|k|v projection (gate or up of a fused gate|up) where the graph has only that."""
        part = self.fused_scope(tap)
        if part is None:
            return None
        fused, columns = part
        found = self._output(fused)
        return None if isinstance(found, str) else Located(found.value, columns)

    def fused_scope(self, tap: Tap) -> tuple[str, tuple[int, int]] | None:
        """(the graph's fused projection scope, the columns of it that are this tap's part), or None."""
        from parity.capture.hf.structure import ATTENTION_PARTS, MLP_PARTS

        parent, _, part = tap.module.rpartition(".")
        order = {**{name: ("qkv", index) for index, role in enumerate(("q", "k", "v"))
                    for name in ATTENTION_PARTS[role]},
                 **{name: ("gate_up", index) for index, role in enumerate(("gate", "up")) for name in MLP_PARTS[role]}}
        if tap.io not in ("output", "weights") or part not in order or not parent or not tap.names:
            return None
        fused_role, index = order[part]
        fused_names = ATTENTION_PARTS["qkv"] if fused_role == "qkv" else MLP_PARTS["gate_up"]
        parent_scope = self.scope(parent)
        if parent_scope is None:
            return None
        fused = next((scope for scope in self.graph.scopes
                      if scope.startswith(parent_scope + ".") and scope.count(".") == parent_scope.count(".") + 1
                      and scope.rpartition(".")[2] in fused_names), None)
        roles = ("q", "k", "v") if fused_role == "qkv" else ("mlp_gate", "mlp_up")
        sizes = [self.widths.get(_sibling(tap.names[0], role)) for role in roles]
        if fused is None or any(size is None for size in sizes):
            return None
        start = sum(sizes[:index])
        return fused, (start, start + sizes[index])

    def product(self, scope: str) -> int | None:
        """The index of the scope's matrix product (a linear layer's), or None."""
        return next((index for index in self._nodes(scope) if self.graph.nodes[index].op in MATMUL_OPS), None)

    def _split(self, tap: Tap, value: str) -> dict[str, Located | str]:
        found: dict[str, Located | str] = {tap.names[0]: Located(value)}
        parts = tap.names[1:]
        whole = self.widths.get(tap.names[0])
        sizes = tap.sizes or ((whole // len(parts),) * len(parts) if whole and parts and whole % len(parts) == 0 else ())
        if sizes and len(sizes) == len(parts):
            start = 0
            for name, size in zip(parts, sizes):
                found[name] = Located(value, (start, start + size))
                start += size
        else:
            found.update({name: "the widths of the fused output's parts are not known" for name in parts})
        return found

    # --- attention ---------------------------------------------------------------------------

    def _attention(self, tap: Tap, scope: str | None) -> dict[str, Located | str]:
        query_name, key_name, probabilities_name = (tap.names + ("", "", ""))[:3]
        reason = None
        if scope is None:
            reason = f"no node of the ONNX graph is scoped to the attention {tap.module}"
        call = [self.graph.nodes[index] for index in self.graph.scopes.get(scope, ()) if
                self.graph.nodes[index].call.startswith("scaled_dot_product_attention")] if scope else []
        if reason is None and not call:
            fused = next((self.graph.nodes[index].op for index in self.graph.scopes[scope]
                          if self.graph.nodes[index].op.endswith("Attention")), None)
            reason = (f"the ONNX graph computes attention in one op ({fused}): its query and key after RoPE and its "
                      f"probabilities are not values of the graph" if fused else
                      f"the ONNX graph's attention {scope} records no scaled_dot_product_attention call, so its "
                      f"query and key after RoPE and its probabilities cannot be told")
        if reason is not None:
            return {name: reason for name in (query_name, key_name, probabilities_name) if name}
        args = call[0].call_args
        found: dict[str, Located | str] = {}
        for name, position in ((query_name, 0), (key_name, 1)):
            if not name:
                continue
            value = args[position] if len(args) > position else ""
            found[name] = (Located(value) if value in self.graph.producer else
                           f"the query and key of the ONNX graph's attention call at {scope} are not its values")
        if probabilities_name:
            softmax = [node for node in call if node.op == "Softmax"]
            found[probabilities_name] = (Located(softmax[0].outputs[0]) if len(softmax) == 1 else
                                         f"the ONNX graph's attention call at {scope} computes its probabilities in "
                                         f"one op, not as a softmax of the graph")
        return found


def _sibling(name: str, kind: str) -> str:
    """`layers.0.q`, "k" -> `layers.0.k`."""
    return f"{name.rpartition('.')[0]}.{kind}"


def _is_layer_tap(tap: Tap) -> bool:
    return tap.io == "output" and len(tap.names) == 1 and tap.names[0].endswith(".out") and \
        tap.names[0].startswith("layers.")


def _layer_index(module: str) -> int:
    tail = module.rpartition(".")[2]
    return int(tail) if tail.isdigit() else 0


def _same_role(mine: str, theirs: str, *, final: bool = False) -> bool:
    """Whether a graph's scope name and a reference's module name are the same module's (`attn`, `self_attn`)."""
    if mine == theirs:
        return True
    return any(mine in group and theirs in group for group in _vocabulary(final))


@functools.cache
def _vocabulary(final: bool) -> tuple[tuple[str, ...], ...]:
    from parity.capture.hf import structure

    finals = structure.FINAL_NORM_NAMES + ("final_norm_layernorm",)
    if final:
        return (finals,)
    return (structure.ATTENTION_NAMES, structure.MLP_NAMES, finals, *structure.ATTENTION_PARTS.values(),
            *structure.MLP_PARTS.values(), structure.ATTN_NORM_NAMES, structure.MLP_NORM_NAMES,
            structure.ATTN_POST_NAMES, structure.MLP_POST_NAMES, structure.ROUTER_NAMES)
