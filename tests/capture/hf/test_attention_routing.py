"""Recording the attention leaves what the model computes as it was: model code reads
`config._attn_implementation`, so the recorder never changes it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import TOKENS  # noqa: E402
from parity.capture.hf.attention import recording_attention  # noqa: E402
from parity.capture.hf.structure import map_model  # noqa: E402
from parity.capture.torch.module import trace_module  # noqa: E402
from tiny_models import build  # noqa: E402


def falcon(implementation: str):
    """A tiny Falcon: its attention runs its own code, and takes the sdpa branch only where the key says "sdpa"."""
    torch.manual_seed(0)
    config = transformers.FalconConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       new_decoder_architecture=False, multi_query=True, parallel_attn=True,
                                       bias=False, alibi=False)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=implementation).eval()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_falcon_traced_computes_what_it_computes_untraced(implementation):
    # Under a key of the recorder's own, Falcon's sdpa model ran its eager branch with sdpa's boolean mask added
    # to the scores: no causal mask at all, and a correct port failed 12/17 checkpoints (rel_l2 0.71 at attn_ctx).
    model = falcon(implementation)
    with torch.no_grad():
        plain = model(torch.tensor([TOKENS])).logits[0].numpy()
    trace = trace_module(model, TOKENS, taps=map_model(model).taps)
    np.testing.assert_array_equal(trace["logits"], plain)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_configured_key_is_the_one_the_model_reads_while_recording(implementation):
    model = build("llama")
    model.config._attn_implementation = implementation
    seen = []
    listener = lambda query, key, probabilities: seen.append((query.shape, probabilities is not None))  # noqa: E731
    with recording_attention(model, {id(model.model.layers[0].self_attn): listener}):
        assert {config._attn_implementation for config in [model.config, model.model.config]} == {implementation}
        with torch.no_grad():
            model(torch.tensor([TOKENS]))
    # the listener still hears layer 0's attention: its probabilities where eager makes them, none from sdpa
    assert seen == [(torch.Size([1, 4, len(TOKENS), 16]), implementation == "eager")]
    assert model.config._attn_implementation == implementation


def test_the_model_files_attention_is_restored_after_recording():
    import sys

    model = build("llama")
    modeling = sys.modules[type(model.model.layers[0].self_attn).__module__]
    eager = modeling.eager_attention_forward
    sdpa = transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"]
    with recording_attention(model, {}):
        assert modeling.eager_attention_forward is not eager
    assert modeling.eager_attention_forward is eager
    assert transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
