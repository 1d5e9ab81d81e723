"""What transformers' GGUF loader gets wrong, found before it loads: a clear refusal instead of its report.

transformers builds the model's config from a GGUF's metadata through a table
per architecture (`transformers.integrations.ggml.GGUF_CONFIG_MAPPING`). Where
that table has no entry for `attention.key_length`, the config keeps its
class's default head size (Qwen3: 128), and a file whose heads are another size
fails to load with a size mismatch on every attention weight. A Mixtral GGUF
(architecture `llama` with experts) loads as a dense Llama.
"""

from __future__ import annotations

from pathlib import Path

from parity.capture.gguf.header import read_header
from parity.core.errors import CaptureError


def check_gguf_loadable(path: Path) -> None:
    """Raise CaptureError, in one line, when transformers would build `path`'s attention with the wrong head size."""
    from transformers import CONFIG_MAPPING
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    header = read_header(path)
    arch = header.architecture
    experts = header.number(f"{arch}.expert_count")
    if arch == "llama" and experts:
        raise CaptureError(
            f"{path}: transformers' GGUF loader reads this mixture of {experts} experts (architecture llama, "
            "as Mixtral converts) as a dense Llama; give the original model directory as the reference instead")
    mapping = GGUF_CONFIG_MAPPING.get(arch or "")
    head_size = header.number(f"{arch}.attention.key_length")
    if mapping is None or head_size is None or "attention.key_length" in mapping or arch not in CONFIG_MAPPING:
        return
    width, heads = header.number(f"{arch}.embedding_length"), header.number(f"{arch}.attention.head_count")
    if not width or not heads:
        return
    try:  # the head size transformers' config gives these widths when the loader passes no head_dim
        default = getattr(CONFIG_MAPPING[arch](hidden_size=width, num_attention_heads=heads), "head_dim", None)
    except Exception:  # noqa: BLE001 - the config refuses these sizes (its own validation): transformers says so on load
        return
    default = default or width // heads
    if default is not None and default != head_size:
        raise CaptureError(
            f"{path}: transformers' GGUF loader cannot load this {arch} file: it ignores "
            f"{arch}.attention.key_length (heads of {head_size}) and builds heads of {default}; "
            "give the original model directory as the reference instead")
