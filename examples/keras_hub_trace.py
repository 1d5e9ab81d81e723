"""keras-hub's Llama on JAX (Keras 3), loaded from a transformers model directory by keras-hub's own converter,
run layer by layer, its intermediate tensors written as a parity trace file.

keras-hub is not PyTorch, so parity cannot hook it: this script calls the backbone's own
layers in the order its decoder's `call` does (`_self_attention_layernorm`, `_query_dense`,
`rotary_embedding_layer`, `_compute_attention`, the gated feedforward, ...) and saves
each result. q, k and v stay as keras-hub keeps them, [T, H, hd]; parity reads that
layout. The attention probabilities come from the layer's own masked softmax over its
rotated q and k.

    python examples/keras_hub_trace.py path/to/llama-model trace.safetensors --tokens 1,415,5565 [--dtype bfloat16]
    parity check path/to/llama-model trace.safetensors

Or hand parity keras-hub's own model as a function that decodes through keras-hub's KV cache (`decoder`):

    parity check path/to/llama-model examples/keras_hub_trace.py:decoder --tokens 1,415,5565

keras-hub 0.32's converter does not pass the config's `rms_norm_eps` on: every norm uses
its default, 1e-6 (Llama 2 and 3 and SmolLM2 say 1e-5). parity names that
(`norm_epsilon`); `--rms-norm-eps-from-config` sets each norm's epsilon from the config
after loading, as a user fixing it would.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

DTYPES = ("float32", "bfloat16", "float16")


def load(model_dir: Path, dtype: str, rms_norm_eps_from_config: bool):
    """keras-hub's LlamaBackbone for `model_dir`, computing in `dtype`."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras_hub

    backbone = keras_hub.models.LlamaBackbone.from_preset(str(model_dir), dtype=dtype)
    if rms_norm_eps_from_config:
        epsilon = json.loads((model_dir / "config.json").read_text())["rms_norm_eps"]
        for layer in backbone.transformer_layers:
            layer._self_attention_layernorm.epsilon = layer._feedforward_layernorm.epsilon = epsilon
        backbone.layer_norm.epsilon = epsilon
    return backbone


def forward(backbone, tokens: list[int]) -> dict[str, np.ndarray]:
    """Every checkpoint of one forward pass over `tokens`, as float32 numpy arrays without the batch axis."""
    from keras import ops

    tensors: dict[str, np.ndarray] = {}

    def keep(name, x):                                                  # [1, T, ...] -> [T, ...]
        tensors[name] = np.asarray(ops.convert_to_numpy(ops.cast(x, "float32")))[0]
        return x

    length = len(tokens)
    causal = np.tril(np.ones((1, length, length), dtype=bool))           # [1, T, S]
    h = keep("embed", backbone.token_embedding(np.array([tokens], dtype="int32")))
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        x = keep(f"layers.{i}.attn_norm", layer._self_attention_layernorm(h))
        q = keep(f"layers.{i}.q", attention._query_dense(x))            # [1, T, H, hd]
        k = keep(f"layers.{i}.k", attention._key_dense(x))              # [1, T, Hkv, hd]
        v = keep(f"layers.{i}.v", attention._value_dense(x))
        q = keep(f"layers.{i}.q_rope", attention.rotary_embedding_layer(q, start_index=0))
        k = keep(f"layers.{i}.k_rope", attention.rotary_embedding_layer(k, start_index=0))
        k = ops.repeat(k, repeats=attention.num_key_value_groups, axis=2)
        v = ops.repeat(v, repeats=attention.num_key_value_groups, axis=2)
        scores = ops.einsum("bquh,bkuh->buqk", q, k) * attention._inv_norm_factor     # [1, H, T, S]
        keep(f"layers.{i}.attn_probs", attention._masked_softmax(scores, causal))
        context = keep(f"layers.{i}.attn_ctx", attention._compute_attention(q, k, v, causal))
        h = keep(f"layers.{i}.resid_mid", h + keep(f"layers.{i}.attn_out", attention._output_dense(context)))
        x = keep(f"layers.{i}.mlp_norm", layer._feedforward_layernorm(h))
        gate = keep(f"layers.{i}.mlp_gate", layer._feedforward_gate_dense(x))
        up = keep(f"layers.{i}.mlp_up", layer._feedforward_intermediate_dense(x))
        activated = ops.cast(layer.activation(ops.cast(gate, "float32")), layer.compute_dtype)   # as its call does
        act = keep(f"layers.{i}.mlp_act", up * activated)
        h = keep(f"layers.{i}.out", h + keep(f"layers.{i}.mlp_out", layer._feedforward_output_dense(act)))
    h = keep("final_norm", backbone.layer_norm(h))
    keep("logits", backbone.token_embedding(h, reverse=True))
    return tensors


def write_trace(path: Path, tensors: dict[str, np.ndarray], *, tokens: list[int], dtype: str) -> None:
    """The tensors and what made them, as a parity trace file (parity.save_trace; it refuses to replace a file)."""
    import keras
    import keras_hub

    import parity

    producer = f"keras-hub {keras_hub.__version__} (keras {keras.__version__}, {keras.backend.backend()})"
    metadata = {"producer": producer, "dtype": dtype, "tokens": tokens, "arch": "llama"}
    parity.save_trace(parity.make_trace(tensors, metadata), path)


def decoder(model_dir, dtype: str = "float32", rms_norm_eps_from_config: bool = True, capacity: int = 256):
    """keras-hub's own LlamaCausalLM as a function of token ids that decodes through keras-hub's own KV cache
    (`call_with_cache`), as parity takes one (`parity check MODEL examples/keras_hub_trace.py:decoder`):
    forward(input_ids, positions=None, cache=None) returns (logits [1, T, V], cache); the cache is keras-hub's,
    [1, layers, 2, capacity, Hkv, hd], filled from `positions`' first entry on. Its logits, greedy run and
    decoding are checked; its layers are not (run `main` for them)."""
    backbone = load(Path(model_dir), dtype, rms_norm_eps_from_config)     # keras on JAX from here on
    import keras_hub
    from keras import ops

    causal_lm = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    shape = [1, backbone.num_layers, 2, capacity, backbone.num_key_value_heads, head_dim]

    def forward(input_ids, positions=None, cache=None):
        ids = np.asarray(input_ids).astype("int32")                             # [1, T]
        start = int(np.asarray(positions).reshape(-1)[0]) if positions is not None else 0
        if start + ids.shape[1] > capacity:
            raise ValueError(f"positions up to {start + ids.shape[1]} past the cache's {capacity}: raise capacity")
        cache = ops.zeros(shape, dtype=causal_lm.compute_dtype) if cache is None else cache
        logits, _, cache = causal_lm.call_with_cache(ids, cache, start)
        return np.asarray(ops.convert_to_numpy(ops.cast(logits, "float32"))), cache

    forward.parity_dtype = dtype       # its logits are widened to float32: the precision it computes in
    return forward


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path, help="the trace file to write (.safetensors; must not exist)")
    parser.add_argument("--tokens", required=True, help="token ids, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--rms-norm-eps-from-config", action="store_true",
                        help="set every norm's epsilon to the config's rms_norm_eps (keras-hub keeps 1e-6)")
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists: name a new file")
    tokens = [int(t) for t in args.tokens.split(",")]
    backbone = load(args.model, args.dtype, args.rms_norm_eps_from_config)
    write_trace(args.output, forward(backbone, tokens), tokens=tokens, dtype=args.dtype)


if __name__ == "__main__":
    main()
