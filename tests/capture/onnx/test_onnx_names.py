"""Which graph value is which checkpoint: scopes matched by role, fused norms, fused projections, an ambiguous
scope said, never guessed."""

from pathlib import Path

from parity.capture.onnx.graph import GraphNode, OnnxGraph
from parity.capture.onnx.names import Located, _Finder, locate
from parity.core.names import Tap


def graph(*nodes, outputs=("logits",), constants=()) -> OnnxGraph:
    return OnnxGraph(path=Path("model.onnx"), nodes=tuple(GraphNode(op, name, tuple(inputs), tuple(made), scope)
                                                          for op, name, inputs, made, scope in nodes),
                     inputs=("input_ids",), outputs=outputs, constants=frozenset(constants))


def node(op, path, inputs, outputs):
    """A node named as onnxruntime-genai's builder names them: its scope is its path."""
    scope = ".".join(part for part in path.split("/")[1:-1] if part)
    return op, path, inputs, outputs, scope


# Two layers as onnxruntime-genai builds them: a fused q|k|v, norms that add the residual (output 3: the sum).
FUSED = graph(
    node("Gather", "/model/embed_tokens/Gather", ["table", "input_ids"], ["embedded"]),
    node("SimplifiedLayerNormalization", "/model/layers.0/input_layernorm/LayerNorm", ["embedded", "w0"], ["n0"]),
    node("MatMul", "/model/layers.0/attn/qkv_proj/MatMul", ["n0", "wqkv0"], ["qkv0"]),
    node("GroupQueryAttention", "/model/layers.0/attn/GroupQueryAttention", ["qkv0"], ["ctx0"]),
    node("MatMul", "/model/layers.0/attn/o_proj/MatMul", ["ctx0", "wo0"], ["o0"]),
    node("SkipSimplifiedLayerNormalization", "/model/layers.0/post_attention_layernorm/SkipLayerNorm",
         ["embedded", "o0", "w1"], ["m0", "", "", "mid0"]),
    node("MatMul", "/model/layers.0/mlp/down_proj/MatMul", ["m0", "wd0"], ["d0"]),
    node("SkipSimplifiedLayerNormalization", "/model/layers.1/input_layernorm/SkipLayerNorm",
         ["mid0", "d0", "w2"], ["n1", "", "", "out0"]),
    node("MatMul", "/model/layers.1/mlp/down_proj/MatMul", ["n1", "wd1"], ["d1"]),
    node("SkipSimplifiedLayerNormalization", "/model/layers.2/final_norm_layernorm/SkipLayerNorm",
         ["out0", "d1", "w3"], ["final"]),
    node("MatMul", "/lm_head/MatMul", ["final", "wlm"], ["logits"]),
    constants=("table", "w0", "wqkv0", "wo0", "w1", "wd0", "w2", "wd1", "w3", "wlm"))

TAPS = (Tap("model.layers.0", ("embed",), "input"), Tap("model.layers.0", ("layers.0.out",)),
        Tap("model.layers.1", ("layers.1.out",)),
        Tap("model.layers.0.input_layernorm", ("layers.0.attn_norm",)),
        Tap("model.layers.0.post_attention_layernorm", ("layers.0.mlp_norm",)),
        Tap("model.layers.0.post_attention_layernorm", ("layers.0.resid_mid",), "input"),
        Tap("model.layers.0.self_attn.q_proj", ("layers.0.q",)), Tap("model.layers.0.self_attn.k_proj", ("layers.0.k",)),
        Tap("model.layers.0.self_attn.v_proj", ("layers.0.v",)),
        Tap("model.layers.0.self_attn.o_proj", ("layers.0.attn_ctx",), "input"),
        Tap("model.layers.0.self_attn", ("layers.0.q_rope", "layers.0.k_rope", "layers.0.attn_probs"), "attention"),
        Tap("model.norm", ("final_norm",)), Tap("lm_head", ("logits",)))
WIDTHS = {"layers.0.q": 64, "layers.0.k": 32, "layers.0.v": 32}
LINEARS = frozenset({"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                     "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj", "lm_head"})


def test_a_fused_graph_is_read_at_the_reference_modules():
    located, missing = locate(FUSED, TAPS, WIDTHS, LINEARS)
    assert located["embed"] == Located("embedded")
    assert located["layers.0.attn_norm"] == Located("n0")
    assert located["layers.0.mlp_norm"] == Located("m0") and located["layers.0.resid_mid"] == Located("mid0")
    assert located["layers.0.out"] == Located("out0")     # the sum the next layer's norm makes
    assert [located[f"layers.0.{kind}"] for kind in "qkv"] == [Located("qkv0", (0, 64)), Located("qkv0", (64, 96)),
                                                               Located("qkv0", (96, 128))]
    assert located["layers.0.attn_ctx"] == Located("ctx0")
    assert located["final_norm"] == Located("final") and located["logits"] == Located("logits")
    assert "GroupQueryAttention" in missing["layers.0.q_rope"] and "GroupQueryAttention" in missing["layers.0.attn_probs"]
    assert "fourth output" in missing["layers.1.out"]      # the final norm hands no sum on


def test_a_fused_projection_of_unknown_widths_is_not_split_by_guess():
    located, missing = locate(FUSED, TAPS, {}, LINEARS)
    assert "layers.0.q" not in located and "layers.0.k" in missing


def test_a_scope_that_hands_on_two_values_is_said_not_guessed():
    two = graph(node("Split", "/model/layers.0/mlp/Split", ["x"], ["a", "b"]),
                node("Add", "/model/layers.1/Add", ["a", "b"], ["logits"]))
    located, missing = locate(two, (Tap("model.layers.0.mlp", ("layers.0.mlp_out",)),), {})
    assert not located and "hands on 2 values" in missing["layers.0.mlp_out"]


def test_a_module_the_graph_does_not_name_is_not_comparable_with_its_path():
    located, missing = locate(FUSED, (Tap("model.layers.0.mlp.gate_proj", ("layers.0.mlp_gate",)),), {})
    assert not located and "model.layers.0.mlp.gate_proj" in missing["layers.0.mlp_gate"]


def test_a_quantizers_nodes_are_looked_through():
    """onnxruntime's quantizer names its DynamicQuantizeLinear after the norm's output, and leaves it unscoped
    (graph.py), and may put a shape's Concat first in a scope: the norm's output is still its float output, a
    MatMulInteger's the float its cast and scale make, and the next module's input the float value its quantized
    copy was made from."""
    found = graph(
        node("SimplifiedLayerNormalization", "/model/layers.0/input_layernorm/LayerNorm", ["h", "w"], ["n"]),
        ("DynamicQuantizeLinear", "n_QuantizeLinear", ["n"], ["nq", "ns", "nz"], ""),
        node("Concat", "/model/layers.0/attn/Concat", ["shape_a", "shape_b"], ["shape"]),
        node("MatMulInteger", "/model/layers.0/attn/q_proj/MatMul_quant", ["nq", "Wq", "nz", "Wz"], ["qi"]),
        ("Cast", "qi_cast", ["qi"], ["qf"], ""),
        node("Mul", "/model/layers.0/attn/q_proj/scale_mul", ["qf", "s"], ["logits"]),
        constants=("w", "Wq", "Wz", "s", "shape_a", "shape_b"))
    finder = _Finder(found, (), {}, frozenset())
    assert finder._output("model.layers.0.input_layernorm") == Located("n")
    assert finder._linear_output("model.layers.0.attn.q_proj") == Located("logits")
    assert finder._input("model.layers.0.attn") == Located("n")
    assert found.unquantized("ns") == "n" and set(found.readers("n")) == {3}
