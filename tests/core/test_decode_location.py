"""A decode step located from the full pass's checkpoints taken as they are made gives the checkpoint the whole
trace gives, whatever blocks the rows come in, and keeps only the keys of the layer that parts."""

import numpy as np
import pytest

from parity.core.decode_location import PositionRows, first_checkpoint
from parity.core.names import in_flow_order

T, H, HKV, HD, D, LAYERS = 40, 4, 2, 8, 32, 3
POSITION, BOUND = T - 1, 1e-4


def full_pass(seed: int = 0) -> dict[str, np.ndarray]:
    """Checkpoints of a pass over T tokens, in the trace's layouts: (T, width), attention probabilities (H, T, T)."""
    rng = np.random.default_rng(seed)
    tensors = {"embed": rng.standard_normal((T, D), dtype=np.float32)}
    for layer in range(LAYERS):
        for kind, width in (("attn_norm", D), ("q", H * HD), ("k", HKV * HD), ("v", HKV * HD),
                            ("k_rope", HKV * HD), ("attn_out", D), ("out", D)):
            tensors[f"layers.{layer}.{kind}"] = rng.standard_normal((T, width), dtype=np.float32)
        scores = rng.standard_normal((H, T, T))
        scores[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
        tensors[f"layers.{layer}.attn_probs"] = (np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)).astype(
            np.float32)
    tensors["final_norm"] = rng.standard_normal((T, D), dtype=np.float32)
    tensors["logits"] = rng.standard_normal((T, 50), dtype=np.float32)
    return tensors


def step_of(full: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a decode step at POSITION records: its row, the keys it read from the cache (rows 0..POSITION, as
    transformers hands k_rope to attention), its query's probabilities (H, 1, S)."""
    step = {}
    for name, tensor in full.items():
        if name.endswith("attn_probs"):
            step[name] = tensor[:, POSITION:POSITION + 1].copy()
        elif name.endswith("k_rope"):
            step[name] = tensor.copy()
        else:
            step[name] = tensor[POSITION:POSITION + 1].copy()
    return step


def streamed(full: dict[str, np.ndarray], step: dict, rows_per_block: int) -> PositionRows:
    """The pass's checkpoints put in data-flow order, each in blocks of rows (a batch axis of 1 on some)."""
    rows = PositionRows(step, POSITION, BOUND)
    for name in in_flow_order(full):
        tensor = full[name]
        axis = 1 if name.endswith("attn_probs") else 0
        for start in range(0, T, rows_per_block):
            block = np.take(tensor, range(start, min(start + rows_per_block, T)), axis=axis)
            rows.put(name, block[None] if start % 2 else block, start)
    return rows


@pytest.mark.parametrize("rows_per_block", [T, 7, 1])
@pytest.mark.parametrize("broken", [None, "embed", "layers.1.q", "layers.1.attn_probs", "layers.2.k_rope",
                                    "final_norm"])
def test_the_checkpoint_located_is_the_one_the_whole_trace_locates(rows_per_block, broken):
    full = full_pass()
    step = step_of(full)
    if broken is not None:
        step[broken] = step[broken] * 1.01
    expected = first_checkpoint(full, step, POSITION, BOUND)
    assert expected == broken
    rows = streamed(full, step, rows_per_block)
    assert rows.first_checkpoint() == expected


def test_a_key_read_from_the_cache_at_another_slot_parts_there_and_its_layer_keys_are_kept():
    full = full_pass()
    step = step_of(full)
    step["layers.1.k_rope"] = np.roll(step["layers.1.k_rope"], 1, axis=0)   # each key one slot late
    rows = streamed(full, step, 7)
    assert rows.first_checkpoint() == first_checkpoint(full, step, POSITION, BOUND) == "layers.1.k_rope"
    assert set(rows.tensors) == {"layers.1.k", "layers.1.k_rope", "layers.1.v"}   # the layer that parts, whole
    np.testing.assert_array_equal(rows["layers.1.k"], full["layers.1.k"])
    assert not any(name.startswith("layers.2") for name in rows.differs)         # nothing judged past it


def test_a_pass_that_agrees_keeps_no_keys():
    full = full_pass()
    rows = streamed(full, step_of(full), 7)
    assert rows.first_checkpoint() is None
    assert len(rows.differs) == len(full) - 1                                      # every one judged but logits
    assert not rows.tensors                                                        # no layer parted: no key kept
