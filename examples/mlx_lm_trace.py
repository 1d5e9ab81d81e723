"""mlx-lm's Llama (Apple's MLX, CPU or Metal) run module by module, its intermediate tensors written as a
parity trace file.

mlx-lm is not PyTorch, so parity cannot hook it: this script calls the loaded model's own
modules in the order its `__call__` does (`input_layernorm`, `q_proj`, `rope`, mlx-lm's
`scaled_dot_product_attention`, `swiglu`, ...) and saves each result as it goes. The
attention probabilities, which the fused attention never forms, are recomputed from the
q and k it rotated (`--no-probs` leaves them out: [H, T, T] per layer grows with T²).

    python examples/mlx_lm_trace.py path/to/llama-model trace.safetensors --tokens 1,415,5565 [--dtype bfloat16]
    parity check path/to/llama-model trace.safetensors

mlx-lm reads RoPE's base from the config's top-level `rope_theta`; a config written by
transformers 5 keeps it in `rope_parameters`, and mlx-lm 0.32 then keeps its default,
10000. parity names that (`rope_theta`); `--rope-theta-from-parameters` copies the base
where mlx-lm looks before loading, as a user fixing it would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

DTYPES = ("float32", "bfloat16", "float16")


def load(model_dir: Path, dtype: str, rope_theta_from_parameters: bool):
    """mlx-lm's model for `model_dir`, its weights cast to `dtype`."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    with tempfile.TemporaryDirectory() as staging:
        if rope_theta_from_parameters:
            model_dir = with_top_level_rope_theta(model_dir, Path(staging))
        model, _ = load_model(model_dir)
    if dtype != "float32":
        model.set_dtype(getattr(mx, dtype))
    return model


def with_top_level_rope_theta(model_dir: Path, staging: Path) -> Path:
    """A view of `model_dir` (links to its files) whose config.json also says rope_theta at the top level."""
    config = json.loads((model_dir / "config.json").read_text())
    config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    for path in model_dir.iterdir():
        if path.name != "config.json":
            (staging / path.name).symlink_to(path.resolve())
    (staging / "config.json").write_text(json.dumps(config))
    return staging


def forward(model, tokens: list[int], with_probs: bool) -> dict[str, np.ndarray]:
    """Every checkpoint of one forward pass over `tokens`, as float32 numpy arrays without the batch axis."""
    import mlx.core as mx
    from mlx_lm.models.activations import swiglu
    from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention

    tensors: dict[str, np.ndarray] = {}

    def keep(name, x):                                          # [1, T, ...] -> [T, ...]
        tensors[name] = np.array(x.astype(mx.float32))[0]
        return x

    inner = model.model
    h = keep("embed", inner.embed_tokens(mx.array([tokens])))    # [1, T, D]
    mask = create_attention_mask(h, None)
    for i, layer in enumerate(inner.layers):
        attention = layer.self_attn
        x = keep(f"layers.{i}.attn_norm", layer.input_layernorm(h))
        B, L, _ = x.shape
        q = keep(f"layers.{i}.q", attention.q_proj(x))
        k = keep(f"layers.{i}.k", attention.k_proj(x))
        v = keep(f"layers.{i}.v", attention.v_proj(x))
        q = attention.rope(q.reshape(B, L, attention.n_heads, -1).transpose(0, 2, 1, 3))     # [1, H, T, hd]
        k = attention.rope(k.reshape(B, L, attention.n_kv_heads, -1).transpose(0, 2, 1, 3))  # [1, Hkv, T, hd]
        v = v.reshape(B, L, attention.n_kv_heads, -1).transpose(0, 2, 1, 3)
        keep(f"layers.{i}.q_rope", q.transpose(0, 2, 1, 3).reshape(B, L, -1))
        keep(f"layers.{i}.k_rope", k.transpose(0, 2, 1, 3).reshape(B, L, -1))
        if with_probs:
            keep(f"layers.{i}.attn_probs", probabilities(q, k, attention.scale))
        context = scaled_dot_product_attention(q, k, v, cache=None, scale=attention.scale, mask=mask)
        context = keep(f"layers.{i}.attn_ctx", context.transpose(0, 2, 1, 3).reshape(B, L, -1))
        h = keep(f"layers.{i}.resid_mid", h + keep(f"layers.{i}.attn_out", attention.o_proj(context)))
        x = keep(f"layers.{i}.mlp_norm", layer.post_attention_layernorm(h))
        gate = keep(f"layers.{i}.mlp_gate", layer.mlp.gate_proj(x))
        up = keep(f"layers.{i}.mlp_up", layer.mlp.up_proj(x))
        act = keep(f"layers.{i}.mlp_act", swiglu(gate, up))
        h = keep(f"layers.{i}.out", h + keep(f"layers.{i}.mlp_out", layer.mlp.down_proj(act)))
    h = keep("final_norm", inner.norm(h))
    keep("logits", inner.embed_tokens.as_linear(h) if model.args.tie_word_embeddings else model.lm_head(h))
    return tensors


def probabilities(q, k, scale):
    """Causal softmax(q k^T * scale): [1, H, T, hd] x [1, Hkv, T, hd] -> [1, H, T, T]."""
    import mlx.core as mx

    k = mx.repeat(k, q.shape[1] // k.shape[1], axis=1)
    scores = (q * scale) @ k.transpose(0, 1, 3, 2)
    length = q.shape[2]
    causal = mx.tril(mx.ones((length, length), dtype=mx.bool_))
    return mx.softmax(mx.where(causal, scores, mx.array(-mx.inf, dtype=scores.dtype)), axis=-1, precise=True)


def write_trace(path: Path, tensors: dict[str, np.ndarray], *, tokens: list[int], dtype: str) -> None:
    """The tensors and what made them, as a parity trace file (parity.save_trace; it refuses to replace a file)."""
    import mlx.core as mx
    import mlx_lm

    import parity

    metadata = {"producer": f"mlx-lm {mlx_lm.__version__} (mlx {mx.__version__})", "dtype": dtype,
                "tokens": tokens, "arch": "llama"}
    parity.save_trace(parity.make_trace(tensors, metadata), path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path, help="the trace file to write (.safetensors; must not exist)")
    parser.add_argument("--tokens", required=True, help="token ids, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--no-probs", action="store_true", help="leave out the attention probabilities")
    parser.add_argument("--rope-theta-from-parameters", action="store_true",
                        help="copy rope_parameters.rope_theta to the top level, where mlx-lm reads it")
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists: name a new file")
    tokens = [int(t) for t in args.tokens.split(",")]
    model = load(args.model, args.dtype, args.rope_theta_from_parameters)
    write_trace(args.output, forward(model, tokens, not args.no_probs), tokens=tokens, dtype=args.dtype)


if __name__ == "__main__":
    main()
