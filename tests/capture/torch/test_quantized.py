"""Quantized parameters read as the floats they stand for, with the rounding their grid gives: torchao's tensor
subclasses and PyTorch's own quantized tensors, as quantize_ and quantize_dynamic make them."""

import math

import pytest

torch = pytest.importorskip("torch")

from conftest import need  # noqa: E402
from parity.capture.torch.quantized import dequantized, packed_parameters  # noqa: E402
from parity.core.trace.trace import as_array  # noqa: E402


def linear(rows: int = 96, columns: int = 128):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(columns, rows, bias=False))


def measured_l2(weight, original) -> float:
    return float((weight.detach().double() - original.double()).norm())


@pytest.mark.parametrize("group_size, blocks", [(None, "1x128"), (32, "1x32")])
def test_a_torchao_int8_weight_is_read_as_its_floats_with_its_grids_rounding(group_size, blocks):
    need("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = linear()
    original = model[0].weight.detach().clone()
    quantize_(model, Int8WeightOnlyConfig(**({"group_size": group_size} if group_size else {})))
    values, quantization = dequantized(model[0].weight)
    assert type(values) is torch.Tensor and torch.equal(values, model[0].weight.dequantize())
    assert quantization.format == f"int8 in blocks of {blocks} (torchao AffineQuantizedTensor)"
    assert quantization.inputs is None
    # the rounding a round-to-nearest on this grid gives, against what it gave: within a few percent
    assert 0.9 < measured_l2(values, original) / quantization.rounding_l2 < 1.1


def test_torchaos_activation_quantizing_wrapper_is_read_through_and_says_so():
    need("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = linear()
    original = model[0].weight.detach().clone()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    values, quantization = dequantized(model[0].weight)
    assert quantization.inputs and 0.9 < measured_l2(values, original) / quantization.rounding_l2 < 1.1


@pytest.mark.parametrize("per_channel", [False, True])
def test_pytorch_quantized_tensors_one_scale_or_one_per_channel(per_channel):
    torch.manual_seed(0)
    original = torch.randn(64, 48)
    if per_channel:
        scales = original.abs().amax(dim=1) / 127
        quantized = torch.quantize_per_channel(original, scales, torch.zeros(64, dtype=torch.long), 0, torch.qint8)
    else:
        quantized = torch.quantize_per_tensor(original, float(original.abs().max() / 127), 0, torch.qint8)
    values, quantization = dequantized(quantized)
    assert not values.is_quantized and quantization.format.startswith("qint8 (PyTorch")
    assert 0.9 < measured_l2(values, original) / quantization.rounding_l2 < 1.1


def test_torch_ao_dynamic_linear_gives_its_packed_weight_and_bias_and_quantizes_its_inputs():
    model = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(32, 16)), {torch.nn.Linear},
                                                   dtype=torch.qint8)
    packed = packed_parameters(model[0])
    assert set(packed) == {"weight", "bias"} and not list(model[0].parameters())
    values, quantization = dequantized(packed["weight"], model[0])
    assert values.shape == (16, 32) and "dynamic quantization" in quantization.inputs
    assert packed_parameters(torch.nn.Linear(4, 4)) == {}


def test_a_plain_parameter_is_left_as_it_is():
    weight = torch.nn.Linear(4, 4).weight
    values, quantization = dequantized(weight)
    assert values is weight and quantization is None


def test_a_trace_reads_a_quantized_tensor_as_its_floats():
    quantized = torch.quantize_per_tensor(torch.linspace(-1, 1, 12).reshape(3, 4), 0.01, 0, torch.qint8)
    array, dtype = as_array(quantized)
    assert array.shape == (3, 4) and math.isclose(float(array[0, 0]), -1.0, abs_tol=0.01)


