"""Reading an ONNX graph's scopes: torch.onnx's name_scopes metadata, or node names written as paths."""

import pytest

from conftest import need
from parity.capture.onnx.graph import _call_args, _named_scope, read_graph
from parity.core.errors import OptionError


def test_a_node_named_as_a_path_is_scoped_to_its_module():
    assert _named_scope("/model/layers.0/attn/q_proj/MatMul") == "model.layers.0.attn.q_proj"
    assert _named_scope("/lm_head/MatMul") == "lm_head"
    assert _named_scope("MatMul_12") == ""          # not a path: no scope, never a checkpoint


def test_an_fx_calls_arguments_are_read_as_value_names():
    fx = ("%scaled_dot_product_attention : [num_users=1] = call_function[target=torch.ops.aten."
          "scaled_dot_product_attention.default](args = (%add_1, %cat_2, %transpose_3, %expand), kwargs = {})")
    assert _call_args(fx) == ("add_1", "cat_2", "transpose_3", "expand")
    assert _call_args("args = (%view, [1, 2], None)") == ("view", "", "")
    assert _call_args("no call here") == ()


def test_metadata_scopes_and_named_scopes_are_read_from_a_file(tmp_path):
    onnx = need("onnx")
    from onnx import TensorProto, helper

    scoped = helper.make_node("Relu", ["x"], ["y"], name="node_relu")
    for key, value in (("pkg.torch.onnx.name_scopes", "['', 'model', 'model.layers.0', 'model.layers.0.mlp', 'relu']"),
                       ("pkg.torch.onnx.fx_node", "%relu = call_function[target=aten.relu](args = (%x,), kwargs = {})")):
        scoped.metadata_props.add(key=key, value=value)
    named = helper.make_node("Neg", ["y"], ["z"], name="/model/norm/Neg")
    graph = helper.make_graph([scoped, named], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T"])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "T"])])
    path = tmp_path / "scoped.onnx"
    onnx.save(helper.make_model(graph), str(path))
    read = read_graph(path)
    assert [node.scope for node in read.nodes] == ["model.layers.0.mlp", "model.norm"]
    assert read.nodes[0].call == "relu" and read.nodes[0].call_args == ("x",)
    assert read.scopes["model"] == [0, 1] and read.scopes["model.layers.0"] == [0]
    assert read.inputs == ("x",) and read.outputs == ("z",) and read.input_shapes["x"] == (1, "T")


def test_a_file_that_is_not_onnx_is_refused_in_words(tmp_path):
    need("onnx")
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(OptionError, match="not a readable ONNX model"):
        read_graph(path)
