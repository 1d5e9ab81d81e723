"""Forwards that take positions as gpt-fast (input_pos, (T,)) and Meta's code (start_pos, an int) do: a plain
call is given 0..T-1; a module named `output`; fused q|k|v with grouped-query attention; inference mode."""

import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.incremental import HELD, cache_calls, call_with_cache  # noqa: E402
from parity.capture.torch.module import trace_module  # noqa: E402
from parity.capture.torch.positions import position_argument, positions_filled  # noqa: E402


class HeldCacheModel(torch.nn.Module):
    """forward(idx, input_pos): embeds ids plus their positions; remembers every position it saw (its
    'cache'); its output at a position is the sum of everything seen up to there."""

    def __init__(self, keyword: str = "input_pos"):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)
        self.output = torch.nn.Linear(4, 16, bias=False)
        self.seen = torch.zeros(32, 4)
        self.keyword = keyword

    def forward(self, idx, input_pos=None):
        start = int(input_pos[0])
        hidden = self.embed(idx) + torch.arange(start, start + idx.shape[1])[None, :, None]
        self.seen[start: start + idx.shape[1]] = hidden[0]
        return self.output(self.seen[: start + idx.shape[1]].cumsum(0)[start:][None])


class StartPosModel(HeldCacheModel):
    @torch.inference_mode()
    def forward(self, tokens, start_pos):
        return super().forward(tokens, torch.tensor([start_pos]))


def test_position_arguments_by_convention():
    assert position_argument("start_pos", 3, 2, 1, "cpu") == 3
    assert position_argument("input_pos", 3, 2, 1, "cpu").tolist() == [3, 4]
    assert position_argument("position_ids", 3, 2, 2, "cpu").tolist() == [[3, 4], [3, 4]]


@pytest.mark.parametrize("cls", [HeldCacheModel, StartPosModel])
def test_a_plain_call_is_given_positions_from_zero_and_the_hook_goes_away(cls):
    model = cls()
    ids = torch.tensor([[1, 2, 3]])
    with positions_filled(model):
        logits = model(ids)
    assert logits.shape == (1, 3, 16)
    with pytest.raises((TypeError, IndexError)):
        model(ids)   # outside, the forward is the port's own again


def test_optional_positions_of_parity_s_protocol_are_left_alone():
    class Optional(torch.nn.Module):
        def forward(self, ids, positions=None):
            return positions

    model = Optional()
    with positions_filled(model):
        assert model(torch.tensor([[1]])) is None


@pytest.mark.parametrize("cls", [HeldCacheModel, StartPosModel])
def test_decoding_through_a_held_cache_continues_the_full_pass(cls):
    model = cls()
    assert cache_calls(model).held
    full, _ = call_with_cache(model, torch.tensor([[1, 2, 3]]), None)
    _, cache = call_with_cache(model, torch.tensor([[1, 2]]), None)
    step, cache = call_with_cache(model, torch.tensor([[3]]), cache, start=2)
    assert cache is HELD
    torch.testing.assert_close(step[0, -1], full[0, -1])


def test_a_module_named_output_and_a_gqa_fused_qkv_are_traced():
    class Fused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wqkv = torch.nn.Linear(8, 16 + 8 + 8, bias=False)   # 4 query heads, 2 key/value heads of 4
            self.output = torch.nn.Linear(32, 5, bias=False)

        @torch.inference_mode()
        def forward(self, ids):
            x = torch.nn.functional.one_hot(ids, 8).float()
            return self.output(self.wqkv(x))

    model = Fused()
    trace = trace_module(model, [1, 2, 3], config={"num_attention_heads": 4, "num_key_value_heads": 2},
                         taps={"wqkv": ["layers.0.q", "layers.0.k", "layers.0.v"], "output": "logits"})
    assert trace.shape_of("layers.0.q") == (3, 16)
    assert trace.shape_of("layers.0.k") == trace.shape_of("layers.0.v") == (3, 8)
    assert trace.shape_of("logits") == (3, 5)


class CacheOnRequest(torch.nn.Module):
    """LitGPT's convention: input_pos (optional) selects a KV cache that must be set up first; without it, a plain
    pass over positions 0..T-1."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)
        self.cache = None

    def forward(self, idx, input_pos=None):
        if input_pos is not None and self.cache is None:
            raise TypeError("You need to call `set_kv_cache()`")
        return self.embed(idx)


def test_a_port_that_refuses_positions_without_its_cache_is_called_as_it_is():
    model = CacheOnRequest()
    with positions_filled(model):
        assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 4)       # before: TypeError, the check refused
    model.cache = "set up"
    calls = []
    with positions_filled(model):           # the observer after parity's hook: it sees what the forward is given
        model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
        model(torch.tensor([[1, 2, 3]]))
    assert calls[-1]["input_pos"].tolist() == [0, 1, 2]                    # with its cache it takes them, as before
