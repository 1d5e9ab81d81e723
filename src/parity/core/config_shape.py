"""The sizes a model's config declares: heads, key/value heads, head size, width, layers.

One reader for the core, the detectors and the capture, by the names the configs people port
from use: transformers' (a multimodal config's text_config first), nanoGPT's (n_head, n_embd,
n_layer), Meta's Llama code (n_heads, n_kv_heads, dim, n_layers), gpt-fast's (n_local_heads) and
LLMs-from-scratch's (n_kv_groups, emb_dim). A size the config does not declare is None.

    shape = config_shape(trace.metadata.get("config"))   # a dict, or a config object
    shape.head_dim                                      # head_dim, else width / heads
"""

from __future__ import annotations

from dataclasses import dataclass

HEADS = ("num_attention_heads", "n_head", "n_heads")
KV_HEADS = ("num_key_value_heads", "n_kv_heads", "n_local_heads", "n_kv_groups")
WIDTH = ("hidden_size", "n_embd", "dim", "emb_dim")
LAYERS = ("num_hidden_layers", "n_layer", "n_layers")


@dataclass(frozen=True)
class ConfigShape:
    heads: int | None = None        # query heads
    kv_heads: int | None = None     # key/value heads (the query heads' count when not declared)
    head_dim: int | None = None     # head_dim, else width / heads
    hidden: int | None = None       # the residual stream's width
    layers: int | None = None

    def __repr__(self) -> str:
        return (f"<ConfigShape heads={self.heads}/{self.kv_heads} head_dim={self.head_dim} hidden={self.hidden} "
                f"layers={self.layers}>")

    @property
    def head_counts(self) -> frozenset[int]:
        """The head counts declared (query and key/value), for telling a heads axis from a tokens axis."""
        return frozenset(count for count in (self.heads, self.kv_heads) if count)


def config_shape(config) -> ConfigShape:
    """The sizes `config` declares (a mapping or an object with attributes; None declares none)."""
    if config is None:
        return ConfigShape()
    read = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    text = read("text_config")
    if text is not None and not isinstance(text, (int, float, str)):
        nested = config_shape(text)
        if nested.heads:
            return nested
    heads, width = _first(read, HEADS), _first(read, WIDTH)
    head_dim = _first(read, ("head_dim",)) or (width // heads if width and heads and width % heads == 0 else None)
    return ConfigShape(heads=heads, kv_heads=_first(read, KV_HEADS) or heads, head_dim=head_dim, hidden=width,
                       layers=_first(read, LAYERS))


def _first(read, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = read(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
