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


def integer_product_file(tmp_path, weight, per_channel: bool):
    """x -> DynamicQuantizeLinear -> MatMulInteger(int8 B, zero point 0) -> Cast -> Mul(x_scale * b_scale), as
    onnxruntime's quantize_dynamic writes it; B quantized here symmetric, per tensor or per output column."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    matrix = weight.T                                                                      # (K, N)
    scale = (np.abs(matrix).max(axis=0) if per_channel else np.abs(matrix).max()) / 127
    codes = np.clip(np.round(matrix / scale), -127, 127).astype(np.int8)
    zero = np.zeros_like(scale, np.int8) if per_channel else np.int8(0)
    initializers = [numpy_helper.from_array(codes, "B"), numpy_helper.from_array(zero, "B_zero"),
                    numpy_helper.from_array(np.asarray(scale, np.float32), "B_scale")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"], name="x_QuantizeLinear"),
             helper.make_node("Mul", ["x_scale", "B_scale"], ["scales"], name="/model/layers.0/attn/q_proj/scales_mul"),
             helper.make_node("MatMulInteger", ["xq", "B", "x_zero", "B_zero"], ["int"],
                              name="/model/layers.0/attn/q_proj/MatMul_quant"),
             helper.make_node("Cast", ["int"], ["float"], to=TensorProto.FLOAT, name="int_cast"),
             helper.make_node("Mul", ["float", "scales"], ["q"], name="/model/layers.0/attn/q_proj/output_scale_mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", K])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, "T", N])], initializers)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    dequantized = (codes.astype(np.float64) * scale).T                                     # (N, K)
    return read_graph(path), dequantized


def test_an_integer_products_weight_is_read_with_the_scale_its_output_is_multiplied_by(tmp_path):
    from parity.capture.onnx.weights import rounded_input

    weight = np.random.default_rng(3).standard_normal((N, K)).astype(np.float32)
    for per_channel, per in ((False, "per tensor"), (True, "per output channel")):
        graph, dequantized = integer_product_file(tmp_path, weight, per_channel)
        weights, grids = read_weights(graph, {"layers.0.q": (2, None)})
        np.testing.assert_allclose(weights["layers.0.q.weight"], dequantized, rtol=1e-6, atol=1e-7)
        grid = grids["layers.0.q.weight"]
        assert grid["format"] == f"int8 {per} (onnxruntime MatMulInteger)" and "a scale per call" in grid["inputs"]
        measured = np.linalg.norm(dequantized - weight)
        assert abs(grid["rounding_l2"] / measured - 1) < 0.15
        assert "a scale per call" in rounded_input(graph, "q")        # the product's scaled output
        assert rounded_input(graph, "x") is None


def dequantized_file(tmp_path, weight, table):
    """A MatMul reading a DequantizeLinear of int8 codes in blocks of 32 along K (QDQ), and a Gather of a uint8
    table whose rows one DequantizeLinear dequantizes (quantize_dynamic's embedding)."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    matrix = weight.T                                                                      # (K, N)
    blocks = np.abs(matrix.reshape(K // BLOCK, BLOCK, N)).max(axis=1) / 127                # (K / 32, N)
    codes = np.clip(np.round(matrix / np.repeat(blocks, BLOCK, axis=0)), -127, 127).astype(np.int8)
    step, low = (table.max() - table.min()) / 255, table.min()
    zero = np.uint8(np.round(-low / step))
    rows = np.clip(np.round(table / step) + zero, 0, 255).astype(np.uint8)
    initializers = [numpy_helper.from_array(codes, "W_q"), numpy_helper.from_array(blocks.astype(np.float32), "W_s"),
                    numpy_helper.from_array(rows, "E_q"), numpy_helper.from_array(np.float32(step), "E_s"),
                    numpy_helper.from_array(zero, "E_z")]
    nodes = [helper.make_node("Gather", ["E_q", "ids"], ["e_q"], name="/model/embed_tokens/Gather"),
             helper.make_node("DequantizeLinear", ["e_q", "E_s", "E_z"], ["x"], name="e_DequantizeLinear"),
             helper.make_node("DequantizeLinear", ["W_q", "W_s"], ["W"], name="W_DequantizeLinear", axis=0,
                              block_size=BLOCK),
             helper.make_node("MatMul", ["x", "W"], ["q"], name="/model/layers.0/attn/q_proj/MatMul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "T"])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, "T", N])], initializers)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return read_graph(path), (codes * np.repeat(blocks, BLOCK, axis=0)).T, (rows.astype(np.float64) - zero) * step


def test_weights_a_dequantize_linear_makes_are_read_by_block_and_by_table(tmp_path):
    rng = np.random.default_rng(4)
    weight, table = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((20, K)).astype(np.float32)
    graph, dequantized, rows = dequantized_file(tmp_path, weight, table)
    assert "W" in graph.constants and not graph.nodes[2].scope        # a weight, made of integers by no module
    weights, grids = read_weights(graph, {"layers.0.q": (3, None), "embed": (0, None)})
    np.testing.assert_allclose(weights["layers.0.q.weight"], dequantized, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(weights["embed.weight"], rows, rtol=1e-6, atol=1e-7)
    assert grids["layers.0.q.weight"]["format"] == "int8 in blocks of 32 along axis 0 (DequantizeLinear)"
    assert "inputs" not in grids["layers.0.q.weight"]         # 8-bit: onnxruntime does not fuse it to MatMulNBits
    assert grids["embed.weight"]["format"] == "uint8 per tensor (DequantizeLinear)"
    for name, floats, read in (("layers.0.q.weight", weight, dequantized), ("embed.weight", table, rows)):
        assert abs(grids[name]["rounding_l2"] / np.linalg.norm(read - floats) - 1) < 0.15
