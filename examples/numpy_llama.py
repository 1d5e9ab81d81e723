"""A Llama forward pass in numpy alone, writing its intermediate tensors as a parity trace directory.

It keeps tensors the way numpy code does: q, k and v as [T, H, hd], the attention
probabilities as [H, T, T], and writes them so, with a manifest naming each file; parity
reads those layouts as what they are. Run it in float32 or float16:

    python examples/numpy_llama.py path/to/llama-model trace/ --tokens 1,2,3 [--dtype float16]
    parity check path/to/llama-model trace/ --tokens 1,2,3

Or hand parity the port itself, as a function of token ids with its own KV cache (`decoder`): its logits,
greedy run, decoding and cache are checked, its layers "not checked" (a function shows none); or `showing`,
which returns every checkpoint by name beside its logits, so that its layers are compared too:

    parity check path/to/llama-model examples/numpy_llama.py:decoder --tokens 1,2,3
    parity check path/to/llama-model examples/numpy_llama.py:showing --tokens 1,2,3

`--bug` plants one mistake: rope_interleaved (pairs (0,1), (2,3), ... rotated where Llama
rotates (i, i + hd/2)), or mlp_operands_swapped (silu(up) * gate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load(model_dir: Path):
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    return config, load_file(str(model_dir / "model.safetensors"))


def rms_norm(x, weight, eps):
    x32 = x.astype(np.float32)
    return (x32 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype) * weight


def rope(x, theta, bug, start=0):                                   # x: [T, H, hd] at positions start..
    T, _, hd = x.shape
    inverse = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)
    angles = np.arange(start, start + T, dtype=np.float32)[:, None] * inverse     # [T, hd/2]
    cos, sin = np.cos(angles)[:, None, :].astype(x.dtype), np.sin(angles)[:, None, :].astype(x.dtype)
    if bug == "rope_interleaved":
        even, odd = x[..., 0::2], x[..., 1::2]
        return np.stack((even * cos - odd * sin, even * sin + odd * cos), axis=-1).reshape(x.shape)
    first, second = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate((first * cos - second * sin, first * sin + second * cos), axis=-1)


def softmax(x):
    shifted = np.exp((x - x.max(-1, keepdims=True)).astype(np.float32))
    return (shifted / shifted.sum(-1, keepdims=True)).astype(x.dtype)


def silu(x):
    return (x.astype(np.float32) / (1 + np.exp(-x.astype(np.float32)))).astype(x.dtype)


class Cache:
    """The keys (after RoPE) and values of every position run so far, by layer, [S, Hkv, hd] each."""

    def __init__(self):
        self.keys, self.values = {}, {}


def forward(config, weights, tokens, dtype, bug=None, *, start=0, cache=None):
    """Every checkpoint of one pass over `tokens` at positions start.., by canonical name, in numpy's natural
    layouts; continuing from `cache` (the positions before `start`) and extending it, where one is given."""
    w = {name: value.astype(dtype, copy=False) for name, value in weights.items()}
    H, Hkv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or config["hidden_size"] // H
    theta = (config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta", 10000.0)
    eps, T = config["rms_norm_eps"], len(tokens)
    out = {"embed": w["model.embed_tokens.weight"][tokens]}
    x = out["embed"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = out[f"layers.{i}.attn_norm"] = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = out[f"layers.{i}.q"] = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd)
        k = out[f"layers.{i}.k"] = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, Hkv, hd)
        v = out[f"layers.{i}.v"] = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, Hkv, hd)
        q = out[f"layers.{i}.q_rope"] = rope(q, theta, bug, start)
        k = out[f"layers.{i}.k_rope"] = rope(k, theta, bug, start)
        if cache is not None:                                                  # [start + T, Hkv, hd]
            k = cache.keys[i] = np.concatenate([cache.keys[i], k]) if i in cache.keys else k
            v = cache.values[i] = np.concatenate([cache.values[i], v]) if i in cache.values else v
        k_all, v_all = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)     # [S, H, hd]
        keys_at = np.arange(start + T - len(k), start + T)           # the positions of the S keys held
        mask = keys_at[None, :] > np.arange(start, start + T)[:, None]      # [T, S]: a later key is hidden
        scores = np.einsum("thd,shd->hts", q, k_all) / np.sqrt(hd).astype(dtype)      # [H, T, T]
        probs = out[f"layers.{i}.attn_probs"] = softmax(np.where(mask, -np.inf, scores).astype(dtype))
        context = out[f"layers.{i}.attn_ctx"] = np.einsum("hts,shd->thd", probs, v_all)   # [T, H, hd]
        attended = out[f"layers.{i}.attn_out"] = context.reshape(T, H * hd) @ w[p + "self_attn.o_proj.weight"].T
        x = out[f"layers.{i}.resid_mid"] = x + attended
        h = out[f"layers.{i}.mlp_norm"] = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = out[f"layers.{i}.mlp_gate"] = h @ w[p + "mlp.gate_proj.weight"].T
        up = out[f"layers.{i}.mlp_up"] = h @ w[p + "mlp.up_proj.weight"].T
        act = out[f"layers.{i}.mlp_act"] = silu(up) * gate if bug == "mlp_operands_swapped" else silu(gate) * up
        mlp = out[f"layers.{i}.mlp_out"] = act @ w[p + "mlp.down_proj.weight"].T
        x = out[f"layers.{i}.out"] = x + mlp
    out["final_norm"] = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])   # tied embeddings: no lm_head of its own
    out["logits"] = out["final_norm"] @ head.T
    return out


def decoder(model_dir, dtype="float32", bug=None, showing=False):
    """The port as a function of token ids, decoding through its own cache, as parity takes one
    (`parity check MODEL examples/numpy_llama.py:decoder`): forward(input_ids, positions=None, cache=None)
    returns (logits [T, V], cache), continuing from `cache` (None: a new one). `showing`: it returns every
    checkpoint it computes by name ({"logits": ..., "layers.0.q": ...}) where the logits were, and parity
    compares them all (`examples/numpy_llama.py:showing`)."""
    config, weights = load(Path(model_dir))
    weights = {name: value.astype(dtype) for name, value in weights.items()}

    def step(input_ids, positions=None, cache=None):
        tokens = np.asarray(input_ids).reshape(-1)
        start = int(np.asarray(positions).reshape(-1)[0]) if positions is not None else 0
        cache = cache if cache is not None else Cache()
        computed = forward(config, weights, tokens, np.dtype(dtype), bug, start=start, cache=cache)
        return (computed if showing else computed["logits"]), cache

    step.parity_dtype = str(np.dtype(dtype))     # the precision it computes in: its logits do not say
    if showing:
        step.parity_layout = "THD"               # q, k, v and the context as [T, H, hd], whatever T is
    return step


def showing(model_dir, dtype="float32", bug=None):
    """`decoder` returning every checkpoint beside its logits: its layers are compared, and its decoding."""
    return decoder(model_dir, dtype, bug, showing=True)


def write_trace(directory: Path, tensors: dict, *, tokens, dtype: str, config: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, value in tensors.items():
        files[name] = f"{name}.npy"
        np.save(directory / files[name], np.ascontiguousarray(value))
    manifest = {"format": "parity-trace/2", "tensors": files,
                "metadata": {"producer": "numpy_llama.py", "arch": "llama", "dtype": dtype, "tokens": list(tokens),
                             "config": config}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--bug", choices=("rope_interleaved", "mlp_operands_swapped"))
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    config, weights = load(args.model)
    tensors = forward(config, weights, tokens, np.dtype(args.dtype), args.bug)
    write_trace(args.output, tensors, tokens=tokens, dtype=args.dtype, config=config)


if __name__ == "__main__":
    main()
