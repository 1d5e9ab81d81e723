"""The mechanisms on families the planted port does not cover, with bugs planted in transformers' own code:
partial rotary (Phi-3, StableLM's parallel blocks), Gemma 2's soft-capped windowed attention, Granite's
multipliers. The reference is the model as it is; the candidate the same model with one function replaced."""

import importlib

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402
from planted_bugs import TOKENS  # noqa: E402
from planted_port import one_thread  # noqa: E402
from parity.capture.hf.model import capture_hf  # noqa: E402
from parity.core.compare import compare  # noqa: E402
from parity.diagnose import diagnose  # noqa: E402


def rotate_half_backwards(x):
    first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((second, -first), dim=-1)


def repeat_kv_tiled(hidden_states, n_rep):
    return hidden_states.repeat(1, n_rep, 1, 1) if n_rep > 1 else hidden_states


def scores_quartered(original):
    def attention(module, query, key, value, mask, scaling=None, **kwargs):
        return original(module, query, key, value, mask, scaling=scaling / 4, **kwargs)
    return attention


CASES = {  # (family, function replaced, its replacement, the cause, the checkpoint)
    "phi3: rotate_half backwards (half the head rotated)": ("phi3", "rotate_half", lambda _: rotate_half_backwards,
                                                             "rope_direction", "layers.0.q_rope"),
    "stablelm: rotate_half backwards (a quarter rotated)": ("stablelm", "rotate_half", lambda _: rotate_half_backwards,
                                                             "rope_direction", "layers.0.q_rope"),
    "gemma2: KV heads tiled": ("gemma2", "repeat_kv", lambda _: repeat_kv_tiled, "gqa_head_mapping", "layers.0.attn_probs"),
    "granite: scores scaled by a quarter of its attention multiplier": ("granite", "eager_attention_forward",
                                                                        scores_quartered, "attention_scale",
                                                                        "layers.0.attn_probs"),
}


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    def made(family):
        directory = tmp_path_factory.mktemp(family)
        with one_thread():
            tiny_models.save(family, directory)
        return directory
    return {family: made(family) for family in sorted({case[0] for case in CASES.values()})}


@pytest.mark.parametrize("case", CASES)
def test_a_bug_in_another_family_is_named(case, directories):
    family, attribute, replacement, cause, checkpoint = CASES[case]
    module = importlib.import_module(type(transformers.AutoConfig.for_model(family)).__module__.replace(
        "configuration_", "modeling_"))
    original = getattr(module, attribute)
    with one_thread():
        reference = capture_hf(directories[family], tokens=TOKENS)
        setattr(module, attribute, replacement(original))
        try:
            candidate = capture_hf(directories[family], tokens=TOKENS)
        finally:
            setattr(module, attribute, original)
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    assert [(d.cause, d.checkpoint) for d in comparison.diagnoses] == [(cause, checkpoint)]
