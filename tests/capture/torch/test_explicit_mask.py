"""torchtune's decoder with its KV caches set up: a mask given at each call, the caches emptied at position 0."""

import pytest

from conftest import need


@pytest.fixture(scope="module")
def decoder():
    need("torchtune")
    import torch
    from torchtune.models.llama3 import llama3

    torch.manual_seed(0)
    model = llama3(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, max_seq_len=64,
                   intermediate_dim=64).eval()
    plain = model(torch.arange(3, 15)[None])                                   # (1, 12, 64): no caches yet
    model.setup_caches(batch_size=1, dtype=torch.float32, decoder_max_seq_len=32)
    return model, plain


def test_a_whole_pass_with_caches_set_up_is_the_plain_pass(decoder):
    import torch

    from parity.capture.torch.explicit_mask import explicit_masks, takes_explicit_mask

    model, plain = decoder
    assert takes_explicit_mask(model)
    with pytest.raises(ValueError, match="causal masks must be provided"):
        model(torch.arange(3, 15)[None], input_pos=torch.arange(12))
    with explicit_masks(model), torch.no_grad():
        for _ in range(2):   # the caches emptied at position 0: the second pass is the first's
            torch.testing.assert_close(model(torch.arange(3, 15)[None], input_pos=torch.arange(12)), plain)


def test_tokens_decoded_one_at_a_time_through_the_caches_are_the_whole_pass(decoder):
    import torch

    from parity.capture.torch.explicit_mask import explicit_masks

    model, plain = decoder
    with explicit_masks(model), torch.no_grad():
        model(torch.arange(3, 11)[None], input_pos=torch.arange(8))
        rows = [model(torch.tensor([[token]]), input_pos=torch.tensor([8 + step]))[0, -1]
                for step, token in enumerate(range(11, 15))]
    torch.testing.assert_close(torch.stack(rows), plain[0, 8:])


def test_a_module_without_such_caches_is_left_alone():
    torch = need("torch")

    from parity.capture.torch.explicit_mask import takes_explicit_mask

    assert not takes_explicit_mask(torch.nn.Linear(2, 2))
