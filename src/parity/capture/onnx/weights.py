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
A weight that is not an initializer (made by a node: DequantizeLinear's QDQ form) is not read;
one a Reshape makes from an initializer is read from it.
"""

from __future__ import annotations

import math

import numpy as np

from parity.capture.onnx.graph import GraphNode, OnnxGraph

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
            read = _nbits(node, initializers, rows)
            if read is not None:
                weights[name], quantized[name] = read
        elif node.op == "GatherBlockQuantized":
            read = _gathered_blocks(node, initializers)
            if read is not None:
                weights[name], quantized[name] = read
        elif node.op == "Gather":
            table = initializers.array(node.inputs[0])
            if table is not None and table.ndim == 2:
                weights[name] = np.ascontiguousarray(table, dtype=np.float32)
        elif node.op in ("MatMul", "Gemm"):
            matrix = initializers.array(node.inputs[1] if len(node.inputs) > 1 else "")
            if matrix is None or matrix.ndim != 2:
                continue
            transposed = node.op == "Gemm" and node.attributes.get("transB", 0)
            weight = matrix if transposed else matrix.T                                # (K, N) -> (N, K)
            weights[name] = np.ascontiguousarray(weight[slice(*rows) if rows else slice(None)], dtype=np.float32)
    return weights, quantized


def _nbits(node: GraphNode, initializers: "_Initializers", rows) -> tuple[np.ndarray, dict] | None:
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
            "rounding_l2": float(math.sqrt(float(np.sum(steps ** 2)) / 12.0))}
    level = node.attributes.get("accuracy_level", 0)
    if level == 4:
        grid["inputs"] = f"its inputs quantized to int8 per block of {block} (accuracy_level 4, onnxruntime's CPU kernel)"
    elif level in ACCURACY_INPUTS:
        grid["inputs"] = ACCURACY_INPUTS[level]
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
