"""A candidate MoE run by transformers' grouped experts against the reference's per-expert loop."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import TOKENS  # noqa: E402
from parity.capture.hf.model import HFModel  # noqa: E402
from parity.capture.hf.structure import map_model  # noqa: E402
from parity.capture.torch.module import trace_module  # noqa: E402
from parity.core.compare import compare  # noqa: E402
from parity.core.results import NOT_COMPARABLE  # noqa: E402
from tiny_models import config  # noqa: E402


def test_grouped_experts_pass_against_the_loop_and_their_activation_is_not_compared():
    # The reference runs the experts' loop (float64 has no grouped matmul): the shared activation module's first
    # call holds one expert's tokens there, every routed token in the grouped run. A correct candidate had
    # failed on that raw module alone.
    torch.manual_seed(0)
    looped = transformers.AutoModelForCausalLM.from_config(config("qwen2_moe"), attn_implementation="eager",
                                                           experts_implementation="eager").eval()
    reference = HFModel(path=None, model=looped, family="qwen2_moe", dtype="float32",
                        mapping=map_model(looped)).capture(TOKENS)
    grouped = transformers.AutoModelForCausalLM.from_config(config("qwen2_moe"),
                                                            experts_implementation="grouped_mm").eval()
    grouped.load_state_dict(looped.state_dict())
    comparison = compare(reference, trace_module(grouped, TOKENS, taps=map_model(grouped).taps, raw=True))
    assert comparison.passed
    not_compared = [result.name for result in comparison.checkpoints if result.status == NOT_COMPARABLE]
    assert not_compared and all(name.endswith(".mlp.experts.act_fn") for name in not_compared)