def test_a_codes_steps_are_the_widths_of_the_intervals_that_round_to_each_level():
    from parity.capture.torch.quantized import _code_steps

    uniform = torch.linspace(-1, 1, 9)                      # levels 0.25 apart: every step 0.25 (the edges half)
    absmax = torch.tensor([2.0, 4.0])
    values = (uniform[[0, 3, 4, 8, 1, 2, 5, 7]] * absmax.repeat_interleave(4)).reshape(2, 4)
    steps = _code_steps(values, uniform, absmax, 4)
    assert torch.allclose(steps, torch.tensor([[0.25, 0.5, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64))
    uneven = torch.tensor([-1.0, -0.2, 0.0, 0.6, 1.0])      # NF4-like: wider intervals where levels are sparse
    steps = _code_steps(torch.tensor([[-0.2, 0.6]]), uneven, torch.tensor([1.0]), 2)
    assert torch.allclose(steps, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert _code_steps(values, uniform, absmax[:1], 4) is None          # too few blocks for the values


@pytest.mark.parametrize("weights, stored", [("qint8", "qint8, a scale per row"), ("qint4", "qint4 in groups of 128"),
                                             ("qint2", "qint2 in groups of 128"),
                                             ("qfloat8", "qfloat8_e4m3fn, a scale per row")])
@pytest.mark.parametrize("frozen", [True, False])
def test_an_optimum_quanto_weight_is_read_as_what_its_module_computes_with_with_its_grids_rounding(weights, stored,
                                                                                                     frozen):
    """Frozen, its weight is quanto's subclass; before freeze() the module keeps its float weight and quantizes it
    at each call: what it computes with is its qweight, read in place of the float parameter."""
    need("optimum.quanto")
    from optimum import quanto

    model = linear(columns=256)
    original = model[0].weight.detach().clone()
    quanto.quantize(model, weights=getattr(quanto, weights))
    if frozen:
        quanto.freeze(model)
    values, quantization = dequantized(model[0].weight, model[0])
    with torch.no_grad():
        assert torch.equal(values, model[0].qweight.dequantize())
    assert measured_l2(values, original) > 0
    assert quantization.format.startswith(stored) and quantization.format.endswith("(optimum WeightQ" + (
        "BitsTensor)" if weights in ("qint4", "qint2") else "BytesTensor)"))
    assert 0.85 < measured_l2(values, original) / quantization.rounding_l2 < 1.15, quantization


def test_optimum_quantos_activation_quantization_is_said_as_a_fixed_calibrated_scale():
    need("optimum.quanto")
    from optimum import quanto

    model = linear()
    quanto.quantize(model, weights=quanto.qint8, activations=quanto.qint8)
    with quanto.Calibration(), torch.no_grad():
        model(torch.randn(4, 128))
    quanto.freeze(model)
    _, quantization = dequantized(model[0].weight, model[0])
    assert "qint8 with a fixed, calibrated scale, and its output too" in quantization.inputs


@pytest.mark.parametrize("nbits, axis", [(4, 1), (4, 0), (8, 1), (3, 1)])
def test_an_hqq_linear_gives_its_weight_by_dequantize_with_its_grids_rounding(nbits, axis):
    """HQQLinear keeps its weight packed in `W_q` (uint8) and gives it by dequantize(); its zero points are fitted
    to the weight by HQQ's solver, not set to round it to the nearest level, so its error sits at or below the
    round-to-nearest estimate of its grid."""
    need("hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=False)
    original = linear.weight.detach().clone()             # HQQLinear deletes the module's weight
    module = HQQLinear(linear, BaseQuantizeConfig(nbits=nbits, group_size=64, axis=axis),
                       compute_dtype=torch.float32, device="cpu")
    weights = packed_parameters(module)
    [(name, value)] = weights.items()
    values, quantization = dequantized(value, module)
    assert name == "weight" and torch.equal(values, module.dequantize())
    assert quantization.format == f"{nbits}-bit in groups of 64 (hqq HQQLinear)"
    assert 0.8 < measured_l2(values, original) / quantization.rounding_l2 < 1.05, quantization


def test_a_trace_of_an_hqq_linear_holds_its_weight_not_its_packed_storage():
    need("hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    from parity.capture.torch.tracer import ModuleTracer

    torch.manual_seed(0)
    model = torch.nn.Sequential(HQQLinear(torch.nn.Linear(128, 64, bias=False), BaseQuantizeConfig(nbits=4, group_size=64),
                                          compute_dtype=torch.float32, device="cpu"))
    with ModuleTracer(model, {"0": "layers.0.q"}, weights=True) as tracer, torch.no_grad():
        model(torch.randn(3, 128))
    assert "layers.0.q.weight" in tracer.tensors and "layers.0.q.W_q" not in tracer.tensors
    assert tuple(tracer.tensors["layers.0.q.weight"].shape) == (64, 128) and "layers.0.q.weight" in tracer.quantized
