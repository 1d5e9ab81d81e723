"""How much memory the 11 tests need, from the candidate's config, before any input is made.

Both models run forward and backward on the batch, and the stability test runs one
sequence of `long_length` (up to the model's positions). Per token a model keeps
its logits (with their softmax and gradient) and, per layer, the activations
backward needs; per pair of tokens, eager attention keeps its scores and
probabilities per head. A run over the free memory is refused in one line.
"""

from __future__ import annotations

from parity.core.errors import OptionError
from parity.core.isolation import available_memory_bytes, guarded, is_user_exit

BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
COPIES = 6               # two models, forward and backward, and the tests' own copies of outputs
SHARE_OF_FREE = 0.8


def run_bytes(config: dict, settings) -> int | None:
    """Peak bytes of the tests, estimated from above; None when the config lacks the sizes."""
    sizes = [config.get(key) for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")]
    if not all(type(value) is int and value > 0 for value in sizes):
        return None
    vocab, hidden, layers, heads = sizes
    intermediate = config.get("intermediate_size")
    intermediate = intermediate if type(intermediate) is int and intermediate > 0 else 4 * hidden
    per_token = 3 * vocab + layers * (12 * hidden + 3 * intermediate)
    per_pair = 3 * layers * heads

    def elements(batch: int, length: int) -> int:
        return batch * length * per_token + batch * length * length * per_pair

    positions = config.get("max_position_embeddings")
    long_length = min(settings.long_length, positions) if type(positions) is int and positions > 0 else \
        settings.long_length
    largest = max(elements(settings.batch_size, settings.seq_length), elements(1, long_length))
    return COPIES * largest * BYTES.get(settings.dtype, 4)


def check_memory(candidate, settings) -> None:
    needed = run_bytes(_config(candidate), settings)
    if needed is None:
        return
    free = available_memory_bytes(settings.device)
    if needed > SHARE_OF_FREE * free:
        raise OptionError(f"--batch-size {settings.batch_size:,} x --seq-length {settings.seq_length:,} on this model "
                          f"needs about {needed / 2**30:,.1f} GiB (logits and activations of both models, forward and "
                          f"backward), more than the {free / 2**30:,.1f} GiB free on {settings.device}; "
                          "give a smaller --batch-size or --seq-length")


def _config(candidate) -> dict:
    """The candidate's .config as a dict of plain values ({} when it has none it can give)."""
    try:
        with guarded():
            config = getattr(candidate, "config", None)
            values = config if isinstance(config, dict) else (config.to_dict() if hasattr(config, "to_dict") else {})
            return dict(values) if isinstance(values, dict) else {}
    except BaseException as error:  # the candidate's own code: build_pair names what is wrong with it
        if not is_user_exit(error):
            raise
        return {}
