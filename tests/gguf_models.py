"""Tiny random models converted to GGUF by llama.cpp's own converter, cached.

The converter (`convert_hf_to_gguf.py`, its `conversion/` package and its
`gguf-py`) ships in the llama-cpp-python sdist; `scripts/install.sh` extracts
it into the parity cache (`~/.cache/parity/llama.cpp-convert-<version>`), so
that tests convert offline with the very code that matches the llama.cpp they
run. Conversions are cached by family, config, weights seed, tokenizer and
converter version: a test session converts each model once per machine.

Tokenizers: the converter reads a SentencePiece `tokenizer.model` for Llama,
Mistral, Qwen2/3, Gemma, Phi-3, Granite and Mixtral. GPT-2, OLMo 2 and Qwen2-MoE only
take a byte-level BPE `tokenizer.json`, and the converter identifies BPE
pre-tokenizers by hashing their output on a fixed text: a tiny random
tokenizer's hash is none it knows, so the conversion wrapper tells it the
pre-tokenizer is GPT-2's ("gpt-2"), which is what the tiny BPE tokenizer uses.
The checks run on token ids, so llama.cpp's tokenizer only has to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import tiny_models

CONVERTER_VERSION = "0.3.36"
OUTTYPES = ("f32", "f16", "q8_0")
BPE_FAMILIES = {"gpt2", "olmo2", "qwen2_moe"}
# GPT-2: the converter reads n_ctx, which transformers 5 no longer writes; transformers' GGUF loader
# ignores the context length and builds 1024 position embeddings, so the tiny model has as many.
# Qwen2-MoE: the converter maps no dense MLP in a MoE model, so every layer is sparse.
# Gemma: the converter drops lm_head (Gemma ties it to the embedding), so the tiny models tie it too.
# Gemma 3: the converter writes no sliding-window pattern and llama.cpp then takes every sixth layer
# as global, so the tiny model has six layers, the last global.
_TIED = {"tie_word_embeddings": True}
CONVERTER_KEYS = {
    "gpt2": {"n_ctx": 1024, "n_positions": 1024},
    "qwen2_moe": {"mlp_only_layers": []},
    "gemma": _TIED, "gemma2": _TIED,
    "gemma3": {**_TIED, "num_hidden_layers": 6, "layer_types": ["sliding_attention"] * 5 + ["full_attention"]},
}
# transformers' GGUF loader reads fewer settings than llama.cpp writes: it builds Qwen3 heads of 128,
# Gemma 2/3 with query_pre_attn_scalar 256 and Gemma 2's soft-caps 50 and 30 whatever the file says,
# and Phi-3 with RoPE on whole heads. A GGUF that is to be the reference keeps to those values.
LOADABLE = {
    "qwen3": {"head_dim": 128},
    "gemma2": {"head_dim": 256, "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0},
    "gemma3": {"head_dim": 256, "query_pre_attn_scalar": 256},
    "phi3": {"partial_rotary_factor": 1.0},
}
SPM_VOCAB = 64          # SentencePiece pieces; the models' vocabularies are larger (padding tokens fill the rest)
RECIPE = 3              # bump when this file changes what it writes


def cache_root() -> Path:
    return Path(os.environ.get("PARITY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "parity")


def converter_dir() -> Path | None:
    """The extracted converter, or None when the install has not put it in the cache."""
    directory = cache_root() / f"llama.cpp-convert-{CONVERTER_VERSION}"
    return directory if (directory / "convert_hf_to_gguf.py").is_file() else None


# The wrapper runs in a fresh interpreter: gguf-py first on sys.path (not the installed
# gguf), the converter's package importable, and, for BPE tokenizers, the pre-tokenizer named.
_WRAPPER = """
import runpy, sys
root, pre, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [root + "/gguf-py", root]
if pre:
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [root + "/convert_hf_to_gguf.py", *argv]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert(model_dir: Path, outfile: Path, outtype: str, *, pre_tokenizer: str = "") -> Path:
    """Convert a model directory with llama.cpp's converter; raise with its output on failure."""
    root = converter_dir()
    if root is None:
        raise FileNotFoundError("llama.cpp's converter is not in the parity cache: run scripts/install.sh")
    command = [sys.executable, "-c", _WRAPPER, str(root), pre_tokenizer, str(model_dir),
               "--outfile", str(outfile), "--outtype", outtype]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "NO_LOCAL_GGUF": "1"})
    if result.returncode != 0 or not outfile.is_file():
        raise RuntimeError(f"converting {model_dir} to {outtype} failed:\n{result.stderr[-3000:]}")
    return outfile


def save_spm_tokenizer(directory: Path) -> Path:
    """A SentencePiece BPE model (`tokenizer.model`, <s>, </s>, <unk> at 0, 1, 2 as in `tiny_models.WORDS`) for the converter, beside
    the word-level `tokenizer.json` of `tiny_models` for transformers (which would need protobuf to read
    a SentencePiece model). The checks run on token ids: only their number matters. "<|endoftext|>" is
    there because llama.cpp looks it up by name when it loads a Phi-3 vocabulary."""
    import io

    import sentencepiece as spm

    tiny_models.save_tokenizer(directory)
    text = ["the model says hello world", "a user asks the model", "hello again world of small models"] * 20
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buffer, vocab_size=SPM_VOCAB,
                                   model_type="bpe", character_coverage=1.0, bos_id=0, eos_id=1, unk_id=2,
                                   pad_id=-1, minloglevel=2, user_defined_symbols=["<|endoftext|>"])
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())
    return directory


def save_bpe_tokenizer(directory: Path) -> Path:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer) trained on a few sentences, as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tiny_models.VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60])
    tokenizer.train_from_iterator(["the model says hello world", "a user asks the model"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(directory)
    return directory


def _key(family: str, seed: int, overrides: dict) -> str:
    config = tiny_models.config(family, **overrides).to_json_string(use_diff=False)
    text = json.dumps([family, seed, config, CONVERTER_VERSION, RECIPE, SPM_VOCAB], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_dir(family: str, *, seed: int = 0, **overrides) -> Path:
    """The cached tiny model directory of `family` (weights and a tokenizer the converter takes)."""
    overrides = {**CONVERTER_KEYS.get(family, {}), **overrides}
    directory = cache_root() / "tiny-gguf" / f"{family}-{_key(family, seed, overrides)}"
    if not (directory / "config.json").is_file():
        staging = directory.with_name(directory.name + f".tmp{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        tiny_models.save(family, staging, seed, **overrides)
        (save_bpe_tokenizer if family in BPE_FAMILIES else save_spm_tokenizer)(staging)
        staging.rename(directory) if not directory.exists() else None
    return directory


def gguf(family: str, outtype: str, *, seed: int = 0, **overrides) -> Path:
    """The cached GGUF of the tiny `family` model, converted by llama.cpp's converter to `outtype`."""
    directory = model_dir(family, seed=seed, **overrides)
    path = directory / f"model-{outtype}.gguf"
    if not path.is_file():
        staging = path.with_name(path.name + f".tmp{os.getpid()}.gguf")
        convert(directory, staging, outtype, pre_tokenizer="gpt-2" if family in BPE_FAMILIES else "")
        staging.rename(path)
    return path
