"""Every family's checkpoints are found from the model's structure, and mean what they say."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import TOKENS  # noqa: E402
from parity.capture.hf.model import HFModel  # noqa: E402
from parity.capture.hf.structure import map_config, map_model  # noqa: E402
from parity.core.compare import compare  # noqa: E402
from parity.core.errors import CaptureError  # noqa: E402
from tiny_models import ALL_FAMILIES, WINDOW, build, config  # noqa: E402

BLOCK = {"attn_norm", "q", "k", "v", "q_rope", "k_rope", "attn_probs", "attn_ctx", "attn_out", "resid_mid",
         "mlp_norm", "mlp_gate", "mlp_up", "mlp_act", "mlp_out", "out"}
MOE = {"moe_router_logits", "moe_experts", "moe_weights"}
POST_NORMS = {"attn_post_norm", "mlp_post_norm"}
# family -> (per-layer kinds of layer 0, global kinds): what each family has, written out by hand.
EXPECTED = {
    "llama": (BLOCK, {"embed", "final_norm", "logits"}),
    "mistral": (BLOCK, {"embed", "final_norm", "logits"}),
    "qwen2": (BLOCK, {"embed", "final_norm", "logits"}),
    "qwen3": (BLOCK | {"q_norm", "k_norm"}, {"embed", "final_norm", "logits"}),
    "gpt2": (BLOCK - {"q_rope", "k_rope", "mlp_gate", "mlp_up"} | {"qkv", "mlp_fc"},
             {"pos_embed", "embed", "final_norm", "logits"}),
    "gemma": (BLOCK, {"embed_tokens", "embed", "final_norm", "logits"}),
    "gemma2": (BLOCK | POST_NORMS, {"embed_tokens", "embed", "final_norm", "lm_head_out", "logits"}),
    "gemma3": (BLOCK | POST_NORMS | {"q_norm", "k_norm"}, {"embed_tokens", "embed", "final_norm", "logits"}),
    "phi3": (BLOCK | {"qkv", "mlp_gate_up"}, {"embed", "final_norm", "logits"}),
    "olmo2": (BLOCK - {"attn_norm", "mlp_norm"} | POST_NORMS | {"q_norm", "k_norm"}, {"embed", "final_norm", "logits"}),
    "granite": (BLOCK, {"embed_tokens", "embed", "final_norm", "lm_head_out", "logits"}),
    "mixtral": (BLOCK - {"mlp_gate", "mlp_up", "mlp_act"} | MOE, {"embed", "final_norm", "logits"}),
    "qwen2_moe": (BLOCK - {"mlp_gate", "mlp_up", "mlp_act"} | MOE | {"moe_routed", "moe_shared"},
                  {"embed", "final_norm", "logits"}),
    "stablelm": (BLOCK - {"resid_mid", "mlp_norm"}, {"embed", "final_norm", "logits"}),
    "opt": (BLOCK - {"q_rope", "k_rope", "mlp_gate", "mlp_up"} | {"mlp_fc"}, {"pos_embed", "embed", "final_norm", "logits"}),
}


def reference(model, **options):
    hf = HFModel(path=None, model=model, family=model.config.model_type, dtype="float32", mapping=map_model(model))
    return hf.capture(TOKENS, **options)


@pytest.fixture(scope="module")
def families():
    """family -> (model, trace): tiny random models, built from configs and captured once."""
    built = {}
    for family in ALL_FAMILIES:
        model = build(family, **({"sliding_window": WINDOW} if family == "mistral" else {}))
        built[family] = (model, reference(model))
    return built


def kinds(trace, layer=0):
    per_layer = {n.split(".", 2)[2] for n in trace.names if n.startswith(f"layers.{layer}.")}
    return per_layer, {n for n in trace.names if "." not in n}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_structure_gives_every_checkpoint_the_family_has(family, families):
    model, trace = families[family]
    assert kinds(trace) == EXPECTED[family]
    assert map_config(config(family)).taps == map_model(model).taps  # the same from the config alone, no weights
    assert any(name.startswith("raw.") for name in trace.names)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_logits_and_residual_stream_agree_with_the_model(family, families):
    model, trace = families[family]
    with torch.no_grad():
        output = model(torch.tensor([TOKENS]), output_hidden_states=True)
    np.testing.assert_allclose(trace["logits"], output.logits[0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(trace["embed"], output.hidden_states[0][0].numpy())
    facts = trace.metadata["architecture"]
    scale = facts["residual_multiplier"] or 1.0
    for i, layer in enumerate(facts["layers"]):
        block_in = trace["embed"] if i == 0 else trace[f"layers.{i - 1}.out"]
        attention = trace[f"layers.{i}.attn_post_norm" if f"layers.{i}.attn_post_norm" in trace else f"layers.{i}.attn_out"]
        mlp = trace[f"layers.{i}.mlp_post_norm" if f"layers.{i}.mlp_post_norm" in trace else f"layers.{i}.mlp_out"]
        if layer["parallel"]:
            expected_out = block_in + attention + mlp
        else:
            np.testing.assert_allclose(trace[f"layers.{i}.resid_mid"], block_in + scale * attention, rtol=1e-5, atol=1e-5)
            expected_out = trace[f"layers.{i}.resid_mid"] + scale * mlp
        np.testing.assert_allclose(trace[f"layers.{i}.out"], expected_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3", "granite"])
def test_scaled_embeddings_are_the_lookup_times_the_scale(family, families):
    model, trace = families[family]
    lookup = model.get_input_embeddings().weight[torch.tensor(TOKENS)].detach().numpy()
    np.testing.assert_array_equal(trace["embed_tokens"], lookup)
    scale = trace.metadata["architecture"]["embed_scale"]
    np.testing.assert_allclose(trace["embed"], lookup * scale, rtol=1e-6)


def test_post_processed_logits_keep_the_heads_own_output(families):
    trace = families["gemma2"][1]
    np.testing.assert_allclose(trace["logits"], np.tanh(trace["lm_head_out"] / 1.0) * 1.0, rtol=1e-5, atol=1e-6)
    assert np.abs(trace["logits"] - trace["lm_head_out"]).max() > 0.05  # the cap of 1.0 bites
    granite = families["granite"][1]
    np.testing.assert_allclose(granite["logits"], granite["lm_head_out"] / 4.0, rtol=1e-6)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3"])
def test_sliding_windows_are_recorded_and_show_in_the_probabilities(family, families):
    _, trace = families[family]
    windows = [layer["sliding_window"] for layer in trace.metadata["architecture"]["layers"]]
    expected = {"mistral": [WINDOW] * 3, "gemma2": [WINDOW, None], "gemma3": [WINDOW, None]}[family]
    assert windows == expected
    distance = np.arange(len(TOKENS))[:, None] - np.arange(len(TOKENS))[None, :]   # query - key
    for i, window in enumerate(windows):
        probs = trace[f"layers.{i}.attn_probs"]                                       # (H, T, S)
        reach = window if window is not None else len(TOKENS)
        assert np.all(probs[:, (distance >= reach) | (distance < 0)] == 0.0)
        assert np.all(probs[:, (distance < reach) & (distance >= 0)] > 0.0)


def test_partial_rotary_leaves_the_rest_of_each_head_as_it_is(families):
    trace = families["phi3"][1]
    layer = trace.metadata["architecture"]["layers"][0]
    assert (layer["rotary_dim"], layer["head_dim"]) == (8, 16)
    q, q_rope = trace["layers.0.q"].reshape(len(TOKENS), -1, 16), trace["layers.0.q_rope"].reshape(len(TOKENS), -1, 16)
    np.testing.assert_array_equal(q_rope[..., 8:], q[..., 8:])
    assert not np.allclose(q_rope[1:, :, :8], q[1:, :, :8])


def test_fused_projections_are_recorded_whole_and_split(families):
    trace = families["phi3"][1]
    np.testing.assert_array_equal(trace["layers.0.qkv"], np.concatenate([trace[f"layers.0.{p}"] for p in "qkv"], -1))
    assert trace["layers.0.q"].shape[-1] == 2 * trace["layers.0.k"].shape[-1]  # GQA: uneven parts
    np.testing.assert_array_equal(trace["layers.0.mlp_gate_up"],
                                  np.concatenate([trace["layers.0.mlp_gate"], trace["layers.0.mlp_up"]], -1))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_routing_is_the_top_k_of_the_router_logits(family, families):
    _, trace = families[family]
    logits = trace["layers.0.moe_router_logits"]                               # (T, E)
    experts, weights = trace["layers.0.moe_experts"], trace["layers.0.moe_weights"]
    assert logits.shape == (len(TOKENS), 4) and experts.shape == (len(TOKENS), 2) and experts.dtype == np.int64
    np.testing.assert_array_equal(experts, np.sort(np.argsort(-logits, axis=-1)[:, :2], axis=-1))
    assert np.all((weights > 0).sum(-1) == 2)
    np.testing.assert_array_equal(np.sort(np.flatnonzero(weights[0] > 0)), experts[0])
    if family == "qwen2_moe":
        assert "layers.1.moe_experts" not in trace and "layers.1.mlp_act" in trace  # layer 1 keeps a dense MLP


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_a_model_compared_with_itself_passes(family, families):
    model, trace = families[family]
    again = reference(model)
    comparison = compare(trace, again)
    assert comparison.passed and not comparison.missing and not comparison.raw_unpaired
    assert len(comparison.checkpoints) == len(trace.names)


def planted(model, parameter: str, change):
    model = copy.deepcopy(model)
    with torch.no_grad():
        change(model.get_parameter(parameter))
    return model


@pytest.mark.parametrize("family,parameter,first", [
    ("gemma2", "model.layers.1.post_feedforward_layernorm.weight", "layers.1.mlp_post_norm"),
    ("gemma3", "model.layers.0.post_attention_layernorm.weight", "layers.0.attn_post_norm"),
    ("olmo2", "model.layers.1.post_attention_layernorm.weight", "layers.1.attn_post_norm"),
    ("mixtral", "model.layers.1.mlp.gate.weight", "layers.1.moe_router_logits"),
    ("opt", "model.decoder.layers.1.fc1.weight", "layers.1.mlp_fc"),
])
def test_a_planted_change_is_localized(family, parameter, first, families):
    model, trace = families[family]
    comparison = compare(trace, reference(planted(model, parameter, lambda p: p.zero_())))
    assert comparison.first_divergence.checkpoint == first


def test_a_router_that_picks_other_experts_fails_as_disagreement(families):
    model, trace = families["mixtral"]
    comparison = compare(trace, reference(planted(model, "model.layers.0.mlp.gate.weight", lambda p: p.neg_())))
    experts = comparison.result("layers.0.moe_experts")
    assert experts.failed and "routed to other experts" in experts.reason
    assert experts.metrics.mismatched == len(TOKENS)  # negated logits: the top-2 of 4 become the bottom-2


def test_a_change_only_a_raw_module_sees_is_reported_there(families):
    model, trace = families["qwen2_moe"]
    comparison = compare(trace, reference(planted(model, "model.layers.0.mlp.shared_expert_gate.weight",
                                                  lambda p: p.mul_(3.0))))
    assert comparison.first_divergence.checkpoint == "layers.0.mlp_out"
    failed = {r.name for r in comparison.checkpoints if r.failed}
    assert "raw.model.layers.0.mlp.shared_expert_gate" in failed
    assert "layers.0.moe_shared" not in failed and "layers.0.moe_routed" not in failed


def test_raw_capture_can_be_turned_off(families):
    model, _ = families["llama"]
    assert not any(name.startswith("raw.") for name in reference(model, raw=False).names)


def test_a_layer_named_otherwise_is_mapped_by_its_output_with_the_reason(tmp_path):
    # BERT as a decoder names its MLP `intermediate` and `output`: it was refused; its layers' outputs, the
    # embedding and the logits are checkpoints, and the trace says why nothing inside a layer is
    bert = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, is_decoder=True)
    mapping = map_config(bert)
    names = {name for tap in mapping.taps for name in tap.names if name}
    assert names == {"embed", "layers.0.out", "layers.1.out", "logits"}
    assert mapping.architecture["layers"] == [
        {"outputs_only": "no MLP module among its children (attention, intermediate, output)"}] * 2


def test_a_flip_at_a_near_tie_of_the_router_logits_is_admitted(families):
    from parity.core.trace import make_trace

    _, trace = families["mixtral"]
    logits, experts = trace["layers.0.moe_router_logits"].copy(), trace["layers.0.moe_experts"]
    ordered = np.argsort(-logits[3])
    logits[3, ordered[2]] = logits[3, ordered[1]] - 1e-4      # the third expert just below the second
    nudged = logits.copy()
    nudged[3, ordered[2]] += 2e-4                              # the candidate's logits put it just above
    flipped = experts.copy()
    flipped[3] = np.sort([ordered[0], ordered[2]])
    reference_trace = make_trace({"layers.0.moe_router_logits": logits, "layers.0.moe_experts": experts}, {})
    candidate = make_trace({"layers.0.moe_router_logits": nudged, "layers.0.moe_experts": flipped}, {})
    result = compare(reference_trace, candidate).result("layers.0.moe_experts")
    assert result.status == "pass" and "near-tie" in result.reason
    far = flipped.copy()
    far[5] = np.sort(np.argsort(logits[5])[:2])               # a token with no tie, routed to the two weakest
    result = compare(reference_trace, make_trace({"layers.0.moe_router_logits": nudged,
                                                  "layers.0.moe_experts": far}, {})).result("layers.0.moe_experts")
    assert result.failed and result.metrics.mismatched == 1 and "position 5" in result.reason


@pytest.mark.parametrize("dtype, admitted", [("bfloat16", True), ("float32", False)])
def test_a_near_tie_flip_is_admitted_within_the_candidates_precisions_noise(families, dtype, admitted):
    # a correct bfloat16 ERNIE-4.5-MoE moved its router logits by 1.1% of their RMS at a token whose 6th and 7th
    # experts were 0.0005 apart: the flip was "the choice made from them is wrong"
    from parity.core.trace import make_trace

    _, trace = families["mixtral"]
    logits, experts = trace["layers.0.moe_router_logits"].copy(), trace["layers.0.moe_experts"]
    scale = float(np.sqrt(np.mean(logits.astype(np.float64) ** 2)))
    ordered = np.argsort(-logits[3])
    logits[3, ordered[2]] = logits[3, ordered[1]] - 0.002 * scale     # the third expert just below the second
    nudged = logits.copy()
    nudged[3] += 0.015 * scale * np.where(np.arange(logits.shape[-1]) == ordered[2], 1.0, -1.0)   # 1.5% shifts
    flipped = experts.copy()
    flipped[3] = np.sort([ordered[0], ordered[2]])
    reference = make_trace({"layers.0.moe_router_logits": logits, "layers.0.moe_experts": experts}, {})
    candidate = make_trace({"layers.0.moe_router_logits": nudged, "layers.0.moe_experts": flipped}, {"dtype": dtype})
    result = compare(reference, candidate).result("layers.0.moe_experts")
    assert (result.status == "pass") == admitted


@pytest.mark.parametrize("calibration_routes_alike", [True, False])
def test_a_token_routed_as_the_reference_routes_at_the_candidates_precision_is_admitted(families,
                                                                                        calibration_routes_alike):
    # ZAYA's router chooses from more than its recorded logits: in bfloat16 three of 12 tokens went to other
    # experts with the recorded logits' argmax unchanged, and the reference run in bfloat16 (the calibration)
    # chose exactly what the candidate chose; the flips were "the choice made from them is wrong"
    from parity.core.compare import CompareConfig
    from parity.core.results import NoiseFloor
    from parity.core.trace import make_trace

    _, trace = families["mixtral"]
    logits, experts = trace["layers.0.moe_router_logits"], trace["layers.0.moe_experts"]
    weakest = np.sort(np.argsort(logits[5])[:2])               # token 5 routed to its two weakest experts: no tie
    routed = experts.copy()
    routed[5] = weakest
    calibration = routed if calibration_routes_alike else experts
    noise = {"layers.0.moe_experts": NoiseFloor(0.0, 0.0, chosen=tuple(tuple(sorted(row)) for row in
                                                                       calibration.astype(int).tolist()))}
    reference = make_trace({"layers.0.moe_router_logits": logits, "layers.0.moe_experts": experts}, {})
    candidate = make_trace({"layers.0.moe_router_logits": logits, "layers.0.moe_experts": routed}, {})
    result = compare(reference, candidate, config=CompareConfig(noise=noise)).result("layers.0.moe_experts")
    assert (result.status == "pass") == calibration_routes_alike


@pytest.mark.parametrize("tokens", [TOKENS, TOKENS[:4]])  # 4 tokens = 4 heads: the layout is read off q itself
def test_per_head_norms_are_recorded_token_major_in_every_layout(tokens, families):
    model, _ = families["gemma3"]   # Gemma 3 norms q after moving heads first: (B, H, T, hd)
    hf = HFModel(path=None, model=model, family="gemma3_text", dtype="float32", mapping=map_model(model))
    trace = hf.capture(tokens)
    attention = model.model.layers[0].self_attn
    q = torch.from_numpy(trace["layers.0.q"]).view(len(tokens), -1, 16)           # (T, H, hd)
    expected = attention.q_norm(q).reshape(len(tokens), -1).detach().numpy()
    np.testing.assert_allclose(trace["layers.0.q_norm"], expected, rtol=1e-6, atol=1e-6)


def test_fused_outputs_are_split_by_the_split_suffix():
    from parity.capture.torch.taps import resolve_taps

    (tap,) = resolve_taps({"blocks.{i}.qkv:split": ["layers.{i}.qkv", "layers.{i}.q", "layers.{i}.k", "layers.{i}.v"]})
    assert (tap.module, tap.io, len(tap.names)) == ("blocks.{i}.qkv", "split", 4)


def test_a_per_model_type_override_replaces_what_the_structure_gives(monkeypatch, families):
    from parity.capture.hf import structure as hf_structure
    from parity.core.names import Tap

    model, _ = families["llama"]
    override = Tap("model.layers.{i}.mlp.down_proj", ("layers.{i}.mlp_out",))   # record mlp_out at down_proj
    monkeypatch.setitem(hf_structure.HF_OVERRIDES, "llama", (override,))
    taps = map_model(model).taps
    assert override in taps
    assert not any(t.module == "model.layers.0.mlp.down_proj" and t.io == "output" for t in taps)
    assert any(t.module == "model.layers.0.mlp.down_proj" and t.io == "input" for t in taps)  # mlp_act kept


def test_a_port_named_as_metas_code_is_mapped_without_a_config(model_dirs):
    """A PyTorch LM that is no transformers model: its blocks are the ModuleList of one type holding an attention
    module, and each part is told by the names ports use (Meta's wq/wo, w1/w2/w3, attention_norm, ffn_norm)."""
    import meta_llama

    from parity.capture.hf.structure import map_module

    model = meta_llama.build(model_dirs["llama"])
    taps = {(tap.module, tap.io): tap.names for tap in map_module(model)}
    assert taps[("layers.0", "input")] == ("embed",)
    assert taps[("layers.0.attention_norm", "output")] == ("layers.0.attn_norm",)
    assert taps[("layers.1.attention.wq", "output")] == ("layers.1.q",)
    assert taps[("layers.1.attention.wo", "input")] == ("layers.1.attn_ctx",)
    assert taps[("layers.1.ffn_norm", "input")] == ("layers.1.resid_mid",)
    assert taps[("layers.2.feed_forward.w1", "output")] == ("layers.2.mlp_gate",)
    assert taps[("layers.2.feed_forward.w3", "output")] == ("layers.2.mlp_up",)
    assert taps[("layers.2.feed_forward.w2", "input")] == ("layers.2.mlp_act",)
    assert taps[("norm", "output")] == ("final_norm",)
    assert not any(io == "attention" for _, io in taps)       # transformers' attention function is not there


def test_a_part_not_told_apart_by_name_is_not_tapped():
    """A gated MLP named fc1, fc2, fc3 (LLMs-from-scratch): fc1 and fc2 mean GPT-2's two linears elsewhere, so no
    part of it is tapped, only its output; a list without attention modules is refused."""
    import torch

    from parity.capture.hf.structure import map_module

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(8, 8) for _ in range(4))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.norm1, self.norm2 = Attention(), torch.nn.RMSNorm(8), torch.nn.RMSNorm(8)
            self.mlp = torch.nn.Module()
            self.mlp.fc1, self.mlp.fc2, self.mlp.fc3 = (torch.nn.Linear(8, 8) for _ in range(3))

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(Block() for _ in range(2))
    names = {name for tap in map_module(model) for name in tap.names}
    assert {"layers.1.q", "layers.1.attn_ctx", "layers.1.mlp_out", "layers.1.attn_norm", "layers.1.mlp_norm"} <= names
    assert not names & {"layers.1.mlp_fc", "layers.1.mlp_act", "layers.1.mlp_gate", "layers.1.mlp_up"}
    model.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
    with pytest.raises(CaptureError, match="no list of decoder blocks"):
        map_module(model)


