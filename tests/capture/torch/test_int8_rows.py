"""int8 weights and activations with a scale per row, emulated: each row on 255 levels of its own absmax / 127,
zero rows kept, and the model's weights given back after."""

import pytest

torch = pytest.importorskip("torch")


def test_each_row_is_rounded_to_its_own_int8_grid():
    from parity.capture.torch.int8_rows import round_rows

    x = torch.tensor([[1.0, -0.5, 0.26], [0.0, 0.0, 0.0], [100.0, 3.0, -100.0]], dtype=torch.float64)
    rounded = round_rows(x)
    scales = torch.tensor([1 / 127, 1.0, 100 / 127], dtype=torch.float64)[:, None]
    levels = rounded / scales
    assert torch.allclose(levels, torch.round(levels)) and levels.abs().max() == 127
    assert torch.equal(rounded[1], x[1])                                       # a zero row stays zero
    assert torch.all((rounded - x).abs() <= scales / 2 + 1e-12)               # round to nearest


def test_a_model_computes_on_rounded_weights_and_inputs_and_is_given_back():
    from parity.capture.torch.int8_rows import int8_rows, round_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    weights = [module.weight.detach().clone() for module in model if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        plain = model(x)
        with int8_rows(model) as count:
            quantized = model(x)
        first = round_rows(x) @ round_rows(weights[0]).T + model[0].bias
        expected = round_rows(torch.relu(first)) @ round_rows(weights[1]).T + model[2].bias
    assert count == 2 and torch.allclose(quantized, expected)
    assert not torch.allclose(quantized, plain)
    assert all(torch.equal(module.weight, weight) for module, weight in
               zip((m for m in model if isinstance(m, torch.nn.Linear)), weights))
    with torch.no_grad():
        assert torch.equal(model(x), plain)                                   # no hook left behind
