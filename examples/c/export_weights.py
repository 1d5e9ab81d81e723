"""Write a Llama model directory's weights as the flat float32 file examples/c/llama.c reads.

q and k projections are written in Meta's interleaved RoPE layout (each head's rows
reordered so that pairs (2i, 2i + 1) rotate together), as llama2.c's exporter does: the
C port then rotates adjacent pairs. parity reads its q and k in that layout as what
they are (the rope_pairs convention).

    python examples/c/export_weights.py path/to/llama-model model.bin
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

MAGIC = 0x70617269


def weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def interleaved(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q or k projection from the halves layout (i with i + hd/2) to pairs (2i, 2i + 1)."""
    rows, width = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, width).transpose(0, 2, 1, 3).reshape(rows, width)


def export(model_dir: Path, output: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    w = weights(model_dir)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    header = struct.pack("8i2f", MAGIC, config["hidden_size"], config["intermediate_size"],
                         config["num_hidden_layers"], heads, kv_heads, config["vocab_size"], head_dim,
                         theta, config["rms_norm_eps"])
    embed = w["model.embed_tokens.weight"]
    parts = [embed]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        parts += [w[p + "input_layernorm.weight"],
                  interleaved(w[p + "self_attn.q_proj.weight"], heads),
                  interleaved(w[p + "self_attn.k_proj.weight"], kv_heads),
                  w[p + "self_attn.v_proj.weight"], w[p + "self_attn.o_proj.weight"],
                  w[p + "post_attention_layernorm.weight"],
                  w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"], w[p + "mlp.down_proj.weight"]]
    parts += [w["model.norm.weight"], w.get("lm_head.weight", embed)]   # tied embeddings: the same table
    with open(output, "wb") as file:
        file.write(header)
        for part in parts:
            file.write(np.ascontiguousarray(part, dtype=np.float32).tobytes())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    export(Path(sys.argv[1]), Path(sys.argv[2]))