def test_an_mlp_whose_names_do_not_say_is_read_by_its_shapes():
    """LLMs-from-scratch's names: blocks in an nn.Sequential (its GPT) or a ModuleList, `att` with W_query, W_key,
    W_value and out_proj, `ff`. The GPT's MLP is ff.layers[0] and [2] (8 -> 32 -> 8): the one from the hidden
    width is mlp_fc, the input of the one back is mlp_act. The Llama's gated fc1, fc2 (8 -> 12) and fc3 (12 -> 8):
    fc3's input is mlp_act, and the gate is the one its forward's code activates; without code that says, fc1 and
    fc2 are not tapped."""
    import torch

    from parity.capture.hf.structure import map_module

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W_query, self.W_key, self.W_value, self.out_proj = (torch.nn.Linear(8, 8) for _ in range(4))

    def block(ff):
        module = torch.nn.Module()
        module.att, module.ff, module.norm1, module.norm2 = Attention(), ff, torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)
        return module

    def plain():
        ff = torch.nn.Module()
        ff.layers = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
        return ff

    class Linears(torch.nn.Module):        # no forward of its own: no code says which is the gate
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = torch.nn.Linear(8, 12), torch.nn.Linear(8, 12), torch.nn.Linear(12, 8)

    class FeedForward(Linears):            # as LLMs-from-scratch writes it
        def forward(self, x):
            x_fc1 = self.fc1(x)
            x_fc2 = self.fc2(x)
            x = torch.nn.functional.silu(x_fc1) * x_fc2
            return self.fc3(x)

    class UpFirst(Linears):                # the same linears, the second activated
        def forward(self, x):
            return self.fc3(self.fc1(x) * torch.nn.functional.silu(self.fc2(x)))

    model = torch.nn.Module()
    model.trf_blocks = torch.nn.Sequential(*(block(plain()) for _ in range(2)))
    taps = {(tap.module, tap.io): tap.names for tap in map_module(model)}
    assert taps[("trf_blocks.1.att.W_query", "output")] == ("layers.1.q",)
    assert taps[("trf_blocks.1.att.out_proj", "input")] == ("layers.1.attn_ctx",)
    assert taps[("trf_blocks.1.ff.layers.0", "output")] == ("layers.1.mlp_fc",)
    assert taps[("trf_blocks.1.ff.layers.2", "input")] == ("layers.1.mlp_act",)
    assert taps[("trf_blocks.1.ff", "output")] == ("layers.1.mlp_out",)
    model.trf_blocks = torch.nn.ModuleList(block(Linears()) for _ in range(2))
    taps = {(tap.module, tap.io): tap.names for tap in map_module(model)}
    assert taps[("trf_blocks.1.ff.fc3", "input")] == ("layers.1.mlp_act",)
    names = {name for names in taps.values() for name in names}
    assert not names & {"layers.1.mlp_gate", "layers.1.mlp_up", "layers.1.mlp_fc"}
    for kind, gate, up in ((FeedForward, "fc1", "fc2"), (UpFirst, "fc2", "fc1")):
        model.trf_blocks = torch.nn.ModuleList(block(kind()) for _ in range(2))
        taps = {(tap.module, tap.io): tap.names for tap in map_module(model)}
        assert taps[(f"trf_blocks.1.ff.{gate}", "output")] == ("layers.1.mlp_gate",)
        assert taps[(f"trf_blocks.1.ff.{up}", "output")] == ("layers.1.mlp_up",)
        assert taps[("trf_blocks.1.ff.fc3", "input")] == ("layers.1.mlp_act",)


