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


def test_grouped_experts_pass_against_the_loop_and_nothing_inside_the_experts_is_compared():
    # The reference runs the experts' loop (float64 has no grouped matmul): the shared activation module inside
    # the experts block sees one expert's tokens at a call there, every routed token sorted by expert in the
    # grouped run (or the same shape in another order: DeepSeek-V4). A correct candidate had failed on that raw
    # module alone; modules inside an experts block are no longer recorded raw, the block's output is compared.
    torch.manual_seed(0)
    looped = transformers.AutoModelForCausalLM.from_config(config("qwen2_moe"), attn_implementation="eager",
                                                           experts_implementation="eager").eval()
    reference = HFModel(path=None, model=looped, family="qwen2_moe", dtype="float32",
                        mapping=map_model(looped)).capture(TOKENS)
    grouped = transformers.AutoModelForCausalLM.from_config(config("qwen2_moe"),
                                                            experts_implementation="grouped_mm").eval()
    grouped.load_state_dict(looped.state_dict())
    candidate = trace_module(grouped, TOKENS, taps=map_model(grouped).taps, raw=True)
    comparison = compare(reference, candidate)
    assert comparison.passed and not any(result.status == NOT_COMPARABLE for result in comparison.checkpoints)
    assert not any(".experts." in name for name in [*reference.names, *candidate.names])
