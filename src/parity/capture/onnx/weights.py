"""A linear layer's weight, read from an ONNX graph's initializers as the floats it stands for.

    weights, quantized = read_weights(graph, located)   # {"layers.0.q.weight": (N, K)}, {name: its grid}

- MatMul(x, B): B is (K, N), the weight its transpose; Gemm's B by its transB;
- onnxruntime's MatMulNBits (int4 builds: onnxruntime-genai's, its quantizer's): B is
  (N, K / block, block * bits / 8), codes packed low bits first, each block's value
  (code - zero point) * scale; no zero points is 2^(bits - 1). Its grid's rounding, the
  error of rounding to it, is sqrt(sum(scale^2) * block / 12) over the weight's blocks
  (each step `scale` wide): recorded as `quantized_weights`, as a PyTorch build's are, so
  that `weight_rounding`, `activation_quantization` and `--quantized-reference` read it.
  Its `accuracy_level` says what its CPU kernel does to its inputs: 4 quantizes them to
  int8 per block, 2 and 3 compute in float16 and bfloat16.
- an embedding's Gather of its table, and onnxruntime's GatherBlockQuantized (an int4 table,
  onnxruntime-genai's, shared with a tied LM head's MatMulNBits) dequantized the same way.
- onnxruntime's quantizer (`quantize_dynamic`: MatMulInteger; `quantize_static`'s QDQ form: a
  DequantizeLinear of the integers feeding a MatMul or Gather): (integer - zero point) * scale,
  per tensor, per output channel or per block; MatMulInteger's scale is the constant its
  product is multiplied by (with its input's). Each step `scale` wide, as above; an input
  the graph quantizes as it runs (DynamicQuantizeLinear: a scale per call; QuantizeLinear:
  a fixed one) is said in "inputs", as is what onnxruntime does to a 4-bit blocked
  DequantizeLinear and its MatMul when it loads the graph: one MatMulNBits, whose CPU
  kernel quantizes its input to int8 per block (accuracy level 4 by default).
A weight some other node makes is not read; one a Reshape makes from an initializer is read
from it.
"""

from __future__ import annotations

import math

import numpy as np

from parity.capture.onnx.graph import QUANTIZE_OPS, GraphNode, OnnxGraph

FOUR_BIT_TYPES = frozenset({21, 22})      # ONNX's UINT4 and INT4
ACCURACY_INPUTS = {2: "computed in float16 (accuracy_level 2)", 3: "computed in bfloat16 (accuracy_level 3)"}