def test_litgpts_names_and_its_fused_qkv_split_by_the_config_its_attention_keeps():
    """LitGPT keeps its blocks at transformer.h.{i} (as nanoGPT does) with names of its own: norm_1, attn.qkv
    ([q | k | v]), attn.proj, norm_2, mlp.fc_1 (gate), mlp.fc_2 (up), mlp.proj; the head counts are in the config
    its attention holds. It is mapped from its structure, not as nanoGPT."""
    from types import SimpleNamespace

    import torch

    from parity.capture.torch.candidate import infer_taps

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(n_head=2, n_query_groups=1, head_size=4)
            self.qkv, self.proj = torch.nn.Linear(8, 16), torch.nn.Linear(8, 8)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_1, self.attn, self.norm_2 = torch.nn.RMSNorm(8), Attention(), torch.nn.RMSNorm(8)
            self.mlp = torch.nn.Module()
            self.mlp.fc_1, self.mlp.fc_2, self.mlp.proj = torch.nn.Linear(8, 12), torch.nn.Linear(8, 12), torch.nn.Linear(12, 8)

    model = torch.nn.Module()
    model.transformer = torch.nn.Module()
    model.transformer.h = torch.nn.ModuleList(Block() for _ in range(2))
    model.transformer.ln_f = torch.nn.RMSNorm(8)
    taps = {(tap.module, tap.io): tap for tap in infer_taps(model, "litgpt-like")}
    split = taps[("transformer.h.1.attn.qkv", "split")]
    assert split.names == ("layers.1.qkv", "layers.1.q", "layers.1.k", "layers.1.v") and split.sizes == (8, 4, 4)
    assert taps[("transformer.h.1.attn.proj", "input")].names == ("layers.1.attn_ctx",)
    assert taps[("transformer.h.1.norm_1", "output")].names == ("layers.1.attn_norm",)
    assert taps[("transformer.h.1.norm_2", "output")].names == ("layers.1.mlp_norm",)
    assert taps[("transformer.h.1.mlp.fc_1", "output")].names == ("layers.1.mlp_gate",)
    assert taps[("transformer.h.1.mlp.fc_2", "output")].names == ("layers.1.mlp_up",)
    assert taps[("transformer.h.1.mlp.proj", "input")].names == ("layers.1.mlp_act",)
    assert taps[("transformer.ln_f", "output")].names == ("final_norm",)
