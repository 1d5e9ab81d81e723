"""The parts of transformers' API that parity calls, held to the installed version.

transformers 5.24 renamed the cache argument of its models and attention modules
from `past_key_values` to `cache`, keeping the old name as a deprecated alias for
models only: code written against the old name kept running and silently stopped
using its cache in attention. These tests fail loudly on such a rename instead.
"""

import inspect
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from parity.capture.torch.incremental import CACHE_KEYWORDS, cache_keyword, call_with_cache, decode_support  # noqa: E402


def test_the_cache_keyword_parity_passes_is_one_the_installed_forward_names():
    model = tiny_models.build("llama")
    keyword = cache_keyword(model)
    assert keyword in inspect.signature(type(model).forward).parameters
    attention = transformers.models.llama.modeling_llama.LlamaAttention.forward
    assert any(name in inspect.signature(attention).parameters for name in CACHE_KEYWORDS), (
        "transformers' attention takes its cache by another name: update CACHE_KEYWORDS")


def test_a_wrapper_taking_kwargs_gets_its_base_class_keyword():
    class Wrapped(transformers.LlamaForCausalLM):
        def forward(self, input_ids, **kwargs):
            return super().forward(input_ids=input_ids, **kwargs)

    assert cache_keyword(Wrapped(tiny_models.config("llama"))) == cache_keyword(tiny_models.build("llama"))


def test_a_port_naming_the_old_keyword_gets_it():
    class Port(torch.nn.Module):
        def forward(self, ids, past_key_values=None, use_cache=False):
            return ids

    assert cache_keyword(Port()) == "past_key_values"


def test_decoding_through_the_cache_uses_it_with_no_deprecated_call():
    model = tiny_models.build("llama")
    ids = torch.tensor([[3, 17, 5, 40]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)     # a deprecated name is the next release's silent no-op
        warnings.simplefilter("error", DeprecationWarning)
        full = model(ids).logits
        _, cache = call_with_cache(model, ids[:, :3], None)
        assert cache.get_seq_length() == 3
        logits, cache = call_with_cache(model, ids[:, 3:], cache, start=3)
        assert cache.get_seq_length() == 4                   # the step was written to the cache it was given
        assert decode_support(model, [3, 17]) is None
    torch.testing.assert_close(logits[0, -1], full[0, -1], atol=1e-5, rtol=1e-5)


def test_the_attention_interface_parity_records_through_exists():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert callable(ALL_ATTENTION_FUNCTIONS.get_interface) and hasattr(AttentionInterface, "_global_mapping")
    assert "eager" in ALL_MASK_ATTENTION_FUNCTIONS and callable(AttentionMaskInterface.register)