def read_weights(graph: OnnxGraph, located: dict[str, tuple[int, tuple[int, int] | None]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """({`<checkpoint>.weight`: (N, K) float32}, {`<checkpoint>.weight`: {"format", "rounding_l2", "inputs"?}})."""
    initializers = _Initializers(graph)
    weights, quantized = {}, {}
    for checkpoint, (index, rows) in located.items():
        node = graph.nodes[index]
        name = f"{checkpoint}.weight"
        if node.op == "MatMulNBits":
            read = _nbits(graph, node, initializers, rows)
            if read is not None:
                weights[name], quantized[name] = read
        elif node.op == "GatherBlockQuantized":
            read = _gathered_blocks(node, initializers)
            if read is not None:
                weights[name], quantized[name] = read
        elif node.op == "Gather":
            read = _table(graph, node, initializers)
            if read is not None:
                weights[name], grid = read
                quantized.update({name: grid} if grid else {})
        elif node.op in ("MatMul", "Gemm", "MatMulInteger"):
            read = _matrix(graph, node, initializers)
            if read is None:
                continue
            matrix, steps, grid = read                                                 # (K, N) each
            transposed = node.op == "Gemm" and node.attributes.get("transB", 0)
            chosen = slice(*rows) if rows else slice(None)
            weight = (matrix if transposed else matrix.T)[chosen]                      # (K, N) -> (N, K)
            weights[name] = np.ascontiguousarray(weight, dtype=np.float32)
            if grid:
                step = (steps if transposed else steps.T)[chosen]
                quantized[name] = {**grid, "rounding_l2": float(math.sqrt(float(np.sum(step ** 2)) / 12.0))}
    return weights, quantized


def _matrix(graph: OnnxGraph, node: GraphNode, initializers: "_Initializers"
            ) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    """(a product's B as floats, each element's step or None, its grid's text {"format", "inputs"?} or {}), or
    None where B is not read."""
    if len(node.inputs) < 2:
        return None
    if node.op == "MatMulInteger":
        return _integer_product(graph, node, initializers)
    stored = _dequantized(graph, node.inputs[1], initializers)
    if stored is not None:                                   # QDQ: the weight's integers dequantized by a node
        values, steps, format_ = stored
        if values.ndim != 2:
            return None
        return values, steps, {"format": format_, **product_input_rounding(graph, node)}
    matrix = initializers.array(node.inputs[1])
    return None if matrix is None or matrix.ndim != 2 else (matrix, None, {})


def _integer_product(graph: OnnxGraph, node: GraphNode, initializers: "_Initializers"
                     ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """MatMulInteger(A, B, a_zero, b_zero), cast to float and multiplied by a_scale * b_scale (onnxruntime's
    dynamic quantization): B dequantized with b_scale, the constant factor of that scale."""
    codes = initializers.array(node.inputs[1])
    scale = _weight_scale(graph, node, initializers)
    if codes is None or codes.ndim != 2 or scale is None or scale.size not in (1, codes.shape[1]):
        return None
    zero = initializers.array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    zero = np.zeros(1) if zero is None else zero.astype(np.float64).reshape(-1)
    steps = np.broadcast_to(scale.astype(np.float64).reshape(-1), codes.shape)          # (K, N)
    matrix = (codes.astype(np.float64) - zero) * steps
    per = "per tensor" if scale.size == 1 else "per output channel"
    return matrix, steps, {"format": f"{codes.dtype} {per} (onnxruntime MatMulInteger)",
                           **product_input_rounding(graph, node)}


def _weight_scale(graph: OnnxGraph, node: GraphNode, initializers: "_Initializers") -> np.ndarray | None:
    """The weight's scale of an integer product: its output cast, then multiplied by a value that is the input's
    scale times a constant, the weight's."""
    cast = _only_reader(graph, node.outputs[0], "Cast")
    scaled = _only_reader(graph, cast.outputs[0], "Mul") if cast is not None else None
    if scaled is None:
        return None
    factor = next((name for name in scaled.inputs if name != cast.outputs[0]), "")
    producer = graph.producer.get(factor)
    if producer is None or graph.nodes[producer].op != "Mul":
        return None
    constant = [initializers.array(name) for name in graph.nodes[producer].inputs if name in graph.constants]
    return constant[0] if len(constant) == 1 else None


def _only_reader(graph: OnnxGraph, value: str, op: str) -> GraphNode | None:
    """The one node that reads `value`, where it is an `op`; else None."""
    readers = [graph.nodes[index] for index in graph.consumers.get(value, ())]
    return readers[0] if len(readers) == 1 and readers[0].op == op else None


def _dequantized(graph: OnnxGraph, value: str, initializers: "_Initializers"
                 ) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(values, each element's step, its format) of a weight a DequantizeLinear makes from integers, or None.
    The scale is one, one per slice along `axis`, or one per block of `block_size` along it."""
    producer = graph.producer.get(value)
    node = graph.nodes[producer] if producer is not None else None
    if node is None or node.op != "DequantizeLinear":
        return None
    codes = initializers.array(node.inputs[0])
    scale = initializers.array(node.inputs[1]) if len(node.inputs) > 1 else None
    if codes is None or scale is None:
        return None
    zero = initializers.array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    axis, block = node.attributes.get("axis", 1) % max(codes.ndim, 1), node.attributes.get("block_size", 0)
    steps, zeros = (_along(part, codes.shape, axis, block) for part in (scale, np.zeros(1) if zero is None else zero))
    if steps is None or zeros is None:
        return None
    per = ("per tensor" if scale.size == 1 else f"in blocks of {block} along axis {axis}" if block else
           f"per slice along axis {axis}")
    return (codes.astype(np.float64) - zeros) * steps, steps, f"{codes.dtype} {per} (DequantizeLinear)"


def _fused_to_nbits(graph: OnnxGraph, weight: str) -> dict:
    """{"inputs": ...} where onnxruntime's CPU provider fuses the DequantizeLinear making `weight` and its MatMul
    into one MatMulNBits (4-bit integers in blocks): that kernel quantizes its input to int8 per block at the
    session's accuracy level, 4 unless `session.qdq_matmulnbits_accuracy_level` says otherwise; else {}."""
    node = graph.nodes[graph.producer[weight]]
    block = node.attributes.get("block_size", 0)
    if node.op != "DequantizeLinear" or not block or node.inputs[0] not in graph.constants \
            or len(graph.consumers.get(weight, ())) != 1:
        return {}
    elem_type = graph.value_types.get(node.inputs[0]) or graph.initializer_types.get(node.inputs[0])
    if elem_type not in FOUR_BIT_TYPES:
        return {}
    return {"inputs": f"its inputs quantized to int8 per block of {block} (onnxruntime fuses a 4-bit "
                      "DequantizeLinear and its MatMul into MatMulNBits, accuracy_level 4 unless the session option "
                      "session.qdq_matmulnbits_accuracy_level says otherwise)"}


def _along(factor: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray | None:
    """A scale or zero point broadcast to the integers' `shape`: one, one per index along `axis`, or one per
    `block` indices along it; None where it fits none."""
    factor = factor.astype(np.float64)
    if factor.size == 1:
        return np.broadcast_to(factor.reshape(()), shape)
    if block:
        factor = np.repeat(factor, block, axis=axis)
        factor = np.take(factor, np.arange(shape[axis]), axis=axis)
        return factor if factor.shape == shape else None
    if factor.ndim != 1 or factor.size != shape[axis]:
        return None
    return np.broadcast_to(factor.reshape([-1 if dim == axis else 1 for dim in range(len(shape))]), shape)


def _table(graph: OnnxGraph, node: GraphNode, initializers: "_Initializers") -> tuple[np.ndarray, dict] | None:
    """An embedding's table (V, K) as floats and its grid ({} for floats): the Gather's initializer, one a
    DequantizeLinear makes of integers (QDQ), or integers whose gathered rows one DequantizeLinear dequantizes
    (onnxruntime's dynamic quantization)."""
    stored = _dequantized(graph, node.inputs[0], initializers)       # QDQ: the table dequantized by a node
    if stored is not None:
        values, steps, format_ = stored
        if values.ndim != 2:
            return None
        return np.ascontiguousarray(values, dtype=np.float32), {
            "format": format_, "rounding_l2": float(math.sqrt(float(np.sum(steps ** 2)) / 12.0))}
    table = initializers.array(node.inputs[0])
    if table is None or table.ndim != 2:
        return None
    if np.issubdtype(table.dtype, np.floating):
        return np.ascontiguousarray(table, dtype=np.float32), {}
    rows = _only_reader(graph, node.outputs[0], "DequantizeLinear")
    if rows is None or rows.attributes.get("block_size", 0):
        return None
    scale = initializers.array(rows.inputs[1]) if len(rows.inputs) > 1 else None
    zero = initializers.array(rows.inputs[2]) if len(rows.inputs) > 2 and rows.inputs[2] else None
    if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
        return None                                  # a scale per gathered row's column: not a table's grid
    step = float(scale.reshape(()))
    values = (table.astype(np.float64) - (0.0 if zero is None else float(zero.reshape(())))) * step
    return np.ascontiguousarray(values, dtype=np.float32), {
        "format": f"{table.dtype} per tensor (DequantizeLinear)",
        "rounding_l2": float(math.sqrt(step ** 2 * table.size / 12.0))}


def rounded_input(graph: OnnxGraph, value: str) -> str | None:
    """How the matrix product that makes `value` (its output scaled, cast or biased) quantizes its input as it
    runs, as its weight's grid says it ("inputs"), or None where it does not."""
    for _ in range(4):
        producer = graph.producer.get(value)
        if producer is None:
            return None
        node = graph.nodes[producer]
        if node.op in ("MatMul", "Gemm", "MatMulInteger", "MatMulNBits"):
            return product_input_rounding(graph, node).get("inputs")
        value = _scaled(graph, node)
        if value is None:
            return None
    return None


def product_input_rounding(graph: OnnxGraph, node: GraphNode) -> dict:
    """{"inputs": how a matrix product rounds its input as it runs} where it does, else {}: MatMulNBits by its
    accuracy level, a MatMul onnxruntime fuses with its 4-bit DequantizeLinear as that, else by the quantizer that
    makes its input."""
    if node.op == "MatMulNBits":
        level = node.attributes.get("accuracy_level", 0)
        if level == 4:
            block = node.attributes.get("block_size", 0)
            return {"inputs": f"its inputs quantized to int8 per block of {block} (accuracy_level 4, onnxruntime's "
                              "CPU kernel)"}
        return {"inputs": ACCURACY_INPUTS[level]} if level in ACCURACY_INPUTS else {}
    weight = node.inputs[1] if len(node.inputs) > 1 else ""
    fused = _fused_to_nbits(graph, weight) if weight in graph.producer else {}
    return fused or _input_rounding(graph, node.inputs[0])


def _scaled(graph: OnnxGraph, node: GraphNode) -> str | None:
    """The value a product's cast, bias (an Add of a constant) or scale (a Mul by a constant or by a product of
    scales) is applied to; None for any other op."""
    if node.op == "Cast":
        return node.inputs[0]
    if node.op not in ("Add", "Mul") or len(node.inputs) != 2:
        return None
    for value, other in (node.inputs, node.inputs[::-1]):
        if other in graph.constants or (node.op == "Mul" and _is_scale(graph, other)):
            return value
    return None


def _is_scale(graph: OnnxGraph, value: str) -> bool:
    """Whether `value` is an input's scale times a weight's: a Mul of constants and a quantizer's outputs."""
    producer = graph.producer.get(value)
    if producer is None or graph.nodes[producer].op != "Mul":
        return False
    return all(name in graph.constants or (name in graph.producer
                                           and graph.nodes[graph.producer[name]].op in QUANTIZE_OPS)
               for name in graph.nodes[producer].inputs)


def _input_rounding(graph: OnnxGraph, value: str) -> dict:
    """{"inputs": how the graph rounds a product's input as it runs} where a quantizer makes it, else {}."""
    producer = graph.producer.get(value)
    node = graph.nodes[producer] if producer is not None else None
    if node is not None and node.op == "DequantizeLinear" and graph.rounds(node):    # QDQ: its QuantizeLinear
        node = graph.nodes[graph.producer[node.inputs[0]]]
    if node is None:
        return {}
    if node.op == "DynamicQuantizeLinear":
        return {"inputs": "its inputs quantized to uint8 per tensor, a scale per call (onnxruntime's dynamic "
                          "quantization, DynamicQuantizeLinear)"}
    if node.op == "QuantizeLinear":
        return {"inputs": "its inputs quantized with a fixed, calibrated scale (QuantizeLinear)"}
    return {}


def _nbits(graph: OnnxGraph, node: GraphNode, initializers: "_Initializers", rows) -> tuple[np.ndarray, dict] | None:
    bits, block = node.attributes.get("bits", 4), node.attributes.get("block_size", 0)
    count, width = node.attributes.get("N", 0), node.attributes.get("K", 0)
    packed = initializers.array(node.inputs[1])
    scales = initializers.array(node.inputs[2] if len(node.inputs) > 2 else "")
    if packed is None or scales is None or bits not in (2, 4, 8) or not block or not count or not width:
        return None
    blocks = math.ceil(width / block)
    codes = _unpacked(packed.reshape(count, -1), bits)[:, :blocks * block].reshape(count, blocks, block)
    scales = scales.astype(np.float64).reshape(count, blocks)
    zero = _zero_points(initializers.array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None,
                        count, blocks, bits)
    weight = ((codes - zero[..., None]) * scales[..., None]).reshape(count, blocks * block)[:, :width]   # (N, K)
    chosen = slice(*rows) if rows else slice(None)
    steps = np.repeat(scales[chosen], block, axis=1)[:, :width]                   # each element's step
    grid = {"format": f"int{bits} in blocks of 1x{block} (onnxruntime MatMulNBits)",
            "rounding_l2": float(math.sqrt(float(np.sum(steps ** 2)) / 12.0)), **product_input_rounding(graph, node)}
    return np.ascontiguousarray(weight[chosen], dtype=np.float32), grid


def _gathered_blocks(node: GraphNode, initializers: "_Initializers") -> tuple[np.ndarray, dict] | None:
    """A quantized embedding table (onnxruntime's GatherBlockQuantized, rows gathered, blocks along each row): the
    table (V, K) dequantized, and its grid."""
    bits, block = node.attributes.get("bits", 4), node.attributes.get("block_size", 0)
    if node.attributes.get("gather_axis", 0) != 0 or node.attributes.get("quantize_axis", 1) != 1:
        return None
    packed = initializers.array(node.inputs[0])
    scales = initializers.array(node.inputs[2] if len(node.inputs) > 2 else "")
    if packed is None or scales is None or packed.dtype != np.uint8 or bits not in (2, 4, 8) or not block:
        return None
    rows = scales.shape[0]
    codes = _unpacked(packed.reshape(rows, -1), bits)                              # (V, K)
    width = codes.shape[1]
    blocks = scales.reshape(rows, -1).astype(np.float64)                          # (V, K / block)
    if blocks.shape[1] * block != width:
        return None
    zero = _zero_points(initializers.array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None,
                        rows, blocks.shape[1], bits)
    table = (codes.reshape(rows, -1, block) - zero[..., None]) * blocks[..., None]
    grid = {"format": f"int{bits} in blocks of 1x{block} (onnxruntime GatherBlockQuantized)",
            "rounding_l2": float(math.sqrt(float(np.sum(blocks ** 2)) * block / 12.0))}
    return np.ascontiguousarray(table.reshape(rows, width), dtype=np.float32), grid


def _unpacked(packed: np.ndarray, bits: int) -> np.ndarray:
    """Codes packed low bits first into bytes, unpacked: (N, bytes) -> (N, bytes * 8 / bits)."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)                     # (N, bytes, per_byte)
    return codes.reshape(packed.shape[0], -1).astype(np.float64)


def _zero_points(zero: np.ndarray | None, count: int, blocks: int, bits: int) -> np.ndarray:
    """(N, blocks): the default 2^(bits-1), unpacked codes, or the float zero points given."""
    if zero is None:
        return np.full((count, blocks), float(1 << (bits - 1)))
    if zero.dtype == np.uint8 and zero.size != count * blocks:
        return _unpacked(zero.reshape(count, -1), bits)[:, :blocks]
    return zero.astype(np.float64).reshape(count, blocks)


class _Initializers:
    """The graph's initializers, each read (from its external data too) when asked for."""

    def __init__(self, graph: OnnxGraph) -> None:
        import onnx

        self.graph = graph
        self.folder = str(graph.path.parent)
        model = onnx.load(str(graph.path), load_external_data=False)
        self.tensors = {tensor.name: tensor for tensor in model.graph.initializer}

    def array(self, name: str) -> np.ndarray | None:
        """The initializer `name`, or the one a Reshape of an initializer makes `name` from (its values as stored:
        the caller shapes them)."""
        from onnx import numpy_helper

        if name not in self.tensors and name in self.graph.producer:
            node = self.graph.nodes[self.graph.producer[name]]
            name = node.inputs[0] if node.op == "Reshape" else name
        tensor = self.tensors.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor, base_dir=self.folder)
