"""A linear layer's weight read from an ONNX graph: a MatMul's transposed, onnxruntime's MatMulNBits dequantized,
its grid's rounding what rounding to it measures."""

import numpy as np

from conftest import need
from parity.capture.onnx.graph import read_graph
from parity.capture.onnx.weights import read_weights

N, K, BLOCK = 6, 64, 32


def quantized(weight, zero_points: bool):
    """weight (N, K) to 4-bit codes per block of 32, packed low first; (packed, scales, zero points or None)."""
    blocks = weight.reshape(N, K // BLOCK, BLOCK)
    if zero_points:
        low, high = blocks.min(axis=-1), blocks.max(axis=-1)
        scales = (high - low) / 15
        zero = np.clip(np.round(-low / scales), 0, 15)
    else:
        scales = np.abs(blocks).max(axis=-1) / 7
        zero = np.full(scales.shape, 8.0)
    codes = np.clip(np.round(blocks / scales[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)           # (N, blocks, 16)
    packed_zero = (zero[:, 0::2].astype(np.uint8) | (zero[:, 1::2].astype(np.uint8) << 4)).reshape(-1)
    dequantized = ((codes - zero[..., None]) * scales[..., None]).reshape(N, K)
    return packed, scales.astype(np.float32), (packed_zero if zero_points else None), dequantized


def graph_file(tmp_path, weight, zero_points=False, float_weight=None):
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    packed, scales, zero, dequantized = quantized(weight, zero_points)
    initializers = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["x", "B", "scales"]
    if zero is not None:
        initializers.append(numpy_helper.from_array(zero, "zero"))
        inputs.append("zero")
    nodes = [helper.make_node("MatMulNBits", inputs, ["q"], name="/model/layers.0/attn/q_proj/MatMul_Q4",
                              domain="com.microsoft", K=K, N=N, bits=4, block_size=BLOCK, accuracy_level=4)]
    if float_weight is not None:
        initializers.append(numpy_helper.from_array(float_weight.T.copy(), "W"))            # MatMul's B: (K, N)
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["k"], name="/model/layers.0/attn/k_proj/MatMul"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", K])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, "T", N])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return read_graph(path), dequantized


def test_matmulnbits_is_read_as_the_floats_it_stands_for(tmp_path):
    weight = np.random.default_rng(0).standard_normal((N, K)).astype(np.float32)
    for zero_points in (False, True):
        graph, dequantized = graph_file(tmp_path, weight, zero_points)
        weights, grids = read_weights(graph, {"layers.0.q": (0, None)})
        np.testing.assert_allclose(weights["layers.0.q.weight"], dequantized, rtol=1e-6, atol=1e-7)
        grid = grids["layers.0.q.weight"]
        assert grid["format"] == "int4 in blocks of 1x32 (onnxruntime MatMulNBits)"
        assert "accuracy_level 4" in grid["inputs"]


def test_its_grid_gives_the_rounding_that_rounding_to_it_makes(tmp_path):
    weight = np.random.default_rng(1).standard_normal((N, K)).astype(np.float32)
    graph, dequantized = graph_file(tmp_path, weight)
    weights, grids = read_weights(graph, {"layers.0.q": (0, None)})
    measured = np.linalg.norm(dequantized - weight)
    assert abs(grids["layers.0.q.weight"]["rounding_l2"] / measured - 1) < 0.15


def test_a_fused_weights_rows_and_a_matmuls_transpose(tmp_path):
    rng = np.random.default_rng(2)
    weight, float_weight = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((4, K)).astype(np.float32)
    graph, dequantized = graph_file(tmp_path, weight, float_weight=float_weight)
    weights, grids = read_weights(graph, {"layers.0.q": (0, (2, 5)), "layers.0.k": (1, None)})
    np.testing.assert_allclose(weights["layers.0.q.weight"], dequantized[2:5], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(weights["layers.0.k.weight"], float_weight)
    assert "layers.0.k.weight" not in grids


def test_a_quantized_embedding_table_is_read_through_its_reshape(tmp_path):
    """onnxruntime-genai's tied int4 table: GatherBlockQuantized reads a Reshape of the LM head's packed codes."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(3).standard_normal((N, K)).astype(np.float32)
    packed, scales, _, dequantized = quantized(weight, zero_points=False)
    nodes = [helper.make_node("Reshape", ["B", "shape"], ["flat"], name="/model/embed_tokens/Reshape"),
             helper.make_node("GatherBlockQuantized", ["flat", "input_ids", "scales"], ["embedded"],
                              name="/model/embed_tokens/GatherBlockQuantized", domain="com.microsoft", bits=4,
                              block_size=BLOCK, gather_axis=0, quantize_axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"])],
                              [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, [1, "T", K])],
                              [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales"),
                               numpy_helper.from_array(np.array([N, K // 2]), "shape")])
    path = tmp_path / "table.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), str(path))
    weights, grids = read_weights(read_graph(path), {"embed": (1, None)})
    np.testing.assert_allclose(weights["embed.weight"], dequantized, rtol=1e-6, atol=1e-7)
    assert grids["embed.weight"]["format"] == "int4 in blocks of 1x32 (onnxruntime GatherBlockQuantized)"
