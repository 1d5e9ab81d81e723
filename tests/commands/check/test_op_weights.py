"""A failure no detector explains, at an op with weights: the check reads that op's weights from both sides, names
a weight that differs (weight_mismatch) and says when they are the same, without --weights."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from conftest import TOKENS  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
FACTORIES = f'''import sys

import torch
import transformers

sys.path.insert(0, {str(EXAMPLES)!r})
import meta_llama


def loaded(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def another_layers_weights(path):     # a loader that read layer 0's o_proj into layer 1's
    model = loaded(path)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.copy_(model.model.layers[0].self_attn.o_proj.weight)
    return model


def another_layers_down_projection(path):   # mlp_out is the MLP's output: its weights are its down projection's
    model = loaded(path)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.copy_(model.model.layers[0].mlp.down_proj.weight)
    return model


def embeddings_perturbed(path):             # embed's weights are the token table it is read from
    model = loaded(path)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.01 * torch.randn_like(model.model.embed_tokens.weight))
    return model


def output_projection_rows_swapped(path):   # two tokens' rows of lm_head exchanged by a converter
    model = loaded(path)
    with torch.no_grad():
        model.lm_head.weight[[3, 5]] = model.lm_head.weight[[5, 3]].clone()
    return model


def channels_reversed(path):          # the right weights, applied to the input's channels in reverse order
    model = loaded(path)
    o_proj = model.model.layers[1].self_attn.o_proj
    o_proj.forward = lambda x: torch.nn.functional.linear(x.flip(-1), o_proj.weight, o_proj.bias)
    return model


def q_of_the_block_input(path):   # the right weights, applied to the block's input where its norm is computed
    model = loaded(path)
    layer, seen = model.model.layers[1], {{}}

    def remember(module, args, kwargs):
        seen["input"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    layer.register_forward_pre_hook(remember, with_kwargs=True)
    q_proj = layer.self_attn.q_proj
    q_proj.forward = lambda x: torch.nn.functional.linear(seen["input"], q_proj.weight, q_proj.bias)
    return model


def meta_style_channels_reversed(path):   # q's rows permuted into pairs (2i, 2i+1), as Meta's checkpoints are
    model = meta_llama.build(path)
    wq = model.layers[1].attention.wq
    wq.forward = lambda x: torch.nn.functional.linear(x.flip(-1), wq.weight, wq.bias)
    return model
'''


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tiny_models.save("llama", tmp_path_factory.mktemp("llama"))
    factories = directory / "ports.py"
    factories.write_text(FACTORIES)
    return directory, factories


def check(llama, capsys, factory, *options, at="layers.1.attn_out"):
    from parity.cli import main

    directory, factories = llama
    capsys.readouterr()
    code = main(["check", str(directory), f"{factories}:{factory}", "--tokens", ",".join(map(str, TOKENS)),
                 "--decode-steps", "0", "--json", "-", *options])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["first_divergence"]["checkpoint"] == at, report["first_divergence"]
    return report, [d for d in report["diagnoses"] if d["checkpoint"] == at]


def test_another_layers_weights_are_named_from_the_op_where_the_error_starts(llama, capsys):
    report, [found] = check(llama, capsys, "another_layers_weights")
    assert found["cause"] == "weight_mismatch" and "read after the check" in found["message"], found
    [weights] = [item["reason"] for item in report["not_checked"] if item["check"] == "weights"]
    assert "the first divergence's were read after it" in weights


@pytest.mark.parametrize("factory, at", [("another_layers_down_projection", "layers.1.mlp_out"),
                                         ("embeddings_perturbed", "embed")])
def test_an_mlps_output_and_the_embedding_are_read_at_the_weights_that_make_them(llama, capsys, factory, at):
    report, [found] = check(llama, capsys, factory, at=at)
    assert found["cause"] == "weight_mismatch" and f"weight for {at} " in found["message"], found


def test_weights_that_are_the_same_are_said_so_and_the_op_stays_unexplained(llama, capsys):
    report, [found] = check(llama, capsys, "channels_reversed")
    assert found["cause"] == "no_known_cause"
    assert any("the weight of layers.1.attn_out was read after the check from both sides" in note and "is the same" in note
               for note in report["notes"]), report["notes"]


def test_with_weights_asked_for_they_are_compared_up_front_and_not_read_again(llama, capsys):
    report, [found] = check(llama, capsys, "another_layers_weights", "--weights")
    assert found["cause"] == "weight_mismatch" and "read after the check" not in found["message"]


def test_q_rows_permuted_for_pairs_are_the_same_weights_not_a_mismatch(llama, capsys):
    report, [found] = check(llama, capsys, "meta_style_channels_reversed", at="layers.1.q")
    assert found["cause"] == "no_known_cause"
    assert any("the weight of layers.1.q was read after the check from both sides" in note and "q's rows in another order" in note
               for note in report["notes"]), report["notes"]


def test_a_cause_that_names_the_output_projection_is_given_its_weights(llama, capsys):
    report, found = check(llama, capsys, "output_projection_rows_swapped", at="logits")
    causes = {d["cause"]: d["message"] for d in found}
    assert set(causes) == {"output_projection", "weight_mismatch"}, causes
    assert "logits" in causes["weight_mismatch"] and "read after the check" in causes["weight_mismatch"]
    assert "Run with --weights" not in causes["output_projection"]


def test_the_same_weights_applied_to_another_tensor_are_named_wiring(llama, capsys):
    report, [found] = check(llama, capsys, "q_of_the_block_input", at="layers.1.q")
    assert found["cause"] == "wiring", found
    assert "reads layers.0.out where the model reads layers.1.attn_norm" in found["message"]
    assert "with the same weights on both sides" in found["message"] and "read after the check" in found["message"]
