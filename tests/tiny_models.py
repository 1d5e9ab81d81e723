"""Tiny random-weight transformers models, built from configs on the fly (no hub access).

Norm weights and every bias are moved away from 1 and 0, so that a port which
ignores one of them shows a difference.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
# Every family whose structure the capture maps; the ones above are also saved to
# disk once per test session (conftest.model_dirs).
MORE_FAMILIES = ("gemma", "gemma2", "gemma3", "phi3", "olmo2", "granite", "mixtral", "qwen2_moe", "stablelm", "opt")
ALL_FAMILIES = FAMILIES + MORE_FAMILIES
VOCAB = 96
WINDOW = 4  # sliding window of the families that have one: shorter than the test prompts


def config(family: str, **overrides):
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    if family == "llama":
        return transformers.LlamaConfig(**{**common, **overrides})
    if family == "mistral":
        return transformers.MistralConfig(**{**common, "sliding_window": None, **overrides})
    if family == "qwen2":
        return transformers.Qwen2Config(**{**common, **overrides})
    if family == "qwen3":
        return transformers.Qwen3Config(**{**common, "head_dim": 16, **overrides})
    small = dict(common, intermediate_size=64, num_hidden_layers=2, pad_token_id=2)
    gemma = dict(small, head_dim=16, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16)
    if family == "gemma":
        return transformers.GemmaConfig(**{**gemma, **overrides})
    if family == "gemma2":  # layer 0 sliding, layer 1 global; both soft-caps on
        return transformers.Gemma2Config(**{**gemma, "sliding_window": WINDOW, "attn_logit_softcapping": 20.0,
                                            "final_logit_softcapping": 1.0, **overrides})
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**{**gemma, "sliding_window": WINDOW,
                                                "layer_types": ["sliding_attention", "full_attention"], **overrides})
    if family == "phi3":  # fused qkv_proj and gate_up_proj; rotary on half of each head
        return transformers.Phi3Config(**{**small, "partial_rotary_factor": 0.5, **overrides})
    if family == "olmo2":
        return transformers.Olmo2Config(**{**small, **overrides})
    if family == "granite":
        return transformers.GraniteConfig(**{**small, "embedding_multiplier": 12.0, "residual_multiplier": 0.25,
                                             "logits_scaling": 4.0, "attention_multiplier": 0.2, **overrides})
    if family == "mixtral":
        return transformers.MixtralConfig(**{**small, "num_local_experts": 4, "num_experts_per_tok": 2,
                                             "sliding_window": None, **overrides})
    if family == "qwen2_moe":  # layer 1 keeps a dense MLP
        return transformers.Qwen2MoeConfig(**{**small, "num_experts": 4, "num_experts_per_tok": 2,
                                              "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
                                              "mlp_only_layers": [1], **overrides})
    if family == "stablelm":  # parallel attention + MLP, LayerNorms, rotary on a quarter of each head
        return transformers.StableLmConfig(**{**small, "partial_rotary_factor": 0.25, "use_parallel_residual": True,
                                              "layer_norm_eps": 1e-5, **overrides})
    if family == "opt":  # learned positions, LayerNorms, and an MLP of the layer's own fc1 and fc2
        return transformers.OPTConfig(**{**dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=64,
                                                num_attention_heads=4, max_position_embeddings=128,
                                                word_embed_proj_dim=64, pad_token_id=2, bos_token_id=0,
                                                eos_token_id=1), **overrides})
    if family == "gpt2":
        return transformers.GPT2Config(**{**dict(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                                                 layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=1), **overrides})
    raise ValueError(family)


def build(family: str, seed: int = 0, **overrides):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(family, **overrides), attn_implementation="eager")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("embed_tokens.weight", "wte.weight")):
                parameter.mul_(0.5)  # std 0.01, as in trained Llama embeddings: norm epsilons matter
            elif name.endswith("wpe.weight"):
                parameter.mul_(0.25)  # position embeddings smaller than token embeddings
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
            elif "norm" in name or ".ln_" in name:
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            elif name.endswith("mlp.gate.weight"):  # MoE routers: decisive, not near-ties
                parameter.copy_(torch.randn_like(parameter))
    return model.eval()


def save(family: str, directory: Path, seed: int = 0, **overrides) -> Path:
    model = build(family, seed, **overrides)
    model.save_pretrained(directory)
    return directory


WORDS = ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)]


def save_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer over `WORDS` that prepends <s>, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return directory


def save_sentencepiece_tokenizer(directory: Path) -> Path:
    """A SentencePiece-style BPE tokenizer ('▁' word prefixes, BOS added, a <|user|> special token),
    trained on a few sentences: standalone '▁' tokens appear before newlines, as in Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>", "<|user|>"],
                                  initial_alphabet=list("▁\n<|>"))
    tokenizer.train_from_iterator(["hello world", "the model says hello", "user asks the model", "world of llamas"] * 10,
                                  trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            additional_special_tokens=["<|user|>"]).save_pretrained(directory)
    return directory


# ERNIE-4.5-MoE whose bfloat16 run, loaded as a user loads it, sends token 8 of NEAR_TIE_TOKENS to another
# expert in layer 1: two of its router's logits there are 0.0005 apart (transformers 5.24; 5.16's routes alike).
NEAR_TIE_TOKENS = "5,17,42,99,3,7,128,200,64,33,11,250"
NEAR_TIE_FLIP = ("layers.1.moe_experts", 8, [6, 15, 16, 20, 28, 50])
BFLOAT16_FACTORY = '''
import torch
from transformers import AutoModelForCausalLM


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
'''


def save_near_tie_moe(directory: Path) -> Path | None:
    """The model above saved to `directory`; None where transformers has no ERNIE-4.5-MoE."""
    model = _ernie_moe(layers=2)
    if model is None:
        return None
    model.save_pretrained(directory)
    return directory


def _ernie_moe(layers: int):
    """A tiny random ERNIE-4.5-MoE whose layers from 0 to `layers - 1` are MoE (seed 0); None where transformers
    has none."""
    import torch
    import transformers

    if "ernie4_5_moe" not in transformers.CONFIG_MAPPING:
        return None
    torch.manual_seed(0)
    config = transformers.CONFIG_MAPPING["ernie4_5_moe"](
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, moe_layer_end_index=layers - 1,
        tie_word_embeddings=False)
    return transformers.AutoModelForCausalLM.from_config(config)


# ERNIE-4.5-MoE, three MoE layers, whose router barely tells its experts apart (its weights scaled by 0.05) and whose
# experts matter (their down projections by 20): the reference run in bfloat16 (the calibration) routes tokens 6, 7
# and 11 of FLAT_ROUTER_TOKENS to other experts in layer 1 (transformers 5.24).
FLAT_ROUTER_TOKENS = "120,155,52,202,245,79,46,34,10,205,148,30"
BFLOAT16_EAGER_FACTORY = BFLOAT16_FACTORY.replace(
    "dtype=torch.bfloat16)", "dtype=torch.bfloat16, attn_implementation='eager', experts_implementation='eager')")


def save_flat_router_moe(directory: Path) -> Path | None:
    """The model above saved to `directory`; None where transformers has no ERNIE-4.5-MoE."""
    import torch

    model = _ernie_moe(layers=3)
    if model is None:
        return None
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.weight.mul_(0.05)
                layer.mlp.experts.down_proj.mul_(20.0)
    model.save_pretrained(directory)
    return directory
